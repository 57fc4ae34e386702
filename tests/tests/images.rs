//! `volctl image`: a busybox image built from host files, exported by the runtime as an
//! OCI layout, imported again as a directory, as a tar of it and as a `docker save`
//! archive, listed and removed; bad archives are refused and store nothing.

use std::path::Path;
use std::process::Command;

use strata_e2e::Strata;
use strata_runtime::ImageStore;

fn tar(dir: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

fn names(s: &Strata) -> Vec<String> {
    let out = s.ok(&["image", "ls"]);
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn build_import_ls_rm() {
    if !testkit::require_root("build_import_ls_rm") {
        return;
    }
    let built = Strata::new("e2e-img");
    let out = built.ok(&["image", "build", "busybox:latest", "--busybox"]);
    assert!(out.starts_with("built busybox:latest (1 layer(s)"), "{out}");
    assert_eq!(names(&built), ["busybox:latest"]);
    let store = ImageStore::open(built.state().join("images")).unwrap();
    let img = store.image("busybox:latest").unwrap();
    let layer = store.layer_path(&img.diff_ids[0]);
    assert!(layer.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let defaults = store.defaults(&img).unwrap();
    assert_eq!(defaults.cmd, ["sh"]);

    let work = TempDir(testkit::unique_temp_dir("e2e-img-files"));
    let work = &work.0;
    let layout = work.join("layout");
    store.export_layout(&img, &layout).unwrap();

    // A layout directory, and a tar of one.
    let a = Strata::new("e2e-img-a");
    let out = a.ok(&["image", "import", layout.to_str().unwrap()]);
    assert_eq!(out, "imported busybox:latest\n");
    let layout_tar = work.join("layout.tar");
    tar(&layout, &layout_tar);
    let b = Strata::new("e2e-img-b");
    b.ok(&["image", "import", layout_tar.to_str().unwrap()]);
    assert_eq!(names(&b), ["busybox:latest"]);

    // `docker save`: manifest.json naming the config and layer files, with RepoTags.
    let docker = work.join("docker");
    std::fs::create_dir_all(docker.join("l1")).unwrap();
    std::fs::copy(store.blob_path(&img.config), docker.join("config.json")).unwrap();
    std::fs::copy(
        store.blob_path(&img.layer_blobs[0]),
        docker.join("l1/layer.tar"),
    )
    .unwrap();
    std::fs::write(
        docker.join("manifest.json"),
        r#"[{"Config":"config.json","RepoTags":["saved/busybox:1.36"],"Layers":["l1/layer.tar"]}]"#,
    )
    .unwrap();
    let docker_tar = work.join("docker.tar");
    tar(&docker, &docker_tar);
    let out = a.ok(&["image", "import", docker_tar.to_str().unwrap()]);
    assert_eq!(out, "imported saved/busybox:1.36\n");
    let a_store = ImageStore::open(a.state().join("images")).unwrap();
    assert_eq!(
        a_store.image("saved/busybox:1.36").unwrap().diff_ids,
        img.diff_ids
    );
    assert_eq!(names(&a), ["busybox:latest", "saved/busybox:1.36"]);

    // Bad input: a file that is no archive, a layout with a damaged layer.
    let junk = work.join("junk");
    std::fs::write(&junk, b"not a tar").unwrap();
    let c = Strata::new("e2e-img-c");
    let err = c.fails(&["image", "import", junk.to_str().unwrap()]);
    assert!(err.contains("not a readable tar archive"), "{err}");
    let empty = work.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = c.fails(&["image", "import", empty.to_str().unwrap()]);
    assert!(err.contains("neither an OCI image layout"), "{err}");
    let layer_blob = layout.join("blobs/sha256").join(img.layer_blobs[0].hex());
    let mut bytes = std::fs::read(&layer_blob).unwrap();
    let last = bytes.len() / 2;
    bytes[last] ^= 0xff;
    std::fs::write(&layer_blob, bytes).unwrap();
    let err = c.fails(&["image", "import", layout.to_str().unwrap()]);
    assert!(err.contains("importing"), "{err}");
    let out = c.run_with(&["image", "ls"], None);
    assert!(
        out.stdout.is_empty(),
        "nothing stored after a refused import"
    );

    // rm: the name goes; the layer stays while another image uses it, then goes too.
    let out = a.ok(&["image", "rm", "busybox:latest"]);
    assert!(!out.contains("freed"), "{out}");
    let err = a.fails(&["image", "rm", "busybox:latest"]);
    assert!(err.contains("not found"), "{err}");
    let out = a.ok(&["image", "rm", "saved/busybox:1.36"]);
    assert!(out.contains("freed 1 unused layer"), "{out}");
    assert!(names(&a).is_empty());
}

/// Removed when the test ends, also when it fails.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
