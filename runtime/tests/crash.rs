//! `strata-runtime` killed part-way through `create` or `delete`, at every failpoint
//! (`strata_runtime::failpoint::ALL`, so a new one is covered or this test fails) and
//! inside libcontainer (a createRuntime hook that SIGKILLs the runtime): a later
//! `delete --force` must remove every mount, cgroup, process and file, and the id
//! must be usable again.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Output;

use common::*;

struct Bundle {
    env: Env,
    dir: PathBuf,
    /// The in-rootfs target of the bundle's one bind-mounted volume.
    volume_target: PathBuf,
}

/// A `runc spec` bundle running `args`, with one bind volume (so the premount steps
/// run) and whatever `edit` adds.
fn bundle(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> Bundle {
    let env = Env::new();
    let vol = env.path("vol");
    std::fs::create_dir(&vol).unwrap();
    let dir = runc_spec_bundle(&env, args, |c| {
        // Listed first: create binds a leading bind itself (the premount steps).
        c["mounts"].as_array_mut().unwrap().insert(
            0,
            serde_json::json!({
                "destination": "/mnt/vol", "type": "bind", "source": vol,
                "options": ["rbind", "rprivate"]
            }),
        );
        edit(c);
    });
    Bundle {
        env,
        volume_target: dir.join("rootfs/mnt/vol"),
        dir,
    }
}

/// Runs the CLI with the failpoint armed (or none). A created container's init
/// inherits stdout and stderr and keeps them until it is deleted, so they go to a
/// file rather than a pipe that would only close then.
fn cli(b: &Bundle, failpoint: Option<&str>, args: &[&str]) -> Output {
    use std::io::{Read, Seek};
    let mut stderr = tempfile::tempfile().unwrap();
    let mut c = b.env.cli();
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr.try_clone().unwrap());
    match failpoint {
        Some(f) => c.env(strata_runtime::failpoint::ENV, f),
        None => c.env_remove(strata_runtime::failpoint::ENV),
    };
    let status = c.status().unwrap();
    let mut err = Vec::new();
    stderr.rewind().unwrap();
    stderr.read_to_end(&mut err).unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr: err,
    }
}

fn create(b: &Bundle, failpoint: Option<&str>, id: &str) -> Output {
    let dir = b.dir.to_string_lossy().into_owned();
    cli(b, failpoint, &["create", "--bundle", &dir, id])
}

fn assert_aborted(o: &Output, at: &str) {
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGABRT),
        "expected an abort at {at}: {o:?}"
    );
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Nothing of container `id` is left: no volume mount, cgroup, state or lock.
fn assert_gone(b: &Bundle, id: &str, case: &str) {
    assert!(
        !is_mountpoint(&b.volume_target),
        "{case}: volume still mounted"
    );
    assert!(
        !testkit::cgroup_exists(&format!("strata-{id}")),
        "{case}: cgroup left behind"
    );
    let st = &b.env.state;
    for leftover in [
        st.join(id),
        st.join(".strata").join(id),
        st.join(".strata").join(format!("{id}.lock")),
    ] {
        assert!(!leftover.exists(), "{case}: {leftover:?} left behind");
    }
    let o = cli(b, None, &["state", id]);
    assert!(!o.status.success(), "{case}: state still answers");
}

/// The id works again after the clean-up: a full run to completion.
fn assert_reusable(b: &Bundle, id: &str, case: &str) {
    let dir = b.dir.to_string_lossy().into_owned();
    let o = cli(b, None, &["run", "--bundle", &dir, id]);
    assert_ok(&o, &format!("{case}: run after clean-up"));
    assert_gone(b, id, case);
}

#[test]
fn delete_cleans_up_after_a_crash_at_every_failpoint() {
    if !testkit::require_root("delete_cleans_up_after_a_crash_at_every_failpoint") {
        return;
    }
    let b = bundle(&["/bin/true"], |_| {});
    for (n, fp) in strata_runtime::failpoint::ALL.iter().enumerate() {
        let id = testkit::unique_id(&format!("fp{n}"));
        let _guard = testkit::ContainerGuard {
            binary: BIN.into(),
            root: b.env.state.clone(),
            id: id.clone(),
        };
        if fp.starts_with("create:") {
            assert_aborted(&create(&b, Some(fp), &id), fp);
        } else {
            assert_ok(&create(&b, None, &id), "create");
            assert_aborted(&cli(&b, Some(fp), &["delete", "--force", &id]), fp);
        }
        assert_ok(&cli(&b, None, &["delete", "--force", &id]), fp);
        assert_gone(&b, &id, fp);
        // A second delete finds nothing, as for any deleted container.
        let o = cli(&b, None, &["delete", &id]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not found"),
            "{fp}: second delete: {o:?}"
        );
        assert_reusable(&b, &id, fp);
    }
}

#[test]
fn delete_cleans_up_after_a_crash_inside_libcontainer() {
    if !testkit::require_root("delete_cleans_up_after_a_crash_inside_libcontainer") {
        return;
    }
    // createRuntime hooks run in the runtime's own process after the namespaces and
    // cgroups exist and before create returns: killing our parent there is a crash
    // in the middle of libcontainer's work.
    let b = bundle(&["/bin/true"], |c| {
        c["hooks"] = serde_json::json!({
            "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "kill -9 $PPID"]}]
        });
    });
    let id = testkit::unique_id("inlc");
    let _guard = testkit::ContainerGuard {
        binary: BIN.into(),
        root: b.env.state.clone(),
        id: id.clone(),
    };
    let o = create(&b, None, &id);
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{o:?}");
    assert!(
        testkit::cgroup_exists(&format!("strata-{id}")),
        "the crash should have come after the cgroups were made"
    );
    // The half-made container is still visible, so it can be found and removed.
    let listed = b
        .env
        .cli()
        .args(["list", "-q"])
        .env_remove(strata_runtime::failpoint::ENV)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&id),
        "{listed:?}"
    );
    assert_ok(
        &cli(&b, None, &["delete", "--force", &id]),
        "delete --force",
    );
    assert_gone(&b, &id, "createRuntime crash");
    // The hook would kill the next create too: the same bundle without it.
    let path = b.dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c.as_object_mut().unwrap().remove("hooks");
    std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
    assert_reusable(&b, &id, "createRuntime crash");
}

#[test]
fn failpoint_names_are_checked_at_start_up() {
    // A typo must fail loudly instead of arming nothing.
    let env = Env::new();
    let o = env
        .cli()
        .env(strata_runtime::failpoint::ENV, "create:no_such_step")
        .arg("list")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("create:no_such_step"));
}

#[test]
fn delete_removes_a_libcontainer_dir_that_never_got_its_state() {
    if !testkit::require_root("delete_removes_a_libcontainer_dir_that_never_got_its_state") {
        return;
    }
    // libcontainer makes <root>/<id> and its config before it writes state.json;
    // a crash in between leaves a directory no load can read, and which made
    // `create` of the same id answer "exists" forever.
    let b = bundle(&["/bin/true"], |_| {});
    let id = testkit::unique_id("nostate");
    let lc_dir = b.env.state.join(&id);
    std::fs::create_dir_all(&lc_dir).unwrap();
    std::fs::write(lc_dir.join("config.json"), "{}").unwrap();
    std::fs::create_dir_all(b.env.state.join(".strata")).unwrap();
    let o = create(&b, None, &id);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("exists"),
        "{o:?}"
    );
    assert_ok(&cli(&b, None, &["delete", &id]), "delete");
    assert_gone(&b, &id, "no state.json");
    assert_reusable(&b, &id, "no state.json");
}
