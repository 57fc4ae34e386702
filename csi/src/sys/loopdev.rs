//! Loop devices through the `/dev/loop-control` and `/dev/loopN` ioctls (linux/loop.h).
//!
//! libc does not export the loop ioctls or `struct loop_config`, so they are declared here
//! from the kernel UAPI header.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_SET_DIRECT_IO: libc::c_ulong = 0x4C08;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` from linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from linux/loop.h (LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

impl LoopInfo64 {
    fn new(flags: u32, tag: &str) -> Self {
        let mut name = [0u8; LO_NAME_SIZE];
        let bytes = tag.as_bytes();
        let n = bytes.len().min(LO_NAME_SIZE - 1);
        name[..n].copy_from_slice(&bytes[..n]);
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: name,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// How to attach a backing file.
#[derive(Debug, Clone, Copy)]
pub struct AttachOptions {
    /// Detach automatically when the last opener (the mount) goes away.
    pub autoclear: bool,
    pub direct_io: bool,
    /// The device refuses writes (the backing file may be opened read-only).
    pub read_only: bool,
}

/// An attached loop device. The open handle keeps an autoclear device alive until the
/// caller has mounted it; dropping it before then detaches the device again.
#[derive(Debug)]
pub struct Attached {
    pub number: u32,
    pub path: PathBuf,
    pub handle: File,
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Path of loop device `n`.
pub fn device_path(n: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{n}"))
}

/// Attaches `backing` to a free loop device. `tag` lands in `lo_file_name` so that an
/// operator running `losetup -l` sees which volume a device belongs to.
pub fn attach(backing: &File, opts: AttachOptions, tag: &str) -> io::Result<Attached> {
    let ctl = open_rw(Path::new("/dev/loop-control"))?;
    let mut flags = 0;
    if opts.autoclear {
        flags |= LO_FLAGS_AUTOCLEAR;
    }
    if opts.direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    if opts.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    // Another process may grab the device between GET_FREE and CONFIGURE (EBUSY): retry
    // with a fresh number a bounded number of times.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..64 {
        // SAFETY: `ctl` is an open fd for the whole call; LOOP_CTL_GET_FREE takes no
        // argument and returns a device number, touching none of our memory.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as u32;
        let path = device_path(n);
        let dev = match open_rw(&path) {
            Ok(f) => f,
            // udev may not have created the node yet, or another process removed the
            // device (LOOP_CTL_REMOVE) after GET_FREE handed it out (ENXIO): try another.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENXIO) =>
            {
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64::new(flags, tag),
            reserved: [0; 8],
        };
        // SAFETY: `dev` and `backing` stay open during the call; `config` is a fully
        // initialised `struct loop_config` that the kernel only reads.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
        if rc == 0 {
            return Ok(Attached {
                number: n,
                path,
                handle: dev,
            });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Taken, or removed, by another process since GET_FREE.
            Some(libc::EBUSY) | Some(libc::ENXIO) => {
                last = err;
                continue;
            }
            // Kernels before 5.8 lack LOOP_CONFIGURE: the two-step way.
            Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                return attach_legacy(dev, n, backing, flags, tag);
            }
            _ => return Err(err),
        }
    }
    Err(last)
}

fn attach_legacy(dev: File, n: u32, backing: &File, flags: u32, tag: &str) -> io::Result<Attached> {
    // SAFETY: both fds are open for the call; LOOP_SET_FD takes the backing fd by value.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD as _, backing.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let info = LoopInfo64::new(flags & !LO_FLAGS_DIRECT_IO, tag);
    // SAFETY: `info` is a fully initialised `struct loop_info64` the kernel only reads.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64 as _, &info) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        let _ = clear_fd(&dev);
        return Err(err);
    }
    if flags & LO_FLAGS_DIRECT_IO != 0 {
        set_direct_io_fd(&dev, true)?;
    }
    Ok(Attached {
        number: n,
        path: device_path(n),
        handle: dev,
    })
}

fn clear_fd(dev: &File) -> io::Result<()> {
    // SAFETY: `dev` is open for the call; LOOP_CLR_FD takes no argument.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches loop device `n`. Not attached (ENXIO) counts as done. With a mounted
/// filesystem on it the kernel only marks it autoclear (it detaches on umount).
pub fn detach(n: u32) -> io::Result<()> {
    let dev = match open_rw(&device_path(n)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match clear_fd(&dev) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        other => other,
    }
}

/// Detaches the device behind `handle`, an fd we hold open: while it is open the kernel
/// cannot autoclear the device and hand its number to someone else, so this never
/// detaches another process's device.
pub fn detach_handle(handle: &File) -> io::Result<()> {
    match clear_fd(handle) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        other => other,
    }
}

/// Detaches loop device `n` only if it is still backed by `backing` and is not an
/// autoclear device. An autoclear device detaches by itself when its last user closes it,
/// and that teardown runs asynchronously (the kernel's rundown work): clearing it
/// ourselves could land after the number was handed to another process. For the others
/// the device is opened first and its backing file checked while we hold it, so a number
/// freed and reused in the meantime is left alone. Returns whether it detached.
pub fn detach_if_backed_by(n: u32, backing: &Path) -> io::Result<bool> {
    let dev = match open_rw(&device_path(n)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENXIO) => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    // Autoclear first, backing second: an autoclear device may be torn down and rebound
    // by someone else between two reads; a plain one cannot while we hold it open, and
    // nobody but us binds our image.
    if autoclear(n) {
        return Ok(false);
    }
    let current = std::fs::read_to_string(format!("/sys/block/loop{n}/loop/backing_file"))
        .unwrap_or_default();
    if Path::new(current.trim_end_matches('\n')) != backing {
        return Ok(false);
    }
    detach_handle(&dev)?;
    Ok(true)
}

/// Makes the kernel re-read the backing file's size after it grew.
pub fn refresh_capacity(n: u32) -> io::Result<()> {
    let dev = open_rw(&device_path(n))?;
    // SAFETY: `dev` is open for the call; LOOP_SET_CAPACITY reads no argument.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY as _, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_direct_io_fd(dev: &File, on: bool) -> io::Result<()> {
    // SAFETY: `dev` is open for the call; LOOP_SET_DIRECT_IO takes an integer by value.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_SET_DIRECT_IO as _,
            on as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Switches direct I/O on or off on an attached device.
pub fn set_direct_io(n: u32, on: bool) -> io::Result<()> {
    set_direct_io_fd(&open_rw(&device_path(n))?, on)
}

/// Whether device `n` detaches by itself on last close (sysfs `loop/autoclear`).
pub fn autoclear(n: u32) -> bool {
    std::fs::read_to_string(format!("/sys/block/loop{n}/loop/autoclear"))
        .is_ok_and(|s| s.trim() == "1")
}

/// Whether device `n` currently does direct I/O (sysfs `loop/dio`).
pub fn direct_io(n: u32) -> io::Result<bool> {
    let s = std::fs::read_to_string(format!("/sys/block/loop{n}/loop/dio"))?;
    Ok(s.trim() == "1")
}

/// Size in bytes the kernel sees for device `n`.
pub fn size_bytes(n: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/sys/block/loop{n}/size"))?;
    let sectors: u64 = s
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad sysfs size"))?;
    Ok(sectors * 512)
}

/// One attached loop device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    pub number: u32,
    pub file: PathBuf,
    /// The backing file was unlinked while attached (sysfs appends " (deleted)").
    pub deleted: bool,
}

/// Every attached loop device with its backing file, read from /sys/block/loop*/loop.
pub fn list() -> io::Result<Vec<Backing>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(num) = name.to_str().and_then(|s| s.strip_prefix("loop")) else {
            continue;
        };
        let Ok(number) = num.parse::<u32>() else {
            continue;
        };
        // Detached devices have no loop/ directory or an empty backing_file.
        let Ok(raw) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let raw = raw.trim_end_matches('\n');
        if raw.is_empty() {
            continue;
        }
        let (file, deleted) = match raw.strip_suffix(" (deleted)") {
            Some(f) => (f, true),
            None => (raw, false),
        };
        out.push(Backing {
            number,
            file: PathBuf::from(file),
            deleted,
        });
    }
    out.sort_by_key(|b| b.number);
    Ok(out)
}

/// The loop devices whose backing file is `file`.
pub fn find_by_backing(file: &Path) -> io::Result<Vec<u32>> {
    Ok(list()?
        .into_iter()
        .filter(|b| !b.deleted && b.file == file)
        .map(|b| b.number)
        .collect())
}

/// The loop number of a device path like /dev/loop7.
pub fn number_of(device: &Path) -> Option<u32> {
    device.to_str()?.strip_prefix("/dev/loop")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Unmounts and detaches whatever the test attached, also when it panics.
    struct Cleanup {
        mounts: Vec<PathBuf>,
        devices: Vec<u32>,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for m in self.mounts.iter().rev() {
                let _ = crate::sys::mount::umount_all(m);
            }
            for n in &self.devices {
                let _ = detach(*n);
            }
        }
    }

    #[test]
    fn attach_grow_mount_freeze_detach() {
        if !testkit::require_root("sys::loopdev::attach_grow_mount_freeze_detach") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("v.img");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&image)
            .unwrap();
        file.set_len(64 << 20).unwrap();
        let mut clean = Cleanup {
            mounts: Vec::new(),
            devices: Vec::new(),
        };
        let mut dev = attach(
            &file,
            AttachOptions {
                autoclear: false,
                direct_io: false,
                read_only: false,
            },
            "strata:test",
        )
        .unwrap();
        clean.devices.push(dev.number);
        let canonical = image.canonicalize().unwrap();
        assert!(find_by_backing(&canonical).unwrap().contains(&dev.number));
        assert_eq!(size_bytes(dev.number).unwrap(), 64 << 20);

        // Direct I/O can be switched both ways on an attached device.
        set_direct_io(dev.number, true).unwrap();
        assert!(direct_io(dev.number).unwrap());
        set_direct_io(dev.number, false).unwrap();
        assert!(!direct_io(dev.number).unwrap());

        assert_eq!(
            crate::sys::fs::probe(&mut dev.handle).unwrap(),
            crate::sys::fs::Probe::Empty
        );
        crate::sys::mkfs::mkfs(&dev.path, "ext4").unwrap();
        match crate::sys::fs::probe(&mut dev.handle).unwrap() {
            crate::sys::fs::Probe::Ext4 { size_bytes } => assert_eq!(size_bytes, 64 << 20),
            other => panic!("expected ext4, found {other:?}"),
        }

        // Grow the file, then the device, then the filesystem (offline: no capability).
        file.set_len(96 << 20).unwrap();
        refresh_capacity(dev.number).unwrap();
        assert_eq!(size_bytes(dev.number).unwrap(), 96 << 20);
        crate::sys::mkfs::grow_ext4_offline(&dev.path).unwrap();
        match crate::sys::fs::probe(&mut dev.handle).unwrap() {
            crate::sys::fs::Probe::Ext4 { size_bytes } => assert_eq!(size_bytes, 96 << 20),
            other => panic!("expected ext4, found {other:?}"),
        }

        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let opts = crate::sys::mount::parse_options(&["noatime".into()]).unwrap();
        crate::sys::mount::mount_fs(&dev.path, &mnt, "ext4", &opts).unwrap();
        clean.mounts.push(mnt.clone());
        assert!(crate::sys::mount::stat(&mnt).unwrap().mount_root);
        let info = crate::sys::mountinfo::read().unwrap();
        let m = crate::sys::mountinfo::mounted_at(&info, &mnt);
        assert_eq!(m.unwrap().source, dev.path.to_string_lossy());

        crate::sys::fsfreeze::freeze(&mnt).unwrap();
        crate::sys::fsfreeze::thaw(&mnt).unwrap();
        crate::sys::fsfreeze::thaw(&mnt).unwrap();

        // A read-only bind mount refuses writes.
        let bind = dir.path().join("bind");
        std::fs::create_dir(&bind).unwrap();
        crate::sys::mount::bind(&mnt, &bind, true, nix::mount::MsFlags::empty()).unwrap();
        clean.mounts.push(bind.clone());
        let err = std::fs::write(bind.join("x"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert_eq!(crate::sys::mount::umount_all(&bind).unwrap(), 1);
        assert!(
            !crate::sys::mount::umount(&bind).unwrap(),
            "second umount finds nothing"
        );

        assert_eq!(crate::sys::mount::umount_all(&mnt).unwrap(), 1);
        drop(dev);
        let n = clean.devices[0];
        detach(n).unwrap();
        detach(n).unwrap();
        // Cleared while another opener (udev probing the device) holds it, the kernel
        // detaches it when that one closes: wait for that, within reason.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while find_by_backing(&canonical).unwrap().contains(&n) {
            assert!(
                std::time::Instant::now() < deadline,
                "loop{n} still attached"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn autoclear_device_goes_away_with_its_last_user() {
        if !testkit::require_root("sys::loopdev::autoclear_device_goes_away_with_its_last_user") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.img");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&image)
            .unwrap();
        file.set_len(8 << 20).unwrap();
        let dev = attach(
            &file,
            AttachOptions {
                autoclear: true,
                direct_io: false,
                read_only: false,
            },
            "strata:test",
        )
        .unwrap();
        let clean = Cleanup {
            mounts: Vec::new(),
            devices: vec![dev.number],
        };
        let canonical = image.canonicalize().unwrap();
        assert!(find_by_backing(&canonical).unwrap().contains(&dev.number));
        drop(dev);
        testkit::wait_for(
            "autoclear detach",
            std::time::Duration::from_secs(10),
            || {
                (!find_by_backing(&canonical)
                    .unwrap()
                    .contains(&clean.devices[0]))
                .then_some(())
            },
        );
    }
}
