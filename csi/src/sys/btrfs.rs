//! btrfs through its ioctls: subvolumes, snapshots and qgroup limits, with usage read from
//! sysfs (`/sys/fs/btrfs/<fsid>/qgroups/0_<id>/`).
//!
//! Ioctls rather than the `btrfs` tool: CreateVolume on a btrfs pool is a subvolume create
//! plus a limit, two syscalls, where the tool would cost two forks and execs per call and
//! a runtime dependency on btrfs-progs. mkfs stays a tool (sys::mkfs) because it runs once
//! per stage, not per create, and has no ioctl.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// statfs f_type of btrfs.
pub const SUPER_MAGIC: i64 = 0x9123_683E;

const IOCTL_MAGIC: u8 = 0x94;
const PATH_NAME_MAX: usize = 4087;
const SUBVOL_NAME_MAX: usize = 4039;
const SUBVOL_RDONLY: u64 = 1 << 1;
const QUOTA_CTL_ENABLE: u64 = 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;
/// Inode number of every subvolume's root directory.
const FIRST_FREE_OBJECTID: u64 = 256;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// Only the leading fields of btrfs_ioctl_fs_info_args are read; the rest is padding to
/// the kernel's 1024 bytes.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

nix::ioctl_write_ptr!(ioc_subvol_create, IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_destroy, IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_readwrite!(ioc_ino_lookup, IOCTL_MAGIC, 18, InoLookupArgs);
nix::ioctl_write_ptr!(ioc_snap_create_v2, IOCTL_MAGIC, 23, VolArgsV2);
nix::ioctl_read!(ioc_fs_info, IOCTL_MAGIC, 31, FsInfoArgs);
nix::ioctl_readwrite!(ioc_quota_ctl, IOCTL_MAGIC, 40, QuotaCtlArgs);
// The kernel header declares QGROUP_LIMIT as _IOR although it only reads the argument.
nix::ioctl_read!(ioc_qgroup_limit, IOCTL_MAGIC, 43, QgroupLimitArgs);

fn name_into(buf: &mut [u8], name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() < buf.len()
        && !name.contains('/')
        && !name.contains('\0')
        && name != "."
        && name != "..";
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad subvolume name {name:?}"),
        ));
    }
    buf[..name.len()].copy_from_slice(name.as_bytes());
    Ok(())
}

/// Whether the filesystem of `dir` is btrfs.
pub fn is_btrfs(dir: &File) -> io::Result<bool> {
    let st = nix::sys::statfs::fstatfs(dir)?;
    Ok(st.filesystem_type().0 as i64 == SUPER_MAGIC)
}

/// Creates subvolume `name` in directory `parent`.
pub fn create_subvolume(parent: &File, name: &str) -> io::Result<()> {
    let mut args = VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    };
    name_into(&mut args.name, name)?;
    // SAFETY: `parent` is an open directory fd; `args` is a live, fully initialised
    // btrfs_ioctl_vol_args (repr(C), 4096 bytes) with a NUL-terminated name, read by the
    // kernel only for the duration of the call.
    unsafe { ioc_subvol_create(parent.as_raw_fd(), &args) }?;
    Ok(())
}

/// Snapshots subvolume `src` as `name` in directory `parent`, read-only when asked.
pub fn snapshot(src: &File, parent: &File, name: &str, read_only: bool) -> io::Result<()> {
    let mut args = VolArgsV2 {
        fd: src.as_raw_fd() as i64,
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; SUBVOL_NAME_MAX + 1],
    };
    name_into(&mut args.name, name)?;
    // SAFETY: both fds are open for the call; `args` is a fully initialised
    // btrfs_ioctl_vol_args_v2 (repr(C), 4096 bytes, no qgroup_inherit pointer since its
    // flag is not set) that the kernel only reads during the call.
    unsafe { ioc_snap_create_v2(parent.as_raw_fd(), &args) }?;
    Ok(())
}

/// Deletes subvolume (or snapshot) `name` of directory `parent`, with its contents.
/// Returns false when it did not exist.
pub fn delete_subvolume(parent: &File, name: &str) -> io::Result<bool> {
    let mut args = VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    };
    name_into(&mut args.name, name)?;
    // SAFETY: `parent` is an open directory fd; `args` is a fully initialised
    // btrfs_ioctl_vol_args the kernel reads during the call.
    match unsafe { ioc_snap_destroy(parent.as_raw_fd(), &args) } {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The id of the subvolume whose root directory `subvol` is.
pub fn subvolume_id(subvol: &File) -> io::Result<u64> {
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: `subvol` is an open fd; `args` is a live btrfs_ioctl_ino_lookup_args that
    // the kernel reads and writes (treeid, name) only during the call.
    unsafe { ioc_ino_lookup(subvol.as_raw_fd(), &mut args) }?;
    Ok(args.treeid)
}

/// The filesystem's UUID as sysfs names it.
pub fn fsid(dir: &File) -> io::Result<String> {
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 1024 - 32],
    };
    // SAFETY: `dir` is an open fd on the filesystem; `args` is a live, zeroed 1024-byte
    // btrfs_ioctl_fs_info_args (no request flags set) the kernel fills during the call.
    unsafe { ioc_fs_info(dir.as_raw_fd(), &mut args) }?;
    let h: Vec<String> = args.fsid.iter().map(|b| format!("{b:02x}")).collect();
    let h = h.concat();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The sysfs directory of filesystem `fsid`'s qgroups (present while quotas are on).
pub fn qgroups_dir(fsid: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/btrfs/{fsid}/qgroups"))
}

/// Turns on qgroup accounting for the filesystem of `dir` (a rescan of existing data
/// then runs in the background).
pub fn enable_quota(dir: &File) -> io::Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: `dir` is an open fd on the filesystem; `args` is a live
    // btrfs_ioctl_quota_ctl_args the kernel reads and writes during the call.
    unsafe { ioc_quota_ctl(dir.as_raw_fd(), &mut args) }?;
    Ok(())
}

/// Sets the referenced-bytes limit of the subvolume `subvol` (0 = no limit).
pub fn set_limit(subvol: &File, max_referenced: u64) -> io::Result<()> {
    let mut args = QgroupLimitArgs {
        // 0: the qgroup of the subvolume the fd lies in.
        qgroupid: 0,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: if max_referenced == 0 {
                u64::MAX
            } else {
                max_referenced
            },
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: `subvol` is an open fd; `args` is a fully initialised
    // btrfs_ioctl_qgroup_limit_args the kernel reads during the call.
    unsafe { ioc_qgroup_limit(subvol.as_raw_fd(), &mut args) }?;
    Ok(())
}

/// A qgroup's accounting as sysfs shows it (committed transactions only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Qgroup {
    pub referenced: u64,
    pub exclusive: u64,
    /// 0 when unlimited.
    pub max_referenced: u64,
}

/// Reads qgroup `0/<id>` of filesystem `fsid`; None when it does not exist.
pub fn qgroup(fsid: &str, id: u64) -> io::Result<Option<Qgroup>> {
    let dir = qgroups_dir(fsid).join(format!("0_{id}"));
    let read = |f: &str| -> io::Result<u64> {
        let s = std::fs::read_to_string(dir.join(f))?;
        s.trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{f}: {s:?}")))
    };
    let referenced = match read("referenced") {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let limit_flags = read("limit_flags")?;
    let max = read("max_referenced")?;
    Ok(Some(Qgroup {
        referenced,
        exclusive: read("exclusive")?,
        max_referenced: if limit_flags & QGROUP_LIMIT_MAX_RFER != 0 && max != u64::MAX {
            max
        } else {
            0
        },
    }))
}

// The kernel's struct sizes, checked at compile time.
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<FsInfoArgs>() == 1024);
const _: () = assert!(std::mem::size_of::<QgroupLimitArgs>() == 48);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);
