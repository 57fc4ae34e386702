//! `volctl volumes|snapshots|pools|doctor` against a real `strata-csi` on real pools: an
//! image pool and a btrfs pool on a loop device. Checks every output format, each kind of
//! orphan `doctor` knows (planted by hand), its repairs and exit codes, and that bad input
//! is refused with exit code 2 and changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use csi_proto::volume_capability::access_mode::Mode;
use csi_proto::*;
use serde_json::Value;
use testkit::{DriverConfig, DriverProcess, LoopPool, PoolFs};

const VOLCTL: &str = env!("CARGO_BIN_EXE_volctl");

fn volctl(args: &[&str]) -> Output {
    Command::new(VOLCTL)
        .args(args)
        // A state dir without `volctl up` in it: nothing there is found by default.
        .env("STRATA_STATE_DIR", "/nonexistent/strata-state")
        .output()
        .expect("run volctl")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn cap(block: bool) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(if block {
            volume_capability::AccessType::Block(volume_capability::BlockVolume {})
        } else {
            volume_capability::AccessType::Mount(volume_capability::MountVolume::default())
        }),
        access_mode: Some(volume_capability::AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// The driver on two pools, `img` (image, on the host disk) and `bt` (btrfs on a loop
/// device). Field order: the driver goes (and its mounts with it) before the pools.
struct Node {
    driver: DriverProcess,
    img: LoopPool,
    bt: LoopPool,
}

impl Node {
    async fn start() -> Node {
        let img = LoopPool::new(PoolFs::Dir).expect("image pool");
        let bt = LoopPool::new(PoolFs::Btrfs(256 << 20)).expect("btrfs pool");
        let config = DriverConfig::new(testkit::workspace_binary("strata-csi"), "n1")
            .pool("img", img.path())
            .pool_spec("bt", &format!("btrfs:{}", bt.path().display()));
        let driver = DriverProcess::start(config).await;
        Node { driver, img, bt }
    }

    fn state(&self) -> String {
        self.driver.state_dir().display().to_string()
    }

    /// `volctl VERB --driver-state <state> ARGS...`: pools from the driver's pools.json.
    fn run(&self, verb: &str, args: &[&str]) -> Output {
        let state = self.state();
        let mut all = vec![verb, "--driver-state", state.as_str()];
        all.extend_from_slice(args);
        volctl(&all)
    }

    async fn create(&self, name: &str, pool: &str) -> Volume {
        let mut ctl = self.driver.controller().await;
        ctl.create_volume(CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap(false)],
            parameters: HashMap::from([("pool".to_string(), pool.to_string())]),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("CreateVolume {name}: {s}"))
        .into_inner()
        .volume
        .expect("volume")
    }

    /// Stages and publishes `v`; returns (staging, target).
    async fn use_volume(&self, v: &Volume, name: &str) -> (PathBuf, PathBuf) {
        let mut node = self.driver.node().await;
        let staging = self.driver.mkdir(&format!("{name}-staging"));
        let target = self.driver.path(&format!("{name}-target"));
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap(false)),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("NodeStageVolume: {s}"));
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(cap(false)),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("NodePublishVolume: {s}"));
        (staging, target)
    }
}

fn mount_count(path: &Path) -> usize {
    testkit::mountinfo()
        .iter()
        .filter(|m| m.mount_point == path)
        .count()
}

fn bind(src: &Path, dst: &Path) {
    let st = Command::new("mount")
        .args(["--bind"])
        .arg(src)
        .arg(dst)
        .status()
        .expect("mount --bind");
    assert!(
        st.success(),
        "mount --bind {} {}",
        src.display(),
        dst.display()
    );
}

fn kinds(o: &Output) -> Vec<String> {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)));
    v.as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] == "problem")
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_output_format_shows_pools_volumes_and_snapshots() {
    if !testkit::require_root("every_output_format_shows_pools_volumes_and_snapshots") {
        return;
    }
    let n = Node::start().await;
    let a = n.create("vol-a", "img").await;
    let b = n.create("vol-b", "bt").await;
    let (staging, target) = n.use_volume(&a, "a").await;
    let mut ctl = n.driver.controller().await;
    let snap = ctl
        .create_snapshot(CreateSnapshotRequest {
            name: "snap-b".into(),
            source_volume_id: b.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");

    // JSON: every field, from the database, the records, loop devices and mounts.
    let vols = json(&n.run("volumes", &["-o", "json"]));
    let vols = vols.as_array().unwrap();
    assert_eq!(vols.len(), 2, "{vols:?}");
    let va = vols
        .iter()
        .find(|v| v["id"] == a.volume_id.as_str())
        .unwrap();
    assert_eq!(va["name"], "vol-a");
    assert_eq!(va["pool"], "img");
    assert_eq!(va["backend"], "image");
    assert_eq!(va["capacity_bytes"], 64 << 20);
    assert_eq!(va["staging_path"], staging.display().to_string());
    assert_eq!(va["staging_mounted"], true);
    assert_eq!(va["published"][0], target.display().to_string());
    assert!(
        va["loop_devices"][0]
            .as_str()
            .unwrap()
            .starts_with("/dev/loop"),
        "{va}"
    );
    assert!(va["used_bytes"].as_u64().unwrap() > 0, "{va}");
    assert_eq!(va["condition"], "healthy");
    assert_eq!(
        (va["in_database"].clone(), va["has_record"].clone()),
        (true.into(), true.into())
    );
    let vb = vols
        .iter()
        .find(|v| v["id"] == b.volume_id.as_str())
        .unwrap();
    assert_eq!(vb["backend"], "btrfs");
    let bt_volumes = n.bt.path().canonicalize().unwrap().join("volumes");
    assert!(
        Path::new(vb["path"].as_str().unwrap()).starts_with(&bt_volumes),
        "{vb}"
    );
    assert_eq!(vb["staging_mounted"], false);

    // YAML carries the same.
    let o = n.run("volumes", &["-o", "yaml", "--in", "bt"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let y: Value = yaml_serde::from_slice(&o.stdout).expect("yaml");
    assert_eq!(y.as_array().unwrap().len(), 1);
    assert_eq!(y[0]["id"], b.volume_id.as_str());

    // Tables: normal and wide.
    let o = n.run("volumes", &[]);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.starts_with("ID ") && t.contains("vol-a") && t.contains("64Mi"),
        "{}",
        text(&o)
    );
    assert!(!t.contains("STAGING"), "{t}");
    let o = n.run("volumes", &["-o", "wide"]);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.contains("STAGING") && t.contains(&target.display().to_string()),
        "{t}"
    );
    assert!(t.contains("/dev/loop"), "{t}");

    let snaps = json(&n.run("snapshots", &["-o", "json"]));
    assert_eq!(snaps[0]["id"], snap.snapshot_id.as_str());
    assert_eq!(snaps[0]["source_volume_id"], b.volume_id.as_str());
    let o = n.run("snapshots", &["-o", "wide"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("snap-b"),
        "{}",
        text(&o)
    );

    let pools = json(&n.run("pools", &["-o", "json"]));
    let pools = pools.as_array().unwrap();
    assert_eq!(pools.len(), 2);
    let bt = pools.iter().find(|p| p["name"] == "bt").unwrap();
    assert_eq!(
        (bt["backend"].as_str(), bt["filesystem"].as_str()),
        (Some("btrfs"), Some("btrfs"))
    );
    assert_eq!(bt["provisioned_bytes"], 64 << 20);
    assert_eq!(
        (bt["volumes"].clone(), bt["snapshots"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(bt["condition"], "ok");
    let o = n.run("pools", &["img", "-o", "yaml"]);
    let y: Value = yaml_serde::from_slice(&o.stdout).expect("yaml");
    assert_eq!(y[0]["backend"], "image");
    let o = n.run("pools", &["-o", "wide"]);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.contains("PROVISIONED") && t.contains("FILESYSTEM") && t.contains("btrfs"),
        "{t}"
    );

    // A healthy node: doctor finds no problem while the driver runs, and none once it is
    // stopped (reading works either way).
    let o = n.run("doctor", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut n = n;
    n.driver.kill();
    let o = n.run("doctor", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let vols = json(&n.run("volumes", &["-o", "json"]));
    assert_eq!(
        vols.as_array().unwrap().len(),
        2,
        "read with the driver stopped"
    );
    drop(n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_and_repairs_each_kind_of_orphan() {
    if !testkit::require_root("doctor_finds_and_repairs_each_kind_of_orphan") {
        return;
    }
    let mut n = Node::start().await;
    let a = n.create("vol-a", "img").await;
    let b = n.create("vol-b", "bt").await;
    let (staging, target) = n.use_volume(&a, "a").await;

    // 1. Pool entry without records, 2. a loop device on it nobody owns.
    let stray = n
        .img
        .path()
        .join("volumes/v0123456789abcdef0123456789abcdef.img");
    std::fs::File::create(&stray)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let lo = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&stray)
        .output()
        .expect("losetup");
    assert!(
        lo.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&lo.stderr)
    );
    let lo = PathBuf::from(String::from_utf8_lossy(&lo.stdout).trim().to_string());
    // 2b. A loop device whose pool file was deleted under it.
    let gone = n.img.path().join("volumes/vgone.img");
    std::fs::File::create(&gone)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let lo2 = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&gone)
        .output()
        .expect("losetup");
    assert!(lo2.status.success());
    let lo2 = PathBuf::from(String::from_utf8_lossy(&lo2.stdout).trim().to_string());
    std::fs::remove_file(&gone).unwrap();
    // 3. A metadata record whose data is gone and which the database lacks.
    let rec_a = std::fs::read_to_string(
        n.img
            .path()
            .join("meta/volumes")
            .join(format!("{}.json", a.volume_id)),
    )
    .unwrap();
    let ghost_id = "n1_img_vfedcba9876543210fedcba9876543210";
    let ghost = rec_a
        .replace(&a.volume_id, ghost_id)
        .replace("\"vol-a\"", "\"vol-ghost\"");
    let ghost = {
        let mut v: Value = serde_json::from_str(&ghost).unwrap();
        v["record"]["file"] = "vfedcba9876543210fedcba9876543210.img".into();
        v.to_string()
    };
    let ghost_rec = n
        .img
        .path()
        .join("meta/volumes")
        .join(format!("{ghost_id}.json"));
    std::fs::write(&ghost_rec, ghost).unwrap();
    // 4. A stale mount: vol-b's subvolume bound where no record says.
    let vb_path = n.bt.path().join("volumes").join(
        json(&n.run("volumes", &["-o", "json", "--in", "bt"]))[0]["path"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap(),
    );
    let _ = b;
    let stale = n.driver.mkdir("stale");
    bind(&vb_path, &stale);
    // 5. A duplicate mount: vol-a's staging bound again on its publish target.
    bind(&staging, &target);
    assert_eq!(mount_count(&target), 2);
    // 6. A temporary file of an interrupted record write.
    let tmp = n.img.path().join("meta/volumes/x.json.tmp");
    std::fs::write(&tmp, b"{").unwrap();

    let want = [
        "unrecorded-data",
        "unowned-loop-device",
        "orphan-record",
        "stale-mount",
        "duplicate-mount",
    ];
    let o = n.run("doctor", &["-o", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let found = kinds(&o);
    assert_eq!(
        found.iter().filter(|k| *k == "unowned-loop-device").count(),
        2,
        "{found:?}"
    );
    for k in want {
        assert!(found.contains(&k.to_string()), "{k} not found: {found:?}");
    }
    // While the driver runs a temp file may be a write in flight: a note, not a problem.
    let o = n.run("doctor", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.contains("x.json.tmp") && t.contains("--repair fixes"),
        "{t}"
    );

    // Repair is refused while the driver runs, and changes nothing.
    let o = n.run("doctor", &["--repair"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stop it"),
        "{}",
        text(&o)
    );
    assert!(stray.exists() && ghost_rec.exists() && tmp.exists());
    assert_eq!((mount_count(&stale), mount_count(&target)), (1, 2));

    // Stopped: the temp file is a problem too, and --repair fixes all six.
    n.driver.kill();
    let o = n.run("doctor", &["-o", "json"]);
    assert!(kinds(&o).contains(&"temp-file".to_string()), "{}", text(&o));
    let o = n.run("doctor", &["--repair"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let yaml = n.run("doctor", &["-o", "yaml"]);
    assert_eq!(
        yaml_serde::from_slice::<Value>(&yaml.stdout).ok(),
        Some(Value::Array(vec![])),
        "{}",
        text(&yaml)
    );
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(t.contains("FIXED") && !t.contains("FAILED"), "{t}");
    assert!(
        !stray.exists()
            && n.img
                .path()
                .join("orphaned/volumes/v0123456789abcdef0123456789abcdef.img")
                .exists(),
        "moved aside"
    );
    assert!(!ghost_rec.exists() && !tmp.exists(), "{t}");
    assert_eq!((mount_count(&stale), mount_count(&target)), (0, 1), "{t}");
    // By backing file: the number itself may already serve someone else.
    let left: Vec<_> = testkit::loops_backed_under(n.img.path())
        .into_iter()
        .filter(|d| d.device == lo || d.device == lo2)
        .collect();
    assert!(left.is_empty(), "{} still attached: {left:?}", lo.display());
    assert!(mount_count(&staging) == 1, "the recorded stage is kept");
    let o = n.run("doctor", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The driver starts again on the repaired pools and serves vol-a.
    n.driver.restart(&[]).await;
    let vols = json(&n.run("volumes", &["-o", "json"]));
    assert_eq!(vols.as_array().unwrap().len(), 2, "{vols}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_and_changes_nothing() {
    if !testkit::require_root("bad_input_exits_2_and_changes_nothing") {
        return;
    }
    let pool = LoopPool::new(PoolFs::Dir).expect("pool");
    let state = tempfile::tempdir().unwrap();
    let st = state.path().join("csi");
    let st = st.to_str().unwrap();
    let spec = format!("p=image:{}", pool.path().display());
    for args in [
        vec![
            "volumes",
            "--driver-state",
            st,
            "--pool",
            &spec,
            "--in",
            "nope",
        ],
        vec!["pools", "--driver-state", st, "--pool", &spec, "nope"],
        vec!["volumes", "--driver-state", st, "--pool", "p=image"],
        vec!["volumes", "--driver-state", st, "--pool", "p=zfs:/srv"],
        vec![
            "pools",
            "--driver-state",
            st,
            "--pool",
            "p=image:/nonexistent/strata-pool",
        ],
        vec![
            "doctor",
            "--repair",
            "--driver-state",
            st,
            "--pool",
            "p=image:/nonexistent/strata-pool",
        ],
        vec![
            "doctor",
            "--driver-state",
            st,
            "--pool",
            &spec,
            "--pool",
            &spec,
        ],
        vec![
            "volumes",
            "-o",
            "xml",
            "--driver-state",
            st,
            "--pool",
            &spec,
        ],
        // No pools given, none recorded, no default pool.
        vec!["volumes", "--driver-state", st],
    ] {
        let o = volctl(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!o.stderr.is_empty(), "{args:?}: says why");
    }
    assert!(!Path::new(st).exists(), "no state dir was created");
    assert!(
        std::fs::read_dir(pool.path()).unwrap().next().is_none(),
        "pool untouched"
    );
    assert!(
        testkit::mounts_under(pool.path()).is_empty(),
        "nothing mounted"
    );
    // An empty pool that exists is fine.
    let o = volctl(&["volumes", "--driver-state", st, "--pool", &spec]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("No volumes found"));
    let o = volctl(&["doctor", "--repair", "--driver-state", st, "--pool", &spec]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !Path::new(st).exists(),
        "repair of a clean pool creates no state dir"
    );
    assert!(
        std::fs::read_dir(pool.path()).unwrap().next().is_none(),
        "pool untouched"
    );
}
