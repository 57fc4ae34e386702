//! The crate's only `unsafe`: process forking for crash and concurrency tests.

/// Runs `f` in a forked child and returns its wait status. The child leaves with
/// `_exit(f())` so no destructor, atexit handler or buffered stdio of the parent runs twice.
#[cfg(test)]
pub fn in_child(f: impl FnOnce() -> i32) -> nix::sys::wait::WaitStatus {
    use nix::unistd::ForkResult;
    // SAFETY: the test binary is multi-threaded; after fork only this thread exists in the
    // child. The child touches no lock another thread could hold except the allocator's,
    // which glibc re-initialises in the child (its fork handlers), and it never returns
    // into the test harness: it ends with _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: _exit ends the process without running anything of the parent's.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => nix::sys::wait::waitpid(child, None).expect("waitpid"),
    }
}
