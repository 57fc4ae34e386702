//! The crate's only `unsafe`: process forking for crash and concurrency tests.

/// Runs `f` in a forked child and returns its wait status. The child leaves with
/// `_exit(f())` so no destructor, atexit handler or buffered stdio of the parent runs twice.
///
/// Nothing here can hang a test run: a child still running after `deadline` is killed and
/// the caller panics saying so (a child can deadlock on a lock another test thread held at
/// the fork, e.g. stderr's while its own panic message is printed), and a child never
/// outlives the thread that forked it (PR_SET_PDEATHSIG), so an orphan cannot keep
/// spinning or hold the harness's output pipes open after the test binary has ended.
#[cfg(test)]
pub fn in_child(
    deadline: std::time::Duration,
    f: impl FnOnce() -> i32,
) -> nix::sys::wait::WaitStatus {
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::ForkResult;
    let parent = nix::unistd::getpid();
    // SAFETY: the test binary is multi-threaded; after fork only this thread exists in the
    // child. The child touches no lock another thread could hold except the allocator's,
    // which glibc re-initialises in the child (its fork handlers), and it never returns
    // into the test harness: it ends with _exit. A lock it does hit anyway (a panic
    // message) costs the deadline below, not a hang.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        ForkResult::Child => {
            // Die with the forking thread; if it is already gone, the parent changed.
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            if nix::unistd::getppid() != parent {
                // SAFETY: _exit ends the process without running anything of the parent's.
                unsafe { libc::_exit(102) }
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: _exit ends the process without running anything of the parent's.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let start = std::time::Instant::now();
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
                    WaitStatus::StillAlive => {}
                    done => return done,
                }
                if start.elapsed() > deadline {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    panic!("child {child} still running after {deadline:?}: killed");
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_stuck_child_is_killed_at_the_deadline() {
        let r = std::panic::catch_unwind(|| {
            super::in_child(Duration::from_millis(300), || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        });
        let msg = r
            .expect_err("the caller is told")
            .downcast::<String>()
            .map(|s| *s)
            .unwrap_or_default();
        assert!(msg.contains("still running after"), "{msg}");
        let ok = super::in_child(Duration::from_secs(60), || 7);
        assert!(matches!(ok, nix::sys::wait::WaitStatus::Exited(_, 7)));
    }
}
