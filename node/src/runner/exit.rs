//! Waiting for a container's init process to end, through a pidfd polled by tokio.
//!
//! strata-node is the child subreaper of its containers (their `strata-runtime create`
//! parent exits, so their init is re-parented to us): `waitid` on the pidfd reaps it
//! and gives the exit status. A container adopted after a restart of strata-node is
//! not our child; its pidfd still reports the end, but the exit status is lost.

use std::os::fd::{AsFd, OwnedFd};

use rustix::process::{WaitId, WaitIdOptions};

/// Resolves when the process ends: its exit code (128 + signal when killed), or None
/// when it is not our child and the code cannot be known.
pub async fn wait(pidfd: OwnedFd) -> Option<i32> {
    let fd = match crate::sys::async_pidfd(pidfd) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "registering a pidfd");
            return None;
        }
    };
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "polling a pidfd");
                return None;
            }
        };
        match rustix::process::waitid(
            WaitId::PidFd(fd.get_ref().as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(st)) => {
                if let Some(code) = st.exit_status() {
                    return Some(code);
                }
                if let Some(sig) = st.terminating_signal() {
                    return Some(128 + sig);
                }
                guard.clear_ready();
            }
            // Readable means it has ended; no status yet would be a spurious wake.
            Ok(None) => guard.clear_ready(),
            Err(rustix::io::Errno::CHILD) => return None,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "waitid on a pidfd");
                return None;
            }
        }
    }
}
