//! A work queue keyed by object, as client-go's: a key is queued at most once, and a key
//! added while a worker holds it is processed again after that worker is done, so no two
//! workers ever sync the same object at the same time.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    dirty: HashSet<String>,
    shut_down: bool,
}

pub struct WorkQueue {
    pub name: &'static str,
    state: Mutex<State>,
    notify: Notify,
}

impl WorkQueue {
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            state: Mutex::default(),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.lock();
        if s.shut_down {
            return;
        }
        if s.active.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.queue.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Adds `key` after `delay` (backoff); a no-op once the queue is shut down.
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// The next key to work on, or None once the queue is shut down.
    pub async fn next(&self) -> Option<String> {
        let mut keys = self.next_batch(1).await?;
        keys.pop()
    }

    /// Every queued key, at most `max`, each then held as [`WorkQueue::next`] holds one
    /// (so [`WorkQueue::done`] for each); waits for the first. None once shut down.
    pub async fn next_batch(&self, max: usize) -> Option<Vec<String>> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if s.shut_down {
                    return None;
                }
                if !s.queue.is_empty() {
                    let n = s.queue.len().min(max.max(1));
                    let keys: Vec<String> = s.queue.drain(..n).collect();
                    for k in &keys {
                        s.queued.remove(k);
                        s.active.insert(k.clone());
                    }
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        self.notify.notify_one();
                    }
                    return Some(keys);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` finished; if it changed meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        s.active.remove(key);
        if s.dirty.remove(key) && !s.shut_down && s.queued.insert(key.to_string()) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Workers finish the key they hold and then see None.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.notify.notify_waiters();
    }

    pub fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedupes_and_requeues_keys_changed_while_active() {
        let q = WorkQueue::new("t");
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.next().await.unwrap();
        assert_eq!(k, "a");
        q.add("a"); // changed while being worked on: not handed to a second worker
        assert_eq!(q.next().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done("a");
        assert_eq!(q.next().await.unwrap(), "a", "processed again after done");
        q.done("a");
        q.done("b");
        q.shut_down();
        assert!(q.next().await.is_none());
        assert!(q.next_batch(10).await.is_none());
        q.add("c");
        assert!(q.is_empty(), "nothing is queued after shutdown");
    }

    #[tokio::test]
    async fn a_batch_takes_the_queued_keys_in_order_and_holds_each() {
        let q = WorkQueue::new("t");
        for k in ["a", "b", "c"] {
            q.add(k);
        }
        assert_eq!(q.next_batch(2).await.unwrap(), ["a", "b"]);
        q.add("a"); // held: queued again only after done
        assert_eq!(q.next_batch(10).await.unwrap(), ["c"]);
        q.done("a");
        q.done("b");
        q.done("c");
        assert_eq!(q.next_batch(10).await.unwrap(), ["a"]);
        assert!(q.is_empty());
    }
}
