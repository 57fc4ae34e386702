//! `volctl up` and `volctl down`: the standalone node on one machine.
//!
//! `up` is a supervisor: it takes the state dir's lock, starts `strata-csi` (on the image
//! pools), `strata-provisioner` and `strata-node`, each its own process in its own process
//! group (so a terminal's Ctrl-C reaches only the supervisor, which then stops them in
//! order), applies the manifests and waits. `up -d` runs the same supervisor detached and
//! returns once it reports ready. `down` signals the supervisor (or, when it is gone, the
//! processes its pid files name) and then checks that no process, mount or loop device of
//! the state dir is left.
//!
//! ```text
//! <state>/store.db            the object store (every volctl verb opens it)
//! <state>/run/up.lock         flock: one `volctl up` per state dir
//! <state>/run/up.pid          the supervisor; run/{csi,provisioner,node}.pid its children
//! <state>/run/csi.sock        the driver's CSI socket
//! <state>/csi/                the driver's own database
//! <state>/pools/default/      the default image pool (when no --pool is given)
//! <state>/logs/*.log          one log per process
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strata_store::EmbeddedStore;
use tokio::signal::unix::{SignalKind, signal};

/// The line a detached supervisor prints once everything runs; `up -d` returns on it.
const READY: &str = "strata is up";

/// How long strata-node may spend releasing pod volumes when it stops.
const RELEASE_SECS: u64 = 60;

/// Start the standalone node: strata-csi, strata-provisioner and strata-node against the
/// store in --state-dir, then apply the manifests. Runs in the foreground until Ctrl-C
/// (everything is then stopped, volumes and data stay); `-d` returns once it is ready and
/// `volctl down` stops it.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Return once everything is ready; stop it later with `volctl down`.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Manifest file or directory to apply once everything runs (repeatable).
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// This node's name (the pods' spec.nodeName, the volumes' topology).
    #[arg(long, default_value = "local")]
    node_id: String,
    /// A storage pool `NAME=image:DIR` (repeatable; the first is the default). Without one,
    /// the pool `default` lives in <state>/pools/default.
    #[arg(long = "pool", value_name = "NAME=image:DIR[,OPTS]")]
    pools: Vec<String>,
    /// Seconds each process may take to become ready.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Internal: run as the detached supervisor of `up -d`.
    #[arg(long, hide = true)]
    supervise: bool,
}

/// Stop what `volctl up` started in --state-dir: pods' volumes are unmounted, the
/// processes stop; objects, volumes and data stay for the next `up`. Exits non-zero naming
/// any process, mount or loop device that is left.
#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {
    /// Seconds to wait for everything to stop.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
}

/// The processes `up` runs, in start order (stopped in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    Csi,
    Provisioner,
    Node,
}

impl Daemon {
    const START_ORDER: [Daemon; 3] = [Daemon::Csi, Daemon::Provisioner, Daemon::Node];

    fn short(self) -> &'static str {
        match self {
            Daemon::Csi => "csi",
            Daemon::Provisioner => "provisioner",
            Daemon::Node => "node",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Daemon::Csi => "strata-csi",
            Daemon::Provisioner => "strata-provisioner",
            Daemon::Node => "strata-node",
        }
    }

    /// How long a stop may take before SIGKILL: the node unmounts every pod's volumes.
    fn stop_grace(self) -> Duration {
        match self {
            Daemon::Node => Duration::from_secs(RELEASE_SECS + 30),
            _ => Duration::from_secs(30),
        }
    }
}

/// Paths under the state dir.
#[derive(Debug, Clone)]
pub struct Layout {
    pub state: PathBuf,
}

impl Layout {
    pub fn new(state: &Path) -> Layout {
        Layout {
            state: state.to_path_buf(),
        }
    }
    fn run_dir(&self) -> PathBuf {
        self.state.join("run")
    }
    fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    fn socket(&self) -> PathBuf {
        self.run_dir().join("csi.sock")
    }
    fn lock(&self) -> PathBuf {
        self.run_dir().join("up.lock")
    }
    fn pid_file(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.pid"))
    }
    fn default_pool(&self) -> PathBuf {
        self.state.join("pools/default")
    }
}

/// Progress lines: stdout while someone reads them, the log (stderr) afterwards. Write
/// errors are ignored: a closed terminal or pipe must not kill the supervisor.
struct Progress {
    to_stdout: AtomicBool,
}

impl Progress {
    fn say(&self, msg: &str) {
        if self.to_stdout.load(Ordering::Relaxed) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{msg}");
            let _ = out.flush();
        } else {
            let _ = writeln!(std::io::stderr(), "{msg}");
        }
    }
}

pub async fn up(state: &Path, args: UpArgs) -> anyhow::Result<()> {
    if args.detach {
        return detach(state, &args).await;
    }
    let progress = Progress {
        to_stdout: AtomicBool::new(true),
    };
    supervise(state, args, &progress).await
}

/// `up -d`: starts the supervisor as its own process and relays its progress until ready.
async fn detach(state: &Path, args: &UpArgs) -> anyhow::Result<()> {
    let layout = prepare_state(state)?;
    // Fail fast and clearly here rather than in the child's log.
    drop(take_lock(&layout)?);
    let exe = std::env::current_exe().context("finding the volctl executable")?;
    let log = open_log(&layout, "up")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--state-dir")
        .arg(&layout.state)
        .arg("up")
        .arg("--supervise")
        .arg("--node-id")
        .arg(&args.node_id)
        .arg("--timeout")
        .arg(args.timeout.to_string());
    for p in &args.pools {
        cmd.arg("--pool").arg(p);
    }
    for f in &args.files {
        let abs = if f == Path::new("-") {
            bail!("-f - (stdin) cannot be used with -d");
        } else {
            std::path::absolute(f).with_context(|| format!("resolving {}", f.display()))?
        };
        cmd.arg("-f").arg(abs);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().context("starting the volctl up supervisor")?;
    let stdout = child.stdout.take().expect("piped");
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = std::io::stdout().lock();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            if line.starts_with(READY) {
                return true;
            }
        }
        false
    })
    .await?;
    if lines {
        return Ok(());
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    bail!(
        "volctl up did not start ({status}); its log is {}",
        layout.log("up").display()
    )
}

/// Creates the state dir and its run/ and logs/ dirs; the path is made absolute, since
/// the daemons need one.
fn prepare_state(state: &Path) -> anyhow::Result<Layout> {
    let abs = std::path::absolute(state)
        .with_context(|| format!("state dir {}: not a usable path", state.display()))?;
    for d in [abs.clone(), abs.join("run"), abs.join("logs")] {
        fs::create_dir_all(&d).with_context(|| {
            format!(
                "state dir {} is unusable: creating {}",
                abs.display(),
                d.display()
            )
        })?;
    }
    let abs = fs::canonicalize(&abs)
        .with_context(|| format!("state dir {} is unusable", abs.display()))?;
    Ok(Layout::new(&abs))
}

/// The state dir's lock, held for as long as the supervisor runs.
fn take_lock(layout: &Layout) -> anyhow::Result<File> {
    let path = layout.lock();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| {
            format!(
                "state dir {} is unusable: opening {}",
                layout.state.display(),
                path.display()
            )
        })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => {
            let pid = read_pid(&layout.pid_file("up"))
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            bail!(
                "volctl up is already running on {}{pid}; stop it with `volctl --state-dir {} down`",
                layout.state.display(),
                layout.state.display()
            )
        }
        Err(fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// True while a `volctl up` holds the state dir's lock.
pub fn is_running(state: &Path) -> bool {
    File::open(Layout::new(state).lock())
        .is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn open_log(layout: &Layout, name: &str) -> anyhow::Result<File> {
    let path = layout.log(name);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening log {}", path.display()))
}

/// Finds a Strata binary: next to this volctl (a cargo target dir, or where
/// `scripts/up` linked them), then on PATH.
pub(crate) fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let beside = exe.as_ref().map(|e| e.with_file_name(name));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    for p in beside.iter().chain(&on_path) {
        if fs::metadata(p).is_ok_and(|m| m.is_file()) {
            return Ok(p.clone());
        }
    }
    bail!(
        "{name} not found next to {} or on PATH; build it with `cargo build -p {name}` (./scripts/up does)",
        exe.map(|e| e.display().to_string())
            .unwrap_or_else(|| "volctl".into())
    )
}

/// A pool flag as strata-csi takes it, checked here so a bad one fails before anything
/// starts.
fn pool_flags(layout: &Layout, pools: &[String]) -> anyhow::Result<Vec<String>> {
    if pools.is_empty() {
        let dir = layout.default_pool();
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating the default pool {}", dir.display()))?;
        return Ok(vec![format!("default=image:{}", dir.display())]);
    }
    let mut out = Vec::new();
    for p in pools {
        let (name, rest) = p
            .split_once('=')
            .with_context(|| format!("--pool {p:?}: expected NAME=image:DIR"))?;
        let rest = rest
            .strip_prefix("image:")
            .with_context(|| format!("--pool {p:?}: only image pools exist (NAME=image:DIR)"))?;
        // strata-csi's options (`,overcommit=R`) follow the directory.
        let (dir, opts) = rest
            .split_once(',')
            .map_or((rest, None), |(d, o)| (d, Some(o)));
        let dir = std::path::absolute(dir).with_context(|| format!("--pool {p:?}"))?;
        if !fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
            bail!("pool {name}: {} is not a directory", dir.display());
        }
        let opts = opts.map(|o| format!(",{o}")).unwrap_or_default();
        out.push(format!("{name}=image:{}{opts}", dir.display()));
    }
    Ok(out)
}

/// True when `pid` runs `binary` with an argument that mentions `state`: a pid file is
/// never trusted alone (pids are reused).
fn is_ours(pid: i32, binary: &str, state: &Path) -> bool {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    // A rebuilt binary shows as "NAME (deleted)".
    if name != binary && !name.starts_with(&format!("{binary} ")) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let state = state.as_os_str().as_encoded_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg.windows(state.len()).any(|w| w == state))
}

/// Live processes of an earlier `up` that its pid files still name.
fn live_daemons(layout: &Layout) -> Vec<(Daemon, i32)> {
    Daemon::START_ORDER
        .into_iter()
        .filter_map(|d| {
            let pid = read_pid(&layout.pid_file(d.short()))?;
            is_ours(pid, d.binary(), &layout.state).then_some((d, pid))
        })
        .collect()
}

/// The last lines of a log, for an error message.
fn log_tail(path: &Path, since: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(since));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
    if tail.is_empty() {
        format!("(nothing in {})", path.display())
    } else {
        format!("last lines of {}:\n  {tail}", path.display())
    }
}

/// One running daemon.
struct Running {
    daemon: Daemon,
    child: Child,
    log_start: u64,
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// Everything the supervisor started; stopped in reverse order.
struct Daemons {
    layout: Layout,
    running: Vec<Running>,
    args: Vec<(Daemon, Vec<String>)>,
}

impl Daemons {
    fn spawn(&mut self, daemon: Daemon) -> anyhow::Result<()> {
        let bin = find_binary(daemon.binary())?;
        let args = self
            .args
            .iter()
            .find(|(d, _)| *d == daemon)
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        let log = open_log(&self.layout, daemon.short())?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(&bin)
            .args(&args)
            .env("STRATA_STATE_DIR", &self.layout.state)
            // Plain log files, no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group: Ctrl-C in the terminal reaches only us, and we stop the
            // daemons in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid_file = self.layout.pid_file(daemon.short());
        fs::write(&pid_file, format!("{}\n", child.id()))
            .with_context(|| format!("writing {}", pid_file.display()))?;
        self.running.push(Running {
            daemon,
            child,
            log_start,
        });
        Ok(())
    }

    fn get(&mut self, daemon: Daemon) -> Option<&mut Running> {
        self.running.iter_mut().find(|r| r.daemon == daemon)
    }

    /// Waits until `daemon` is ready: the CSI socket answers, or the daemon logged that it
    /// runs. A daemon that exits meanwhile fails the start with its log's last lines.
    async fn wait_ready(&mut self, daemon: Daemon, timeout: Duration) -> anyhow::Result<()> {
        let socket = self.layout.socket();
        let log = self.layout.log(daemon.short());
        let start = Instant::now();
        loop {
            let r = self.get(daemon).expect("spawned");
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "{} exited while starting ({status}); {}",
                    daemon.binary(),
                    log_tail(&log, r.log_start)
                );
            }
            let ready = match daemon {
                Daemon::Csi => std::os::unix::net::UnixStream::connect(&socket).is_ok(),
                Daemon::Provisioner => log_has(&log, r.log_start, " running"),
                Daemon::Node => log_has(&log, r.log_start, "volume manager starting"),
            };
            if ready {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} not ready after {}s; {}",
                    daemon.binary(),
                    timeout.as_secs(),
                    log_tail(&log, r.log_start)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every daemon, last started first; returns what would not stop.
    async fn stop_all(&mut self, progress: &Progress) -> Vec<String> {
        let mut problems = Vec::new();
        while let Some(mut r) = self.running.pop() {
            let name = r.daemon.binary();
            // One that already exited was reported where that was noticed.
            let exited = r.child.try_wait().ok().flatten().is_some();
            if !exited {
                progress.say(&format!("stopping {name} (pid {})", r.pid()));
            }
            match stop_child(&mut r.child, r.daemon.stop_grace()).await {
                Ok(status) if status.success() || exited => {}
                Ok(status) => progress.say(&format!(
                    "{name} exited with {status}; {}",
                    log_tail(&self.layout.log(r.daemon.short()), r.log_start)
                )),
                Err(e) => problems.push(format!("{name} (pid {}): {e:#}", r.pid())),
            }
            let _ = fs::remove_file(self.layout.pid_file(r.daemon.short()));
        }
        problems
    }
}

fn log_has(path: &Path, since: u64, needle: &str) -> bool {
    let mut text = String::new();
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let _ = f.seek(SeekFrom::Start(since));
    let _ = f.read_to_string(&mut text);
    text.contains(needle)
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
async fn stop_child(child: &mut Child, grace: Duration) -> anyhow::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > grace {
            let _ = kill(pid, Signal::SIGKILL);
            let status = child.wait()?;
            bail!(
                "did not stop within {}s of SIGTERM; killed ({status})",
                grace.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops processes of an earlier `up` by pid (the supervisor is gone), node first.
async fn stop_by_pid(layout: &Layout, progress: &Progress) -> Vec<String> {
    let mut problems = Vec::new();
    let mut live = live_daemons(layout);
    live.reverse();
    for (d, pid) in live {
        progress.say(&format!(
            "stopping {} (pid {pid}) left by an earlier up",
            d.binary()
        ));
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let start = Instant::now();
        while is_ours(pid, d.binary(), &layout.state) {
            if start.elapsed() > d.stop_grace() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                problems.push(format!(
                    "{} (pid {pid}) ignored SIGTERM; killed",
                    d.binary()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = fs::remove_file(layout.pid_file(d.short()));
    }
    problems
}

/// What is left of a state dir's run: processes, mounts and loop devices.
pub fn leftovers(state: &Path) -> Vec<String> {
    let layout = Layout::new(state);
    let mut out: Vec<String> = live_daemons(&layout)
        .into_iter()
        .map(|(d, pid)| format!("process {} (pid {pid})", d.binary()))
        .collect();
    if let Ok(mounts) = strata_mountinfo::read() {
        for m in mounts.iter().rev() {
            if m.mount_point.starts_with(state) {
                out.push(format!("mount {} ({})", m.mount_point.display(), m.fs_type));
            }
        }
    }
    for (dev, backing) in loop_devices() {
        let b = backing.to_string_lossy();
        if Path::new(b.strip_suffix(" (deleted)").unwrap_or(&b)).starts_with(state) {
            out.push(format!("loop device /dev/{dev} (backed by {b})"));
        }
    }
    out
}

/// Every attached loop device with its backing file.
fn loop_devices() -> Vec<(String, PathBuf)> {
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"))
        .filter_map(|n| {
            let b = fs::read_to_string(format!("/sys/block/{n}/loop/backing_file")).ok()?;
            Some((n, PathBuf::from(b.trim_end_matches('\n'))))
        })
        .collect();
    out.sort();
    out
}

/// The supervisor: start, apply, wait for a signal (restarting a daemon that dies), stop.
async fn supervise(state: &Path, args: UpArgs, progress: &Progress) -> anyhow::Result<()> {
    let layout = prepare_state(state)?;
    let _lock = take_lock(&layout)?;
    fs::write(layout.pid_file("up"), format!("{}\n", std::process::id()))
        .with_context(|| format!("state dir {} is unusable", layout.state.display()))?;
    let args_supervise = args.supervise;
    let result = run_locked(&layout, &args, progress).await;
    let _ = fs::remove_file(layout.pid_file("up"));
    // The detached supervisor's error: to `up -d` while it listens, else to the log (main
    // prints it to stderr as well, which is the log).
    if let Err(e) = &result
        && args_supervise
        && progress.to_stdout.load(Ordering::Relaxed)
    {
        progress.say(&format!("error: {e:#}"));
    }
    result
}

async fn run_locked(layout: &Layout, args: &UpArgs, progress: &Progress) -> anyhow::Result<()> {
    let live = live_daemons(layout);
    if !live.is_empty() {
        let names: Vec<String> = live
            .iter()
            .map(|(d, pid)| format!("{} (pid {pid})", d.binary()))
            .collect();
        bail!(
            "{} of an earlier `volctl up` still run on {}; stop them with `volctl --state-dir {} down`",
            names.join(", "),
            layout.state.display(),
            layout.state.display()
        );
    }
    let socket = layout.socket();
    // sun_path holds 108 bytes with its NUL.
    if socket.as_os_str().len() > 107 {
        bail!(
            "state dir {} is too long for the CSI socket path {} (at most 107 bytes)",
            layout.state.display(),
            socket.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        bail!(
            "something already serves {}; another CSI driver uses this state dir",
            socket.display()
        );
    }
    let pools = pool_flags(layout, &args.pools)?;
    let csi_state = layout.state.join("csi");
    fs::create_dir_all(&csi_state).with_context(|| format!("creating {}", csi_state.display()))?;
    // Check every binary before starting any.
    for d in Daemon::START_ORDER {
        find_binary(d.binary())?;
    }
    let manifests = if args.files.is_empty() {
        Vec::new()
    } else {
        crate::resource::read_manifests(&args.files, "default")?
    };
    let store = EmbeddedStore::open(&layout.state)
        .with_context(|| format!("opening the store in {}", layout.state.display()))?;

    let endpoint = format!("unix://{}", socket.display());
    let state = layout.state.display().to_string();
    let mut csi_args = vec![
        "--endpoint".to_string(),
        endpoint.clone(),
        "--node-id".into(),
        args.node_id.clone(),
        "--state-dir".into(),
        csi_state.display().to_string(),
    ];
    for p in &pools {
        csi_args.extend(["--pool".to_string(), p.clone()]);
    }
    let common = vec![
        "--state-dir".to_string(),
        state.clone(),
        "--csi-endpoint".into(),
        endpoint,
        "--node-id".into(),
        args.node_id.clone(),
    ];
    let mut node_args = common.clone();
    node_args.extend(["--release-on-exit".to_string(), RELEASE_SECS.to_string()]);
    let mut daemons = Daemons {
        layout: layout.clone(),
        running: Vec::new(),
        args: vec![
            (Daemon::Csi, csi_args),
            (Daemon::Provisioner, common),
            (Daemon::Node, node_args),
        ],
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    progress.say(&format!("state dir {state}, node {}", args.node_id));
    let started = async {
        for d in Daemon::START_ORDER {
            progress.say(&format!("starting {} ...", d.binary()));
            daemons.spawn(d)?;
            daemons.wait_ready(d, timeout).await?;
            let pid = daemons.get(d).map(|r| r.pid()).unwrap_or_default();
            progress.say(&format!(
                "{} ready (pid {pid}, log {})",
                d.binary(),
                layout.log(d.short()).display()
            ));
        }
        if !manifests.is_empty() {
            progress.say("applying manifests");
            for line in crate::apply::apply(&store, manifests).await? {
                progress.say(&format!("  {line}"));
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = started {
        // Nothing half-started stays behind.
        for p in daemons.stop_all(progress).await {
            progress.say(&format!("left: {p}"));
        }
        return Err(e);
    }
    let how = if args.supervise {
        format!("`volctl --state-dir {state} down` stops it")
    } else {
        "Ctrl-C stops it".to_string()
    };
    progress.say(&format!(
        "{READY}: volctl get pods,pvc shows the workloads; {how} (volumes and data stay)"
    ));
    if args.supervise {
        // Nobody reads our stdout any more: the rest goes to the log.
        progress.to_stdout.store(false, Ordering::Relaxed);
    }

    let outcome = watch_daemons(&mut daemons, progress).await;
    progress.say("stopping: strata-node releases the pods' volumes first");
    let mut problems = daemons.stop_all(progress).await;
    problems.extend(leftovers(&layout.state));
    if let Err(e) = outcome {
        problems.insert(0, format!("{e:#}"));
    }
    if problems.is_empty() {
        progress.say(&format!(
            "stopped; nothing left mounted; volumes and data stay in {state} for the next up"
        ));
        Ok(())
    } else {
        for p in &problems {
            progress.say(&format!("left: {p}"));
        }
        bail!(
            "{} problem(s) while stopping: {}",
            problems.len(),
            problems.join("; ")
        )
    }
}

/// Runs until SIGINT or SIGTERM. A daemon that dies is restarted with backoff; one that
/// keeps dying (5 times within 2 minutes) ends the run.
async fn watch_daemons(daemons: &mut Daemons, progress: &Progress) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // A closed terminal must not kill a detached supervisor.
    let mut hup = signal(SignalKind::hangup())?;
    let mut deaths: Vec<(Daemon, Instant)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = term.recv() => { progress.say("SIGTERM"); return Ok(()); }
            _ = int.recv() => { progress.say("interrupted"); return Ok(()); }
            _ = hup.recv() => {}
            _ = tick.tick() => {
                for d in Daemon::START_ORDER {
                    let log = daemons.layout.log(d.short());
                    let Some(r) = daemons.get(d) else { continue };
                    let Some(status) = r.child.try_wait()? else { continue };
                    let tail = log_tail(&log, r.log_start);
                    progress.say(&format!("{} exited unexpectedly ({status}); {tail}", d.binary()));
                    daemons.running.retain(|r| r.daemon != d);
                    deaths.retain(|(_, at)| at.elapsed() < Duration::from_secs(120));
                    deaths.push((d, Instant::now()));
                    if deaths.iter().filter(|(x, _)| *x == d).count() >= 5 {
                        bail!("{} keeps exiting; giving up", d.binary());
                    }
                    progress.say(&format!("restarting {}", d.binary()));
                    daemons.spawn(d)?;
                    // Keep the stop order: the node is stopped before what it needs.
                    daemons.running.sort_by_key(|r| Daemon::START_ORDER.iter().position(|x| *x == r.daemon));
                }
            }
        }
    }
}

/// Waits up to `limit` for the store's deletions in flight; returns what is left (an
/// unreadable store counts as nothing to wait for: stopping must not depend on it).
async fn finish_deletions(state: &Path, limit: Duration) -> Vec<String> {
    if !state.join("store.db").exists() {
        return Vec::new();
    }
    let options = strata_store::StoreOptions {
        component: "volctl".into(),
        ..Default::default()
    };
    let Ok(store) = strata_store::EmbeddedStore::open_with(state, options) else {
        return Vec::new();
    };
    crate::in_flight::settle(limit, || crate::in_flight::anywhere(&store))
        .await
        .unwrap_or_default()
}

pub async fn down(state: &Path, args: DownArgs) -> anyhow::Result<()> {
    let progress = Progress {
        to_stdout: AtomicBool::new(true),
    };
    if !state.is_dir() {
        bail!("no state dir {}; nothing to stop", state.display());
    }
    let layout = Layout::new(&fs::canonicalize(state)?);
    let deadline = Duration::from_secs(args.timeout.max(1));
    let lock_path = layout.lock();
    let mut problems = Vec::new();
    if lock_path.exists() {
        let f =
            File::open(&lock_path).with_context(|| format!("opening {}", lock_path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let Some(pid) = read_pid(&layout.pid_file("up")) else {
                    bail!(
                        "volctl up holds {} but wrote no pid file",
                        lock_path.display()
                    );
                };
                // Deletions under way (a StatefulSet's claims, their volumes) finish
                // while the daemons still run, within a bound, rather than stay
                // Terminating until the next `up`.
                let limit = deadline.min(Duration::from_secs(60));
                let left = finish_deletions(&layout.state, limit).await;
                if !left.is_empty() {
                    progress.say(&format!(
                        "still being deleted after {}s (they finish at the next up): {}",
                        limit.as_secs(),
                        left.join(", ")
                    ));
                }
                progress.say(&format!(
                    "stopping volctl up (pid {pid}) on {}",
                    layout.state.display()
                ));
                kill(Pid::from_raw(pid), Signal::SIGTERM)
                    .with_context(|| format!("signalling volctl up (pid {pid})"))?;
                let start = Instant::now();
                // Its lock goes when it exits: that, not the pid, says it is done.
                loop {
                    match f.try_lock() {
                        Ok(()) => break,
                        Err(fs::TryLockError::WouldBlock) if start.elapsed() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(fs::TryLockError::WouldBlock) => bail!(
                            "volctl up (pid {pid}) still runs after {}s; see {}",
                            deadline.as_secs(),
                            layout.log("up").display()
                        ),
                        Err(fs::TryLockError::Error(e)) => return Err(e.into()),
                    }
                }
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    problems.extend(stop_by_pid(&layout, &progress).await);
    problems.extend(leftovers(&layout.state));
    if problems.is_empty() {
        progress.say(&format!(
            "down: nothing running, nothing mounted; volumes and data stay in {}",
            layout.state.display()
        ));
        return Ok(());
    }
    for p in &problems {
        progress.say(&format!("left: {p}"));
    }
    bail!(
        "{} thing(s) left in {} (each listed above; logs in {}): {}",
        problems.len(),
        layout.state.display(),
        layout.logs().display(),
        crate::in_flight::brief(&problems, "; ")
    )
}
