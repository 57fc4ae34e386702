//! Crash failpoints: named steps where a process can be made to die on purpose.
//!
//! A crash test starts a binary with `<ENV>=name[,name...]`; when a listed step is
//! reached the process aborts at once (no destructors, no cleanup), which is what a
//! `kill -9` at that instant would leave behind. Each binary declares its own
//! [`Failpoints`] with the list of every step, reads the variable once at start-up,
//! and when it is unset [`Failpoints::hit`] is one atomic load.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Errors injected by tests, per thread; `INJECTED_ANYWHERE` keeps the common case (none)
/// to one atomic load.
static INJECTED_ANYWHERE: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static INJECTED: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// The error [`Failpoints::step`] returns for an injected step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected(pub &'static str);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failpoint {} failed (injected by a test)", self.0)
    }
}

impl std::error::Error for Injected {}

/// Makes step `name` fail on this thread until the guard is dropped (tests only).
pub fn inject_error(name: &'static str) -> InjectedError {
    INJECTED.with(|s| s.borrow_mut().push(name));
    INJECTED_ANYWHERE.fetch_add(1, Ordering::SeqCst);
    InjectedError { name }
}

/// Undoes [`inject_error`] when dropped.
#[must_use = "the injection ends when this is dropped"]
pub struct InjectedError {
    name: &'static str,
}

impl Drop for InjectedError {
    fn drop(&mut self) {
        INJECTED.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(i) = s.iter().position(|n| *n == self.name) {
                s.remove(i);
            }
        });
        INJECTED_ANYWHERE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The failpoints of one program.
pub struct Failpoints {
    /// The environment variable naming the armed steps.
    pub env: &'static str,
    /// Every step, in the order they run, so that crash tests can cover them all.
    pub all: &'static [&'static str],
    armed: OnceLock<HashSet<&'static str>>,
}

impl Failpoints {
    pub const fn new(env: &'static str, all: &'static [&'static str]) -> Failpoints {
        Failpoints {
            env,
            all,
            armed: OnceLock::new(),
        }
    }

    /// Reads the variable. Unknown names are an error, so a typo in a crash test
    /// cannot silently turn it into a test of nothing. Returns the armed names.
    pub fn init_from_env(&self) -> Result<Vec<&'static str>, String> {
        let raw = std::env::var_os(self.env)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut armed = HashSet::new();
        for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match self.all.iter().find(|known| **known == name) {
                Some(known) => {
                    armed.insert(*known);
                }
                None => return Err(format!("unknown failpoint {name:?} in {}", self.env)),
            }
        }
        let mut names: Vec<&'static str> = armed.iter().copied().collect();
        names.sort_unstable();
        let _ = self.armed.set(armed);
        Ok(names)
    }

    /// Aborts the process if step `name` is armed.
    #[inline]
    pub fn hit(&self, name: &'static str) {
        debug_assert!(self.all.contains(&name), "failpoint {name} is not listed");
        if let Some(armed) = self.armed.get()
            && !armed.is_empty()
            && armed.contains(name)
        {
            eprintln!("failpoint {name} reached, aborting");
            std::process::abort();
        }
    }

    /// A step that can fail: aborts like [`Failpoints::hit`] when armed, and returns
    /// `Err` when a test injected an error for it on this thread.
    #[inline]
    pub fn step(&self, name: &'static str) -> Result<(), Injected> {
        self.hit(name);
        if INJECTED_ANYWHERE.load(Ordering::Relaxed) != 0
            && INJECTED.with(|s| s.borrow().contains(&name))
        {
            return Err(Injected(name));
        }
        Ok(())
    }

    /// Every name is unique and reads `<operation>:<step>`; each program's unit
    /// tests call this on its list.
    pub fn check_names(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for name in self.all {
            if !seen.insert(name) {
                return Err(format!("duplicate failpoint {name}"));
            }
            match name.split_once(':') {
                Some((op, step)) if !op.is_empty() && !step.is_empty() => {}
                _ => return Err(format!("failpoint {name} is not <operation>:<step>")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static POINTS: Failpoints = Failpoints::new("STRATA_FAILPOINT_SELFTEST", &["a:one", "a:two"]);

    #[test]
    fn names_are_checked() {
        POINTS.check_names().unwrap();
        let dup = Failpoints::new("X", &["a:b", "a:b"]);
        assert!(dup.check_names().unwrap_err().contains("duplicate"));
        let bad = Failpoints::new("X", &["nocolon"]);
        assert!(bad.check_names().is_err());
    }

    #[test]
    #[allow(unsafe_code)] // set_var: the only way to put a value in the environment in-process
    fn unknown_names_are_refused_and_unarmed_hits_return() {
        // SAFETY: no other thread reads or writes this variable.
        unsafe { std::env::set_var("STRATA_FAILPOINT_SELFTEST_BAD", "a:one,a:typo") };
        let bad = Failpoints::new("STRATA_FAILPOINT_SELFTEST_BAD", &["a:one"]);
        assert!(bad.init_from_env().unwrap_err().contains("a:typo"));
        assert_eq!(POINTS.init_from_env().unwrap(), Vec::<&str>::new());
        POINTS.hit("a:one");
        POINTS.hit("a:two");
    }

    #[test]
    fn injected_errors_fail_only_their_step_on_their_thread() {
        assert_eq!(POINTS.step("a:one"), Ok(()));
        {
            let _e = inject_error("a:one");
            assert_eq!(POINTS.step("a:one"), Err(Injected("a:one")));
            assert_eq!(POINTS.step("a:two"), Ok(()));
            let other = std::thread::spawn(|| POINTS.step("a:one")).join().unwrap();
            assert_eq!(other, Ok(()), "another thread is not affected");
        }
        assert_eq!(POINTS.step("a:one"), Ok(()));
    }
}
