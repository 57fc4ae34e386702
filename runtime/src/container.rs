//! The OCI lifecycle (create, start, state, kill, delete) on top of libcontainer.
//!
//! Every function here forks (libcontainer clones the intermediate and init
//! processes, and changes namespaces in them), so it must run in a single-threaded
//! process: the `strata-runtime` binary, or a child forked for the purpose. The
//! async daemon goes through [`crate::helper::Helper`] instead.
//!
//! State layout under the root dir:
//! `<root>/<id>/` belongs to libcontainer (state.json, its config, notify socket);
//! `<root>/.strata/<id>/` is ours: the spec libcontainer actually runs (`config.json`,
//! bind mounts removed because we mounted them) and `premounts.json`, the host paths
//! of those mounts, written before mounting so that `delete` can always undo them.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::volumes::{self, BindMount, Propagation, SpecBind};

/// Options of `create` beyond the bundle.
#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    /// Written with the container's init pid once created (runc `--pid-file`).
    pub pid_file: Option<PathBuf>,
    /// Append the container's stdout and stderr to this file; without it the init
    /// process inherits ours (runc's pass-through mode).
    pub log_file: Option<PathBuf>,
}

/// A process to run in a running container (`strata-runtime exec`, runc's `exec`).
///
/// Without `process`, the container's own process settings are the base: its
/// user, working directory, capabilities and no_new_privs, and its environment
/// with `env` entries replacing those of the same name (as runc does).
#[derive(Debug, Default, Clone)]
pub struct ExecOptions {
    /// A runtime-spec `process` JSON file describing the whole process; the
    /// fields below except `detach`, `pid_file` and `timeout` must then be empty.
    pub process: Option<PathBuf>,
    /// Command and arguments (`args[0]` is looked up in the container's PATH).
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to (or replacing in) the container's environment.
    pub env: Vec<String>,
    /// Working directory inside the container (absolute).
    pub cwd: Option<PathBuf>,
    /// User id and optionally group id; the container's user when `None`.
    pub user: Option<(u32, Option<u32>)>,
    /// Supplementary groups in addition to the container's.
    pub additional_gids: Vec<u32>,
    /// A terminal: not supported (no console socket handling); refused.
    pub tty: bool,
    /// Return once the process has started, without waiting for it.
    pub detach: bool,
    /// Written with the process id once started.
    pub pid_file: Option<PathBuf>,
    /// Kill the process (SIGKILL) if it runs longer than this; whole seconds,
    /// rounded up.
    pub timeout: Option<std::time::Duration>,
}

/// How an exec'd process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExecOutcome {
    /// Exit code, 128 + signal when killed by one.
    Exited(i32),
    /// It outran `timeout` and was killed.
    TimedOut,
    /// `detach`: started with this pid and left running.
    Detached(i32),
}

/// The OCI state of a container, as `state` prints it (runtime-spec "State").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    /// creating, created, running or stopped.
    pub status: String,
    /// The init process; 0 once stopped, as runc reports it.
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub annotations: std::collections::HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// A directory of containers (runc's `--root`).
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

const OUR_DIR: &str = ".strata";

fn status_name(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

/// Container ids become directory names: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "container id",
            format!("{id:?} must be 1-255 of [A-Za-z0-9_.+-] not starting with '.'"),
        ))
    }
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Result<Runtime> {
        let root = root.into();
        fs::create_dir_all(root.join(OUR_DIR)).map_err(Error::io("creating state root", &root))?;
        let root = fs::canonicalize(&root).map_err(Error::io("resolving state root", &root))?;
        Ok(Runtime { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lc_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn our_dir(&self, id: &str) -> PathBuf {
        self.root.join(OUR_DIR).join(id)
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        self.root.join(OUR_DIR).join(format!("{id}.lock"))
    }

    /// Serialises commands on one container: libcontainer rewrites state.json in
    /// place, so a concurrent reader could see it half written.
    /// Only `create` (and `delete`, to finish a crashed one) makes the lock file;
    /// its absence means no such container.
    ///
    /// A POSIX record lock, not flock(2): the container's init is forked from the
    /// locking process and keeps its descriptors until it execs, and an flock held
    /// through an inherited descriptor would outlive a `create` that died, blocking
    /// every later command on the container. Record locks belong to the process
    /// and end with it.
    fn lock(&self, id: &str, create: bool) -> Result<LockGuard> {
        validate_id(id)?;
        let path = self.lock_path(id);
        let f = match fs::OpenOptions::new()
            .create(create)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ContainerNotFound(id.into()));
            }
            Err(e) => return Err(Error::io("opening lock", &path)(e)),
        };
        let whole_file = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        loop {
            match nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETLKW(&whole_file)) {
                Ok(_) => return Ok(LockGuard { _file: f }),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::io("locking", &path)(e.into())),
            }
        }
    }

    fn load(&self, id: &str) -> Result<Container> {
        validate_id(id)?;
        let dir = self.lc_dir(id);
        if !dir.join("state.json").exists() {
            return Err(Error::ContainerNotFound(id.into()));
        }
        Container::load(dir).map_err(|source| Error::Container {
            action: "loading state",
            source,
        })
    }

    /// `create`: sets up namespaces, cgroups and the rootfs, and leaves the init
    /// process waiting for `start` (runtime-spec "create").
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn create(&self, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<State> {
        let _lock = self.lock(id, true)?;
        failpoint::hit("create:after_lock");
        if self.lc_dir(id).exists() || self.our_dir(id).exists() {
            return Err(Error::ContainerExists(id.into()));
        }
        let bundle = fs::canonicalize(bundle).map_err(Error::io("resolving bundle", bundle))?;
        let config = bundle.join("config.json");
        let mut spec = crate::spec::load_config(&config)?;
        let rootfs = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| Error::invalid("config.json", "has no root"))?;
        let rootfs = if rootfs.is_absolute() {
            rootfs
        } else {
            bundle.join(rootfs)
        };
        let rootfs = fs::canonicalize(&rootfs).map_err(Error::io("resolving rootfs", &rootfs))?;

        tracing::debug!(id, "spec loaded");
        let (ours, theirs) = split_mounts(spec.mounts().clone().unwrap_or_default());
        let ours: Vec<SpecBind> = ours.iter().filter_map(SpecBind::from_oci).collect();
        // Every bind's propagation, ours and libcontainer's, is set after create.
        let binds: Vec<SpecBind> = ours
            .iter()
            .cloned()
            .chain(theirs.iter().filter_map(SpecBind::from_oci))
            .collect();
        let dir = self.our_dir(id);
        fs::create_dir_all(&dir).map_err(Error::io("creating container dir", &dir))?;
        let undo = |rt: &Runtime| {
            let _ = rt.undo_premounts(id);
            let _ = fs::remove_dir_all(rt.our_dir(id));
            let _ = fs::remove_file(rt.lock_path(id));
        };
        let result = (|| {
            if !ours.is_empty() {
                // The volume binds are made in a mount namespace of this process's own, a
                // copy of the caller's. The container's namespace is cloned from it and
                // keeps them; the host's mount table never shows them (as under a CRI
                // runtime, where they live only in the container), and a crash mid-create
                // leaves none behind. The copy keeps peer groups, so rshared and rslave
                // volumes still propagate. Under a parent that is itself shared with the
                // host (a bundle on a shared `/`), a bind still propagates there as
                // before; premounts.json lets `delete` undo that.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
                    Error::io("unsharing the mount namespace", "/proc/self/ns/mnt")(e.into())
                })?;
            }
            let mut landed = Vec::new();
            for b in &ours {
                // Record before mounting: a crash between the two leaves an entry
                // that unmount treats as already gone.
                let target = rootfs.join(resolve_display(&b.bind.destination));
                landed.push(target);
                write_premounts(&dir, &landed)?;
                failpoint::hit("create:after_premount_record");
                let real = volumes::mount_bind_tree(&rootfs, &b.bind, b.recursive)?;
                failpoint::hit("create:after_premount");
                *landed.last_mut().expect("pushed above") = real;
                write_premounts(&dir, &landed)?;
            }
            spec.set_mounts(Some(theirs));
            if let Some(linux) = spec.linux_mut()
                && linux.cgroups_path().is_none()
            {
                // libcontainer's default is a systemd-style ":youki:<id>", which in
                // cgroupfs mode becomes a literal directory name; use ours (flat, as
                // runc's `/<id>`, so no parent is made and removed per container).
                linux.set_cgroups_path(Some(PathBuf::from(format!("/strata-{id}"))));
            }
            let mut root = spec.root().clone().expect("checked above");
            root.set_path(rootfs.clone());
            spec.set_root(Some(root));
            if binds
                .iter()
                .any(|b| b.bind.propagation == Propagation::Bidirectional)
                && let Some(linux) = spec.linux_mut()
                && linux.rootfs_propagation().is_none()
            {
                // Copies of rshared volumes only stay peers of the host's if the
                // container's mount tree is shared, as CRI runtimes arrange.
                linux.set_rootfs_propagation(Some("shared".into()));
            }
            spec.save(dir.join("config.json"))?;
            failpoint::hit("create:after_spec");
            tracing::debug!(
                id,
                volumes = ours.len(),
                "spec written, handing over to libcontainer"
            );

            let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
                .with_root_path(&self.root)
                .map_err(lc("setting root"))?
                .with_pid_file(opts.pid_file.as_ref())
                .map_err(lc("setting pid file"))?;
            if let Some(log) = &opts.log_file {
                let out = open_log(log)?;
                let err = out
                    .try_clone()
                    .map_err(Error::io("duplicating log fd", log))?;
                builder = builder.with_stdout(out).with_stderr(err);
            }
            let mut container = builder
                .validate_id()
                .map_err(lc("validating id"))?
                .as_init(&dir)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(lc("creating container"))?;
            failpoint::hit("create:after_build");
            let wants: Vec<_> = binds
                .iter()
                .filter_map(|b| {
                    b.propagation
                        .map(|(mode, rec)| (b.bind.destination.clone(), mode, rec))
                })
                .collect();
            let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
            if let Err(e) = volumes::set_propagation_in(pid, &wants) {
                let _ = container.delete(true);
                return Err(e);
            }
            // libcontainer recorded our private spec dir; the state reports the
            // caller's bundle, as runtime-spec "state" asks.
            container.state.bundle = bundle.clone();
            container.save().map_err(lc("saving state"))?;
            tracing::debug!(id, pid = ?container.pid(), "created");
            Ok(to_state(&container))
        })();
        if result.is_err() {
            undo(self);
        }
        result
    }

    /// `start`: runs the user process of a created container.
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn start(&self, id: &str) -> Result<()> {
        self.transition(id, "start", Container::can_start, |c| {
            c.start().map_err(lc("starting"))
        })
    }

    /// One lifecycle step on a loaded container under its lock, refused with the
    /// container's state unless `allowed`.
    fn transition(
        &self,
        id: &str,
        action: &'static str,
        allowed: impl FnOnce(&Container) -> bool,
        step: impl FnOnce(&mut Container) -> Result<()>,
    ) -> Result<()> {
        let _lock = self.lock(id, false)?;
        let mut c = self.load(id)?;
        if !allowed(&c) {
            return Err(bad_state(&c, action));
        }
        step(&mut c)
    }

    /// `state` of one container.
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn state(&self, id: &str) -> Result<State> {
        let _lock = self.lock(id, false)?;
        Ok(to_state(&self.load(id)?))
    }

    /// `kill`: sends `signal` (a name such as TERM, SIGKILL or a number) to init,
    /// or with `all` to every process of the container's cgroup.
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<()> {
        let sig = libcontainer::signal::Signal::try_from(signal)
            .map_err(|_| Error::invalid("signal", format!("{signal:?} is not a signal")))?;
        self.transition(id, "kill", Container::can_kill, |c| {
            c.kill(sig, all).map_err(lc("killing"))
        })
    }

    /// `pause`: freezes every process of a running container (cgroup freezer).
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn pause(&self, id: &str) -> Result<()> {
        self.transition(id, "pause", Container::can_pause, |c| {
            c.pause().map_err(lc("pausing"))
        })
    }

    /// `resume`: thaws a paused container.
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn resume(&self, id: &str) -> Result<()> {
        self.transition(id, "resume", Container::can_resume, |c| {
            c.resume().map_err(lc("resuming"))
        })
    }

    /// `delete`: removes a stopped (or created) container and everything created
    /// for it; `force` kills a running one first. Also finishes what a `create` or
    /// `delete` that died part-way left behind.
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        validate_id(id)?;
        let lock_path = self.lock_path(id);
        // A create or delete that died leaves some of these; any one of them means
        // there is still something to remove.
        if !lock_path.exists() && !self.our_dir(id).exists() && !self.lc_dir(id).exists() {
            return Err(Error::ContainerNotFound(id.into()));
        }
        let _lock = self.lock(id, true)?;
        match self.load(id) {
            Ok(mut c) => {
                if !force
                    && !matches!(
                        c.status(),
                        ContainerStatus::Stopped | ContainerStatus::Created
                    )
                {
                    return Err(bad_state(&c, "delete"));
                }
                let cgroup = Spec::load(self.our_dir(id).join("config.json"))
                    .ok()
                    .and_then(|s| s.linux().as_ref().and_then(|l| l.cgroups_path().clone()));
                c.delete(force).map_err(lc("deleting"))?;
                if let Some(cg) = cgroup {
                    remove_empty_cgroup_parents(&cg);
                }
            }
            // No state.json: libcontainer writes it before it makes any cgroup or
            // process, so its directory (if any) is all that is left of it.
            Err(Error::ContainerNotFound(_)) => {
                let dir = self.lc_dir(id);
                match fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("removing container dir", dir)(e)),
                }
            }
            Err(e) => return Err(e),
        }
        failpoint::hit("delete:after_container");
        tracing::debug!(id, "libcontainer state deleted");
        self.undo_premounts(id)?;
        failpoint::hit("delete:after_unmount");
        tracing::debug!(id, "volumes unmounted");
        let dir = self.our_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing container dir", dir)(e)),
        }
        failpoint::hit("delete:after_dir");
        // Last: while the lock file exists a retried delete still finds the rest.
        match fs::remove_file(&lock_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing lock", lock_path)(e)),
        }
    }

    /// `exec`: runs a further process in the running container `id`, in all its
    /// namespaces and cgroup (libcontainer's tenant builder), and waits for it
    /// unless `detach`. Signals a supervisor sends us (TERM, INT, HUP, QUIT, USR1,
    /// USR2) are forwarded to it, as for `run`. The process's stdio is ours.
    ///
    /// The container's lock is held only while the process is set up, so `state`,
    /// `kill` and `delete` work while it runs.
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<ExecOutcome> {
        if opts.tty {
            return Err(Error::invalid(
                "exec",
                "--tty is not supported (no console socket handling); run without a terminal",
            ));
        }
        let given = !opts.args.is_empty()
            || !opts.env.is_empty()
            || opts.cwd.is_some()
            || opts.user.is_some()
            || !opts.additional_gids.is_empty();
        match (&opts.process, given) {
            (Some(_), true) => {
                return Err(Error::invalid(
                    "exec",
                    "--process describes the whole process: give no command, env, cwd or user with it",
                ));
            }
            (None, false) => return Err(Error::invalid("exec", "no command given")),
            _ => {}
        }
        if let Some(cwd) = &opts.cwd
            && !cwd.is_absolute()
        {
            return Err(Error::invalid(
                "exec cwd",
                format!("{cwd:?} must be absolute"),
            ));
        }
        for e in &opts.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(Error::invalid(
                    "exec env",
                    format!("{e:?} is not KEY=VALUE"),
                ));
            }
        }
        let lock = self.lock(id, false)?;
        let c = self.load(id)?;
        if c.status() != ContainerStatus::Running {
            return Err(bad_state(&c, "exec"));
        }
        let ours = self.our_dir(id);
        let spec = Spec::load(ours.join("config.json"))?;
        // libcontainer's tenant builder reads `<root>/<id>/state.json` and the
        // config.json of the bundle recorded there. Ours is the spec it really runs
        // (cgroup path, no premounted binds); the state names the caller's bundle.
        // So it gets a scratch root whose state names our dir, and the real state
        // is never rewritten. Removed below; `delete` removes it after a crash.
        let scratch = ours.join(format!("exec-{}", std::process::id()));
        let result = (|| {
            let scratch_dir = scratch.join(id);
            fs::create_dir_all(&scratch_dir).map_err(Error::io("creating", &scratch_dir))?;
            let mut state = c.state.clone();
            state.bundle = ours.clone();
            let state_path = scratch_dir.join("state.json");
            fs::write(
                &state_path,
                serde_json::to_vec(&state).expect("state serializes"),
            )
            .map_err(Error::io("writing", &state_path))?;

            let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
                .with_root_path(&scratch)
                .map_err(lc("setting root"))?
                .with_pid_file(opts.pid_file.as_ref())
                .map_err(lc("setting pid file"))?
                .as_tenant()
                .with_detach(opts.detach);
            if let Some(path) = &opts.process {
                let process = self.exec_process_file(path, &scratch)?;
                builder = builder.with_process(Some(process));
            } else {
                let base = spec.process().clone().unwrap_or_default();
                let (uid, gid) = match opts.user {
                    Some((uid, gid)) => (uid, gid.unwrap_or(0)),
                    None => (base.user().uid(), base.user().gid()),
                };
                let mut gids = base.user().additional_gids().clone().unwrap_or_default();
                gids.extend(&opts.additional_gids);
                let env = opts
                    .env
                    .iter()
                    .filter_map(|e| e.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                builder = builder
                    .with_container_args(opts.args.clone())
                    .with_env(env)
                    .with_cwd(Some(opts.cwd.clone().unwrap_or_else(|| base.cwd().clone())))
                    .with_user(Some(uid))
                    .with_group(Some(gid))
                    .with_additional_gids(gids);
            }
            builder.build().map_err(lc("starting exec process"))
        })();
        let _ = fs::remove_dir_all(&scratch);
        drop(lock);
        let pid = result?.as_raw();
        tracing::debug!(id, pid, "exec process started");
        if opts.detach {
            return Ok(ExecOutcome::Detached(pid));
        }
        let deadline = opts.timeout.map(|t| {
            let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        });
        wait_forwarding_until(pid, deadline)
    }

    /// Reads an exec `--process` file, refuses a terminal, drops unknown
    /// capabilities (as `create` does) and writes the result into `dir` for
    /// libcontainer; returns that path.
    fn exec_process_file(&self, path: &Path, dir: &Path) -> Result<PathBuf> {
        let bytes = fs::read(path).map_err(Error::io("reading", path))?;
        let json_err = |source| Error::Json {
            path: path.to_path_buf(),
            source,
        };
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(json_err)?;
        crate::spec::drop_unknown_capabilities(&mut value);
        let process: oci_spec::runtime::Process =
            serde_json::from_value(value).map_err(json_err)?;
        if process.terminal() == Some(true) {
            return Err(Error::invalid(
                "exec process",
                "terminal: true is not supported (no console socket handling)",
            ));
        }
        let out = dir.join("process.json");
        fs::write(
            &out,
            serde_json::to_vec(&process).expect("process serializes"),
        )
        .map_err(Error::io("writing", &out))?;
        Ok(out)
    }

    /// `list`: every container under the root, sorted by id.
    pub fn list(&self) -> Result<Vec<State>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(Error::io("listing", &self.root))?;
        for e in entries {
            let e = e.map_err(Error::io("listing", &self.root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().join("state.json").exists() {
                continue;
            }
            match self.state(&name) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(id = %name, error = %crate::error::chain(&e), "skipping unreadable container")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// `run`: create, start, wait for init to exit, delete. Returns the exit code
    /// (128 + signal for a killed process, as shells report it).
    #[tracing::instrument(skip_all, fields(id = %id))]
    pub fn run(&self, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<i32> {
        let state = self.create(id, bundle, opts)?;
        let started = self.start(id);
        tracing::debug!(id, "started");
        let code = match started {
            Ok(()) => wait_forwarding(state.pid),
            Err(e) => {
                let _ = self.delete(id, true);
                return Err(e);
            }
        };
        tracing::debug!(id, code = ?code.as_ref().ok(), "exited");
        self.delete(id, true)?;
        tracing::debug!(id, "deleted");
        code
    }

    fn undo_premounts(&self, id: &str) -> Result<()> {
        let path = self.our_dir(id).join("premounts.json");
        let landed: Vec<PathBuf> = match fs::read(&path) {
            Ok(b) => read_premounts(&path, &b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("reading", path)(e)),
        };
        for p in landed.iter().rev() {
            volumes::unmount(p)?;
        }
        Ok(())
    }
}

/// Holds a container's lock; closing the file (the only descriptor this process
/// has on it) releases the record lock.
struct LockGuard {
    _file: fs::File,
}

/// Makes this process the reaper of orphaned descendants: a container's init,
/// whose `strata-runtime create` parent exits, is then re-parented to us, and
/// [`wait_exit`] can collect its exit status.
pub fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::io("becoming child subreaper", "prctl")(e.into()))
}

/// Waits for a container's init and returns its exit code (128 + signal when
/// killed). Init must be our child: libcontainer clones it with CLONE_PARENT from
/// the intermediate process, so it is a child of the caller of `create`, or of the
/// nearest subreaper once that caller has exited.
pub fn wait_exit(pid: i32) -> Result<i32> {
    use nix::sys::wait::{WaitStatus, waitpid};
    let pid = nix::unistd::Pid::from_raw(pid);
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::io(
                    "waiting for container init",
                    format!("pid {pid}"),
                )(e.into()));
            }
        }
    }
}

/// libcontainer removes the container's own cgroup; the parents it created on the
/// way (`/pod-1` for `/pod-1/<id>`) go too once no other container uses them.
/// rmdir(2) of a cgroup that still has children fails with EBUSY, which is the
/// "still in use" answer we want, so errors are ignored.
fn remove_empty_cgroup_parents(cgroup: &Path) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = hierarchies
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    roots.push(PathBuf::from("/sys/fs/cgroup")); // pure v2
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    for root in roots {
        let mut p = rel.parent();
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
            if fs::remove_dir(root.join(dir)).is_err() {
                break;
            }
            p = dir.parent();
        }
    }
}

/// [`wait_exit`] for `run`, which also forwards the signals a shell or supervisor
/// sends us (TERM, INT, HUP, QUIT, USR1, USR2) to the container, as runc does.
/// The signals are blocked and read from a signalfd only after `start`, so the
/// container's processes never inherit the blocked mask.
fn wait_forwarding(pid: i32) -> Result<i32> {
    match wait_forwarding_until(pid, None)? {
        ExecOutcome::Exited(code) => Ok(code),
        other => unreachable!("no deadline, yet {other:?}"),
    }
}

/// [`wait_forwarding`] that kills the process (SIGKILL) and reaps it once
/// `timeout_secs` have passed (an alarm(2) read from the same signalfd).
fn wait_forwarding_until(pid: i32, timeout_secs: Option<u32>) -> Result<ExecOutcome> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let sys_err =
        |e: nix::errno::Errno| Error::io("forwarding signals", format!("pid {pid}"))(e.into());
    let forward = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ];
    let mut set = SigSet::empty();
    for s in forward.iter().chain([&Signal::SIGCHLD, &Signal::SIGALRM]) {
        set.add(*s);
    }
    set.thread_block().map_err(sys_err)?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).map_err(sys_err)?;
    let child = nix::unistd::Pid::from_raw(pid);
    if let Some(secs) = timeout_secs {
        nix::unistd::alarm::set(secs);
    }
    let mut timed_out = false;
    loop {
        // SIGCHLD is blocked before this check, so an exit right after it still
        // wakes the read below.
        let code = match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => None,
            Err(e) => return Err(sys_err(e)),
        };
        if let Some(code) = code {
            nix::unistd::alarm::cancel();
            return Ok(if timed_out {
                ExecOutcome::TimedOut
            } else {
                ExecOutcome::Exited(code)
            });
        }
        let Some(info) = sfd.read_signal().map_err(sys_err)? else {
            continue;
        };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGALRM) if timeout_secs.is_some() => {
                timed_out = true;
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            Ok(sig) if forward.contains(&sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
            _ => {}
        }
    }
}

/// Splits the spec's mounts into the binds `create` makes itself before libcontainer
/// runs and the rest, which libcontainer mounts in the listed order. Ours are the
/// leading run of binds (none under a later non-bind mount's destination): the runtime
/// spec says mounts MUST be made in the listed order, and ours land first, so a bind
/// listed after /proc or a tmpfs, or below such a mount's destination (say
/// /dev/termination-log under the /dev tmpfs), goes to libcontainer instead; its
/// propagation option is applied after create like ours (runtime-tools' `mounts` check
/// looks for every entry in order in the container's mountinfo).
fn split_mounts(
    mounts: Vec<oci_spec::runtime::Mount>,
) -> (Vec<oci_spec::runtime::Mount>, Vec<oci_spec::runtime::Mount>) {
    let non_bind: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| BindMount::from_oci(m).is_none())
        .map(|m| m.destination().clone())
        .collect();
    let lead = mounts
        .iter()
        .take_while(|m| {
            BindMount::from_oci(m).is_some()
                && !non_bind.iter().any(|d| m.destination().starts_with(d))
        })
        .count();
    let mut theirs = mounts;
    let ours = theirs.drain(..lead).collect();
    (ours, theirs)
}

/// A display-only join of a container path under the rootfs, for premounts.json
/// before the real target is known.
fn resolve_display(dest: &Path) -> PathBuf {
    dest.strip_prefix("/").unwrap_or(dest).to_path_buf()
}

fn open_log(path: &Path) -> Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io("opening log file", path))?;
    Ok(f.into())
}

/// `premounts.json`: the volume binds `create` made in the rootfs, so `delete` can undo
/// them after a crash.
#[derive(serde::Serialize, serde::Deserialize)]
struct Premounts {
    mounts: Vec<PathBuf>,
}

fn write_premounts(dir: &Path, landed: &[PathBuf]) -> Result<()> {
    let path = dir.join("premounts.json");
    let tmp = path.with_extension("tmp");
    let body = Premounts {
        mounts: landed.to_vec(),
    };
    fs::write(&tmp, crate::format::encode(&body, false)).map_err(Error::io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("renaming", &path))
}

/// Reads any version of `premounts.json` (version 1 was the bare list of paths).
fn read_premounts(path: &Path, bytes: &[u8]) -> Result<Vec<PathBuf>> {
    let (p, _): (Premounts, _) = crate::format::decode(path, bytes, |_, v| match v {
        serde_json::Value::Array(_) => serde_json::json!({ "mounts": v }),
        other => other,
    })?;
    Ok(p.mounts)
}

fn lc(action: &'static str) -> impl FnOnce(libcontainer::error::LibcontainerError) -> Error {
    move |source| Error::Container { action, source }
}

fn bad_state(c: &Container, action: &'static str) -> Error {
    Error::BadState {
        id: c.id().to_string(),
        status: status_name(c.status()).into(),
        action,
    }
}

fn to_state(c: &Container) -> State {
    let status = c.status();
    State {
        oci_version: c.state.oci_version.clone(),
        id: c.id().to_string(),
        status: status_name(status).into(),
        pid: match status {
            ContainerStatus::Stopped => 0,
            _ => c.pid().map(|p| p.as_raw()).unwrap_or(0),
        },
        bundle: c.bundle().clone(),
        annotations: c.state.annotations.clone().unwrap_or_default(),
        created: c.created().map(|t| t.to_rfc3339()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["a", "pod-1_c.2", "x+y"] {
            validate_id(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(256)] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn premounts_of_every_version_are_read() {
        // Version 1, as builds before format versions wrote it: a bare list.
        let v1 = include_bytes!("../tests/fixtures/premounts-v1.json");
        let p = Path::new("premounts.json");
        let old = read_premounts(p, v1).unwrap();
        assert_eq!(old.len(), 2);
        assert!(old[0].ends_with("merged/data"));
        // What this build writes carries its version and reads back the same.
        let dir = tempfile::tempdir().unwrap();
        write_premounts(dir.path(), &old).unwrap();
        let bytes = fs::read(dir.path().join("premounts.json")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["formatVersion"], crate::format::FORMAT_VERSION);
        assert_eq!(read_premounts(p, &bytes).unwrap(), old);
        let newer = br#"{"formatVersion": 99, "mounts": []}"#;
        assert!(matches!(
            read_premounts(p, newer),
            Err(Error::FormatTooNew { found: 99, .. })
        ));
    }
}
