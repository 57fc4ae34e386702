//! `vol_data.json` carries a format version: files written before versions existed
//! (tests/fixtures/vol_data-v1.json) are read by today's code, a newer one stops the
//! reconcile with an error naming both versions. No root needed.

use std::path::Path;

use strata_volumes::csi_volume::{VOL_DATA_FORMAT, decode_vol_data, read_vol_data_dirs};

fn fixture() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vol_data-v1.json"))
        .unwrap()
}

#[test]
fn a_version_1_vol_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("0123abcd");
    std::fs::create_dir(&staged).unwrap();
    std::fs::write(staged.join("vol_data.json"), fixture()).unwrap();
    let found = read_vol_data_dirs(dir.path()).unwrap();
    assert_eq!(found.len(), 1);
    let (path, data) = &found[0];
    assert_eq!(path, &staged);
    assert_eq!(data.driver_name, "local.csi.strata.io");
    assert_eq!(data.spec_vol_id, "pvc-0b8f2c1e-4c1d-4a57-9c55-7d6f0f3e9a10");
    assert_eq!(data.volume_lifecycle_mode, "Persistent");
}

#[test]
fn a_newer_vol_data_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("0123abcd");
    std::fs::create_dir(&staged).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&fixture()).unwrap();
    let newer = VOL_DATA_FORMAT + 1;
    v["formatVersion"] = newer.into();
    std::fs::write(
        staged.join("vol_data.json"),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
    let err = read_vol_data_dirs(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("version {newer}"))
            && err.contains(&format!("version {VOL_DATA_FORMAT}")),
        "{err}"
    );
    // Garbage is not a record (a crash leftover): skipped, as before.
    assert!(
        decode_vol_data(Path::new("x"), b"{\"driverName\": 1")
            .unwrap()
            .is_none()
    );
}
