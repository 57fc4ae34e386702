//! Runtime-spec behaviour that the OCI runtime-tools suite checks and runc
//! passes: per-mount propagation options on binds, and capabilities the runtime
//! cannot grant (a warning, not a failure).

mod common;

use std::path::Path;

use common::*;

/// Runs a `runc spec` bundle edited by `edit` to completion with `strata-runtime
/// run`; returns (exit code, container output, runtime stderr).
fn run_bundle(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> (i32, String, String) {
    let env = Env::new();
    let dir = runc_spec_bundle(&env, args, edit);
    let id = testkit::unique_id("conf");
    let _g = testkit::ContainerGuard {
        binary: BIN.into(),
        root: env.state.clone(),
        id: id.clone(),
    };
    let log = env.path("out.log");
    let o = env
        .cli()
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg("--output")
        .arg(&log)
        .arg(&id)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        std::fs::read_to_string(&log).unwrap_or_default(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The optional fields (shared:N, master:N, unbindable, ...) of the mount at
/// `point` in a mountinfo dump, or None when nothing is mounted there.
fn optional_fields(mountinfo: &str, point: &str) -> Option<Vec<String>> {
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&point)).then(|| {
            f[6..]
                .iter()
                .take_while(|x| **x != "-")
                .map(|x| x.split(':').next().unwrap().to_string())
                .collect()
        })
    })
}

#[test]
fn bind_propagation_options_reach_the_container() {
    if !testkit::require_root("bind_propagation_options_reach_the_container") {
        return;
    }
    // A shared source with a submount, so that slave has a master to follow and
    // the r-forms have something to recurse into.
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    let sub = vol.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let vol_s = vol.to_string_lossy().into_owned();
    rustix::mount::mount_bind(&vol, &vol).unwrap();
    let _vol_guard = testkit::MountGuard(vol.clone());
    rustix::mount::mount_change(&vol, rustix::mount::MountPropagationFlags::SHARED).unwrap();
    rustix::mount::mount(
        "tmpfs",
        &sub,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=1m",
    )
    .unwrap();
    let _sub_guard = testkit::MountGuard(sub.clone());

    // (option, bind kind, optional fields the mount must show, must not show).
    // A shared bind also stays a slave of the host's mount, as runc's does.
    let shared: (&[&str], &[&str]) = (&["shared"], &["unbindable"]);
    let slave: (&[&str], &[&str]) = (&["master"], &["shared", "unbindable"]);
    let private: (&[&str], &[&str]) = (&[], &["shared", "master", "unbindable"]);
    let unbindable: (&[&str], &[&str]) = (&["unbindable"], &["shared", "master"]);
    let cases = [
        ("shared", "bind", shared),
        ("rshared", "rbind", shared),
        ("slave", "bind", slave),
        ("rslave", "rbind", slave),
        ("private", "bind", private),
        ("rprivate", "rbind", private),
        ("unbindable", "bind", unbindable),
        ("runbindable", "rbind", unbindable),
    ];
    let (code, out, stderr) = run_bundle(&["cat", "/proc/self/mountinfo"], |c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        for (opt, bind, _) in &cases {
            // As runtime-tools writes them: no type, nosuid, the bind and the option.
            mounts.push(serde_json::json!({
                "destination": format!("/mnt/{opt}"),
                "source": vol_s,
                "options": ["nosuid", bind, opt],
            }));
        }
    });
    assert_eq!(code, 0, "{stderr}");
    for (opt, bind, (have, lack)) in &cases {
        let top = format!("/mnt/{opt}");
        let nested = format!("/mnt/{opt}/sub");
        let check = |point: &str| {
            let fields = optional_fields(&out, point)
                .unwrap_or_else(|| panic!("{point} ({bind},{opt}) not mounted:\n{out}"));
            for h in *have {
                assert!(
                    fields.iter().any(|f| f == h),
                    "{point} ({bind},{opt}) lacks {h}: {fields:?}"
                );
            }
            for l in *lack {
                assert!(
                    !fields.iter().any(|f| f == l),
                    "{point} ({bind},{opt}) is {l}: {fields:?}"
                );
            }
        };
        check(&top);
        if *bind == "bind" {
            assert!(
                optional_fields(&out, &nested).is_none(),
                "{nested} mounted by a plain bind"
            );
        } else {
            check(&nested);
        }
    }
    assert!(Path::new(&sub).exists());
}

#[test]
fn mounts_are_made_in_the_listed_order() {
    if !testkit::require_root("mounts_are_made_in_the_listed_order") {
        return;
    }
    // runtime-spec: "The runtime MUST mount entries in the listed order." A leading
    // bind is ours (made before libcontainer runs); binds after /proc and after
    // tmpfs mounts are libcontainer's, in turn.
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    // A shared source, so that rslave has a master to show.
    rustix::mount::mount_bind(&vol, &vol).unwrap();
    let _vol_guard = testkit::MountGuard(vol.clone());
    rustix::mount::mount_change(&vol, rustix::mount::MountPropagationFlags::SHARED).unwrap();
    let src = vol.to_string_lossy().into_owned();
    let bind = |dest: &str| serde_json::json!({"destination": dest, "source": src, "options": ["rbind", "rslave"]});
    let tmpfs = |dest: &str| serde_json::json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": ["size=1k"]});
    let (code, out, stderr) = run_bundle(&["cat", "/proc/self/mountinfo"], |c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.insert(0, bind("/lead"));
        mounts.extend([
            tmpfs("/mnt/t1"),
            bind("/mnt/b1"),
            tmpfs("/mnt/t2"),
            bind("/mnt/b2"),
        ]);
    });
    assert_eq!(code, 0, "{stderr}");
    let position = |point: &str| {
        let lines: Vec<&str> = out.lines().collect();
        lines
            .iter()
            .rposition(|l| l.split(' ').nth(4) == Some(point))
            .unwrap_or_else(|| panic!("{point} not mounted:\n{out}"))
    };
    let order = ["/lead", "/proc", "/mnt/t1", "/mnt/b1", "/mnt/t2", "/mnt/b2"];
    let at: Vec<usize> = order.iter().map(|p| position(p)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "mountinfo lines {at:?} for {order:?}:\n{out}"
    );
    // The propagation option holds for both kinds of bind.
    for point in ["/lead", "/mnt/b1"] {
        let fields = optional_fields(&out, point).unwrap();
        assert!(fields.iter().any(|f| f == "master"), "{point}: {fields:?}");
    }
}

#[test]
fn unknown_capabilities_are_warned_about_not_fatal() {
    if !testkit::require_root("unknown_capabilities_are_warned_about_not_fatal") {
        return;
    }
    let (code, out, stderr) = run_bundle(&["grep", "^CapBnd", "/proc/self/status"], |c| {
        let caps = &mut c["process"]["capabilities"];
        caps["bounding"]
            .as_array_mut()
            .unwrap()
            .push("CAP_TEST".into());
        caps["effective"]
            .as_array_mut()
            .unwrap()
            .push("CAP_NOPE".into());
    });
    assert_eq!(code, 0, "create must not fail: {stderr}");
    assert!(
        stderr.contains("CAP_TEST") && stderr.contains("CAP_NOPE"),
        "no warning: {stderr}"
    );
    // The known ones (runc spec: AUDIT_WRITE, KILL, NET_BIND_SERVICE) still apply.
    let want = (1u64 << 29) | (1 << 5) | (1 << 10);
    let got = out
        .trim()
        .strip_prefix("CapBnd:")
        .unwrap_or_else(|| panic!("{out:?}"))
        .trim();
    assert_eq!(u64::from_str_radix(got, 16).unwrap(), want, "{out}");
}
