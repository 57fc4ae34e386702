//! The least a program can do to `run` a bundle through libcontainer 0.7.0:
//! build (create), start, wait for init, delete. No locking, no spec rewrite,
//! no volume handling, no logging set-up: a floor for what any runtime built on
//! the same library pays, so that bench-runtime can show how much of
//! strata-runtime's time is the library's and how much is ours.
//!
//! Usage: libcontainer-run ROOT BUNDLE ID   (as root; exits with init's code)

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("libcontainer-run: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn run() -> Result<u8> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, bundle, id] = args.as_slice() else {
        bail!("usage: libcontainer-run ROOT BUNDLE ID");
    };
    let bundle = std::fs::canonicalize(bundle).context("bundle")?;
    let mut container = ContainerBuilder::new(id.clone(), SyscallType::Linux)
        .with_root_path(PathBuf::from(root))?
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .context("create")?;
    // libcontainer links its own nix version; go through the raw pid.
    let pid = nix::unistd::Pid::from_raw(container.pid().context("no init pid")?.as_raw());
    container.start().context("start")?;
    let code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => break c as u8,
            Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as u8,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("wait"),
        }
    };
    container.delete(true).context("delete")?;
    Ok(code)
}
