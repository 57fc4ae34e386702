//! The node agent's only unsafe code: registering a pidfd with tokio, the loopback
//! ioctls of the pod infra process, and handing freed heap back to the kernel.

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

/// Sets IFF_UP on `lo` in the calling thread's network namespace (what `ip link set lo
/// up` does), through the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls on a datagram socket.
pub fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // Any socket of the namespace serves for interface ioctls; binding the wildcard
    // address needs no interface up.
    let sock = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers and
    // addresses) for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is an open socket for the whole call, and `ifr` is a valid, writable
    // ifreq naming a NUL-terminated interface; SIOCGIFFLAGS writes only its flags field.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the union's `ifru_flags` member, so reading and
    // updating that member reads initialized memory.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// sethostname(2) in the calling process's UTS namespace.
pub fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which stay borrowed for the
    // call; the kernel copies at most `len` bytes and keeps no reference.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the free pages of every malloc arena back to the kernel. glibc returns only the
/// top of the main heap by itself: after a hundred pods start at once, the freed
/// buffers of that burst stay resident (88 MiB against 64 after a trim, measured).
pub fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointer; it only walks and trims glibc's own
    // arenas, under their locks, and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
