use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::wait::WaitStatus;
use proptest::prelude::*;

use super::*;

fn file(data: &str, mode: u32) -> FileProjection {
    FileProjection {
        data: data.as_bytes().to_vec(),
        mode,
        fs_user: None,
    }
}

fn payload(entries: &[(&str, &str)]) -> Payload {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), file(v, 0o644)))
        .collect()
}

fn contents(p: &Payload) -> BTreeMap<String, Vec<u8>> {
    p.iter().map(|(k, f)| (k.clone(), f.data.clone())).collect()
}

/// Every entry name at the top of the volume, sorted.
fn top_level(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Checks the exact layout of a settled volume: `..data`, one version dir, and one
/// `F -> ..data/F` link per first component, nothing else.
fn assert_settled(dir: &Path, p: &Payload) {
    let snap = read_snapshot(dir).unwrap();
    assert_eq!(snap.files, contents(p));
    let mut expected: Vec<String> = p
        .keys()
        .map(|k| k.split('/').next().unwrap().to_owned())
        .collect();
    expected.push(DATA_LINK.into());
    expected.push(snap.version.clone());
    expected.sort();
    expected.dedup();
    assert_eq!(top_level(dir), expected);
    for name in expected.iter().filter(|n| !n.starts_with("..")) {
        let text = std::fs::read_link(dir.join(name)).unwrap();
        assert_eq!(text, Path::new(DATA_LINK).join(name));
    }
    for (key, f) in p {
        assert_eq!(
            std::fs::read(dir.join(key)).unwrap(),
            f.data,
            "{key} via its link"
        );
    }
}

#[test]
fn layout_matches_the_kubelet() {
    let tmp = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(tmp.path());
    let p = payload(&[
        ("username", "admin"),
        ("tls/tls.crt", "CRT"),
        ("tls/tls.key", "KEY"),
    ]);
    let out = w.write(&p, WriteOptions::default()).unwrap();
    let WriteOutcome::Written { version } = out else {
        panic!("first write must write")
    };
    // ..YYYY_MM_DD_HH_MM_SS.<digits>
    let rest = version.strip_prefix("..").unwrap();
    let (stamp, rand) = rest.split_once('.').unwrap();
    assert_eq!(stamp.len(), 19);
    assert!(
        stamp
            .split('_')
            .all(|p| p.chars().all(|c| c.is_ascii_digit()))
    );
    assert!(!rand.is_empty() && rand.len() <= 10 && rand.chars().all(|c| c.is_ascii_digit()));

    assert_eq!(
        std::fs::read_link(tmp.path().join("..data")).unwrap(),
        Path::new(&version)
    );
    assert_eq!(
        std::fs::read_link(tmp.path().join("tls")).unwrap(),
        Path::new("..data/tls")
    );
    let mut expected = vec![
        "..data".to_string(),
        version.clone(),
        "tls".into(),
        "username".into(),
    ];
    expected.sort();
    assert_eq!(top_level(tmp.path()), expected);
    let vdir = tmp.path().join(&version);
    assert_eq!(
        std::fs::metadata(&vdir).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(vdir.join("tls"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(vdir.join("username"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );
    assert_settled(tmp.path(), &p);
}

#[test]
fn modes_are_set_regardless_of_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(tmp.path());
    let mut p = Payload::new();
    p.insert("a".into(), file("x", 0o777));
    p.insert("b".into(), file("y", 0o400));
    p.insert("c".into(), file("z", 0));
    w.write(&p, WriteOptions::default()).unwrap();
    for (k, mode) in [("a", 0o777), ("b", 0o400), ("c", 0)] {
        let m = std::fs::metadata(tmp.path().join(k))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(m, mode, "{k}");
    }
}

#[test]
fn updates_add_change_and_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(tmp.path());
    let p1 = payload(&[("a", "1"), ("gone", "x"), ("d/one", "1"), ("d/two", "2")]);
    w.write(&p1, WriteOptions::default()).unwrap();
    let p2 = payload(&[("a", "2"), ("d/one", "1"), ("new", "n")]);
    let out = w.write(&p2, WriteOptions::default()).unwrap();
    assert!(matches!(out, WriteOutcome::Written { .. }));
    assert_settled(tmp.path(), &p2);
    // Removing only a nested key also needs a new version.
    let p3 = payload(&[("a", "2"), ("new", "n")]);
    assert!(matches!(
        w.write(&p3, WriteOptions::default()).unwrap(),
        WriteOutcome::Written { .. }
    ));
    assert_settled(tmp.path(), &p3);
    // An empty payload leaves just ..data and an empty version.
    w.write(&Payload::new(), WriteOptions::default()).unwrap();
    assert_settled(tmp.path(), &Payload::new());
}

#[test]
fn unchanged_bytes_skip_the_write_but_restore_links() {
    let tmp = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(tmp.path());
    let p = payload(&[("a", "1"), ("d/x", "2")]);
    let WriteOutcome::Written { version } = w.write(&p, WriteOptions::default()).unwrap() else {
        panic!()
    };
    // A mode change alone is not a change (upstream compares bytes only).
    let mut same = p.clone();
    same.get_mut("a").unwrap().mode = 0o600;
    assert_eq!(
        w.write(&same, WriteOptions::default()).unwrap(),
        WriteOutcome::Unchanged
    );
    // A crash after the swap can leave links missing (k8s#121472): a no-op write restores them.
    std::fs::remove_file(tmp.path().join("d")).unwrap();
    assert_eq!(
        w.write(&p, WriteOptions::default()).unwrap(),
        WriteOutcome::Unchanged
    );
    assert_settled(tmp.path(), &p);
    assert_eq!(read_snapshot(tmp.path()).unwrap().version, version);
}

#[test]
fn leftovers_of_a_crash_are_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(tmp.path());
    let p = payload(&[("a", "1")]);
    w.write(&p, WriteOptions::default()).unwrap();
    // What a crashed upstream kubelet leaves: a half-written version, a stale ..data_tmp
    // pointing at it, and a dangling link for a key that was being removed.
    std::fs::create_dir(tmp.path().join("..2020_01_01_00_00_00.1")).unwrap();
    std::fs::write(tmp.path().join("..2020_01_01_00_00_00.1/a"), "half").unwrap();
    std::os::unix::fs::symlink("..2020_01_01_00_00_00.1", tmp.path().join("..data_tmp")).unwrap();
    std::os::unix::fs::symlink("..data/old", tmp.path().join("old")).unwrap();
    // Unchanged content: no new version is needed, yet the leftovers go.
    assert_eq!(
        w.write(&p, WriteOptions::default()).unwrap(),
        WriteOutcome::Unchanged
    );
    assert_settled(tmp.path(), &p);
    // And a stale ..data_tmp does not block the next real update (upstream: EEXIST forever).
    std::os::unix::fs::symlink("nowhere", tmp.path().join("..data_tmp")).unwrap();
    let p2 = payload(&[("a", "2")]);
    w.write(&p2, WriteOptions::default()).unwrap();
    assert_settled(tmp.path(), &p2);
}

#[test]
fn things_the_writer_does_not_own_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(tmp.path());
    w.write(&payload(&[("a", "1"), ("b", "2")]), WriteOptions::default())
        .unwrap();
    // A nested mount point (real dir) and a link that does not point into ..data.
    std::fs::create_dir(tmp.path().join("nested")).unwrap();
    std::os::unix::fs::symlink("/etc", tmp.path().join("foreign")).unwrap();
    let p = payload(&[("a", "1")]);
    w.write(&p, WriteOptions::default()).unwrap();
    assert!(tmp.path().join("nested").is_dir());
    assert_eq!(
        std::fs::read_link(tmp.path().join("foreign")).unwrap(),
        Path::new("/etc")
    );
    assert!(
        std::fs::symlink_metadata(tmp.path().join("b")).is_err(),
        "b pruned"
    );
    // A payload key whose name exists as something else: the entry is left as it is.
    let p = payload(&[("a", "1"), ("nested", "file")]);
    w.write(&p, WriteOptions::default()).unwrap();
    assert!(tmp.path().join("nested").is_dir());
}

#[test]
fn removal_never_follows_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep").unwrap();
    let vol = tmp.path();
    let w = AtomicWriter::new(vol);
    let WriteOutcome::Written { version } = w
        .write(&payload(&[("a", "1")]), WriteOptions::default())
        .unwrap()
    else {
        panic!()
    };
    // Links planted inside the live version and as a stale `..` entry, both aiming outside.
    std::os::unix::fs::symlink(outside.path(), vol.join(&version).join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.path(), vol.join("..stale")).unwrap();
    // The update removes the old version recursively and the stale entry.
    w.write(&payload(&[("a", "2")]), WriteOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read(outside.path().join("precious")).unwrap(),
        b"keep"
    );
    assert!(std::fs::symlink_metadata(vol.join("..stale")).is_err());
    assert!(std::fs::symlink_metadata(vol.join(&version)).is_err());
}

#[test]
fn compare_does_not_follow_links_in_the_live_version() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("a"), "2").unwrap();
    let w = AtomicWriter::new(tmp.path());
    let WriteOutcome::Written { version } = w
        .write(&payload(&[("a", "1")]), WriteOptions::default())
        .unwrap()
    else {
        panic!()
    };
    // Replace the file with a link to an outside file that holds the new bytes: the
    // compare must not accept it as current.
    let vdir = tmp.path().join(&version);
    std::fs::remove_file(vdir.join("a")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("a"), vdir.join("a")).unwrap();
    let p = payload(&[("a", "2")]);
    assert!(matches!(
        w.write(&p, WriteOptions::default()).unwrap(),
        WriteOutcome::Written { .. }
    ));
    assert_settled(tmp.path(), &p);
}

#[test]
fn bad_payloads_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(tmp.path());
    let good = payload(&[("a", "1"), ("d/b", "2")]);
    w.write(&good, WriteOptions::default()).unwrap();
    let before = top_level(tmp.path());
    let long_name = "x".repeat(256);
    let long_path = vec!["y"; 2100].join("/");
    let bad_cases: Vec<Payload> = vec![
        payload(&[("a", "new"), ("../escape", "x")]),
        payload(&[("a", "new"), ("/abs", "x")]),
        payload(&[("a", "new"), ("..data", "x")]),
        payload(&[("a", "new"), ("./..data/x", "x")]),
        payload(&[("a", "new"), ("", "x")]),
        payload(&[("a", "new"), (".", "x")]),
        payload(&[("a", "new"), (long_name.as_str(), "x")]),
        payload(&[("a", "new"), (long_path.as_str(), "x")]),
        payload(&[("a", "new"), ("nul\0byte", "x")]),
        payload(&[("a", "new"), ("a/b", "x")]),
        payload(&[("a", "new"), ("./a", "x")]),
        payload(&[("a", "new"), ("d//b/", "x"), ("d/b", "y")]),
    ];
    for bad in bad_cases {
        let err = w.write(&bad, WriteOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidPath { .. } | Error::PathConflict { .. }),
            "{err}"
        );
        assert_eq!(top_level(tmp.path()), before);
        assert_settled(tmp.path(), &good);
    }
    let mut bad_mode = good.clone();
    bad_mode.get_mut("a").unwrap().mode = 0o1777;
    assert!(matches!(
        w.write(&bad_mode, WriteOptions::default()),
        Err(Error::InvalidMode { .. })
    ));
    assert_settled(tmp.path(), &good);
}

#[test]
fn keys_are_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let w = AtomicWriter::new(tmp.path());
    let p = payload(&[("d//x/./y/", "1"), ("a/..foo", "2"), (".env", "3")]);
    w.write(&p, WriteOptions::default()).unwrap();
    let snap = read_snapshot(tmp.path()).unwrap();
    let keys: Vec<&str> = snap.files.keys().map(String::as_str).collect();
    assert_eq!(keys, vec![".env", "a/..foo", "d/x/y"]);
}

#[test]
fn corrupt_data_link_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc", tmp.path().join("..data")).unwrap();
    let err = AtomicWriter::new(tmp.path())
        .write(&payload(&[("a", "1")]), WriteOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::CorruptVolume { .. }), "{err}");
    assert_eq!(
        std::fs::read_link(tmp.path().join("..data")).unwrap(),
        Path::new("/etc")
    );
}

#[test]
fn fs_group_and_fs_user_ownership() {
    if !testkit::require_root("fs_group_and_fs_user_ownership") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let w = AtomicWriter::new(tmp.path());
    let mut p = Payload::new();
    p.insert("secret".into(), file("s", 0o400));
    p.insert("d/x".into(), file("x", 0o600));
    p.insert(
        "token".into(),
        FileProjection {
            data: b"jwt".to_vec(),
            mode: 0o600,
            fs_user: Some(1234),
        },
    );
    let opts = WriteOptions {
        fs_group: Some(5678),
        failpoint: None,
    };
    w.write(&p, opts).unwrap();
    let meta = |rel: &str| std::fs::metadata(tmp.path().join(rel)).unwrap();
    let lmeta = |rel: &str| std::fs::symlink_metadata(tmp.path().join(rel)).unwrap();
    // k8s-semantics §1.5: defaultMode 0400 becomes 0440 with fsGroup (k8s#57923), 0600 becomes 0640.
    assert_eq!(meta("secret").mode() & 0o7777, 0o440);
    assert_eq!(meta("d/x").mode() & 0o7777, 0o640);
    assert_eq!(meta("token").mode() & 0o7777, 0o640);
    assert_eq!(meta("d").mode() & 0o7777, 0o2755);
    assert_eq!(meta("..data").mode() & 0o7777, 0o2755);
    assert_eq!(meta("").mode() & 0o7777, 0o2777);
    for rel in ["secret", "d", "d/x", "token", "..data", ""] {
        assert_eq!(meta(rel).gid(), 5678, "{rel}");
    }
    for rel in ["secret", "d", "token", "..data"] {
        assert_eq!(lmeta(rel).gid(), 5678, "link {rel}");
    }
    // FsUser: the token file and its link only.
    assert_eq!(meta("token").uid(), 1234);
    assert_eq!(lmeta("token").uid(), 1234);
    assert_eq!(meta("secret").uid(), 0);
}

/// Failing at any step before the swap leaves the old version live and no trace of the
/// attempt; failing after it leaves the new version live; the next write settles both.
#[test]
fn failed_writes_keep_the_previous_payload() {
    let old = payload(&[("a", "old"), ("gone", "x"), ("d/c", "old")]);
    let new = payload(&[("a", "new"), ("d/c", "new"), ("d/e", "e"), ("fresh", "f")]);
    for n in 1.. {
        let tmp = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(tmp.path());
        w.write(&old, WriteOptions::default()).unwrap();
        let calls = AtomicUsize::new(0);
        let swapped = std::sync::atomic::AtomicBool::new(false);
        let hook = |step: Step| {
            if step == Step::CreateLink || step == Step::Prune || step == Step::RemoveOld {
                swapped.store(true, Ordering::SeqCst);
            }
            if calls.fetch_add(1, Ordering::SeqCst) + 1 == n {
                return Err(Error::Failpoint(step));
            }
            Ok(())
        };
        let opts = WriteOptions {
            fs_group: None,
            failpoint: Some(&hook),
        };
        match w.write(&new, opts) {
            Ok(_) => {
                assert!(n > 5, "the hook must have fired");
                break;
            }
            Err(Error::Failpoint(step)) => {
                let snap = read_snapshot(tmp.path()).unwrap();
                if swapped.load(Ordering::SeqCst) {
                    assert_eq!(snap.files, contents(&new), "failed at {step:?}");
                } else {
                    assert_eq!(snap.files, contents(&old), "failed at {step:?}");
                    assert_settled(tmp.path(), &old);
                }
            }
            Err(e) => panic!("{e}"),
        }
        w.write(&new, WriteOptions::default()).unwrap();
        assert_settled(tmp.path(), &new);
    }
}

/// A payload is visible whole: every key resolves through its link to the bytes of one
/// version (old or new). Keys may be missing (new keys before their link exists) or
/// dangling (removed keys before pruning), as upstream, but never mixed.
fn assert_old_or_new(dir: &Path, old: &Payload, new: &Payload, ctx: &str) {
    match read_snapshot(dir) {
        Ok(snap) => assert!(
            snap.files == contents(old) || snap.files == contents(new),
            "{ctx}: snapshot is neither old nor new: {:?}",
            snap.files.keys().collect::<Vec<_>>()
        ),
        Err(Error::CorruptVolume { .. }) if old.is_empty() => {} // first write never swapped
        Err(e) => panic!("{ctx}: {e}"),
    }
}

/// Crash at every step: a forked child runs the write and is SIGKILLed at step N (no
/// unwinding, no destructors, no core file). The parent
/// checks what is left, then the next write must heal to the exact settled layout.
#[test]
fn crash_at_every_step_then_heal() {
    let old = payload(&[("a", "old"), ("gone", "x"), ("d/c", "old"), ("d/z", "z")]);
    let new = payload(&[("a", "new"), ("d/c", "new"), ("d/e", "e"), ("fresh", "f")]);
    for (label, start) in [("update", Some(&old)), ("first write", None)] {
        let empty = Payload::new();
        let before = start.unwrap_or(&empty);
        let mut crashed = 0;
        for n in 1.. {
            let tmp = tempfile::tempdir().unwrap();
            let w = AtomicWriter::new(tmp.path());
            if let Some(p) = start {
                w.write(p, WriteOptions::default()).unwrap();
            }
            let status = crate::sys::in_child(Duration::from_secs(120), || {
                let calls = AtomicUsize::new(0);
                let hook = |_step: Step| {
                    if calls.fetch_add(1, Ordering::SeqCst) + 1 == n {
                        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                    }
                    Ok(())
                };
                let opts = WriteOptions {
                    fs_group: None,
                    failpoint: Some(&hook),
                };
                match w.write(&new, opts) {
                    Ok(_) => 0,
                    Err(_) => 2,
                }
            });
            match status {
                WaitStatus::Exited(_, 0) => {
                    assert_settled(tmp.path(), &new);
                    break;
                }
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _) => crashed += 1,
                other => panic!("{label}: child at step {n}: {other:?}"),
            }
            let ctx = format!("{label}: crash at hook call {n}");
            assert_old_or_new(tmp.path(), before, &new, &ctx);
            // Whatever is visible through the top-level links also belongs to one version.
            for key in before.keys().chain(new.keys()) {
                if let Ok(bytes) = std::fs::read(tmp.path().join(key)) {
                    let ok = before.get(key).is_some_and(|f| f.data == bytes)
                        || new.get(key).is_some_and(|f| f.data == bytes);
                    assert!(ok, "{ctx}: {key} shows foreign bytes");
                }
            }
            w.write(&new, WriteOptions::default()).unwrap();
            assert_settled(tmp.path(), &new);
        }
        assert!(crashed >= 8, "{label}: only {crashed} crash points");
    }
}

/// A reader process resolves `..data` once per read and checks every file carries the same
/// generation, through 10,000 updates of a multi-key payload.
#[test]
fn concurrent_reader_process_sees_whole_versions() {
    const UPDATES: u64 = 10_000;
    const KEYS: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let done = tmp.path().join("done");
    let gen_payload = |g: u64| -> Payload {
        (0..KEYS)
            .map(|i| {
                let key = if i % 2 == 0 {
                    format!("k{i}")
                } else {
                    format!("sub/k{i}")
                };
                // Sizes vary with the generation so torn reads would show.
                (
                    key,
                    file(&format!("gen-{g}-").repeat(1 + (g as usize % 7)), 0o644),
                )
            })
            .collect()
    };
    let w = AtomicWriter::new(&vol);
    w.write(&gen_payload(0), WriteOptions::default()).unwrap();

    let report = tmp.path().join("report");
    let reader_vol = vol.clone();
    let reader_done = done.clone();
    let reader_report = report.clone();
    // The reader runs in its own process; it writes how many distinct versions it saw.
    // However the writer below ends (a panic included), `done` appears and the reader
    // stops; the deadline only guards against a reader that is stuck.
    struct Done(std::path::PathBuf);
    impl Drop for Done {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let done_guard = Done(done.clone());
    let reader = std::thread::spawn(move || {
        crate::sys::in_child(Duration::from_secs(1800), || {
            let mut last = 0u64;
            let mut seen = 0u64;
            let mut reads = 0u64;
            loop {
                let finished = reader_done.exists();
                let snap = match read_snapshot(&reader_vol) {
                    Ok(s) => s,
                    // The version dir can be deleted between readlink and open, and a busy
                    // writer can outrun every retry of one read: neither is a torn read.
                    Err(Error::Fs { .. } | Error::CorruptVolume { .. }) => continue,
                    Err(_) => return 3,
                };
                reads += 1;
                if snap.files.len() != KEYS {
                    return 4;
                }
                let gens: BTreeSet<u64> = snap
                    .files
                    .values()
                    .map(|v| {
                        let s = std::str::from_utf8(v).unwrap_or("");
                        let g = s
                            .split('-')
                            .nth(1)
                            .and_then(|g| g.parse().ok())
                            .unwrap_or(u64::MAX);
                        if gen_check(s, g) { g } else { u64::MAX }
                    })
                    .collect();
                if gens.len() != 1 || gens.contains(&u64::MAX) {
                    return 5;
                }
                let g = *gens.first().unwrap();
                if g < last {
                    return 6;
                }
                if g > last {
                    seen += 1;
                    last = g;
                }
                if finished {
                    break;
                }
            }
            let _ = std::fs::write(&reader_report, format!("{seen} {reads}"));
            0
        })
    });
    for g in 1..=UPDATES {
        w.write(&gen_payload(g), WriteOptions::default()).unwrap();
    }
    drop(done_guard);
    let status = reader.join().unwrap();
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "reader failed: {status:?}"
    );
    let report = std::fs::read_to_string(&report).unwrap();
    let (seen, reads) = report.split_once(' ').unwrap();
    let (seen, reads): (u64, u64) = (seen.parse().unwrap(), reads.parse().unwrap());
    assert!(
        seen >= 2 && reads >= 2,
        "reader saw {seen} versions in {reads} reads"
    );
    assert_settled(&vol, &gen_payload(UPDATES));
}

/// The bytes of generation `g` are `gen-g-` repeated `1 + g % 7` times.
fn gen_check(s: &str, g: u64) -> bool {
    s == format!("gen-{g}-").repeat(1 + (g as usize % 7))
}

proptest! {
    #[test]
    fn accepted_paths_are_clean_and_local(path in "[a-z./]{0,24}") {
        if let Ok(clean) = validate_path(&path) {
            prop_assert!(!clean.is_empty());
            prop_assert!(!clean.starts_with('/'));
            prop_assert!(!clean.ends_with('/'));
            prop_assert!(!clean.starts_with(".."));
            for part in clean.split('/') {
                prop_assert!(!part.is_empty() && part != "." && part != "..");
            }
            prop_assert_eq!(validate_path(&clean).unwrap(), clean.clone());
        } else {
            let parts: Vec<&str> = path.split('/').collect();
            let clean: Vec<&&str> = parts.iter().filter(|p| !p.is_empty() && **p != ".").collect();
            prop_assert!(
                path.is_empty()
                    || path.starts_with('/')
                    || parts.contains(&"..")
                    || parts[0].starts_with("..")
                    || clean.is_empty()
                    || clean[0].starts_with(".."),
                "rejected {:?} without a rule", path
            );
        }
    }

    #[test]
    fn escaping_paths_are_rejected(prefix in "[a-z]{0,5}(/[a-z]{1,5}){0,3}", suffix in "(/[a-z]{1,5}){0,3}") {
        let dotdot = if prefix.is_empty() { format!("..{suffix}") } else { format!("{prefix}/..{suffix}") };
        prop_assert!(validate_path(&dotdot).is_err());
        let abs = format!("/{prefix}{suffix}");
        prop_assert!(validate_path(&abs).is_err());
        let hidden = format!("..x{suffix}");
        prop_assert!(validate_path(&hidden).is_err());
    }

    #[test]
    fn length_limits(n in 1usize..600, m in 1usize..3000) {
        let name = "a".repeat(n);
        prop_assert_eq!(validate_path(&name).is_ok(), n <= 255);
        let path = vec!["b"; m].join("/");
        prop_assert_eq!(validate_path(&path).is_ok(), path.len() <= 4096);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any sequence of valid payloads settles to exactly the last one.
    #[test]
    fn sequences_of_writes_settle(
        payloads in proptest::collection::vec(
            proptest::collection::btree_map("[a-c]{1,2}(/[a-c]{1,2}){0,2}", "[xy]{0,3}", 0..6),
            1..4,
        )
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(tmp.path());
        let mut last_good: Option<Payload> = None;
        for entries in payloads {
            let p: Payload = entries.into_iter().map(|(k, v)| (k, file(&v, 0o644))).collect();
            match w.write(&p, WriteOptions::default()) {
                Ok(_) => last_good = Some(p),
                Err(Error::PathConflict { .. }) => {
                    if let Some(good) = &last_good { assert_settled(tmp.path(), good); }
                }
                Err(e) => panic!("{e}"),
            }
        }
        if let Some(good) = &last_good { assert_settled(tmp.path(), good); }
    }
}
