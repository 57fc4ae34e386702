//! The node agent's only unsafe code.

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

/// Registers a pidfd with tokio's reactor for readability (the process ended).
pub fn async_pidfd(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `register_with_interest` requires that the fd stays open and is not
    // replaced while registered. The AsyncFd takes ownership of the OwnedFd, so the fd
    // is closed only when the AsyncFd (and with it the registration) is dropped, and
    // nothing else holds the descriptor to close or dup2 over it.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
