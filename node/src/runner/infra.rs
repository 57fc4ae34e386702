//! A pod's infra process: the one process that holds the namespaces every container of
//! the pod joins (the pause container's job in the kubelet).
//!
//! It is `strata-node pod-infra --uid UID --hostname NAME [--host-network]` in a process
//! group of its own, so it outlives a restart of strata-node like the containers do. It
//! unshares an IPC namespace and, unless the pod has `hostNetwork`, a network namespace
//! with its loopback up and a UTS namespace with the pod's hostname; with `hostNetwork`
//! the network and UTS namespaces it holds are the node's. It says `ready` on stdout and
//! then sleeps until it is signalled. Containers join `/proc/<pid>/ns/{net,uts,ipc}`.
//!
//! `<state>/runner/<uid>/infra` records `<pid> <start time>`: a restarted strata-node
//! finds its infra again, and a reused pid (another start time) is never taken for it.

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use strata_runtime::NamespaceKind;

use crate::layout;

/// The subcommand of the strata-node binary that runs an infra process.
pub const SUBCOMMAND: &str = "pod-infra";

/// A running infra process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infra {
    pub pid: i32,
    start_time: u64,
}

impl Infra {
    fn ns(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{name}", self.pid))
    }

    /// The pod's network namespace (the node's for hostNetwork pods).
    pub fn netns(&self) -> PathBuf {
        self.ns("net")
    }

    /// The namespaces a container of the pod joins.
    pub fn join(&self) -> Vec<(NamespaceKind, PathBuf)> {
        vec![
            (NamespaceKind::Network, self.ns("net")),
            (NamespaceKind::Uts, self.ns("uts")),
            (NamespaceKind::Ipc, self.ns("ipc")),
        ]
    }

    /// Still the process we started (same pid and start time), and not ended? An ended
    /// process nobody reaped yet keeps its pid and start time but has no namespaces to
    /// join: where init does not reap (a container's pid 1 often does not), the infra
    /// of a node stopped earlier stays a zombie for good.
    pub fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, t)) if t == self.start_time && !ended(state))
    }
}

/// Zombie or dead: what /proc/<pid>/stat shows for a process that has exited.
fn ended(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// Fields 3 and 22 of /proc/<pid>/stat: the process state, and when it started, in
/// clock ticks since boot.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, t)| t)
}

fn record(state: &Path, uid: &str) -> PathBuf {
    layout::runner_dir(state).join(uid).join("infra")
}

/// The pod's infra process recorded under the state dir, if it still runs.
pub fn find(state: &Path, uid: &str) -> Option<Infra> {
    let text = std::fs::read_to_string(record(state, uid)).ok()?;
    let mut it = text.split_whitespace();
    let infra = Infra {
        pid: it.next()?.parse().ok()?,
        start_time: it.next()?.parse().ok()?,
    };
    infra.alive().then_some(infra)
}

/// Starts the infra process of pod `uid` and records it; returns once its namespaces
/// are set up. Blocks.
pub fn start(
    binary: &Path,
    state: &Path,
    uid: &str,
    hostname: &str,
    host_network: bool,
) -> Result<Infra, String> {
    let mut cmd = Command::new(binary);
    cmd.args([SUBCOMMAND, "--uid", uid, "--hostname", hostname]);
    if host_network {
        cmd.arg("--host-network");
    }
    // Its own process group: a signal to strata-node's group (Ctrl-C in `volctl up`)
    // must not take the pod's namespaces with it.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line);
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        let why = match read {
            Err(e) => e.to_string(),
            Ok(_) if line.trim().is_empty() => "it exited without a word".into(),
            Ok(_) => line.trim().to_string(),
        };
        return Err(format!("pod infra process: {why}"));
    }
    let pid = child.id() as i32;
    // The Child is dropped without waiting: the exit watcher (a pidfd) reaps it later.
    let infra = Infra {
        pid,
        start_time: start_time(pid).ok_or("pod infra process ended at once")?,
    };
    let path = record(state, uid);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("under runner/"))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {}\n", infra.pid, infra.start_time))?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        stop(&infra);
        return Err(format!(
            "recording the infra process in {}: {e}",
            path.display()
        ));
    }
    Ok(infra)
}

/// Ends the infra process (SIGKILL: it holds no state) and waits until it has ended,
/// reaping it when it is our child. Its record goes with the pod's runner dir; `find`
/// no longer returns it either way.
pub fn stop(infra: &Infra) {
    stop_all(std::slice::from_ref(infra));
}

/// `stop` for many at once: all are signalled first, then waited for together (up to
/// five seconds in all), so a node with a hundred pods is not stopped one by one.
pub fn stop_all(infras: &[Infra]) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let pid = |i: &Infra| nix::unistd::Pid::from_raw(i.pid);
    // Gone and reaped, or the pid is another process's now: nothing to do.
    let mut left: Vec<&Infra> = infras
        .iter()
        .filter(|i| start_time(i.pid) == Some(i.start_time))
        .collect();
    for i in left.iter().filter(|i| i.alive()) {
        let _ = nix::sys::signal::kill(pid(i), nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // Reaps it when it is our child; ECHILD when it is not (adopted after a
        // restart), and its parent or init reaps it.
        left.retain(|i| {
            let _ = waitpid(pid(i), Some(WaitPidFlag::WNOHANG));
            i.alive()
        });
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let pids: Vec<i32> = left.iter().map(|i| i.pid).collect();
            tracing::warn!(?pids, "pod infra processes outlived SIGKILL for 5 s");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Every recorded infra process that still runs, by pod uid.
pub fn all(state: &Path) -> Vec<(String, Infra)> {
    let Ok(rd) = std::fs::read_dir(layout::runner_dir(state)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let uid = e.file_name().to_string_lossy().into_owned();
            find(state, &uid).map(|i| (uid, i))
        })
        .collect()
}

/// The infra process itself (`strata-node pod-infra ...`), before any thread exists.
pub fn main(args: &[String]) -> std::process::ExitCode {
    use nix::sched::CloneFlags;
    let mut hostname = None;
    let mut host_network = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hostname" => hostname = it.next().cloned(),
            "--uid" => {
                it.next();
            }
            "--host-network" => host_network = true,
            other => {
                println!("error: unknown argument {other:?}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let setup = || -> Result<(), String> {
        let mut flags = CloneFlags::CLONE_NEWIPC;
        if !host_network {
            flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
        }
        nix::sched::unshare(flags).map_err(|e| format!("unshare: {e}"))?;
        if !host_network {
            let name = hostname.as_deref().ok_or("--hostname is required")?;
            crate::sys::set_hostname(name).map_err(|e| format!("sethostname {name:?}: {e}"))?;
            // A new network namespace has only `lo`, and it is down.
            crate::sys::loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        println!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // The last word on stdout (the parent's pipe, gone later: nothing is written after).
    println!("ready");
    loop {
        nix::unistd::pause();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_past_odd_command_names() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("our own start time");
        assert!(t > 0);
        let infra = Infra {
            pid: me,
            start_time: t,
        };
        assert!(infra.alive());
        let other = Infra {
            pid: me,
            start_time: t + 1,
        };
        assert!(!other.alive(), "a reused pid is another process");
    }

    #[test]
    #[allow(clippy::zombie_processes)] // the zombie is the point; `stop` reaps it
    fn an_ended_infra_process_is_not_alive_and_stop_reaps_it() {
        let child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id() as i32;
        // Not waited for: it stays a zombie, as an infra process does under an init
        // that does not reap.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let start = loop {
            match proc_stat(pid) {
                Some(('Z', t)) => break t,
                Some(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                other => panic!("child {pid} never became a zombie: {other:?}"),
            }
        };
        let infra = Infra {
            pid,
            start_time: start,
        };
        assert!(!infra.alive(), "a zombie has no namespaces to join");
        stop(&infra);
        assert_eq!(proc_stat(pid), None, "stop reaps an ended child");
    }
}
