//! Project quotas on xfs and ext4: a directory's project id and inherit flag
//! (FS_IOC_FSGETXATTR/FSSETXATTR) and the project's limits and usage through
//! quotactl_fd(2) on the pool directory, so that no block device path is needed.
//!
//! xfs speaks the XFS quota commands (Q_XSETQLIM/Q_XGETQUOTA, 512-byte basic blocks);
//! ext4 the generic ones (Q_SETQUOTA/Q_GETQUOTA, 1 KiB blocks and bytes used).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// statfs f_type values.
pub const XFS_MAGIC: i64 = 0x5846_5342;
pub const EXT4_MAGIC: i64 = 0xEF53;

const PRJQUOTA: libc::c_int = 2;
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

const fn xqm_cmd(n: libc::c_int) -> libc::c_int {
    ((b'X' as libc::c_int) << 8) + n
}
const Q_XSETQLIM: libc::c_int = xqm_cmd(4);
const Q_XGETQUOTA: libc::c_int = xqm_cmd(3);
const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: i8 = 2;
const FS_DQ_ISOFT: u16 = 1 << 0;
const FS_DQ_IHARD: u16 = 1 << 1;
const FS_DQ_BSOFT: u16 = 1 << 2;
const FS_DQ_BHARD: u16 = 1 << 3;
/// xfs counts in 512-byte basic blocks; the generic interface limits in 1 KiB blocks.
const XFS_BB: u64 = 512;
const QIF_BLOCK: u64 = 1024;

#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

#[repr(C)]
#[derive(Default)]
struct FsDiskQuota {
    version: i8,
    flags: i8,
    fieldmask: u16,
    id: u32,
    blk_hardlimit: u64,
    blk_softlimit: u64,
    ino_hardlimit: u64,
    ino_softlimit: u64,
    bcount: u64,
    icount: u64,
    itimer: i32,
    btimer: i32,
    iwarns: u16,
    bwarns: u16,
    itimer_hi: i8,
    btimer_hi: i8,
    rtbtimer_hi: i8,
    padding2: i8,
    rtb_hardlimit: u64,
    rtb_softlimit: u64,
    rtbcount: u64,
    rtbtimer: i32,
    rtbwarns: u16,
    padding3: i16,
    padding4: [u8; 8],
}

const _: () = assert!(std::mem::size_of::<FsXattr>() == 28);
const _: () = assert!(std::mem::size_of::<FsDiskQuota>() == 112);

nix::ioctl_read!(ioc_fsgetxattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(ioc_fssetxattr, b'X', 32, FsXattr);

/// Which quota interface the pool's filesystem speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Xfs,
    Ext4,
}

/// The filesystem of `dir`, if it can have project quotas at all.
pub fn flavor(dir: &File) -> io::Result<Option<Flavor>> {
    let st = nix::sys::statfs::fstatfs(dir)?;
    Ok(match st.filesystem_type().0 as i64 {
        XFS_MAGIC => Some(Flavor::Xfs),
        EXT4_MAGIC => Some(Flavor::Ext4),
        _ => None,
    })
}

/// The project id of the file or directory `f`.
pub fn project_id(f: &File) -> io::Result<u32> {
    let mut x = FsXattr::default();
    // SAFETY: `f` is an open fd; `x` is a live 28-byte struct fsxattr the kernel fills
    // during the call.
    unsafe { ioc_fsgetxattr(f.as_raw_fd(), &mut x) }?;
    Ok(x.projid)
}

/// Puts directory `dir` in project `id` with the inherit flag, so that everything made
/// beneath it is charged to the project.
pub fn set_project(dir: &File, id: u32) -> io::Result<()> {
    let mut x = FsXattr::default();
    // SAFETY: as in `project_id`.
    unsafe { ioc_fsgetxattr(dir.as_raw_fd(), &mut x) }?;
    x.projid = id;
    x.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: `dir` is an open fd; `x` is a fully initialised struct fsxattr (as the
    // kernel just returned it, with two fields changed) read during the call.
    unsafe { ioc_fssetxattr(dir.as_raw_fd(), &x) }?;
    Ok(())
}

fn quotactl_fd(fs: &File, cmd: libc::c_int, id: u32, addr: *mut libc::c_void) -> io::Result<()> {
    let cmd = libc::QCMD(cmd, PRJQUOTA);
    // SAFETY: quotactl_fd(fd, cmd, id, addr): `fs` is open for the call; `addr` points
    // to a live struct of the type `cmd` reads or writes (the callers pair them), or is
    // null for commands that take none.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fs.as_raw_fd(),
            cmd as libc::c_uint,
            id as libc::c_uint,
            addr,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether project quota accounting is on for the filesystem of `fs`; Err with the
/// kernel's answer otherwise (ESRCH: off; ENOSYS/EINVAL/ENOTTY: not supported).
pub fn probe(fs: &File) -> io::Result<()> {
    let mut info: [u64; 3] = [0; 3];
    // Q_GETINFO fills struct if_dqinfo (two u64 and two u32: 24 bytes).
    quotactl_fd(fs, libc::Q_GETINFO, 0, info.as_mut_ptr().cast())
}

/// A project's limits and usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub bytes_limit: u64,
    pub bytes_used: u64,
    pub inodes_limit: u64,
    pub inodes_used: u64,
}

/// A struct if_dqblk with block limits `blocks` (1 KiB) and validity flags `valid`.
fn dqblk(blocks: u64, valid: u32) -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: blocks,
        dqb_bsoftlimit: blocks,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: valid,
    }
}

/// Sets project `id`'s hard (and soft) byte limit; 0 removes it.
pub fn set_limit(fs: &File, flavor: Flavor, id: u32, bytes: u64) -> io::Result<()> {
    match flavor {
        Flavor::Xfs => {
            let mut q = FsDiskQuota {
                version: FS_DQUOT_VERSION,
                flags: FS_PROJ_QUOTA,
                fieldmask: FS_DQ_BHARD | FS_DQ_BSOFT | FS_DQ_IHARD | FS_DQ_ISOFT,
                id,
                blk_hardlimit: bytes.div_ceil(XFS_BB),
                blk_softlimit: bytes.div_ceil(XFS_BB),
                ..Default::default()
            };
            quotactl_fd(fs, Q_XSETQLIM, id, (&raw mut q).cast())
        }
        Flavor::Ext4 => {
            let mut q = dqblk(bytes.div_ceil(QIF_BLOCK), libc::QIF_LIMITS);
            quotactl_fd(fs, libc::Q_SETQUOTA, id, (&raw mut q).cast())
        }
    }
}

/// Reads project `id`'s limits and usage.
pub fn get(fs: &File, flavor: Flavor, id: u32) -> io::Result<Quota> {
    match flavor {
        Flavor::Xfs => {
            let mut q = FsDiskQuota::default();
            quotactl_fd(fs, Q_XGETQUOTA, id, (&raw mut q).cast())?;
            Ok(Quota {
                bytes_limit: q.blk_hardlimit * XFS_BB,
                bytes_used: q.bcount * XFS_BB,
                inodes_limit: q.ino_hardlimit,
                inodes_used: q.icount,
            })
        }
        Flavor::Ext4 => {
            let mut q = dqblk(0, 0);
            quotactl_fd(fs, libc::Q_GETQUOTA, id, (&raw mut q).cast())?;
            Ok(Quota {
                bytes_limit: q.dqb_bhardlimit * QIF_BLOCK,
                bytes_used: q.dqb_curspace,
                inodes_limit: q.dqb_ihardlimit,
                inodes_used: q.dqb_curinodes,
            })
        }
    }
}
