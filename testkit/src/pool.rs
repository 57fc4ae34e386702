//! Pool and driver fixtures for the CSI driver's black-box tests and benchmark.
//!
//! [`LoopPool`] makes a pool directory in a temp dir: plain, or a loop-backed xfs (reflink=1)
//! or ext4 mounted there so that "pool full" and reflink paths are real. [`DriverProcess`]
//! (feature `csi`) runs the `strata-csi` binary on a unix socket in a temp dir of its own and
//! hands out connected tonic clients.
//!
//! Both clean up in `Drop`, so cleanup also runs when a test panics: every mount beneath the
//! temp dir is unmounted (deepest first, from /proc/self/mountinfo), every loop device whose
//! backing file lies beneath it is detached (from /sys/block/loop*/loop/backing_file), and only
//! then is the dir removed. A dir that still holds a mount is left in place rather than
//! recursively deleted through the mount.
//!
//! Knows nothing of the driver's internals: only its command line and the CSI gRPC API.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::{MntFlags, MsFlags};

/// One line of /proc/self/mountinfo (the workspace's one mountinfo parser).
pub type MountEntry = strata_mountinfo::Mount;

/// Parses /proc/self/mountinfo.
pub fn mountinfo() -> Vec<MountEntry> {
    strata_mountinfo::read().unwrap_or_else(|e| panic!("{e}"))
}

/// Mounts whose mount point is `root` or lies beneath it, deepest first.
pub fn mounts_under(root: &Path) -> Vec<MountEntry> {
    // Among equal depth, the later (stacked on top) first.
    strata_mountinfo::under(&mountinfo(), root)
        .into_iter()
        .cloned()
        .collect()
}

/// The mount at exactly `path` (the topmost one if several are stacked there).
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    strata_mountinfo::mounted_at(&mountinfo(), path).cloned()
}

/// A bound loop device as the kernel reports it in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// `loopN`.
    pub name: String,
    pub backing_file: PathBuf,
    /// Direct I/O on (`/sys/block/loopN/loop/dio`).
    pub direct_io: bool,
    pub autoclear: bool,
    /// Size in bytes (`/sys/block/loopN/size` × 512).
    pub size_bytes: u64,
}

impl LoopDevice {
    /// The loop device named `loopN` or `/dev/loopN`, if it is bound to a file.
    pub fn by_name(name: &str) -> Option<LoopDevice> {
        let name = name.strip_prefix("/dev/").unwrap_or(name);
        let sys = Path::new("/sys/block").join(name);
        let backing = fs::read_to_string(sys.join("loop/backing_file")).ok()?;
        let read = |f: &str| {
            fs::read_to_string(sys.join(f))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Some(LoopDevice {
            device: Path::new("/dev").join(name),
            name: name.to_owned(),
            backing_file: PathBuf::from(backing.trim_end_matches('\n')),
            direct_io: read("loop/dio") == "1",
            autoclear: read("loop/autoclear") == "1",
            size_bytes: read("size").parse::<u64>().unwrap_or(0) * 512,
        })
    }
}

/// Every bound loop device.
pub fn loop_devices() -> Vec<LoopDevice> {
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"))
        .filter_map(|n| LoopDevice::by_name(&n))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Loop devices whose backing file lies beneath `root`.
///
/// The kernel reports a deleted backing file as `PATH (deleted)`; such a device still counts.
pub fn loops_backed_under(root: &Path) -> Vec<LoopDevice> {
    loop_devices()
        .into_iter()
        .filter(|l| {
            let s = l.backing_file.to_string_lossy();
            let s = s.strip_suffix(" (deleted)").unwrap_or(&s);
            Path::new(s).starts_with(root)
        })
        .collect()
}

/// Detaches a loop device. A busy device (still mounted) is marked autoclear by the kernel
/// and goes away at its last close.
pub fn detach_loop(device: &Path) -> io::Result<()> {
    run(Command::new("losetup").arg("-d").arg(device))
}

/// Detaches `device` only if its backing file lies beneath `root`, without racing other
/// users of loop devices: our open descriptor pins the device's binding (the kernel cannot
/// unbind it, so nobody can rebind it, before our last close), so the backing file checked
/// is the one detached. Checking first and detaching by number later could detach a device
/// that was freed meanwhile and taken by another process. Returns whether it was ours.
pub fn detach_loop_if_backed_under(device: &Path, root: &Path) -> io::Result<bool> {
    let pin = match fs::File::open(device) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let ours = device
        .to_str()
        .and_then(LoopDevice::by_name)
        .is_some_and(|l| {
            let s = l.backing_file.to_string_lossy();
            Path::new(s.strip_suffix(" (deleted)").unwrap_or(&s)).starts_with(root)
        });
    if ours {
        // With our descriptor open the kernel marks the device autoclear; it unbinds when
        // the pin below is closed.
        detach_loop(device)?;
    }
    drop(pin);
    Ok(ours)
}

/// Unmounts everything beneath `root` and detaches every loop device backed beneath it,
/// repeating while that makes progress (a pool fs cannot be unmounted while loop devices hold
/// its files open). Returns what is still left.
pub fn cleanup_under(root: &Path) -> (Vec<MountEntry>, Vec<LoopDevice>) {
    for round in 0..6 {
        let mounts = mounts_under(root);
        let loops = loops_backed_under(root);
        if mounts.is_empty() && loops.is_empty() {
            return (mounts, loops);
        }
        // The last rounds detach lazily: a mount kept busy by a leaked process must not keep
        // the temp dir alive forever.
        let flags = if round >= 4 {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        for m in &mounts {
            let _ = nix::mount::umount2(&m.mount_point, flags);
        }
        for l in &loops {
            let _ = detach_loop_if_backed_under(&l.device, root);
        }
        // Detaching a still-mounted loop device only marks it autoclear, and the kernel
        // releases it a moment later: wait, bounded, for progress before the next round.
        let before = mounts.len() + loops.len();
        let _ = try_wait_for(std::time::Duration::from_millis(500), || {
            let now = mounts_under(root).len() + loops_backed_under(root).len();
            (now < before).then_some(())
        });
    }
    (mounts_under(root), loops_backed_under(root))
}

fn try_wait_for<T>(
    deadline: std::time::Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// Runs a helper command, turning a non-zero exit into an error that carries its stderr.
fn run(cmd: &mut Command) -> io::Result<()> {
    run_output(cmd).map(drop)
}

fn run_output(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A fresh, canonical, uniquely named dir under the system temp dir.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = fs::canonicalize(std::env::temp_dir()).expect("canonicalize temp dir");
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("{prefix}-{}-{n}-{nanos:x}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
}

/// Cleans `dir` and removes it, refusing to recurse through a mount that would not go away.
fn cleanup_and_remove(dir: &Path) {
    let (mounts, loops) = cleanup_under(dir);
    if !mounts.is_empty() || !loops.is_empty() {
        eprintln!(
            "testkit: left {} in place: mounts {:?}, loop devices {:?}",
            dir.display(),
            mounts.iter().map(|m| &m.mount_point).collect::<Vec<_>>(),
            loops.iter().map(|l| &l.device).collect::<Vec<_>>()
        );
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!("testkit: removing {}: {e}", dir.display());
    }
}

/// Regular files, symlinks and device nodes beneath `dir`, sorted, descending into the
/// directories `enter` accepts (never the fs's own `lost+found`).
fn walk_files(dir: &Path, enter: &mut dyn FnMut(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if e.file_name() != OsStr::new("lost+found") && enter(&p) {
                walk_files(&p, enter, out);
            }
        } else if ft.is_file() || ft.is_symlink() || ft.is_block_device() {
            out.push(p);
        }
    }
    out.sort();
}

/// What backs a [`LoopPool`]'s directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFs {
    /// A plain directory on the host filesystem.
    Dir,
    /// A loop-backed xfs with reflink=1 of the given size in bytes (xfs needs ≥ 300 MiB).
    Xfs(u64),
    /// A loop-backed ext4 of the given size in bytes.
    Ext4(u64),
    /// A loop-backed btrfs of the given size in bytes (at least 128 MiB).
    Btrfs(u64),
    /// A loop-backed xfs mounted with `prjquota` (the mount fails on a kernel without xfs
    /// quota support).
    XfsPrjquota(u64),
    /// A loop-backed ext4 made with the `quota,project` features and mounted with
    /// `prjquota` (the mount fails on a kernel without ext4 quota support).
    Ext4Prjquota(u64),
}

/// A pool directory in a temp dir of its own; `Drop` removes every trace of it.
#[derive(Debug)]
pub struct LoopPool {
    root: PathBuf,
    pool: PathBuf,
    fs: PoolFs,
}

impl LoopPool {
    /// Makes a pool of the given kind. Loop-backed kinds need root.
    pub fn new(fs: PoolFs) -> io::Result<LoopPool> {
        let root = unique_temp_dir("strata-pool");
        let pool = root.join("pool");
        // From here on `Drop` owns the cleanup, also for a half-built pool.
        let this = LoopPool {
            root,
            pool: pool.clone(),
            fs,
        };
        fs::create_dir(&pool)?;
        let (size, mkfs, fs_type, data): (u64, &[&str], &str, Option<&str>) = match fs {
            PoolFs::Dir => return Ok(this),
            PoolFs::Xfs(size) => (
                size,
                &["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
                "xfs",
                None,
            ),
            PoolFs::Ext4(size) => (size, &["mkfs.ext4", "-q", "-F"], "ext4", None),
            PoolFs::Btrfs(size) => (size, &["mkfs.btrfs", "-q", "-f"], "btrfs", None),
            PoolFs::XfsPrjquota(size) => (
                size,
                &["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
                "xfs",
                Some("prjquota"),
            ),
            PoolFs::Ext4Prjquota(size) => (
                size,
                &["mkfs.ext4", "-q", "-F", "-O", "quota,project"],
                "ext4",
                Some("prjquota"),
            ),
        };
        let backing = this.root.join("backing.img");
        fs::File::create(&backing)?.set_len(size)?;
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&backing))?;
        // Another process on the machine may detach a loop device by number just after we
        // got it (a buggy driver's stale record): check the device is still ours, and retry
        // with a fresh device if the mount fails because it was taken away.
        let mut last = None;
        for _ in 0..5 {
            // losetup itself races with other processes taking or removing devices between
            // its LOOP_CTL_GET_FREE and the setup (ENXIO, EBUSY): that is worth a retry too.
            let device = match run_output(
                Command::new("losetup")
                    .args(["--find", "--show"])
                    .arg(&backing),
            ) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("testkit: making pool {}: {e}; retrying", pool.display());
                    last = Some(e);
                    continue;
                }
            };
            let device = PathBuf::from(device.trim());
            let ours = || {
                device
                    .to_str()
                    .and_then(LoopDevice::by_name)
                    .is_some_and(|l| l.backing_file == backing)
            };
            let mounted = if ours() {
                nix::mount::mount(Some(&device), &pool, Some(fs_type), MsFlags::empty(), data)
                    .map_err(|e| io::Error::other(format!("mount {}: {e}", device.display())))
            } else {
                Err(io::Error::other(format!(
                    "{} was detached by someone else before the mount",
                    device.display()
                )))
            };
            // Detaching a mounted loop device marks it autoclear: it then vanishes with the
            // unmount, even if this process dies before `Drop` runs. Only while it is ours.
            let _ = detach_loop_if_backed_under(&device, &this.root);
            match mounted {
                Ok(()) => return Ok(this),
                Err(e) => {
                    eprintln!("testkit: making pool {}: {e}; retrying", pool.display());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no attempt")))
    }

    /// A plain directory pool (no root needed).
    pub fn dir() -> LoopPool {
        LoopPool::new(PoolFs::Dir).expect("make dir pool")
    }

    /// A loop-backed xfs pool with reflink, `size` bytes (at least 300 MiB).
    pub fn xfs(size: u64) -> LoopPool {
        LoopPool::new(PoolFs::Xfs(size)).expect("make xfs pool")
    }

    /// A loop-backed ext4 pool, `size` bytes.
    pub fn ext4(size: u64) -> LoopPool {
        LoopPool::new(PoolFs::Ext4(size)).expect("make ext4 pool")
    }

    /// The pool directory to hand to the driver.
    pub fn path(&self) -> &Path {
        &self.pool
    }

    /// The temp dir holding the pool (and its backing file, for loop-backed kinds).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn fs(&self) -> PoolFs {
        self.fs
    }

    /// The driver's `--pool` argument for this pool: `NAME=image:PATH`.
    pub fn arg(&self, name: &str) -> String {
        format!("{name}={}", self.image_spec())
    }

    /// `image:PATH`.
    pub fn image_spec(&self) -> String {
        format!("image:{}", self.pool.display())
    }

    /// Data files anywhere beneath the pool dir, excluding the fs's own `lost+found` and
    /// the driver's metadata records under `meta/` (see [`LoopPool::meta_files`]).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk_files(
            &self.pool,
            &mut |p| {
                !(p.parent() == Some(self.pool.as_path())
                    && p.file_name() == Some(OsStr::new("meta")))
            },
            &mut out,
        );
        out
    }

    /// The driver's metadata records (`meta/` beneath the pool dir), not its journal
    /// (`meta/journal`, which every pool has) nor the spare files of removed records
    /// (`meta/spare/`, kept for reuse).
    pub fn meta_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let meta = self.pool.join("meta");
        let (journal, spare) = (meta.join("journal"), meta.join("spare"));
        walk_files(&meta, &mut |p| *p != spare, &mut out);
        out.retain(|p| *p != journal);
        // The publication slots file (strata-csi's slots.rs) counts while a slot is used:
        // 4 KiB slots, a used one starts with its magic.
        let slots = meta.join("publishes").join("slots");
        out.retain(|p| {
            *p != slots
                || fs::read(p).is_ok_and(|raw| raw.chunks(4096).any(|s| s.starts_with(b"SPB1")))
        });
        out
    }

    /// Loop devices backed by files in this pool (not the pool's own device).
    pub fn loop_devices(&self) -> Vec<LoopDevice> {
        loops_backed_under(&self.pool)
    }

    /// Free bytes in the pool filesystem as statvfs reports them to unprivileged users.
    pub fn free_bytes(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.pool).expect("statvfs pool");
        s.blocks_available() as u64 * s.fragment_size() as u64
    }
}

impl Drop for LoopPool {
    fn drop(&mut self) {
        cleanup_and_remove(&self.root);
    }
}

#[cfg(feature = "csi")]
pub use driver::*;

#[cfg(feature = "csi")]
mod driver {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    use csi_proto::controller_client::ControllerClient;
    use csi_proto::group_controller_client::GroupControllerClient;
    use csi_proto::identity_client::IdentityClient;
    use csi_proto::node_client::NodeClient;
    use csi_proto::tonic::transport::{Channel, Endpoint, Uri};
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    use super::{cleanup_and_remove, unique_temp_dir};

    /// How long a driver gets to answer its first Probe; generous because the test machines
    /// are shared with builds.
    pub const START_DEADLINE: Duration = Duration::from_secs(60);

    /// Env var the driver reads its failpoints from.
    pub const FAILPOINTS_ENV: &str = "STRATA_CSI_FAILPOINTS";

    /// What to start: the binary and its arguments.
    #[derive(Debug, Clone)]
    pub struct DriverConfig {
        pub bin: PathBuf,
        pub node_id: String,
        /// `NAME=KIND:PATH` values for `--pool`.
        pub pools: Vec<String>,
        pub driver_name: Option<String>,
        /// Extra environment for the process (e.g. `RUST_LOG`).
        pub env: Vec<(String, String)>,
        /// Extra command-line arguments, after the ones above.
        pub args: Vec<String>,
    }

    impl DriverConfig {
        pub fn new(bin: impl Into<PathBuf>, node_id: &str) -> DriverConfig {
            DriverConfig {
                bin: bin.into(),
                node_id: node_id.to_owned(),
                pools: Vec::new(),
                driver_name: None,
                env: Vec::new(),
                args: Vec::new(),
            }
        }

        /// Adds `--pool NAME=SPEC`, e.g. `btrfs:/path` or `dir:/path,enforce=false`.
        pub fn pool_spec(mut self, name: &str, spec: &str) -> DriverConfig {
            self.pools.push(format!("{name}={spec}"));
            self
        }

        /// Adds `--pool NAME=image:PATH`.
        pub fn pool(mut self, name: &str, path: &Path) -> DriverConfig {
            self.pools.push(format!("{name}=image:{}", path.display()));
            self
        }

        pub fn driver_name(mut self, name: &str) -> DriverConfig {
            self.driver_name = Some(name.to_owned());
            self
        }

        pub fn env(mut self, key: &str, value: &str) -> DriverConfig {
            self.env.push((key.to_owned(), value.to_owned()));
            self
        }

        /// Adds one extra command-line argument.
        pub fn arg(mut self, arg: &str) -> DriverConfig {
            self.args.push(arg.to_owned());
            self
        }
    }

    /// A running `strata-csi` on a unix socket in a temp dir, with its state dir there too.
    ///
    /// The temp dir also offers scratch paths for staging and target dirs
    /// ([`DriverProcess::path`]), so `Drop` unmounts whatever the driver mounted there.
    #[derive(Debug)]
    pub struct DriverProcess {
        config: DriverConfig,
        dir: PathBuf,
        socket: PathBuf,
        state_dir: PathBuf,
        log: PathBuf,
        child: Option<Child>,
        starts: u32,
    }

    impl DriverProcess {
        /// Starts the driver and waits until Probe reports ready.
        pub async fn start(config: DriverConfig) -> DriverProcess {
            let mut d = DriverProcess::spawn(config, &[]);
            d.wait_ready().await;
            d
        }

        /// Starts the driver with failpoints armed and waits until Probe reports ready.
        pub async fn start_with_failpoints(
            config: DriverConfig,
            failpoints: &[&str],
        ) -> DriverProcess {
            let mut d = DriverProcess::spawn(config, failpoints);
            d.wait_ready().await;
            d
        }

        /// Spawns the process without waiting for it.
        pub fn spawn(config: DriverConfig, failpoints: &[&str]) -> DriverProcess {
            let dir = unique_temp_dir("strata-csi");
            let state_dir = dir.join("state");
            fs::create_dir(&state_dir).expect("create state dir");
            let mut d = DriverProcess {
                socket: dir.join("csi.sock"),
                log: dir.join("driver.log"),
                state_dir,
                dir,
                config,
                child: None,
                starts: 0,
            };
            d.spawn_child(failpoints);
            d
        }

        fn spawn_child(&mut self, failpoints: &[&str]) {
            assert!(self.child.is_none(), "driver already running");
            self.starts += 1;
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("open driver log");
            use std::io::Write;
            let _ = writeln!(
                &log,
                "==== start #{} failpoints={failpoints:?}",
                self.starts
            );
            let mut cmd = Command::new(&self.config.bin);
            cmd.arg("--endpoint")
                .arg(self.endpoint())
                .arg("--node-id")
                .arg(&self.config.node_id)
                .arg("--state-dir")
                .arg(&self.state_dir);
            for p in &self.config.pools {
                cmd.arg("--pool").arg(p);
            }
            if let Some(n) = &self.config.driver_name {
                cmd.arg("--driver-name").arg(n);
            }
            cmd.args(&self.config.args);
            cmd.env_remove(FAILPOINTS_ENV);
            cmd.env(format!("{FAILPOINTS_ENV}_HOLD_DIR"), &self.dir);
            if !failpoints.is_empty() {
                cmd.env(FAILPOINTS_ENV, failpoints.join(","));
            }
            for (k, v) in &self.config.env {
                cmd.env(k, v);
            }
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.config.bin.display()));
            self.child = Some(child);
        }

        /// Waits until Probe answers ready (absent `ready` counts as ready, as the spec says).
        /// Panics with the driver's log if it exits or the deadline passes.
        pub async fn wait_ready(&mut self) {
            let start = Instant::now();
            let mut pause = Duration::from_millis(2);
            let mut last = String::from("no attempt");
            loop {
                if let Some(status) = self.try_wait() {
                    panic!(
                        "strata-csi exited during start-up with {status}; last probe: {last}\n{}",
                        self.log_text()
                    );
                }
                match self.probe_once().await {
                    Ok(true) => return,
                    Ok(false) => last = "ready=false".into(),
                    Err(e) => last = e,
                }
                assert!(
                    start.elapsed() < START_DEADLINE,
                    "strata-csi not ready after {START_DEADLINE:?}: {last}\n{}",
                    self.log_text()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }

        async fn probe_once(&self) -> Result<bool, String> {
            let ch = connect(&self.socket).await.map_err(|e| e.to_string())?;
            let r = IdentityClient::new(ch)
                .probe(csi_proto::ProbeRequest {})
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            Ok(r.into_inner().ready.is_none_or(|b| b))
        }

        /// `unix:///…/csi.sock`.
        pub fn endpoint(&self) -> String {
            format!("unix://{}", self.socket.display())
        }

        pub fn socket(&self) -> &Path {
            &self.socket
        }

        pub fn state_dir(&self) -> &Path {
            &self.state_dir
        }

        /// The temp dir holding socket, state dir, log and scratch paths.
        pub fn dir(&self) -> &Path {
            &self.dir
        }

        /// Waits until an operation reaches failpoint `name`, armed as `name=hold`, and is
        /// held there. Panics with the driver's log if the driver exits first.
        pub fn wait_held(&mut self, name: &str, deadline: Duration) {
            let file = strata_failpoint::hold_file(&self.dir, name);
            let start = Instant::now();
            while !file.exists() {
                if let Some(status) = self.try_wait() {
                    panic!(
                        "driver exited ({status}) before reaching {name}\n{}",
                        self.log_text()
                    );
                }
                assert!(
                    start.elapsed() < deadline,
                    "no operation reached failpoint {name} within {deadline:?}\n{}",
                    self.log_text()
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        /// Lets the operation held at failpoint `name` go on.
        pub fn release(&self, name: &str) {
            let file = strata_failpoint::hold_file(&self.dir, name);
            fs::remove_file(&file)
                .unwrap_or_else(|e| panic!("release {name}: remove {}: {e}", file.display()));
        }

        pub fn node_id(&self) -> &str {
            &self.config.node_id
        }

        pub fn config(&self) -> &DriverConfig {
            &self.config
        }

        /// A path beneath the temp dir for staging or target paths; not created.
        pub fn path(&self, name: &str) -> PathBuf {
            self.dir.join("mnt").join(name)
        }

        /// Like [`DriverProcess::path`] but creates the dir (as the CO does for staging paths
        /// and for a target path's parent).
        pub fn mkdir(&self, name: &str) -> PathBuf {
            let p = self.path(name);
            fs::create_dir_all(&p).expect("create scratch dir");
            p
        }

        pub fn pid(&self) -> Option<u32> {
            self.child.as_ref().map(|c| c.id())
        }

        /// The driver's stdout and stderr so far, across restarts.
        pub fn log_text(&self) -> String {
            fs::read_to_string(&self.log).unwrap_or_default()
        }

        /// Non-blocking: the exit status if the process has ended (and reaps it).
        pub fn try_wait(&mut self) -> Option<ExitStatus> {
            let child = self.child.as_mut()?;
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    Some(st)
                }
                _ => None,
            }
        }

        pub fn is_running(&mut self) -> bool {
            self.child.is_some() && self.try_wait().is_none()
        }

        /// Sends a signal to the running process.
        pub fn signal(&self, sig: Signal) {
            let pid = self.pid().expect("driver not running");
            kill(Pid::from_raw(pid as i32), sig).expect("signal driver");
        }

        /// Waits for the process to exit, up to `deadline`, and returns its status.
        pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
            assert!(self.child.is_some(), "driver not running");
            let status = crate::wait_for("strata-csi to exit", deadline, || {
                let c = self.child.as_mut().expect("child");
                c.try_wait().expect("wait driver")
            });
            self.child = None;
            status
        }

        /// SIGKILL and reap. A no-op when not running.
        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Kills the process if it still runs, then starts it again on the same socket path
        /// and state dir, with `failpoints` armed, and waits until it is ready.
        pub async fn restart(&mut self, failpoints: &[&str]) {
            self.kill();
            self.spawn_child(failpoints);
            self.wait_ready().await;
        }

        /// A fresh connection to the socket.
        pub async fn channel(&self) -> Channel {
            connect(&self.socket)
                .await
                .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()))
        }

        pub async fn identity(&self) -> IdentityClient<Channel> {
            IdentityClient::new(self.channel().await)
        }

        pub async fn controller(&self) -> ControllerClient<Channel> {
            ControllerClient::new(self.channel().await)
        }

        pub async fn node(&self) -> NodeClient<Channel> {
            NodeClient::new(self.channel().await)
        }

        pub async fn group_controller(&self) -> GroupControllerClient<Channel> {
            GroupControllerClient::new(self.channel().await)
        }
    }

    impl Drop for DriverProcess {
        fn drop(&mut self) {
            self.kill();
            if std::thread::panicking() {
                eprintln!(
                    "---- strata-csi log ({}) ----\n{}---- end of log ----",
                    self.log.display(),
                    self.log_text()
                );
            }
            cleanup_and_remove(&self.dir);
        }
    }

    /// Connects a tonic channel to a unix socket. The URI is a placeholder: the connector
    /// ignores it and dials the socket.
    pub async fn connect(socket: &Path) -> Result<Channel, csi_proto::tonic::transport::Error> {
        let socket = socket.to_owned();
        Endpoint::from_static("http://[::1]:50051")
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let l = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue";
        let m = strata_mountinfo::parse_line(l).unwrap();
        assert_eq!(m.mount_point, Path::new("/mnt/a b"));
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.fs_type, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, "rw,errors=continue");
        assert!(!m.read_only());
    }

    #[test]
    fn mounts_under_is_deepest_first() {
        if !crate::require_root("mounts_under_is_deepest_first") {
            return;
        }
        let root = unique_temp_dir("testkit-mnt");
        let a = root.join("a");
        let b = a.join("b");
        fs::create_dir_all(&b).unwrap();
        let tmpfs = |p: &Path| {
            nix::mount::mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap()
        };
        tmpfs(&a);
        fs::create_dir_all(&b).unwrap();
        tmpfs(&b);
        let got: Vec<_> = mounts_under(&root)
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        assert_eq!(got, vec![b.clone(), a.clone()]);
        cleanup_and_remove(&root);
        assert!(!root.exists(), "cleanup removes the dir");
    }

    #[test]
    fn loop_pools_clean_up_after_panic() {
        if !crate::require_root("loop_pools_clean_up_after_panic") {
            return;
        }
        for kind in [PoolFs::Ext4(64 << 20), PoolFs::Xfs(320 << 20)] {
            let root = std::sync::Mutex::new(PathBuf::new());
            let r = std::panic::catch_unwind(|| {
                let pool = LoopPool::new(kind).unwrap();
                *root.lock().unwrap() = pool.root().to_owned();
                assert!(mount_at(pool.path()).is_some(), "pool fs mounted");
                // A loop device backed by a file in the pool, as the driver would make.
                let img = pool.path().join("v.img");
                fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
                run(Command::new("losetup").args(["--find"]).arg(&img)).unwrap();
                assert_eq!(pool.loop_devices().len(), 1);
                panic!("test body fails");
            });
            assert!(r.is_err());
            let root = root.into_inner().unwrap();
            assert!(mounts_under(&root).is_empty(), "{kind:?}: mounts left");
            assert!(loops_backed_under(&root).is_empty(), "{kind:?}: loops left");
            assert!(!root.exists(), "{kind:?}: dir left");
        }
    }
}
