//! Drives the installed shape of Strata as a user does: the real binaries (`volctl`,
//! `strata-csi`, `strata-provisioner`, `strata-node`) in a temp state dir, through
//! `volctl` only. The tests are in `tests/`; this is their harness.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The binaries `volctl up` runs, found (and built when missing) by testkit's one locator.
const BINARIES: [&str; 5] = [
    "volctl",
    "strata-csi",
    "strata-provisioner",
    "strata-node",
    "strata-runtime",
];

/// The target dir's profile dir (`target/debug`), with every binary of [`BINARIES`] in it:
/// volctl finds the daemons next to itself.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let bins: Vec<PathBuf> = BINARIES
            .iter()
            .map(|b| testkit::workspace_binary(b))
            .collect();
        bins[0].parent().expect("target/<profile>").to_path_buf()
    })
}

/// The repository's `examples/` dir.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// One state dir and `volctl` against it. Dropping it runs `volctl down` and then
/// removes whatever mount or loop device is still left, so a failed test leaks nothing.
pub struct Strata {
    state: PathBuf,
}

impl Strata {
    pub fn new(prefix: &str) -> Strata {
        Strata {
            state: testkit::unique_temp_dir(prefix),
        }
    }

    /// A running standalone node (`volctl up -d`) with the examples' busybox image.
    pub fn up_with_busybox(prefix: &str) -> Strata {
        let s = Strata::new(prefix);
        s.ok(&["image", "build", "busybox:latest", "--busybox"]);
        s.ok(&["up", "-d"]);
        s
    }

    pub fn state(&self) -> &Path {
        &self.state
    }

    pub fn volctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin_dir().join("volctl"));
        c.arg("--state-dir").arg(&self.state).args(args);
        c
    }

    /// Runs volctl with `stdin` as its input.
    pub fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.volctl(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run volctl");
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("volctl output")
    }

    /// Runs volctl and returns its stdout, failing the test with its stderr on error.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    pub fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run_with(args, stdin);
        assert!(
            out.status.success(),
            "volctl {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs volctl expecting failure; returns its stdout and stderr together.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run_with(args, None);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "volctl {args:?} should fail:\n{text}"
        );
        text
    }

    /// `volctl get KIND NAME -o json`, or None when it does not exist.
    pub fn get(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        let out = self.run_with(&["get", kind, name, "-o", "json"], None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("json"))
    }

    /// The items of `volctl get KIND -o json`.
    pub fn list(&self, kind: &str) -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["get", kind, "-o", "json"])).expect("json");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// What is left of the state dir's run: mounts, loop devices and live processes.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = testkit::mounts_under(&self.state)
            .into_iter()
            .map(|m| format!("mount {}", m.mount_point.display()))
            .collect();
        out.extend(
            testkit::loops_backed_under(&self.state)
                .into_iter()
                .map(|l| format!("loop {}", l.device.display())),
        );
        out.extend(self.processes().into_iter().map(|p| format!("process {p}")));
        out
    }

    /// Processes whose command line names this state dir.
    pub fn processes(&self) -> Vec<String> {
        let state = self.state.to_string_lossy().into_owned();
        processes_where(|cmd| cmd.contains(&state))
    }
}

/// Other processes whose command line (arguments joined by spaces) passes `keep`, as
/// `pid: command line`.
pub fn processes_where(keep: impl Fn(&str) -> bool) -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && *n != me)
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            keep(&cmd).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
}

impl Drop for Strata {
    fn drop(&mut self) {
        if self.state.join("run").exists() {
            let _ = self.run_with(&["down", "--timeout", "120"], None);
        }
        // Whatever a failed test left: processes first, then mounts and loop devices.
        for p in self.processes() {
            if let Some(pid) = p.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        let (mounts, loops) = testkit::cleanup_under(&self.state);
        if mounts.is_empty() && loops.is_empty() {
            let _ = std::fs::remove_dir_all(&self.state);
        } else {
            eprintln!(
                "leaving {}: {} mounts and {} loop devices remain",
                self.state.display(),
                mounts.len(),
                loops.len()
            );
        }
    }
}

/// Waits for `cond` with the suite's deadline for anything the daemons do.
pub fn wait_for<T>(what: &str, cond: impl FnMut() -> Option<T>) -> T {
    testkit::wait_for(what, Duration::from_secs(60), cond)
}
