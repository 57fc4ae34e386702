//! What the running loops know about themselves: whether the driver has answered (and who
//! it is), and whether every loop task is still alive. Shared by the controller, which
//! needs the driver only to provision, delete and expand, and by `/healthz` and metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::provision::request::DriverInfo;

/// The driver as the loops use it: its answers and the provisioner identity derived from
/// them (`storage.kubernetes.io/csiProvisionerIdentity`).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub info: DriverInfo,
    pub identity: String,
}

/// Shared state of one set of running loops.
#[derive(Debug)]
pub struct LoopStatus {
    driver: watch::Sender<Option<Found>>,
    tasks: Mutex<Vec<(&'static str, AbortHandle)>>,
    stopping: AtomicBool,
}

impl Default for LoopStatus {
    fn default() -> Self {
        LoopStatus {
            driver: watch::Sender::new(None),
            tasks: Mutex::default(),
            stopping: AtomicBool::new(false),
        }
    }
}

impl LoopStatus {
    /// The driver, once it has answered.
    pub fn driver(&self) -> Option<DriverInfo> {
        self.driver.borrow().as_ref().map(|f| f.info.clone())
    }

    /// Waits until the driver has answered.
    pub async fn driver_found(&self) -> DriverInfo {
        let mut rx = self.driver.subscribe();
        let found = rx
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in self");
        found.as_ref().map(|f| f.info.clone()).unwrap_or_default()
    }

    pub(crate) fn found(&self) -> Option<Found> {
        self.driver.borrow().clone()
    }

    pub(crate) fn set_driver(&self, found: Found) {
        self.driver.send_replace(Some(found));
    }

    /// Watches a loop task: one that ends before [`LoopStatus::stopping`] is a dead loop.
    pub(crate) fn track(&self, name: &'static str, task: AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, task));
    }

    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Loops that ended although nobody stopped them (a panic), by name.
    pub fn dead_loops(&self) -> Vec<&'static str> {
        if self.stopping.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(name, _)| *name)
            .collect()
    }

    /// Healthy while every loop runs and nobody asked them to stop; waiting for the driver
    /// is healthy (the binder and the rest run meanwhile) and said in the detail.
    pub fn report(&self) -> (bool, String) {
        let stopping = self.stopping.load(Ordering::SeqCst);
        let dead = self.dead_loops();
        let loops = if stopping {
            "loops: stopping".to_string()
        } else if dead.is_empty() {
            "loops: running".to_string()
        } else {
            format!("loops: stopped: {}", dead.join(", "))
        };
        let driver = match self.driver() {
            Some(d) => format!("driver: {}", d.name),
            None => "driver: waiting (provisioning, deletion and expansion wait for it)".into(),
        };
        (!stopping && dead.is_empty(), format!("{loops}\n{driver}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_loop_is_unhealthy_until_shutdown() {
        let s = LoopStatus::default();
        let alive = tokio::spawn(std::future::pending::<()>());
        let dies = tokio::spawn(async { panic!("loop bug") });
        s.track("claims", alive.abort_handle());
        s.track("volumes", dies.abort_handle());
        assert!(dies.await.is_err());
        let (ok, detail) = s.report();
        assert!(!ok);
        assert!(detail.contains("loops: stopped: volumes"), "{detail}");
        assert!(detail.contains("driver: waiting"), "{detail}");
        s.stopping();
        assert_eq!(s.dead_loops(), Vec::<&str>::new());
        assert!(!s.report().0, "stopping is not healthy either");
        alive.abort();
    }

    #[tokio::test]
    async fn the_driver_is_seen_by_waiters() {
        let s = std::sync::Arc::new(LoopStatus::default());
        assert!(s.driver().is_none());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.driver_found().await }
        });
        s.set_driver(Found {
            info: DriverInfo {
                name: "d".into(),
                ..Default::default()
            },
            identity: "id".into(),
        });
        assert_eq!(waiter.await.unwrap().name, "d");
        let (ok, detail) = s.report();
        assert!(ok && detail.ends_with("driver: d"), "{detail}");
    }
}
