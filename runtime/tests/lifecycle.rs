//! The runc-compatible CLI on a bundle written by `runc spec`: the OCI lifecycle,
//! refused transitions, hooks, and cleanup.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

struct Bundle {
    env: Env,
    dir: std::path::PathBuf,
}

/// `runc spec` output with only `terminal` and `args` changed (and hooks added
/// where a test needs them).
fn runc_bundle(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> Bundle {
    let env = Env::new();
    let dir = runc_spec_bundle(&env, args, edit);
    Bundle { env, dir }
}

fn cli(b: &Bundle, args: &[&str]) -> Output {
    b.env
        .cli()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status(b: &Bundle, id: &str) -> String {
    let s: serde_json::Value = serde_json::from_str(&ok(&cli(b, &["state", id]))).unwrap();
    s["status"].as_str().unwrap().to_string()
}

fn create(b: &Bundle, id: &str, extra: &[&str]) -> testkit::ContainerGuard {
    let bundle = b.dir.to_string_lossy().into_owned();
    let log = b.env.path("out.log").to_string_lossy().into_owned();
    let mut args = vec!["create", "--bundle", &bundle, "--output", &log];
    args.extend_from_slice(extra);
    args.push(id);
    ok(&cli(b, &args));
    testkit::ContainerGuard {
        binary: BIN.into(),
        root: b.env.state.clone(),
        id: id.to_string(),
    }
}

#[test]
fn lifecycle_on_a_runc_spec_bundle() {
    if !testkit::require_root("lifecycle_on_a_runc_spec_bundle") {
        return;
    }
    let b = runc_bundle(
        &[
            "sh",
            "-c",
            "trap 'exit 3' TERM; echo started; while true; do sleep 0.1; done",
        ],
        |_| {},
    );
    let id = testkit::unique_id("life");
    let pid_file = b.env.path("pid");
    let _guard = create(&b, &id, &["--pid-file", &pid_file.to_string_lossy()]);

    let state: serde_json::Value = serde_json::from_str(&ok(&cli(&b, &["state", &id]))).unwrap();
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["bundle"], b.dir.to_string_lossy().as_ref());
    let pid = state["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    assert!(ok(&cli(&b, &["list", "-q"])).lines().any(|l| l == id));
    // The process waits for start: nothing has run yet.
    assert!(
        !std::fs::read_to_string(b.env.path("out.log"))
            .unwrap()
            .contains("started")
    );
    assert!(
        err(&cli(
            &b,
            &["create", "--bundle", &b.dir.to_string_lossy(), &id]
        ))
        .contains("already exists")
    );

    ok(&cli(&b, &["start", &id]));
    assert_eq!(status(&b, &id), "running");
    testkit::wait_for("container output", Duration::from_secs(10), || {
        std::fs::read_to_string(b.env.path("out.log"))
            .unwrap()
            .contains("started")
            .then_some(())
    });
    assert!(err(&cli(&b, &["start", &id])).contains("is running: cannot start"));
    assert!(err(&cli(&b, &["delete", &id])).contains("is running: cannot delete"));
    assert!(err(&cli(&b, &["kill", &id, "NOSUCHSIG"])).contains("not a signal"));

    // Default signal TERM, which the trap turns into exit 3.
    ok(&cli(&b, &["kill", &id]));
    testkit::wait_for("container to stop", Duration::from_secs(10), || {
        (status(&b, &id) == "stopped").then_some(())
    });
    assert!(err(&cli(&b, &["kill", &id, "KILL"])).contains("is stopped: cannot kill"));
    assert!(err(&cli(&b, &["start", &id])).contains("is stopped: cannot start"));

    ok(&cli(&b, &["delete", &id]));
    assert!(err(&cli(&b, &["state", &id])).contains("not found"));
    assert!(!ok(&cli(&b, &["list", "-q"])).lines().any(|l| l == id));
    assert!(
        !testkit::cgroup_exists(&format!("strata-{id}")),
        "cgroup left behind"
    );
    assert!(err(&cli(&b, &["delete", &id])).contains("not found"));
    assert!(err(&cli(&b, &["start", "no-such"])).contains("not found"));
    assert!(err(&cli(&b, &["state", "../etc"])).contains("invalid container id"));
}

#[test]
fn run_returns_exit_status_and_force_delete_kills() {
    if !testkit::require_root("run_returns_exit_status_and_force_delete_kills") {
        return;
    }
    let b = runc_bundle(&["sh", "-c", "exit 42"], |_| {});
    let id = testkit::unique_id("run");
    let o = cli(&b, &["run", "--bundle", &b.dir.to_string_lossy(), &id]);
    assert_eq!(
        o.status.code(),
        Some(42),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        err(&cli(&b, &["state", &id])).contains("not found"),
        "run must delete"
    );

    let b = runc_bundle(&["sleep", "600"], |_| {});
    let id = testkit::unique_id("force");
    let _g = create(&b, &id, &[]);
    ok(&cli(&b, &["start", &id]));
    let pid =
        serde_json::from_str::<serde_json::Value>(&ok(&cli(&b, &["state", &id]))).unwrap()["pid"]
            .as_i64()
            .unwrap();
    ok(&cli(&b, &["delete", "--force", &id]));
    testkit::wait_for("init to die", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    });
}

#[test]
fn hooks_run_at_the_points_the_spec_names() {
    if !testkit::require_root("hooks_run_at_the_points_the_spec_names") {
        return;
    }
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().to_string_lossy().into_owned();
    let hook = |name: &str| serde_json::json!([{ "path": "/bin/sh", "args": ["sh", "-c", format!("cat > {m}/{name}")] }]);
    let b = runc_bundle(&["true"], |c| {
        c["hooks"] = serde_json::json!({
            "createRuntime": hook("createRuntime"),
            "poststart": hook("poststart"),
            "poststop": hook("poststop"),
        });
    });
    let id = testkit::unique_id("hooks");
    let _g = create(&b, &id, &[]);
    let created: serde_json::Value =
        serde_json::from_slice(&std::fs::read(marks.path().join("createRuntime")).unwrap())
            .unwrap();
    assert_eq!(
        created["id"],
        id.as_str(),
        "hooks receive the state on stdin"
    );
    assert!(!marks.path().join("poststart").exists());
    ok(&cli(&b, &["start", &id]));
    assert!(marks.path().join("poststart").exists());
    assert!(!marks.path().join("poststop").exists());
    testkit::wait_for("container to stop", Duration::from_secs(10), || {
        (status(&b, &id) == "stopped").then_some(())
    });
    ok(&cli(&b, &["delete", &id]));
    assert!(marks.path().join("poststop").exists());
}

#[test]
fn failed_create_leaves_nothing_behind() {
    if !testkit::require_root("failed_create_leaves_nothing_behind") {
        return;
    }
    let vol = tempfile::tempdir().unwrap();
    let vol_s = vol.path().to_string_lossy().into_owned();
    // The first volume mounts, the second's source is missing: all must be undone.
    // Listed first, so create binds them itself (a later bind is libcontainer's).
    let b = runc_bundle(&["true"], |c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.insert(0, serde_json::json!({"destination": "/v1", "type": "bind", "source": vol_s, "options": ["rbind"]}));
        mounts.insert(1, serde_json::json!({"destination": "/v2", "type": "bind", "source": "/no/such/dir", "options": ["rbind"]}));
    });
    let id = testkit::unique_id("fail");
    let e = err(&cli(
        &b,
        &["create", "--bundle", &b.dir.to_string_lossy(), &id],
    ));
    assert!(e.contains("/no/such/dir"), "{e}");
    assert!(
        !is_mountpoint(&b.dir.join("rootfs/v1")),
        "first volume left mounted"
    );
    assert!(err(&cli(&b, &["state", &id])).contains("not found"));
    assert!(ok(&cli(&b, &["list", "-q"])).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(b.env.state.join(".strata"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!testkit::cgroup_exists(&format!("strata-{id}")));
    // A bundle without config.json: a clear error, nothing created.
    let empty = tempfile::tempdir().unwrap();
    let e = err(&cli(
        &b,
        &["create", "--bundle", &empty.path().to_string_lossy(), &id],
    ));
    assert!(e.contains("config.json"), "{e}");
    assert!(ok(&cli(&b, &["list", "-q"])).is_empty());
}

#[test]
fn delete_undoes_what_an_interrupted_create_left() {
    if !testkit::require_root("delete_undoes_what_an_interrupted_create_left") {
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.state.join(".strata")).unwrap();
    let rootfs = env.path("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let vol = env.path("vol");
    std::fs::create_dir(&vol).unwrap();
    let bind = |dest: &str| strata_runtime::BindMount {
        source: vol.clone(),
        destination: dest.into(),
        read_only: false,
        propagation: strata_runtime::Propagation::None,
    };
    // Step 1 interrupted after its record and its mount; step 2 after its record only.
    let landed = strata_runtime::volumes::mount_bind(&rootfs, &bind("/v1")).unwrap();
    let _g = testkit::MountGuard(landed.clone());
    let never = rootfs.join("v2");
    let id = testkit::unique_id("crash");
    let ours = env.state.join(".strata").join(&id);
    std::fs::create_dir(&ours).unwrap();
    std::fs::write(
        ours.join("premounts.json"),
        serde_json::to_vec(&[&landed, &never]).unwrap(),
    )
    .unwrap();
    std::fs::write(env.state.join(".strata").join(format!("{id}.lock")), "").unwrap();
    assert!(is_mountpoint(&landed));

    let o = env.cli().args(["delete", &id]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !is_mountpoint(&landed),
        "volume of the interrupted create still mounted"
    );
    assert!(!ours.exists());
    let o = env.cli().args(["delete", &id]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
}

#[test]
fn run_forwards_signals_to_the_container() {
    if !testkit::require_root("run_forwards_signals_to_the_container") {
        return;
    }
    let b = runc_bundle(
        &[
            "sh",
            "-c",
            "trap 'exit 9' TERM; echo ready; while :; do sleep 0.1; done",
        ],
        |_| {},
    );
    let id = testkit::unique_id("fwd");
    let _g = testkit::ContainerGuard {
        binary: BIN.into(),
        root: b.env.state.clone(),
        id: id.clone(),
    };
    let log = b.env.path("fwd.log");
    let mut child = b
        .env
        .cli()
        .args(["run", "--bundle"])
        .arg(&b.dir)
        .arg("--output")
        .arg(&log)
        .arg(&id)
        .spawn()
        .unwrap();
    testkit::wait_for("container to be ready", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
            .then_some(())
    });
    // `run` takes over TERM once the container has started: wait for its mask.
    let status_path = format!("/proc/{}/status", child.id());
    testkit::wait_for("run to block TERM", Duration::from_secs(10), || {
        let s = std::fs::read_to_string(&status_path).ok()?;
        let blk = s
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))?
            .trim()
            .to_string();
        let mask = u64::from_str_radix(&blk, 16).ok()?;
        (mask & (1 << (libc_sigterm() - 1)) != 0).then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(9),
        "TERM was not forwarded to the container"
    );
}

fn libc_sigterm() -> u32 {
    nix::sys::signal::Signal::SIGTERM as u32
}

/// Whether the container's cgroup is frozen: v1 `freezer.state`, or v2 `cgroup.freeze`.
fn frozen(id: &str) -> bool {
    let v1 = Path::new("/sys/fs/cgroup/freezer").join(format!("strata-{id}/freezer.state"));
    if let Ok(s) = std::fs::read_to_string(&v1) {
        return s.trim() == "FROZEN";
    }
    let v2 = Path::new("/sys/fs/cgroup").join(format!("strata-{id}/cgroup.freeze"));
    std::fs::read_to_string(&v2)
        .unwrap_or_else(|e| panic!("{}: {e}", v2.display()))
        .trim()
        == "1"
}

#[test]
fn pause_freezes_and_resume_thaws() {
    if !testkit::require_root("pause_freezes_and_resume_thaws") {
        return;
    }
    let b = runc_bundle(&["sh", "-c", "while true; do sleep 0.1; done"], |_| {});
    let id = testkit::unique_id("pause");
    let _guard = create(&b, &id, &[]);
    assert!(err(&cli(&b, &["pause", &id])).contains("is created: cannot pause"));
    ok(&cli(&b, &["start", &id]));

    ok(&cli(&b, &["pause", &id]));
    assert_eq!(status(&b, &id), "paused");
    assert!(frozen(&id), "paused but not frozen");
    assert!(err(&cli(&b, &["pause", &id])).contains("is paused: cannot pause"));
    assert!(err(&cli(&b, &["start", &id])).contains("is paused: cannot start"));

    ok(&cli(&b, &["resume", &id]));
    assert_eq!(status(&b, &id), "running");
    assert!(!frozen(&id), "resumed but still frozen");
    assert!(err(&cli(&b, &["resume", &id])).contains("is running: cannot resume"));

    // A paused container goes with delete --force, as with runc.
    ok(&cli(&b, &["pause", &id]));
    ok(&cli(&b, &["delete", "--force", &id]));
    assert!(err(&cli(&b, &["state", &id])).contains("not found"));
    assert!(
        !testkit::cgroup_exists(&format!("strata-{id}")),
        "cgroup left behind"
    );
    assert!(err(&cli(&b, &["pause", "no-such"])).contains("not found"));
}
