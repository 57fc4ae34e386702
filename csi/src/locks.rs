//! Per-object operation locks. A second operation on a busy volume, snapshot or name gets
//! ABORTED at once (CSI: "an operation is already pending for this volume"), it never
//! waits: the CO retries with backoff.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

#[derive(Debug, Default, Clone)]
pub struct Locks {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Releases its keys when dropped; moves into `spawn_blocking` closures so that a
/// cancelled RPC keeps the object busy until the work has really finished.
#[derive(Debug)]
pub struct Guard {
    held: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl Locks {
    /// Takes all `keys` or none of them.
    pub fn try_lock<I, S>(&self, keys: I) -> Result<Guard>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let mut held = self.held.lock().expect("locks mutex");
        if let Some(busy) = keys.iter().find(|k| held.contains(*k)) {
            return Err(Error::Busy(
                busy.split_once(':')
                    .map_or(busy.as_str(), |(_, v)| v)
                    .to_string(),
            ));
        }
        for k in &keys {
            held.insert(k.clone());
        }
        Ok(Guard {
            held: self.held.clone(),
            keys,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("locks mutex");
        for k in &self.keys {
            held.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_until_drop() {
        let l = Locks::default();
        let g = l.try_lock(["vol:a", "name:x"]).unwrap();
        assert!(matches!(l.try_lock(["vol:a"]), Err(Error::Busy(ref v)) if v == "a"));
        assert!(l.try_lock(["vol:b", "name:x"]).is_err());
        assert!(
            l.try_lock(["vol:b"]).is_ok(),
            "all-or-nothing left vol:b free"
        );
        drop(g);
        assert!(l.try_lock(["vol:a", "name:x"]).is_ok());
    }
}
