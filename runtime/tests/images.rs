//! Image store, layers, overlay rootfs and commit, in-process (no fork involved).

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use common::*;
use strata_runtime::image::unpack;
use strata_runtime::{BindMount, Error, ImageDefaults, InitLayer, Propagation, Rootfs};

fn write(p: &Path, body: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

#[test]
fn whiteouts_hide_lower_files_and_opaque_dirs_hide_lower_dirs() {
    if !testkit::require_root("whiteouts_hide_lower_files_and_opaque_dirs_hide_lower_dirs") {
        return;
    }
    let env = Env::new();
    let lower = env.path("lower");
    write(&lower.join("a/gone"), "lower");
    write(&lower.join("a/kept"), "lower");
    write(&lower.join("d/old"), "lower");
    let upper = env.path("upper");
    write(&upper.join("a/.wh.gone"), "");
    write(&upper.join("d/.wh..wh..opq"), "");
    write(&upper.join("d/new"), "upper");
    let img = env
        .store
        .build_image("wh", &[&lower, &upper], &ImageDefaults::default())
        .unwrap();

    // Unpacked as overlay whiteouts, not as files.
    let top = env.store.layer_path(&img.diff_ids[1]);
    let meta = std::fs::symlink_metadata(top.join("a/gone")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert!(!top.join("a/.wh.gone").exists() && !top.join("d/.wh..wh..opq").exists());

    let rootfs = RootfsGuard(
        Rootfs::create(
            &env.store,
            &testkit::unique_id("wh"),
            &img,
            &InitLayer::for_hostname("h"),
        )
        .unwrap(),
    );
    let m = rootfs.0.path();
    assert!(
        !m.join("a/gone").exists(),
        "whiteout did not hide the lower file"
    );
    assert!(m.join("a/kept").exists());
    assert!(
        !m.join("d/old").exists(),
        "opaque dir did not hide the lower dir's content"
    );
    assert_eq!(std::fs::read_to_string(m.join("d/new")).unwrap(), "upper");
    assert!(m.join("bin").exists() || !lower.join("bin").exists());
}

#[test]
fn commit_leaves_out_init_layer_and_keeps_whiteouts() {
    if !testkit::require_root("commit_leaves_out_init_layer_and_keeps_whiteouts") {
        return;
    }
    let env = Env::new();
    let base = env.path("base");
    write(&base.join("etc/hosts"), "image hosts\n");
    write(&base.join("etc/motd"), "hi\n");
    write(&base.join("srv/old/file"), "x");
    write(&base.join("doomed"), "x");
    let img = env
        .store
        .build_image("base", &[&base], &ImageDefaults::default())
        .unwrap();
    let id = testkit::unique_id("commit");
    let rootfs = RootfsGuard(
        Rootfs::create(&env.store, &id, &img, &InitLayer::for_hostname("pod-a")).unwrap(),
    );
    let m = rootfs.0.path();
    // The init layer wins over the image's /etc/hosts.
    assert!(
        std::fs::read_to_string(m.join("etc/hosts"))
            .unwrap()
            .contains("pod-a")
    );
    // What a container might do: new files, edits to init files, deletions, replacing a dir.
    write(&m.join("added/file"), "new");
    write(&m.join("etc/hosts"), "edited by the container\n");
    std::fs::write(m.join("etc/resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
    std::fs::remove_file(m.join("doomed")).unwrap();
    std::fs::remove_dir_all(m.join("srv/old")).unwrap();
    std::fs::create_dir(m.join("srv/old")).unwrap();
    write(&m.join("srv/old/fresh"), "y");

    let committed = rootfs.0.commit(&env.store, "committed").unwrap();
    assert_eq!(committed.diff_ids.len(), 2);
    assert_eq!(committed.diff_ids[0], img.diff_ids[0]);
    // The new layer's tar, read back entry by entry.
    let blob = env.store.blob_path(committed.layer_blobs.last().unwrap());
    let mut names = HashSet::new();
    for e in tar::Archive::new(std::fs::File::open(&blob).unwrap())
        .entries()
        .unwrap()
    {
        names.insert(
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string(),
        );
    }
    for init in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "dev",
        "proc",
        "sys",
    ] {
        assert!(
            !names.contains(init),
            "init-layer path {init} committed: {names:?}"
        );
    }
    assert!(names.contains("added/file"), "{names:?}");
    assert!(
        names.contains(".wh.doomed"),
        "deletion not recorded as whiteout: {names:?}"
    );
    assert!(
        names.contains("srv/old/.wh..wh..opq"),
        "replaced dir not opaque: {names:?}"
    );

    // A container from the committed image sees the change set, and the image's own hosts.
    let id2 = testkit::unique_id("commit");
    let again = RootfsGuard(
        Rootfs::create(
            &env.store,
            &id2,
            &committed,
            &InitLayer::for_hostname("pod-b"),
        )
        .unwrap(),
    );
    let m2 = again.0.path();
    assert_eq!(
        std::fs::read_to_string(m2.join("added/file")).unwrap(),
        "new"
    );
    assert!(!m2.join("doomed").exists());
    assert!(!m2.join("srv/old/file").exists() && m2.join("srv/old/fresh").exists());
    assert!(
        std::fs::read_to_string(m2.join("etc/hosts"))
            .unwrap()
            .contains("pod-b")
    );
    drop(again);
    // Under the init layer, the committed image still has the original file.
    assert_eq!(
        std::fs::read_to_string(env.store.layer_path(&img.diff_ids[0]).join("etc/hosts")).unwrap(),
        "image hosts\n"
    );
}

/// Replaces the single layer of an exported layout by its gzip, fixing the manifest
/// and index, as a registry-pulled image would look.
fn gzip_layout(layout: &Path) {
    recompress_layout(
        layout,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        |tar| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        },
    );
}

/// Replaces the single layer of an exported layout by `compress(layer tar)` with
/// media type `media_type`, fixing the manifest and index.
fn recompress_layout(layout: &Path, media_type: &str, compress: impl FnOnce(&[u8]) -> Vec<u8>) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdig = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&mdig)).unwrap()).unwrap();
    let ldig = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let packed = compress(&std::fs::read(blob(&ldig)).unwrap());
    let pdig = strata_runtime::Digest::of(&packed).to_string();
    std::fs::write(blob(&pdig), &packed).unwrap();
    manifest["layers"][0]["digest"] = pdig.into();
    manifest["layers"][0]["size"] = packed.len().into();
    manifest["layers"][0]["mediaType"] = media_type.into();
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let new_mdig = strata_runtime::Digest::of(&mbytes).to_string();
    std::fs::write(blob(&new_mdig), &mbytes).unwrap();
    let mut index = index;
    index["manifests"][0]["digest"] = new_mdig.into();
    index["manifests"][0]["size"] = mbytes.len().into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// The layer as zstd:chunked-style tools write it: several frames, then a skippable
/// frame of metadata.
fn zstd_frames(tar: &[u8]) -> Vec<u8> {
    let (a, b) = tar.split_at(tar.len() / 2);
    let mut out = zstd::stream::encode_all(a, 3).unwrap();
    out.extend(zstd::stream::encode_all(b, 3).unwrap());
    let meta = b"not layer data";
    out.extend(0x184D_2A50u32.to_le_bytes());
    out.extend((meta.len() as u32).to_le_bytes());
    out.extend(meta);
    out
}

#[test]
fn import_reads_zstd_layers_by_media_type_and_by_content() {
    // Needs no root: blobs and unpacking of plain files only.
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("hello"), "zstd world\n");
    write(&src.join("dir/big"), &"0123456789abcdef".repeat(8192));
    let img = env
        .store
        .build_image("z:1", &[&src], &ImageDefaults::default())
        .unwrap();
    for (case, media_type) in [
        ("labelled", "application/vnd.oci.image.layer.v1.tar+zstd"),
        // Mislabelled as plain tar: the zstd magic decides.
        ("sniffed", "application/vnd.oci.image.layer.v1.tar"),
    ] {
        let layout = env.path(&format!("layout-{case}"));
        env.store.export_layout(&img, &layout).unwrap();
        recompress_layout(&layout, media_type, zstd_frames);
        let store = strata_runtime::ImageStore::open(env.path(&format!("store-{case}"))).unwrap();
        let imported = store.import_layout(&layout).unwrap();
        assert_eq!(imported[0].diff_ids, img.diff_ids, "{case}");
        let layer = store.layer_path(&img.diff_ids[0]);
        assert_eq!(
            std::fs::read_to_string(layer.join("hello")).unwrap(),
            "zstd world\n",
            "{case}"
        );
        assert_eq!(
            std::fs::read_to_string(layer.join("dir/big"))
                .unwrap()
                .len(),
            16 * 8192,
            "{case}"
        );
    }

    // A truncated zstd layer is refused and leaves no layer behind.
    let layout = env.path("layout-cut");
    env.store.export_layout(&img, &layout).unwrap();
    recompress_layout(
        &layout,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        |tar| {
            let mut z = zstd::stream::encode_all(tar, 3).unwrap();
            z.truncate(z.len() - 20);
            z
        },
    );
    let store = strata_runtime::ImageStore::open(env.path("store-cut")).unwrap();
    assert!(store.import_layout(&layout).is_err());
    assert!(!store.layer_path(&img.diff_ids[0]).exists());
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn import_verifies_blobs_and_refuses_a_corrupted_one() {
    // Needs no root: blobs and unpacking of plain files only.
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("hello"), "world\n");
    let img = env
        .store
        .build_image("app:1", &[&src], &ImageDefaults::default())
        .unwrap();

    // A gzip layout imports into a fresh store, layer keyed by its diff_id.
    let layout = env.path("layout");
    env.store.export_layout(&img, &layout).unwrap();
    gzip_layout(&layout);
    let other = strata_runtime::ImageStore::open(env.path("other")).unwrap();
    let imported = other.import_layout(&layout).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, "app:1");
    assert_eq!(imported[0].diff_ids, img.diff_ids);
    assert_ne!(
        imported[0].layer_blobs, img.layer_blobs,
        "the gzip blob differs from the tar"
    );
    assert_eq!(
        std::fs::read_to_string(other.layer_path(&img.diff_ids[0]).join("hello")).unwrap(),
        "world\n"
    );
    // Unpacked once: a second import re-verifies blobs but leaves the layer alone.
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(other.layer_path(&img.diff_ids[0]))
        .unwrap()
        .ino();
    other.import_layout(&layout).unwrap();
    assert_eq!(
        std::fs::metadata(other.layer_path(&img.diff_ids[0]))
            .unwrap()
            .ino(),
        before
    );

    // One flipped byte in the layer blob: refused, naming the digest, nothing unpacked.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(imported[0].manifest.hex())).unwrap(),
    )
    .unwrap();
    let ldig = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let lpath = layout
        .join("blobs/sha256")
        .join(ldig.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&lpath).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&lpath, bytes).unwrap();
    let third = strata_runtime::ImageStore::open(env.path("third")).unwrap();
    let err = third.import_layout(&layout).unwrap_err();
    assert!(matches!(err, Error::BlobCorrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&ldig),
        "error does not name {ldig}: {err}"
    );
    assert!(!third.layer_path(&img.diff_ids[0]).exists());
    assert!(!third.blob_path(&ldig.parse().unwrap()).exists());
    assert!(third.images().unwrap().is_empty());
}

/// A tar entry with a raw name, bypassing the tar crate's own path checks.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn layer_entries_cannot_write_outside_the_layer() {
    // chown and mknod need root.
    if !testkit::require_root("layer_entries_cannot_write_outside_the_layer") {
        return;
    }
    let env = Env::new();
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_s = outside.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", {
            let mut b = tar::Builder::new(Vec::new());
            raw_entry(
                &mut b,
                "../../outside/pwned",
                tar::EntryType::Regular,
                None,
                b"x",
            );
            b.into_inner().unwrap()
        }),
        ("absolute", {
            let mut b = tar::Builder::new(Vec::new());
            raw_entry(
                &mut b,
                &format!("{outside_s}/pwned"),
                tar::EntryType::Regular,
                None,
                b"x",
            );
            b.into_inner().unwrap()
        }),
        ("hardlink-out", {
            let mut b = tar::Builder::new(Vec::new());
            raw_entry(
                &mut b,
                "link",
                tar::EntryType::Link,
                Some("../../../etc/passwd"),
                b"",
            );
            b.into_inner().unwrap()
        }),
    ];
    for (what, bytes) in cases {
        let dest = env.path(&format!("layer-{what}"));
        std::fs::create_dir(&dest).unwrap();
        let err = unpack::unpack(&bytes[..], &dest).unwrap_err();
        assert!(
            matches!(err, Error::UnsafeLayerEntry { .. }),
            "{what}: {err:?}"
        );
    }
    // Symlinks that point out, followed by writes through them: the write is
    // either refused or lands inside the layer, never outside.
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(
        &mut b,
        "abs",
        tar::EntryType::Symlink,
        Some(&outside_s),
        b"",
    );
    raw_entry(&mut b, "abs/pwned", tar::EntryType::Regular, None, b"x");
    let dest = env.path("layer-abs");
    std::fs::create_dir(&dest).unwrap();
    let r = unpack::unpack(&b.into_inner().unwrap()[..], &dest);
    assert!(
        r.is_err(),
        "write through a symlink dangling inside the layer must be refused"
    );
    assert_eq!(
        std::fs::read_link(dest.join("abs")).unwrap(),
        outside,
        "symlinks are stored as is"
    );

    let mut b = tar::Builder::new(Vec::new());
    raw_entry(
        &mut b,
        "up",
        tar::EntryType::Symlink,
        Some("../../../../../../.."),
        b"",
    );
    raw_entry(
        &mut b,
        &format!("up{outside_s}/pwned2"),
        tar::EntryType::Regular,
        None,
        b"x",
    );
    raw_entry(&mut b, "dir/", tar::EntryType::Directory, None, b"");
    raw_entry(&mut b, "dir/.wh.x", tar::EntryType::Regular, None, b"");
    let dest = env.path("layer-up");
    std::fs::create_dir(&dest).unwrap();
    unpack::unpack(&b.into_inner().unwrap()[..], &dest).unwrap();
    let inner = dest.join(outside.strip_prefix("/").unwrap());
    assert!(
        inner.join("pwned2").exists(),
        "the climbing symlink resolves to the layer root"
    );
    assert!(
        std::fs::symlink_metadata(dest.join("dir/x"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "a layer wrote outside"
    );
}

#[test]
fn volume_target_symlink_cannot_escape_the_rootfs() {
    if !testkit::require_root("volume_target_symlink_cannot_escape_the_rootfs") {
        return;
    }
    let env = Env::new();
    let host = env.path("host-secret");
    std::fs::create_dir(&host).unwrap();
    let vol = env.path("vol");
    write(&vol.join("payload"), "x");
    let rootfs = env.path("rootfs");
    std::fs::create_dir_all(rootfs.join("srv")).unwrap();
    // Absolute symlink to a host path, and a relative one that climbs out.
    std::os::unix::fs::symlink(&host, rootfs.join("data")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", rootfs.join("up")).unwrap();
    std::os::unix::fs::symlink("/srv", rootfs.join("inside")).unwrap();
    let bind = |dest: &str| BindMount {
        source: vol.clone(),
        destination: dest.into(),
        read_only: false,
        propagation: Propagation::None,
    };

    let err = strata_runtime::volumes::mount_bind(&rootfs, &bind("/data")).unwrap_err();
    assert!(matches!(err, Error::VolumeTarget { .. }), "{err:?}");
    let up_target = format!("/up{}", host.display());
    match strata_runtime::volumes::mount_bind(&rootfs, &bind(&up_target)) {
        Ok(landed) => {
            let _g = testkit::MountGuard(landed.clone());
            assert!(landed.starts_with(&rootfs), "{landed:?}");
        }
        Err(e) => assert!(matches!(e, Error::VolumeTarget { .. }), "{e:?}"),
    }
    assert!(
        !is_mountpoint(&host),
        "the volume was mounted on the host path"
    );
    assert_eq!(std::fs::read_dir(&host).unwrap().count(), 0);

    // A symlink that stays inside is followed inside.
    let landed = strata_runtime::volumes::mount_bind(&rootfs, &bind("/inside")).unwrap();
    let _g = testkit::MountGuard(landed.clone());
    assert_eq!(landed, std::fs::canonicalize(rootfs.join("srv")).unwrap());
    assert!(rootfs.join("srv/payload").exists());
    let err = strata_runtime::volumes::mount_bind(&rootfs, &bind("/../etc")).unwrap_err();
    assert!(matches!(err, Error::VolumeTarget { .. }), "{err:?}");
}

#[test]
fn more_layers_than_one_mount_option_page_still_mount() {
    if !testkit::require_root("more_layers_than_one_mount_option_page_still_mount") {
        return;
    }
    // A long store path makes every lowerdir long: 40 layers x ~150 bytes > 4 KiB.
    let env = Env::new();
    let deep = env.path(&"d".repeat(60)).join("s".repeat(20));
    let store = strata_runtime::ImageStore::open(&deep).unwrap();
    let mut dirs = Vec::new();
    for i in 0..40 {
        let d = env.path(&format!("l{i}"));
        write(&d.join(format!("f{i}")), &i.to_string());
        write(&d.join("top"), &i.to_string());
        dirs.push(d);
    }
    let refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let img = store
        .build_image("tall", &refs, &ImageDefaults::default())
        .unwrap();
    let total: usize = img
        .diff_ids
        .iter()
        .map(|d| store.layer_path(d).as_os_str().len() + 1)
        .sum();
    assert!(total > 4096, "only {total} bytes of lowerdir");
    let rootfs = RootfsGuard(
        Rootfs::create(
            &store,
            &testkit::unique_id("tall"),
            &img,
            &InitLayer::for_hostname("h"),
        )
        .unwrap(),
    );
    let m = rootfs.0.path();
    for i in 0..40 {
        assert!(m.join(format!("f{i}")).exists(), "layer {i} missing");
    }
    assert_eq!(
        std::fs::read_to_string(m.join("top")).unwrap(),
        "39",
        "top layer must win"
    );
}

#[test]
fn gc_removes_only_unreferenced_layers() {
    if !testkit::require_root("gc_removes_only_unreferenced_layers") {
        return;
    }
    let env = Env::new();
    let a = env.path("a");
    write(&a.join("a"), "a");
    let b = env.path("b");
    write(&b.join("b"), "b");
    let img_a = env
        .store
        .build_image("a", &[&a], &ImageDefaults::default())
        .unwrap();
    let img_b = env
        .store
        .build_image("b", &[&b], &ImageDefaults::default())
        .unwrap();
    let rootfs = RootfsGuard(
        Rootfs::create(
            &env.store,
            &testkit::unique_id("gc"),
            &img_b,
            &InitLayer::for_hostname("h"),
        )
        .unwrap(),
    );
    env.store.remove_image("a").unwrap();
    env.store.remove_image("b").unwrap();
    let report = env.store.gc().unwrap();
    assert_eq!(report.layers_removed, vec![img_a.diff_ids[0].clone()]);
    assert!(!env.store.layer_path(&img_a.diff_ids[0]).exists());
    assert!(
        env.store.layer_path(&img_b.diff_ids[0]).exists(),
        "layer of a live container collected"
    );
    drop(rootfs);
    // An unpack interrupted by a crash leaves only staging, which gc clears once
    // its writer is gone; a live writer's staging stays.
    let dead = env.store.root().join("tmp/layer-999999999-0");
    write(&dead.join("half/written"), "x");
    let live = env
        .store
        .root()
        .join(format!("tmp/layer-{}-77", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    let report = env.store.gc().unwrap();
    assert_eq!(report.layers_removed, vec![img_b.diff_ids[0].clone()]);
    assert_eq!(report.staging_removed, vec![dead.clone()]);
    assert!(!dead.exists() && live.exists());
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setting {name} on {p:?}: {e}"));
}

/// The value of `name` on `p` itself (never a symlink's target), None when unset.
fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("reading {name} of {p:?}: {e}"),
    }
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
    let mut names: Vec<String> = buf[..n]
        .split(|&c| c == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8(n.to_vec()).unwrap())
        .collect();
    names.sort();
    names
}

/// Every entry of a layer tar with its PAX records, keyed by path.
fn pax_records(blob: &Path) -> std::collections::HashMap<String, Vec<(String, Vec<u8>)>> {
    let mut out = std::collections::HashMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(blob).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let recs = match e.pax_extensions().unwrap() {
            Some(exts) => exts
                .map(|x| {
                    let x = x.unwrap();
                    (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                })
                .collect(),
            None => Vec::new(),
        };
        out.insert(path, recs);
    }
    out
}

fn xattr_record(name: &str, value: &[u8]) -> (String, Vec<u8>) {
    (format!("SCHILY.xattr.{name}"), value.to_vec())
}

/// A v2 file capability (struct vfs_cap_data): magic with the effective flag, then
/// {permitted, inheritable} for caps 0-31 and for 32-63, little-endian.
fn cap_net_raw_blob() -> Vec<u8> {
    const CAP_NET_RAW: u32 = 13;
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << CAP_NET_RAW, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

/// A container rootfs mounted over a one-layer image `name` holding `files`
/// (path, content).
fn base_and_rootfs(env: &Env, name: &str, files: &[(&str, &str)]) -> RootfsGuard {
    let base = env.path(&format!("base-{name}"));
    for (path, body) in files {
        write(&base.join(path), body);
    }
    let img = env
        .store
        .build_image(name, &[&base], &ImageDefaults::default())
        .unwrap();
    RootfsGuard(
        Rootfs::create(
            &env.store,
            &testkit::unique_id(name),
            &img,
            &InitLayer::for_hostname("h"),
        )
        .unwrap(),
    )
}

/// A POSIX ACL xattr (posix_acl_xattr_header, then {tag, perm, id} entries in tag
/// order): owner rw, user 1000 r, group r, mask r, others nothing.
fn acl_blob() -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, UNDEFINED),
        (0x02, 4, 1000),
        (0x04, 4, UNDEFINED),
        (0x10, 4, UNDEFINED),
        (0x20, 0, UNDEFINED),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn commit_keeps_xattrs_but_not_overlay_or_selinux_ones() {
    // Overlay mounts and security.*/trusted.* xattrs need root. The store lives in
    // the test's temp dir under /tmp (ext4 here: user.*, trusted.* and ACLs work).
    if !testkit::require_root("commit_keeps_xattrs_but_not_overlay_or_selinux_ones") {
        return;
    }
    let env = Env::new();
    let rootfs = base_and_rootfs(
        &env,
        "xattr-base",
        &[("bin/ping", "old ping"), ("srv/old/file", "x")],
    );
    let m = rootfs.0.path();
    // What a container might do, through the overlay: caps on a copied-up binary,
    // user attributes and ACLs on new files, and a replaced (opaque) dir.
    let cap = cap_net_raw_blob();
    let acl = acl_blob();
    std::fs::write(m.join("bin/ping"), "new ping").unwrap();
    set_xattr(&m.join("bin/ping"), "security.capability", &cap);
    write(&m.join("data/note"), "n");
    set_xattr(&m.join("data/note"), "user.strata.test", b"hello");
    write(&m.join("data/acl"), "a");
    set_xattr(&m.join("data/acl"), "system.posix_acl_access", &acl);
    std::fs::create_dir(m.join("data/inherit")).unwrap();
    set_xattr(&m.join("data/inherit"), "system.posix_acl_default", &acl);
    std::fs::remove_dir_all(m.join("srv/old")).unwrap();
    std::fs::create_dir(m.join("srv/old")).unwrap();
    // Host-side attributes on the upper that must stay out of the layer.
    let upper = rootfs.0.upper();
    set_xattr(
        &upper.join("data/note"),
        "security.selinux",
        b"system_u:object_r:container_file_t:s0\0",
    );
    set_xattr(
        &upper.join("data/note"),
        "trusted.overlay.strata-test",
        b"y",
    );
    assert_eq!(
        get_xattr(&upper.join("srv/old"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..]),
        "the replaced dir should be opaque in the upper"
    );

    let committed = rootfs.0.commit(&env.store, "xattr-committed").unwrap();
    let blob = env.store.blob_path(committed.layer_blobs.last().unwrap());
    let recs = pax_records(&blob);
    for (path, r) in &recs {
        for (key, _) in r {
            assert!(
                !key.starts_with("SCHILY.xattr.trusted.overlay.")
                    && key != "SCHILY.xattr.security.selinux",
                "{path} carries {key}"
            );
        }
    }
    assert_eq!(
        recs["bin/ping"],
        vec![xattr_record("security.capability", &cap)]
    );
    assert_eq!(
        recs["data/note"],
        vec![xattr_record("user.strata.test", b"hello")]
    );
    assert_eq!(
        recs["data/acl"],
        vec![xattr_record("system.posix_acl_access", &acl)]
    );
    assert_eq!(
        recs["data/inherit"],
        vec![xattr_record("system.posix_acl_default", &acl)]
    );
    assert!(recs["srv/old"].is_empty(), "{:?}", recs["srv/old"]);
    assert!(recs.contains_key("srv/old/.wh..wh..opq"));

    // A container from the committed image sees the attributes byte for byte.
    let again = RootfsGuard(
        Rootfs::create(
            &env.store,
            &testkit::unique_id("xattr"),
            &committed,
            &InitLayer::for_hostname("h2"),
        )
        .unwrap(),
    );
    let m2 = again.0.path();
    assert_eq!(
        std::fs::read_to_string(m2.join("bin/ping")).unwrap(),
        "new ping"
    );
    assert_eq!(
        get_xattr(&m2.join("bin/ping"), "security.capability"),
        Some(cap)
    );
    assert_eq!(
        get_xattr(&m2.join("data/note"), "user.strata.test").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        get_xattr(&m2.join("data/acl"), "system.posix_acl_access"),
        Some(acl.clone())
    );
    assert_eq!(
        get_xattr(&m2.join("data/inherit"), "system.posix_acl_default"),
        Some(acl)
    );
    assert_eq!(
        get_xattr(&m2.join("data/note"), "security.selinux"),
        None,
        "the host label was committed"
    );
    assert!(!m2.join("srv/old/file").exists());
}

#[test]
fn packing_never_follows_a_symlink_for_its_xattrs() {
    // trusted.* needs root; Linux allows no user.* on symlinks, trusted.* it does.
    if !testkit::require_root("packing_never_follows_a_symlink_for_its_xattrs") {
        return;
    }
    let env = Env::new();
    let host = env.path("host-secret");
    write(&host, "secret");
    set_xattr(&host, "user.strata.secret", b"host");
    let src = env.path("src");
    write(&src.join("target"), "t");
    set_xattr(&src.join("target"), "user.strata.test", b"target");
    set_xattr(&src.join("target"), "trusted.strata.test", b"target");
    std::os::unix::fs::symlink("target", src.join("link")).unwrap();
    set_xattr(&src.join("link"), "trusted.strata.test", b"link");
    std::os::unix::fs::symlink("target", src.join("bare")).unwrap();
    // Absolute, so it resolves to a host file while packing.
    std::os::unix::fs::symlink(&host, src.join("abs")).unwrap();
    let img = env
        .store
        .build_image("links", &[&src], &ImageDefaults::default())
        .unwrap();

    let recs = pax_records(&env.store.blob_path(&img.layer_blobs[0]));
    assert_eq!(
        recs["target"],
        vec![
            xattr_record("trusted.strata.test", b"target"),
            xattr_record("user.strata.test", b"target"),
        ]
    );
    assert_eq!(
        recs["link"],
        vec![xattr_record("trusted.strata.test", b"link")]
    );
    assert!(recs["bare"].is_empty(), "{:?}", recs["bare"]);
    assert!(recs["abs"].is_empty(), "{:?}", recs["abs"]);

    // Unpacked, each link has its own attributes and the target keeps its own.
    let layer = env.store.layer_path(&img.diff_ids[0]);
    assert!(
        std::fs::symlink_metadata(layer.join("link"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(xattr_names(&layer.join("link")), ["trusted.strata.test"]);
    assert_eq!(
        get_xattr(&layer.join("link"), "trusted.strata.test").as_deref(),
        Some(&b"link"[..])
    );
    assert!(xattr_names(&layer.join("bare")).is_empty());
    assert!(xattr_names(&layer.join("abs")).is_empty());
    assert_eq!(
        xattr_names(&layer.join("target")),
        ["trusted.strata.test", "user.strata.test"]
    );
}

/// `acl_blob` with its named user entry naming uid 10, whose id holds a 0x0A byte.
fn acl_blob_uid_10() -> Vec<u8> {
    let mut v = acl_blob();
    // Header (4 bytes), then 8-byte entries; the second is the named user.
    v[4 + 8 + 4..4 + 8 + 8].copy_from_slice(&10u32.to_le_bytes());
    v
}

#[test]
fn commit_carries_xattr_values_holding_newlines() {
    if !testkit::require_root("commit_carries_xattr_values_holding_newlines") {
        return;
    }
    let env = Env::new();
    let rootfs = base_and_rootfs(&env, "nl-base", &[("kept", "x")]);
    let m = rootfs.0.path();
    write(&m.join("data/bin"), "b");
    // Newlines, '=', NUL and a record-like tail inside values: PAX frames records
    // by length, so none of these may end or split a record.
    let value = b"\x01\n\x02=\0\n9 path=/etc/passwd\n".to_vec();
    set_xattr(&m.join("data/bin"), "user.strata.bin", &value);
    let acl = acl_blob_uid_10();
    assert!(acl.contains(&b'\n'));
    write(&m.join("data/acl"), "a");
    set_xattr(&m.join("data/acl"), "system.posix_acl_access", &acl);

    let committed = rootfs.0.commit(&env.store, "nl-committed").unwrap();
    let again = RootfsGuard(
        Rootfs::create(
            &env.store,
            &testkit::unique_id("xattr-nl2"),
            &committed,
            &InitLayer::for_hostname("h2"),
        )
        .unwrap(),
    );
    let m2 = again.0.path();
    assert_eq!(std::fs::read_to_string(m2.join("data/bin")).unwrap(), "b");
    assert_eq!(
        get_xattr(&m2.join("data/bin"), "user.strata.bin"),
        Some(value)
    );
    assert_eq!(
        get_xattr(&m2.join("data/acl"), "system.posix_acl_access"),
        Some(acl)
    );
    assert_eq!(std::fs::read_to_string(m2.join("kept")).unwrap(), "x");
    assert!(!m2.join("path").exists() && !m2.join("etc/passwd").exists());
}

#[test]
fn commit_refuses_an_xattr_the_layer_cannot_carry() {
    if !testkit::require_root("commit_refuses_an_xattr_the_layer_cannot_carry") {
        return;
    }
    let env = Env::new();
    let rootfs = base_and_rootfs(&env, "eq-base", &[("kept", "x")]);
    let m = rootfs.0.path();
    write(&m.join("data/bad"), "b");
    // Valid for Linux, but a PAX key ends at its first '='.
    set_xattr(&m.join("data/bad"), "user.a=b", b"v");
    let blobs_before = std::fs::read_dir(env.store.root().join("blobs/sha256"))
        .unwrap()
        .count();

    let err = rootfs.0.commit(&env.store, "eq-committed").unwrap_err();
    match &err {
        Error::Io { path, source, .. } => {
            assert_eq!(path, &rootfs.0.upper().join("data/bad"), "{err:?}");
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidData, "{err:?}");
            assert!(source.to_string().contains("user.a=b"), "{source}");
        }
        _ => panic!("{err:?}"),
    }
    // Nothing recorded, no blob and no staging left behind.
    assert!(
        env.store
            .images()
            .unwrap()
            .iter()
            .all(|i| i.name != "eq-committed")
    );
    assert_eq!(
        std::fs::read_dir(env.store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        blobs_before
    );
    assert_eq!(
        std::fs::read_dir(env.store.root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn unpack_does_not_let_a_default_acl_leak_into_children() {
    // Setting a default ACL on a dir the test does not own, and chown in unpack,
    // need root.
    if !testkit::require_root("unpack_does_not_let_a_default_acl_leak_into_children") {
        return;
    }
    let env = Env::new();
    let acl = acl_blob();
    // A dir with a default ACL, then a file and a subdir beneath it that carry no
    // ACL of their own, and one file that carries its own access ACL.
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(0);
    b.append_pax_extensions([("SCHILY.xattr.system.posix_acl_default", acl.as_slice())])
        .unwrap();
    b.append_data(&mut dir.clone(), "shared/", std::io::empty())
        .unwrap();
    b.append_data(&mut dir, "shared/sub/", std::io::empty())
        .unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o640);
    file.set_size(1);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(0);
    b.append_data(&mut file.clone(), "shared/plain", &b"p"[..])
        .unwrap();
    b.append_pax_extensions([("SCHILY.xattr.system.posix_acl_access", acl.as_slice())])
        .unwrap();
    b.append_data(&mut file, "shared/own", &b"o"[..]).unwrap();
    let tar_bytes = b.into_inner().unwrap();

    let dest = env.path("layer");
    std::fs::create_dir(&dest).unwrap();
    unpack::unpack(&tar_bytes[..], &dest).unwrap();

    let default = "system.posix_acl_default";
    let access = "system.posix_acl_access";
    assert_eq!(get_xattr(&dest.join("shared"), default), Some(acl.clone()));
    assert_eq!(get_xattr(&dest.join("shared/plain"), access), None);
    assert_eq!(get_xattr(&dest.join("shared/sub"), access), None);
    assert_eq!(get_xattr(&dest.join("shared/sub"), default), None);
    assert_eq!(get_xattr(&dest.join("shared/own"), access), Some(acl));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("shared/plain"), 0o640);
    assert_eq!(mode("shared/sub"), 0o755);
}

#[test]
fn unpack_reads_byte_paths_and_pax_records_by_length() {
    // chown in unpack and trusted/user xattrs need root.
    if !testkit::require_root("unpack_reads_byte_paths_and_pax_records_by_length") {
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "d/", std::io::empty()).unwrap();
    // A name that is not UTF-8.
    let mut raw = tar::Header::new_gnu();
    raw.set_entry_type(tar::EntryType::Regular);
    raw.set_mode(0o644);
    raw.set_size(3);
    raw.as_gnu_mut().unwrap().name[..6].copy_from_slice(b"d/caf\xe9");
    raw.set_cksum();
    b.append(&raw, &b"raw"[..]).unwrap();
    // Go style: the size only in PAX, 0 in the header; a path and an xattr value
    // holding newlines.
    b.append_pax_extensions([
        ("path", &b"d/pax\nname"[..]),
        ("size", b"5"),
        ("SCHILY.xattr.user.nl", b"a\nb=c\n"),
    ])
    .unwrap();
    let mut go = tar::Header::new_ustar();
    go.set_entry_type(tar::EntryType::Regular);
    go.set_mode(0o600);
    go.set_size(0);
    go.set_path("placeholder").unwrap();
    go.set_cksum();
    let out = b.get_mut();
    out.extend_from_slice(go.as_bytes());
    out.extend_from_slice(b"hello");
    out.resize(out.len().div_ceil(512) * 512, 0);
    let mut after = tar::Header::new_gnu();
    after.set_entry_type(tar::EntryType::Regular);
    after.set_mode(0o644);
    after.set_size(2);
    b.append_data(&mut after, "d/after", &b"ok"[..]).unwrap();
    let tar_bytes = b.into_inner().unwrap();

    let dest = env.path("layer");
    std::fs::create_dir(&dest).unwrap();
    unpack::unpack(&tar_bytes[..], &dest).unwrap();
    let d = dest.join("d");
    let caf = d.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    assert_eq!(std::fs::read(caf).unwrap(), b"raw");
    let pax = d.join("pax\nname");
    assert_eq!(std::fs::read(&pax).unwrap(), b"hello");
    assert_eq!(
        get_xattr(&pax, "user.nl").as_deref(),
        Some(&b"a\nb=c\n"[..])
    );
    assert_eq!(std::fs::read(d.join("after")).unwrap(), b"ok");
    assert!(!d.join("placeholder").exists() && !dest.join("placeholder").exists());
    let mut names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
}
