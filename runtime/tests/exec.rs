//! `strata-runtime exec` and `Helper::exec`: a further process in a running
//! container's namespaces and cgroup, its exit code, options and refusals.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use strata_runtime::{ExecOptions, ExecOutcome, Helper};

/// A running container (`runc spec` bundle, a shell loop as init) and its guard.
/// The guard is declared first so that it drops first: `delete --force` needs the
/// state root that dropping `env` removes (the other way round, every test left its
/// container running).
struct Running {
    _guard: testkit::ContainerGuard,
    env: Env,
    id: String,
}

fn running(name: &str) -> Running {
    let env = Env::new();
    let dir = runc_spec_bundle(&env, &["sh", "-c", "while :; do sleep 0.1; done"], |_| {});
    let id = testkit::unique_id(name);
    let guard = testkit::ContainerGuard {
        binary: BIN.into(),
        root: env.state.clone(),
        id: id.clone(),
    };
    let log = env.path("out.log");
    for args in [
        vec![
            "create".as_ref(),
            "--bundle".as_ref(),
            dir.as_os_str(),
            "--output".as_ref(),
            log.as_os_str(),
            id.as_ref(),
        ],
        vec!["start".as_ref(), id.as_ref()],
    ] {
        let o = env.cli().args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    Running {
        _guard: guard,
        env,
        id,
    }
}

fn exec(r: &Running, args: &[&str]) -> Output {
    r.env
        .cli()
        .arg("exec")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn exec_runs_in_the_container_and_returns_its_exit_code() {
    if !testkit::require_root("exec_runs_in_the_container_and_returns_its_exit_code") {
        return;
    }
    let r = running("exec");
    let id = r.id.as_str();
    // Its pid namespace (pid 1 is the container's init), its cgroup, the container's env plus ours, the cwd asked for.
    let o = exec(
        &r,
        &[
            "-e",
            "FOO=bar baz",
            "--cwd",
            "/tmp",
            id,
            "sh",
            "-c",
            "tr '\\0' ' ' < /proc/1/cmdline; echo; grep -c strata- /proc/self/cgroup; echo $FOO; echo $PATH; pwd; id -u; echo err >&2; exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "sh -c while :; do sleep 0.1; done ",
        "not in the container's pid namespace: {out}"
    );
    assert_ne!(lines[1], "0", "not in the container's cgroup: {out}");
    assert_eq!(
        &lines[2..],
        [
            "bar baz",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "/tmp",
            "0"
        ]
    );
    assert_eq!(stderr(&o), "err\n");

    // `--` before the command, and a user.
    let o = exec(&r, &["--user", "1000:1001", "-g", "7", id, "--", "id"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("uid=1000 gid=1001"), "{out}");
    assert!(out.contains("groups=") && out.contains('7'), "{out}");

    // A process file, as runc takes it.
    let process = r.env.path("process.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&serde_json::json!({
            "args": ["sh", "-c", "echo $X; exit 3"],
            "env": ["X=from-file", "PATH=/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_KILL", "CAP_TEST"]},
        }))
        .unwrap(),
    )
    .unwrap();
    let o = exec(&r, &["--process", &process.to_string_lossy(), id]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "from-file\n");
    assert!(
        stderr(&o).contains("CAP_TEST"),
        "no warning: {}",
        stderr(&o)
    );

    // A long exec does not hold the container: state answers while it still runs (the
    // exec's process is seen inside first, so the exec is past its set-up).
    let mut long = r
        .env
        .cli()
        .args(["exec", id, "sleep", "600"])
        .spawn()
        .unwrap();
    testkit::wait_for("the long exec to run", Duration::from_secs(60), || {
        let o = exec(&r, &[id, "sh", "-c", "ps -o args | grep -c '^sleep 600'"]);
        (String::from_utf8_lossy(&o.stdout).trim() == "1").then_some(())
    });
    let mut state = r
        .env
        .cli()
        .args(["state", id])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Bounded so that a state that waits for the exec fails here instead of hanging.
    let answered = testkit::wait_for("state while the exec runs", Duration::from_secs(60), || {
        state.try_wait().unwrap()
    });
    assert!(answered.success(), "state failed while an exec ran");
    assert!(
        long.try_wait().unwrap().is_none(),
        "state answered only once the exec had ended"
    );
    let o = exec(&r, &[id, "killall", "sleep"]);
    assert!(o.status.success(), "{}", stderr(&o));
    long.wait().unwrap();

    // Timeout: killed, 137.
    let o = exec(&r, &["--timeout", "1", id, "sleep", "30"]);
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
}

#[test]
fn exec_refuses_clearly() {
    if !testkit::require_root("exec_refuses_clearly") {
        return;
    }
    let r = running("exec-bad");
    let id = r.id.as_str();
    let refused = |args: &[&str], want: &str| {
        let o = exec(&r, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    };
    refused(&["--tty", id, "sh"], "--tty is not supported");
    refused(&[id], "no command given");
    refused(&["--cwd", "tmp", id, "true"], "must be absolute");
    refused(&["-e", "NOEQUALS", id, "true"], "not KEY=VALUE");
    refused(&["--user", "nobody", id, "true"], "not a numeric id");
    refused(&["no-such", "true"], "not found");
    let process = r.env.path("p.json");
    std::fs::write(
        &process,
        r#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0},"terminal":true}"#,
    )
    .unwrap();
    refused(&["--process", &process.to_string_lossy(), id], "terminal");
    refused(
        &["--process", &process.to_string_lossy(), id, "true"],
        "give no command",
    );
    // A command that does not exist in the container.
    let o = exec(&r, &[id, "/no/such/binary"]);
    assert!(!o.status.success());

    // A stopped container.
    let o = r.env.cli().args(["kill", id, "KILL"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    testkit::wait_for("container to stop", Duration::from_secs(10), || {
        let o = r.env.cli().args(["state", id]).output().unwrap();
        stdout(&o).contains("\"stopped\"").then_some(())
    });
    refused(&[id, "true"], "is stopped: cannot exec");
}

#[test]
fn helper_exec_collects_output_and_tells_failures_apart() {
    if !testkit::require_root("helper_exec_collects_output_and_tells_failures_apart") {
        return;
    }
    let r = running("hexec");
    let helper = Helper::new(BIN, &r.env.state);
    let opts = |args: &[&str]| ExecOptions {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    // A process exiting 1 is an outcome, not an error.
    let out = helper
        .exec(
            &r.id,
            &opts(&["sh", "-c", "echo probe; echo bad >&2; exit 1"]),
        )
        .unwrap();
    assert_eq!(out.outcome, ExecOutcome::Exited(1));
    assert_eq!(out.stdout, b"probe\n");
    assert_eq!(out.stderr, b"bad\n");
    let out = helper
        .exec(
            &r.id,
            &ExecOptions {
                env: vec!["A=1".into()],
                cwd: Some("/tmp".into()),
                user: Some((5, None)),
                ..opts(&["sh", "-c", "echo $A $(pwd) $(id -u):$(id -g)"])
            },
        )
        .unwrap();
    assert_eq!(out.outcome, ExecOutcome::Exited(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 /tmp 5:0\n");
    let out = helper
        .exec(
            &r.id,
            &ExecOptions {
                timeout: Some(Duration::from_millis(200)),
                ..opts(&["sleep", "30"])
            },
        )
        .unwrap();
    assert_eq!(out.outcome, ExecOutcome::TimedOut);
    // The runtime failing is an error that says why.
    let e = helper
        .exec("no-such", &opts(&["true"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
    // exec_command: the caller's stdio, the process's exit code.
    let st = helper
        .exec_command(&r.id, &opts(&["sh", "-c", "exit 4"]))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(4));
    let leftovers: Vec<_> = std::fs::read_dir(r.env.state.join(".strata"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
