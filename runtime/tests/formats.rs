//! The runtime's state records carry a format version: records written before versions
//! existed (tests/fixtures/*-v1.json) open with today's code, a newer one is refused
//! naming both versions, and what this build writes says its version. No root needed.

use std::path::Path;

use strata_runtime::format::FORMAT_VERSION;
use strata_runtime::image::ImageStore;
use strata_runtime::rootfs::Rootfs;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn image_record_path(store: &ImageStore, name: &str) -> std::path::PathBuf {
    store
        .root()
        .join("images")
        .join(format!("{}.json", hex::encode(name)))
}

#[test]
fn version_1_image_and_rootfs_records_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    std::fs::write(
        image_record_path(&store, "busybox:latest"),
        fixture("image-v1.json"),
    )
    .unwrap();
    let image = store.image("busybox:latest").unwrap();
    assert_eq!(image.diff_ids.len(), 1);
    assert_eq!(store.images().unwrap(), vec![image.clone()]);

    let rec = store.root().join("containers/pod.app.0");
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(rec.join("rootfs.json"), fixture("rootfs-v1.json")).unwrap();
    let rootfs = Rootfs::open(&store, "pod.app.0").unwrap();
    assert_eq!(rootfs.image(), &image);
}

#[test]
fn a_newer_record_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("image-v1.json")).unwrap();
    let newer = FORMAT_VERSION + 1;
    v["formatVersion"] = newer.into();
    v["addedByANewerBuild"] = "x".into();
    std::fs::write(
        image_record_path(&store, "busybox:latest"),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
    let err = store.image("busybox:latest").unwrap_err().to_string();
    assert!(
        err.contains(&format!("version {newer}"))
            && err.contains(&format!("version {FORMAT_VERSION}")),
        "{err}"
    );
    assert!(store.images().is_err(), "listing refuses it too");
}
