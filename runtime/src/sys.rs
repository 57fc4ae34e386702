//! The crate's only raw syscall: mount_setattr(2), which neither rustix nor nix wraps.
//! Everything else goes through rustix or nix.

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// From <linux/mount.h>.
pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `struct mount_attr` from <linux/mount.h> (MOUNT_ATTR_SIZE_VER0, 32 bytes).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Propagation types for [`set_mount_attrs`]; the values are the MS_* flags the
/// kernel expects in `mount_attr.propagation`.
#[derive(Clone, Copy, Debug)]
pub enum Propagation {
    Private,
    Slave,
    Shared,
    Unbindable,
}

impl Propagation {
    fn flag(self) -> u64 {
        match self {
            Propagation::Private => libc::MS_PRIVATE,
            Propagation::Slave => libc::MS_SLAVE,
            Propagation::Shared => libc::MS_SHARED,
            Propagation::Unbindable => libc::MS_UNBINDABLE,
        }
    }
}

/// Sets `attr_set` flags and a propagation type on the mount tree that `mount_fd`
/// (from open_tree or fsmount, or an O_PATH fd of a mount's root) refers to,
/// recursively.
pub fn set_mount_attrs(
    mount_fd: impl AsFd,
    attr_set: u64,
    propagation: Option<Propagation>,
) -> Result<(), Errno> {
    set_mount_attrs_on(mount_fd, attr_set, propagation, true)
}

/// [`set_mount_attrs`] on that mount alone unless `recursive`.
pub fn set_mount_attrs_on(
    mount_fd: impl AsFd,
    attr_set: u64,
    propagation: Option<Propagation>,
    recursive: bool,
) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set,
        propagation: propagation.map(Propagation::flag).unwrap_or(0),
        ..MountAttr::default()
    };
    let fd = mount_fd.as_fd();
    // SAFETY: `fd` is borrowed for the whole call so it stays open; the path is a
    // NUL-terminated empty string literal; `attr` lives on our stack until the call
    // returns and its size is passed as the kernel's versioned-struct contract asks.
    // The kernel only reads `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH | if recursive { AT_RECURSIVE } else { 0 },
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}
