//! Builds an image from this host's tools, reads the OCI layout back through the runtime's
//! verified import, and runs the tools inside the unpacked tree with chroot(8): a missing
//! library or loader shows up as a failed run.

use std::path::Path;
use std::process::Command;

use strata_runtime::image::ImageStore;

/// Runs `args` chrooted into `root`, with /proc mounted there (the mkfs tools check
/// mount status through it) in a private mount namespace that dies with the command, so
/// nothing is left mounted even when the test fails.
fn chroot(root: &Path, args: &[&str]) -> std::process::Output {
    let script = r#"mkdir -p "$0/proc" && mount -t proc proc "$0/proc" && exec chroot "$0" "$@""#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
        ])
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("error while loading shared libraries"),
        "{args:?}: {stderr}"
    );
    out
}

fn succeeds(root: &Path, args: &[&str]) {
    let out = chroot(root, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn image_layout_runs_its_tools_in_a_chroot() {
    if !testkit::require_root("image_layout_runs_its_tools_in_a_chroot") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("oci");
    // A small host binary stands in for strata-csi (a debug strata-csi is hundreds of
    // MiB, and packing hashes every byte); scripts/build-image packs the real one.
    let binary = Path::new("/usr/bin/true");
    let plan = strata_image_build::Plan {
        name: "localhost/strata/test:1".into(),
        binary: binary.to_path_buf(),
        extra_binaries: Vec::new(),
        tools: strata_image_build::DEFAULT_TOOLS
            .iter()
            .map(|t| t.to_string())
            .collect(),
        files: strata_image_build::DEFAULT_FILES
            .iter()
            .map(Into::into)
            .collect(),
    };
    strata_image_build::build(&plan, &tmp.path().join("work"), &out).unwrap();

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "localhost/strata/test:1"
    );
    let store = ImageStore::open(tmp.path().join("import")).unwrap();
    let images = store.import_layout(&out).unwrap();
    assert_eq!(images.len(), 1);
    let defaults = store.defaults(&images[0]).unwrap();
    assert_eq!(defaults.entrypoint, ["/usr/local/bin/true"]);
    let root = store.layer_path(&images[0].diff_ids[0]);

    succeeds(&root, &["/usr/local/bin/true"]);
    // The tools do real work inside the image: make and check filesystems in a file.
    let img = root.join("tmp/fs.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(320 << 20).unwrap();
    succeeds(&root, &["/usr/sbin/mkfs.ext4", "-q", "-F", "/tmp/fs.img"]);
    succeeds(&root, &["/usr/sbin/e2fsck", "-n", "-f", "/tmp/fs.img"]);
    succeeds(&root, &["/usr/sbin/resize2fs", "-P", "/tmp/fs.img"]);
    succeeds(&root, &["/usr/sbin/mkfs.xfs", "-q", "-f", "/tmp/fs.img"]);
    succeeds(&root, &["/usr/sbin/mkfs.btrfs", "-q", "-f", "/tmp/fs.img"]);
    // These need a mounted filesystem to do anything; running at all proves their
    // libraries are there.
    for tool in ["xfs_growfs", "btrfs", "mount", "umount"] {
        let out = chroot(&root, &[&format!("/usr/sbin/{tool}"), "-V"]);
        assert!(out.status.code() != Some(127), "{tool} did not run");
    }
    std::fs::remove_file(&img).unwrap();
}
