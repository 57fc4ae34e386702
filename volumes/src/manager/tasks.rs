//! The manager's work in flight, tracked so that shutdown can wait for it.
//!
//! Every set-up, tear-down and re-projection runs as a task registered here, whoever
//! started it: a watch event, a retry, a resync, the token timer or a caller of
//! `sync_pod` / `tear_down_pod`. A caller that stops waiting (its future dropped) does
//! not cut the work short: a half-made mount or projection would stay behind, and a
//! blocking step would run on without the pod's lock. `run` drains them on its way out,
//! so a node stopped by SIGTERM leaves every volume either set up or torn down.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// The registry of running tasks, by id, with what each is doing.
#[derive(Debug, Default)]
pub(super) struct Tasks {
    running: Mutex<Running>,
    /// Woken whenever the last running task ends.
    idle: Notify,
}

#[derive(Debug, Default)]
struct Running {
    next: u64,
    what: BTreeMap<u64, String>,
}

/// Unregisters its task when dropped: when it returns, panics or is aborted.
struct Done {
    tasks: Arc<Tasks>,
    id: u64,
}

impl Drop for Done {
    fn drop(&mut self) {
        let mut running = self.tasks.lock();
        running.what.remove(&self.id);
        if running.what.is_empty() {
            self.tasks.idle.notify_waiters();
        }
    }
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        // The critical sections cannot panic; a poisoned lock still holds a valid map.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `fut` on its own task, registered as `what` until it ends, inside the
    /// caller's tracing span.
    pub(super) fn spawn<T, F>(self: &Arc<Self>, what: String, fut: F) -> JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let id = {
            let mut running = self.lock();
            running.next += 1;
            let id = running.next;
            running.what.insert(id, what);
            id
        };
        let done = Done {
            tasks: self.clone(),
            id,
        };
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let _done = done;
                fut.await
            }
            .instrument(span),
        )
    }

    /// What is running now, oldest first.
    pub(super) fn running(&self) -> Vec<String> {
        self.lock().what.values().cloned().collect()
    }

    /// Waits until no task runs, or `timeout` passed; returns what still runs then.
    pub(super) async fn drain(&self, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before looking, so a task ending in between still wakes us.
            idle.as_mut().enable();
            if self.lock().what.is_empty() {
                return Vec::new();
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.running();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_work_and_names_what_it_abandons() {
        let tasks = Arc::new(Tasks::default());
        assert!(tasks.drain(Duration::from_secs(1)).await.is_empty());

        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = finished.clone();
        tasks.spawn("set up pod a".into(), async move {
            let _ = go_rx.await;
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let (_never_tx, never_rx) = tokio::sync::oneshot::channel::<()>();
        let stuck = tasks.spawn("tear down pod b".into(), async move {
            let _ = never_rx.await;
        });
        assert_eq!(tasks.running(), ["set up pod a", "tear down pod b"]);
        go_tx.send(()).unwrap();
        // The stuck task holds the drain to its deadline and is named in the result;
        // the other one has finished by then.
        let left = tasks.drain(Duration::from_millis(200)).await;
        assert_eq!(left, ["tear down pod b"]);
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));

        // An aborted (or panicked) task unregisters too.
        stuck.abort();
        assert!(tasks.drain(Duration::from_secs(30)).await.is_empty());
    }
}
