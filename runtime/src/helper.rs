//! Driving the `strata-runtime` binary from a multi-threaded (async) process.
//!
//! libcontainer forks and changes namespaces, which a tokio worker must never do
//! (style k8s-semantics §4); the daemon instead runs one short-lived, single-threaded
//! `strata-runtime` process per lifecycle step. These calls block: run them with
//! `spawn_blocking`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::container::{ExecOptions, ExecOutcome, State};
use crate::error::{Error, Result};

/// What [`Helper::exec`] collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub outcome: ExecOutcome,
    /// The process's standard output and error (with the runtime's own warnings
    /// on stderr, if any).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Helper {
    binary: PathBuf,
    root: PathBuf,
}

impl Helper {
    /// `binary` is the `strata-runtime` executable; `root` its `--root`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Helper {
        Helper {
            binary: binary.into(),
            root: root.into(),
        }
    }

    fn run(&self, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!(
            "{} {}",
            self.binary.display(),
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = cmd.output().map_err(Error::io("running", &self.binary))?;
        if !out.status.success() {
            return Err(Error::Helper {
                command: shown,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    /// Creates container `id` from `bundle`; its stdout and stderr append to `log`.
    pub fn create(&self, id: &str, bundle: &Path, log: &Path) -> Result<State> {
        self.run(&[
            "create".as_ref(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
            "--output".as_ref(),
            log.as_os_str(),
            id.as_ref(),
        ])?;
        self.state(id)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.run(&["start".as_ref(), id.as_ref()]).map(drop)
    }

    pub fn state(&self, id: &str) -> Result<State> {
        let out = self.run(&["state".as_ref(), id.as_ref()])?;
        serde_json::from_slice(&out).map_err(|source| Error::Json {
            path: PathBuf::from(format!("state of {id}")),
            source,
        })
    }

    /// Sends `signal` (TERM, KILL, ...) to the container's init process, or with
    /// `all` to all its processes.
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<()> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["kill".as_ref()];
        if all {
            args.push("--all".as_ref());
        }
        args.push(id.as_ref());
        args.push(signal.as_ref());
        self.run(&args).map(drop)
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["delete".as_ref()];
        if force {
            args.push("--force".as_ref());
        }
        args.push(id.as_ref());
        self.run(&args).map(drop)
    }

    /// The `strata-runtime exec` command for `opts` in container `id`, with stdio
    /// left to the caller (for `volctl exec`: inherit them, wait, and exit with
    /// the child's code). Exits with the process's code, 137 after a timeout, and
    /// 1 with a message on stderr when the runtime itself fails. Wrap it in
    /// `tokio::process::Command::from` in async code.
    pub fn exec_command(&self, id: &str, opts: &ExecOptions) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.exec_args(id, opts, None));
        cmd
    }

    fn exec_args(&self, id: &str, opts: &ExecOptions, status: Option<&Path>) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--root".into(), self.root.clone().into(), "exec".into()];
        let mut opt = |name: &str, value: OsString| {
            a.push(name.into());
            a.push(value);
        };
        if let Some(p) = &opts.process {
            opt("--process", p.into());
        }
        for e in &opts.env {
            opt("--env", e.into());
        }
        if let Some(cwd) = &opts.cwd {
            opt("--cwd", cwd.into());
        }
        if let Some((uid, gid)) = opts.user {
            opt(
                "--user",
                match gid {
                    Some(gid) => format!("{uid}:{gid}"),
                    None => uid.to_string(),
                }
                .into(),
            );
        }
        for g in &opts.additional_gids {
            opt("--additional-gids", g.to_string().into());
        }
        if let Some(p) = &opts.pid_file {
            opt("--pid-file", p.into());
        }
        if let Some(t) = opts.timeout {
            // Whole seconds, rounded up, as the runtime takes them.
            opt(
                "--timeout",
                (t.as_secs() + u64::from(t.subsec_nanos() > 0))
                    .to_string()
                    .into(),
            );
        }
        if let Some(p) = status {
            opt("--status-file", p.into());
        }
        if opts.tty {
            a.push("--tty".into());
        }
        if opts.detach {
            a.push("--detach".into());
        }
        a.push(id.into());
        if !opts.args.is_empty() {
            a.push("--".into());
            a.extend(opts.args.iter().map(OsString::from));
        }
        a
    }

    /// Runs `opts` in container `id` to completion (an exec probe) and collects
    /// its output; stdin is empty. The process's exit code, even non-zero, is an
    /// `Ok`; an `Err` means the runtime could not run it (no such container, not
    /// running, bad options).
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<ExecOutput> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // The runtime writes how the process ended here: its exit code alone
        // cannot tell a process exiting 1 from the runtime failing.
        let status_path = self.root.join(".strata").join(format!(
            "exec-status-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.exec_args(id, opts, Some(&status_path)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{} exec {id}", self.binary.display());
        let out = cmd.output().map_err(Error::io("running", &self.binary))?;
        let status = std::fs::read(&status_path);
        let _ = std::fs::remove_file(&status_path);
        match status {
            Ok(bytes) => {
                let outcome = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                    path: status_path.clone(),
                    source,
                })?;
                Ok(ExecOutput {
                    outcome,
                    stdout: out.stdout,
                    stderr: out.stderr,
                })
            }
            Err(_) => Err(Error::Helper {
                command: shown,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
        }
    }

    pub fn list(&self) -> Result<Vec<State>> {
        let out = self.run(&["list".as_ref(), "--format".as_ref(), "json".as_ref()])?;
        serde_json::from_slice(&out).map_err(|source| Error::Json {
            path: PathBuf::from("list"),
            source,
        })
    }
}
