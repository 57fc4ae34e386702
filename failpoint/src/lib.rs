//! Crash failpoints: named steps where a process can be made to die on purpose.
//!
//! A crash test starts a binary with `<ENV>=name[,name...]`; when a listed step is
//! reached the process aborts at once (no destructors, no cleanup), which is what a
//! `kill -9` at that instant would leave behind. Each binary declares its own
//! [`Failpoints`] with the list of every step, reads the variable once at start-up,
//! and when it is unset [`Failpoints::hit`] is one atomic load.
//!
//! A step armed as `name=hold` does not abort: the thread that reaches it creates
//! `<dir>/<name>.held`, where `<dir>` is `<ENV>_HOLD_DIR`, and waits there until a test
//! removes that file. Tests use it to keep an operation in flight, holding its locks, for as
//! long as they need, instead of racing a slow operation against the clock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    armed: OnceLock<HashMap<&'static str, Action>>,
}

/// What an armed step does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Abort,
    /// Wait while this file exists (it is created on arrival).
    Hold(PathBuf),
}

/// The hold file of step `name` in `dir`.
pub fn hold_file(dir: &std::path::Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.held"))
}

impl Failpoints {
    pub const fn new(env: &'static str, all: &'static [&'static str]) -> Failpoints {
        Failpoints {
            env,
            all,
            armed: OnceLock::new(),
        }
    }

    /// Reads the variable. Unknown names or actions are an error, so a typo in a crash test
    /// cannot silently turn it into a test of nothing. Returns the armed names.
    pub fn init_from_env(&self) -> Result<Vec<&'static str>, String> {
        let raw = std::env::var_os(self.env)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hold_env = format!("{}_HOLD_DIR", self.env);
        let mut armed = HashMap::new();
        for entry in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let (name, action) = entry.split_once('=').unwrap_or((entry, "abort"));
            let Some(known) = self.all.iter().find(|known| **known == name) else {
                return Err(format!("unknown failpoint {name:?} in {}", self.env));
            };
            let action = match action {
                "abort" => Action::Abort,
                "hold" => match std::env::var_os(&hold_env) {
                    Some(dir) if !dir.is_empty() => Action::Hold(hold_file(dir.as_ref(), name)),
                    _ => return Err(format!("failpoint {name}=hold needs {hold_env} set")),
                },
                other => {
                    return Err(format!(
                        "unknown action {other:?} for failpoint {name} in {} (abort or hold)",
                        self.env
                    ));
                }
            };
            armed.insert(*known, action);
        }
        let mut names: Vec<&'static str> = armed.keys().copied().collect();
        names.sort_unstable();
        let _ = self.armed.set(armed);
        Ok(names)
    }

    /// Aborts the process if step `name` is armed to abort; waits if it is armed to hold.
    #[inline]
    pub fn hit(&self, name: &'static str) {
        debug_assert!(self.all.contains(&name), "failpoint {name} is not listed");
        if let Some(armed) = self.armed.get()
            && !armed.is_empty()
            && let Some(action) = armed.get(name)
        {
            match action {
                Action::Abort => {
                    eprintln!("failpoint {name} reached, aborting");
                    std::process::abort();
                }
                Action::Hold(file) => hold(name, file),
            }
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

/// Creates `file` and waits until somebody removes it.
#[cold]
fn hold(name: &str, file: &std::path::Path) {
    if let Err(e) = std::fs::write(file, b"") {
        eprintln!(
            "failpoint {name}: cannot create {}: {e}; not holding",
            file.display()
        );
        return;
    }
    eprintln!(
        "failpoint {name} reached, holding until {} is removed",
        file.display()
    );
    while file.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("failpoint {name} released");
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
    #[allow(unsafe_code)] // set_var: the only way to put a value in the environment in-process
    fn a_held_step_waits_until_its_file_is_removed() {
        let dir = std::env::temp_dir().join(format!("strata-failpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: no other thread reads or writes these variables.
        unsafe {
            std::env::set_var("STRATA_FAILPOINT_HOLDTEST", "a:two=hold");
            std::env::set_var("STRATA_FAILPOINT_HOLDTEST_HOLD_DIR", &dir);
            std::env::set_var("STRATA_FAILPOINT_HOLDTEST_BAD", "a:two=pause");
            std::env::set_var("STRATA_FAILPOINT_HOLDTEST_NODIR", "a:two=hold");
        }
        static HELD: Failpoints = Failpoints::new("STRATA_FAILPOINT_HOLDTEST", &["a:one", "a:two"]);
        let bad = Failpoints::new("STRATA_FAILPOINT_HOLDTEST_BAD", &["a:two"]);
        assert!(bad.init_from_env().unwrap_err().contains("pause"));
        let nodir = Failpoints::new("STRATA_FAILPOINT_HOLDTEST_NODIR", &["a:two"]);
        assert!(nodir.init_from_env().unwrap_err().contains("_HOLD_DIR"));
        assert_eq!(HELD.init_from_env().unwrap(), vec!["a:two"]);

        HELD.hit("a:one");
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            HELD.hit("a:two");
            tx.send(()).unwrap();
        });
        let file = hold_file(&dir, "a:two");
        while !file.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            rx.try_recv().is_err(),
            "the step is held while its file exists"
        );
        std::fs::remove_file(&file).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("released once the file is gone");
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
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
