//! Undo of a node operation's completed steps. Each step that changes the system pushes
//! how to take it back; when the operation returns early (an error, `?`) the guard runs
//! them newest first, and the finished operation disarms it. So a failed call leaves
//! nothing half-made without a cleanup block at each exit.

use crate::error::Result;

type Undo<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

#[must_use = "dropping the guard at once undoes every step pushed so far"]
pub(crate) struct Rollback<'a> {
    op: &'static str,
    steps: Vec<(&'static str, Undo<'a>)>,
}

impl<'a> Rollback<'a> {
    pub(crate) fn new(op: &'static str) -> Self {
        Rollback {
            op,
            steps: Vec::new(),
        }
    }

    /// Records that `step` is done and how to undo it.
    pub(crate) fn push(&mut self, step: &'static str, undo: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((step, Box::new(undo)));
    }

    /// The operation completed: keep every step.
    pub(crate) fn disarm(mut self) {
        self.steps.clear();
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        // Every undo runs even when one fails: each one frees something of its own.
        while let Some((step, undo)) = self.steps.pop() {
            if let Err(e) = undo() {
                tracing::warn!(op = self.op, step, error = %crate::error::chain(&e),
                    "undoing a step of a failed operation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::cell::RefCell;

    #[test]
    fn undoes_newest_first_and_keeps_going_past_a_failing_undo() {
        let log = RefCell::new(Vec::new());
        {
            let mut r = Rollback::new("test");
            r.push("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            r.push("b", || {
                log.borrow_mut().push("b");
                Err(Error::Precondition("b cannot be undone".into()))
            });
            r.push("c", || {
                log.borrow_mut().push("c");
                Ok(())
            });
        }
        assert_eq!(*log.borrow(), ["c", "b", "a"]);
    }

    #[test]
    fn disarmed_keeps_everything() {
        let log = RefCell::new(Vec::<&str>::new());
        let mut r = Rollback::new("test");
        r.push("a", || {
            log.borrow_mut().push("a");
            Ok(())
        });
        r.disarm();
        assert!(log.borrow().is_empty());
    }
}
