//! `examples/snapshot-restore.yaml`, run as its comment says under `volctl up`: the data a
//! pod wrote is read back by another pod from a claim restored from a VolumeSnapshot.

use strata_e2e::{Strata, examples, wait_for};

fn logs(s: &Strata, pod: &str) -> Option<String> {
    let out = s.run_with(&["logs", pod], None);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn snapshot_restore_example() {
    if !testkit::require_root("snapshot_restore_example") {
        return;
    }
    let s = Strata::up_with_busybox("e2e-snap");
    let file = examples().join("snapshot-restore.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    // The comment's first step: everything above the `# restore:` line.
    let writer = text.split("\n# restore:").next().unwrap();
    s.ok_with(&["apply", "-f", "-"], Some(writer));
    let wrote = wait_for("the writer's line", || {
        let l = logs(&s, "snap-writer")?;
        let line = l.lines().find(|l| l.starts_with("wrote: "))?;
        Some(line.trim_start_matches("wrote: ").to_string())
    });
    let out = s.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains("volumesnapshot/snap-demo created"), "{out}");
    let vs = wait_for("the snapshot ready", || {
        let v = s.get("vs", "snap-demo")?;
        (v["status"]["readyToUse"] == true).then_some(v)
    });
    assert_eq!(vs["status"]["restoreSize"], "32Mi", "{vs}");
    let read = wait_for("the reader's line", || {
        let l = logs(&s, "snap-reader")?;
        let line = l.lines().find(|l| l.starts_with("read: "))?;
        Some(line.trim_start_matches("read: ").to_string())
    });
    assert_eq!(
        read, wrote,
        "the restored claim holds what the writer wrote"
    );
    let table = s.ok(&["get", "vsc"]);
    assert!(
        table.contains("READYTOUSE") && table.contains("true"),
        "{table}"
    );

    // deletionPolicy Delete: the content and the pool's snapshot go with the VolumeSnapshot.
    let content = vs["status"]["boundVolumeSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok(&["delete", "vs", "snap-demo"]);
    wait_for("the snapshot and its content gone", || {
        (s.get("vs", "snap-demo").is_none() && s.get("vsc", &content).is_none()).then_some(())
    });
    wait_for("no snapshot left on the pool", || {
        let out = s.ok(&["snapshots", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v.as_array().is_some_and(|a| a.is_empty()).then_some(())
    });
    // The restored claim does not depend on the snapshot.
    assert_eq!(
        s.get("pvc", "snap-restored").unwrap()["status"]["phase"],
        "Bound"
    );
}
