//! The examples/ files that no other test runs, run under `volctl up` as their comments
//! say, checking what the comments say a user will see: wait-for-first-consumer,
//! emptydir-sidecar, init-seed, podpreset, expansion and raw-block in one node, liveness-restart in
//! its own (it waits for a probe to fail).

use serde_json::Value;
use strata_e2e::{Strata, examples, wait_for};

fn example(name: &str) -> String {
    std::fs::read_to_string(examples().join(name)).unwrap()
}

/// The example's documents without those of `kind`.
fn without(text: &str, kind: &str) -> String {
    text.split("\n---\n")
        .filter(|d| !d.lines().any(|l| l == format!("kind: {kind}")))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// `volctl logs ARGS`, when it succeeds.
fn logs(s: &Strata, args: &[&str]) -> Option<String> {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = s.run_with(&all, None);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `volctl logs ARGS` contains `want`; returns the whole output.
fn logs_containing(s: &Strata, args: &[&str], want: &str) -> String {
    wait_for(&format!("{want:?} in logs {args:?}"), || {
        logs(s, args).filter(|l| l.contains(want))
    })
}

fn describe(s: &Strata, kind: &str, name: &str) -> String {
    s.ok(&["describe", kind, name])
}

fn claim(s: &Strata, name: &str) -> Value {
    s.get("pvc", name).unwrap_or_else(|| panic!("pvc {name}"))
}

#[test]
fn examples_do_what_their_comments_say() {
    if !testkit::require_root("examples_do_what_their_comments_say") {
        return;
    }
    let s = Strata::up_with_busybox("e2e-examples");

    // wait-for-first-consumer: the claim alone waits, with the event the comment names;
    // with its pod it is provisioned on the pod's node.
    let wffc = example("wait-for-first-consumer.yaml");
    s.ok_with(&["apply", "-f", "-"], Some(&without(&wffc, "Pod")));
    wait_for("the WaitForFirstConsumer event", || {
        describe(&s, "pvc", "wffc-data")
            .contains("waiting for first consumer to be created before binding")
            .then_some(())
    });
    assert_eq!(claim(&s, "wffc-data")["status"]["phase"], "Pending");
    s.ok_with(&["apply", "-f", "-"], Some(&wffc));
    let bound = wait_for("wffc-data Bound", || {
        let c = claim(&s, "wffc-data");
        (c["status"]["phase"] == "Bound").then_some(c)
    });
    assert_eq!(
        bound["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], "local",
        "{bound}"
    );
    let events = describe(&s, "pvc", "wffc-data");
    assert!(events.contains("Provisioning"), "{events}");

    // emptydir-sidecar: the sidecar reads the writer's lines through the emptyDir.
    s.ok(&[
        "apply",
        "-f",
        examples().join("emptydir-sidecar.yaml").to_str().unwrap(),
    ]);
    let tail = wait_for("two lines through the emptyDir", || {
        logs(&s, &["sidecar-demo", "-c", "tail"]).filter(|l| l.lines().count() >= 2)
    });
    let pod = s.get("pod", "sidecar-demo").unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let lines = s.state().join(format!(
        "pods/{uid}/volumes/kubernetes.io~empty-dir/shared/lines"
    ));
    let on_disk = std::fs::read_to_string(&lines).unwrap();
    assert!(
        on_disk.starts_with(tail.lines().next().unwrap()),
        "{on_disk:?} vs {tail:?}"
    );

    // init-seed: the init container seeds the claim, then the main container reads it.
    s.ok(&[
        "apply",
        "-f",
        examples().join("init-seed.yaml").to_str().unwrap(),
    ]);
    let main = logs_containing(&s, &["seeded"], "seeded by init at");
    assert_eq!(main.lines().count(), 1, "{main}");
    let seed = logs_containing(&s, &["seeded", "-c", "seed"], "done");
    assert_eq!(seed.trim(), "done", "{seed}");
    let pod = s.get("pod", "seeded").unwrap();
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed",
        "{pod}"
    );

    // podpreset: env, envFrom and the volume land in the matching pod only; a conflict
    // leaves the pod as written, with a Warning.
    s.ok(&[
        "apply",
        "-f",
        examples().join("podpreset.yaml").to_str().unwrap(),
    ]);
    assert!(s.ok(&["get", "podpresets"]).contains("frontend-defaults"));
    let demo = logs_containing(&s, &["preset-demo"], "/cache is writable");
    assert!(
        demo.contains("DB_HOST=db.default.svc LOG_LEVEL=debug"),
        "{demo}"
    );
    let optout = logs_containing(&s, &["preset-optout"], "DB_HOST=");
    assert!(optout.contains("DB_HOST=unset"), "{optout}");
    wait_for("the PodPresetConflict warning", || {
        describe(&s, "pod", "preset-conflict")
            .contains("PodPresetConflict")
            .then_some(())
    });

    // expansion: an xfs claim grows from 300Mi to 600Mi under its running pod.
    let grow = example("expansion.yaml");
    s.ok_with(&["apply", "-f", "-"], Some(&grow));
    wait_for("grow-data Bound at 300Mi", || {
        let c = claim(&s, "grow-data");
        (c["status"]["capacity"]["storage"] == "300Mi").then_some(())
    });
    let df = |l: &str| -> Option<f64> {
        let size = l.lines().last()?.split_whitespace().nth(1)?.to_string();
        size.strip_suffix('M')?.parse().ok()
    };
    wait_for("df in grow-user", || df(&logs(&s, &["grow-user"])?));
    let started = s.get("pod", "grow-user").unwrap()["status"]["startTime"].clone();
    s.ok_with(
        &["apply", "-f", "-"],
        Some(&grow.replace("storage: 300Mi", "storage: 600Mi")),
    );
    wait_for("grow-data at 600Mi", || {
        let c = claim(&s, "grow-data");
        (c["status"]["capacity"]["storage"] == "600Mi").then_some(())
    });
    // df in the same pod: the mounted filesystem grew (300Mi of xfs shows as about 236M).
    wait_for("df in grow-user over 400M", || {
        (df(&logs(&s, &["grow-user"])?)? > 400.0).then_some(())
    });
    let pod = s.get("pod", "grow-user").unwrap();
    assert_eq!(pod["status"]["startTime"], started, "the same pod: {pod}");
    let events = describe(&s, "pvc", "grow-data");
    assert!(events.contains("Resizing"), "{events}");
    assert!(events.contains("FileSystemResizeSuccessful"), "{events}");
    // No mount collided with the expansion (a resync used to call NodePublish again).
    let events = describe(&s, "pod", "grow-user");
    assert!(!events.contains("already in flight"), "{events}");

    // raw-block: a Block claim as a device node, written by one pod, read by another that
    // has it read-only and cannot write it.
    s.ok(&[
        "apply",
        "-f",
        examples().join("raw-block.yaml").to_str().unwrap(),
    ]);
    let written = logs_containing(&s, &["block-writer"], "stamped");
    let mut lines = written.lines();
    let stamp = lines.next().unwrap().to_string();
    assert_eq!(
        lines.next().map(str::trim_end),
        Some(stamp.as_str()),
        "read back from the device: {written}"
    );
    let read = logs_containing(&s, &["block-reader"], "read-only: write refused");
    assert_eq!(
        read.lines().next().map(str::trim_end),
        Some(stamp.as_str()),
        "{read}"
    );
    assert_eq!(claim(&s, "raw-data")["spec"]["volumeMode"], "Block");
}

#[test]
fn liveness_restart_example() {
    if !testkit::require_root("liveness_restart_example") {
        return;
    }
    let s = Strata::up_with_busybox("e2e-liveness");
    s.ok(&[
        "apply",
        "-f",
        examples().join("liveness-restart.yaml").to_str().unwrap(),
    ]);
    // Healthy for 20 s, then two failed probes 5 s apart: a restart about 30 s in.
    let pod = testkit::wait_for(
        "a restart by the liveness probe",
        std::time::Duration::from_secs(120),
        || {
            let p = s.get("pod", "liveness-demo")?;
            (p["status"]["containerStatuses"][0]["restartCount"].as_i64()? >= 1).then_some(p)
        },
    );
    let events = describe(&s, "pod", "liveness-demo");
    assert!(
        events.contains("Unhealthy") && events.contains("Liveness probe failed"),
        "{events}"
    );
    assert!(events.contains("Killing"), "{events}");
    // The emptyDir counts the runs across the restart.
    let previous = logs(&s, &["liveness-demo", "--previous"]).unwrap_or_default();
    assert_eq!(previous.trim(), "run 1", "{previous}\n{pod}");
    logs_containing(&s, &["liveness-demo"], "run 2");
}
