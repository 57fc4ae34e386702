//! Driving the `strata-runtime` binary from a multi-threaded (async) process.
//!
//! libcontainer forks and changes namespaces, which a tokio worker must never do
//! (style §4); the daemon instead runs one short-lived, single-threaded
//! `strata-runtime` process per lifecycle step. These calls block: run them with
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::container::State;
use crate::error::{Error, Result};

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

    pub fn list(&self) -> Result<Vec<State>> {
        let out = self.run(&["list".as_ref(), "--format".as_ref(), "json".as_ref()])?;
        serde_json::from_slice(&out).map_err(|source| Error::Json {
            path: PathBuf::from("list"),
            source,
        })
    }
}
