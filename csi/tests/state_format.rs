//! The driver's state database across format versions: `fixtures/state-v1.db` was written
//! by strata-csi before the format was versioned (three volumes, one restored from a
//! snapshot, a group snapshot of two volumes, one volume staged and published), and this
//! code must open it, migrate it, and read every record back.

use std::path::Path;

use strata_csi::ids::ObjectId;
use strata_csi::state::{FORMAT_VERSION, Phase, Source, StagePhase, Store};

#[test]
fn version_1_fixture_opens_migrates_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1.db");
    std::fs::copy(&fixture, dir.path().join("state.db")).unwrap();
    for open in 0..2 {
        let s = Store::open(dir.path()).unwrap_or_else(|e| panic!("open #{open}: {e}"));
        let vols = s.all_volumes().unwrap();
        let names: Vec<_> = vols.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for n in ["pvc-a", "pvc-b", "pvc-c"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let a = s.volume_by_name("pvc-a").unwrap().unwrap();
        assert_eq!(
            (a.capacity, a.direct_io, a.phase),
            (32 << 20, true, Phase::Ready)
        );
        // The data object's name is read from the field every format stores as `file`.
        let want = ObjectId::parse(&a.id).unwrap().data_name();
        assert_eq!(a.data, want);
        let b = s.volume_by_name("pvc-b").unwrap().unwrap();
        assert_eq!(b.fs_type, "xfs");
        let c = s.volume_by_name("pvc-c").unwrap().unwrap();
        let snaps = s.all_snapshots().unwrap();
        assert_eq!(snaps.len(), 3, "one snapshot and two group members");
        let single = snaps.iter().find(|x| x.name == "snap-a").unwrap();
        assert_eq!(c.source, Some(Source::Snapshot(single.id.clone())));
        assert_eq!(
            single.data,
            ObjectId::parse(&single.id).unwrap().data_name()
        );
        let groups = s.all_groups().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].snapshot_ids.len(), 2);
        let stage = s.stage(&a.id).unwrap().expect("pvc-a staged");
        assert_eq!(stage.phase, StagePhase::Staged);
        assert_eq!(s.publishes_of(&a.id).unwrap().len(), 1);
        s.check().unwrap();
    }
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let v: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        v,
        FORMAT_VERSION.to_string(),
        "migrated to the current format"
    );
}
