//! Containers through the `strata-runtime` binary: namespaces, limits, read-only
//! rootfs and masked paths, volumes, joining namespaces.

mod common;

use common::*;
use strata_runtime::{BindMount, ContainerConfig, Propagation, Resources};

#[test]
fn namespaces_seen_from_inside() {
    if !testkit::require_root("namespaces_seen_from_inside") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    let id = testkit::unique_id("ns");
    let mut cfg = sh(
        "echo pid=$$; echo host=$(hostname); echo mounts=$(wc -l < /proc/self/mountinfo); \
                      grep ' / / ' /proc/self/mountinfo | grep -c overlay; cat /etc/hostname",
    );
    cfg.hostname = Some("inside-host".into());
    let ran = run(&env, &id, &img, &cfg);
    assert_eq!(
        ran.code,
        0,
        "{ran:?}",
        ran = (ran.stderr.clone(), ran.output.clone())
    );
    assert!(ran.output.contains("pid=1\n"), "{}", ran.output);
    assert!(ran.output.contains("host=inside-host\n"), "{}", ran.output);
    // The table is the container's own (its root is our overlay, checked below) and holds
    // only what the runtime mounts. Its length is not compared with the host's: a quiet
    // host can have as few mounts, and CI once saw 25 and 25.
    let mounts: usize = ran
        .output
        .lines()
        .find_map(|l| l.strip_prefix("mounts="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(mounts < 30, "container sees {mounts} mounts");
    assert!(
        ran.output.lines().any(|l| l == "1"),
        "root is not the overlay: {}",
        ran.output
    );
    assert!(
        ran.output.lines().any(|l| l == id),
        "init layer /etc/hostname: {}",
        ran.output
    );
}

#[test]
fn memory_limit_kills_allocation_past_it() {
    if !testkit::require_root("memory_limit_kills_allocation_past_it") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    let limited = |script: &str| {
        let mut cfg = sh(script);
        cfg.resources = Resources {
            memory_limit: Some(32 << 20),
            ..Default::default()
        };
        cfg
    };
    // dd touches its whole block buffer: 8 MiB fits, 128 MiB does not.
    let small = run(
        &env,
        &testkit::unique_id("mem"),
        &img,
        &limited("dd if=/dev/zero of=/dev/null bs=8M count=2 && echo fits"),
    );
    assert_eq!(small.code, 0, "{}{}", small.stderr, small.output);
    assert!(small.output.contains("fits"));
    let big = run(
        &env,
        &testkit::unique_id("mem"),
        &img,
        &limited("dd if=/dev/zero of=/dev/null bs=128M count=1; echo dd=$?"),
    );
    assert!(
        big.output.contains("dd=137") || big.code == 137,
        "allocation past the limit survived: code {} output {}",
        big.code,
        big.output
    );
}

#[test]
fn pids_limit_refuses_fork_past_it() {
    if !testkit::require_root("pids_limit_refuses_fork_past_it") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    // Command substitution would itself need a fork: only builtins after the loop.
    let mut cfg = sh("n=0; while [ $n -lt 16 ]; do sleep 5 & n=$((n+1)); done; echo loop-done");
    cfg.resources = Resources {
        pids_limit: Some(6),
        ..Default::default()
    };
    let ran = run(&env, &testkit::unique_id("pids"), &img, &cfg);
    assert!(
        ran.output.contains("can't fork"),
        "no fork was refused: {}{}",
        ran.stderr,
        ran.output
    );
    // The same script without the limit forks all 16.
    let mut free = cfg.clone();
    free.resources = Resources::default();
    let ran = run(&env, &testkit::unique_id("pids"), &img, &free);
    assert!(
        !ran.output.contains("can't fork") && ran.output.contains("loop-done"),
        "{}",
        ran.output
    );
}

#[test]
fn readonly_rootfs_and_masked_paths_hold() {
    if !testkit::require_root("readonly_rootfs_and_masked_paths_hold") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    let vol = env.path("vol-ro");
    std::fs::create_dir(&vol).unwrap();
    let mut cfg = sh("touch /newfile 2>&1; echo root=$?; \
                      touch /data/x 2>&1; echo vol=$?; \
                      echo timer_list=$(wc -c < /proc/timer_list); \
                      echo firmware=$(ls /sys/firmware | wc -l); \
                      echo 1 > /proc/sys/vm/drop_caches 2>&1; echo sysctl=$?; \
                      ls /proc/acpi 2>&1 | wc -l");
    cfg.readonly_rootfs = true;
    cfg.volumes = vec![BindMount {
        source: vol.clone(),
        destination: "/data".into(),
        read_only: true,
        propagation: Propagation::None,
    }];
    let ran = run(&env, &testkit::unique_id("ro"), &img, &cfg);
    assert_eq!(ran.code, 0, "{}{}", ran.stderr, ran.output);
    let o = &ran.output;
    assert!(o.contains("root=1"), "rootfs writable: {o}");
    assert!(o.contains("Read-only file system"), "{o}");
    assert!(o.contains("vol=1"), "read-only volume writable: {o}");
    assert!(
        o.contains("timer_list=0"),
        "/proc/timer_list not masked: {o}"
    );
    assert!(o.contains("firmware=0"), "/sys/firmware not masked: {o}");
    assert!(o.contains("sysctl=1"), "/proc/sys writable: {o}");
    assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 0);
}

#[test]
fn volumes_mount_with_requested_mode() {
    if !testkit::require_root("volumes_mount_with_requested_mode") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    // A shared source, so that HostToContainer has a peer group to be a slave of.
    let vol = env.path("vol-rw");
    std::fs::create_dir(&vol).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &vol,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _vol_mount = testkit::MountGuard(vol.clone());
    nix::mount::mount(
        None::<&str>,
        &vol,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    std::fs::write(vol.join("from-host"), "hello\n").unwrap();
    let mut cfg = sh(
        "cat /deep/data/from-host && echo written > /deep/data/from-container && \
                      grep ' /deep/data ' /proc/self/mountinfo; grep ' /both ' /proc/self/mountinfo; \
                      grep ' /private ' /proc/self/mountinfo",
    );
    let shared = env.path("vol-shared");
    std::fs::create_dir(&shared).unwrap();
    let private = env.path("vol-private");
    std::fs::create_dir(&private).unwrap();
    cfg.volumes = vec![
        BindMount {
            source: vol.clone(),
            destination: "/deep/data".into(),
            read_only: false,
            propagation: Propagation::HostToContainer,
        },
        BindMount {
            source: shared.clone(),
            destination: "/both".into(),
            read_only: false,
            propagation: Propagation::Bidirectional,
        },
        BindMount {
            source: private.clone(),
            destination: "/private".into(),
            read_only: false,
            propagation: Propagation::None,
        },
    ];
    let ran = run(&env, &testkit::unique_id("vol"), &img, &cfg);
    assert_eq!(ran.code, 0, "{}{}", ran.stderr, ran.output);
    assert!(ran.output.contains("hello"));
    let line = |dest: &str| {
        ran.output
            .lines()
            .find(|l| l.contains(&format!(" {dest} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("/deep/data").contains("master:"),
        "HostToContainer is not a slave: {}",
        ran.output
    );
    assert!(
        line("/both").contains("shared:"),
        "Bidirectional is not shared: {}",
        ran.output
    );
    // With a Bidirectional volume the container's tree is rshared (as CRI runtimes
    // do), so the None volume sits in a peer group of its own: never a slave of,
    // nor a peer with, the host's.
    let group = |l: &str| {
        l.split(' ')
            .find_map(|f| f.strip_prefix("shared:"))
            .map(str::to_string)
    };
    let p = line("/private");
    assert!(
        !p.is_empty() && !p.contains("master:"),
        "None receives host mounts: {}",
        ran.output
    );
    assert_ne!(
        group(&p),
        group(&line("/both")),
        "None shares the host's peer group: {}",
        ran.output
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("from-container")).unwrap(),
        "written\n"
    );
}

#[test]
fn joins_existing_namespaces_by_path() {
    if !testkit::require_root("joins_existing_namespaces_by_path") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    // An "infra" container holds the pod's namespaces.
    let infra = testkit::unique_id("infra");
    let rootfs = RootfsGuard(
        strata_runtime::Rootfs::create(
            &env.store,
            &infra,
            &img,
            &strata_runtime::InitLayer::for_hostname("pod-host"),
        )
        .unwrap(),
    );
    let mut cfg = sh("sleep 60");
    cfg.hostname = Some("pod-host".into());
    let bundle = env.path("infra-bundle");
    strata_runtime::write_bundle(&bundle, &cfg.to_spec(&infra, &rootfs.0.path()).unwrap()).unwrap();
    let _infra_guard = testkit::ContainerGuard {
        binary: BIN.into(),
        root: env.state.clone(),
        id: infra.clone(),
    };
    let out = env
        .cli()
        .args(["create", "--bundle"])
        .arg(&bundle)
        .args(["--output", "/dev/null", &infra])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.cli().args(["start", &infra]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: strata_runtime::State =
        serde_json::from_slice(&env.cli().args(["state", &infra]).output().unwrap().stdout)
            .unwrap();
    let ns = |k: &str| std::path::PathBuf::from(format!("/proc/{}/ns/{k}", state.pid));

    let mut member = sh("hostname; for n in uts ipc net; do readlink /proc/self/ns/$n; done");
    member.join_namespaces = vec![
        (strata_runtime::NamespaceKind::Network, ns("net")),
        (strata_runtime::NamespaceKind::Ipc, ns("ipc")),
        (strata_runtime::NamespaceKind::Uts, ns("uts")),
    ];
    let ran = run(&env, &testkit::unique_id("member"), &img, &member);
    assert_eq!(ran.code, 0, "{}{}", ran.stderr, ran.output);
    assert!(ran.output.starts_with("pod-host\n"), "{}", ran.output);
    for k in ["uts", "ipc", "net"] {
        let want = std::fs::read_link(ns(k)).unwrap();
        assert!(
            ran.output.contains(&*want.to_string_lossy()),
            "{k} not shared: {}",
            ran.output
        );
    }
}

#[test]
fn exit_status_and_log_file() {
    if !testkit::require_root("exit_status_and_log_file") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    let mut cfg: ContainerConfig = sh("echo to-stdout; echo to-stderr >&2; cd; pwd; id -u; exit 7");
    cfg.cwd = "/tmp".into();
    cfg.uid = 1234;
    cfg.gid = 1234;
    cfg.env.push("HOME=/tmp".into());
    let ran = run(&env, &testkit::unique_id("exit"), &img, &cfg);
    assert_eq!(ran.code, 7, "{}{}", ran.stderr, ran.output);
    assert!(
        ran.output.contains("to-stdout") && ran.output.contains("to-stderr"),
        "{}",
        ran.output
    );
    assert!(ran.output.contains("1234"), "{}", ran.output);
}

/// A tmpfs at `path`, made shared so that binds of it have a peer group to join or follow.
fn shared_tmpfs(path: &std::path::Path) -> testkit::MountGuard {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir(path).unwrap();
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let guard = testkit::MountGuard(path.to_path_buf());
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    guard
}

/// Mount events really cross between host and container as each volume's propagation
/// says (HostToContainer: host → container; Bidirectional: both ways), and the volume
/// binds themselves live only in the container's mount namespace: the host's mount table
/// does not show them while the container runs (as under a CRI runtime).
#[test]
fn mounts_propagate_as_asked_and_volume_binds_stay_in_the_container() {
    if !testkit::require_root("mounts_propagate_as_asked_and_volume_binds_stay_in_the_container") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    let id = testkit::unique_id("prop");
    let h2c = env.path("h2c");
    let _h2c = shared_tmpfs(&h2c);
    let both = env.path("both");
    let _both = shared_tmpfs(&both);
    std::fs::create_dir(h2c.join("sub")).unwrap();
    let rootfs = RootfsGuard(
        strata_runtime::Rootfs::create(
            &env.store,
            &id,
            &img,
            &strata_runtime::InitLayer::for_hostname(&id),
        )
        .unwrap(),
    );
    // Each wait is bounded (400 x 50 ms) so a broken propagation fails, not hangs.
    let mut cfg = sh(
        "wait_for() { i=0; while [ ! -e \"$1\" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; [ -e \"$1\" ]; }; \
         echo running; wait_for /h2c/sub/marker && echo saw-host-mount; \
         mkdir /both/inner && mount -t tmpfs inner /both/inner && echo x > /both/inner/from-container && \
         wait_for /both/done; umount /both/inner; echo end",
    );
    cfg.volumes = vec![
        BindMount {
            source: h2c.clone(),
            destination: "/h2c".into(),
            read_only: false,
            propagation: Propagation::HostToContainer,
        },
        BindMount {
            source: both.clone(),
            destination: "/both".into(),
            read_only: false,
            propagation: Propagation::Bidirectional,
        },
    ];
    let mut spec = serde_json::to_value(cfg.to_spec(&id, &rootfs.0.path()).unwrap()).unwrap();
    // Mounting inside needs CAP_SYS_ADMIN (a privileged container, as Bidirectional requires).
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_SYS_ADMIN".into());
    }
    let bundle = env.path("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let rootfs_path = rootfs.0.path();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let log = env.path("prop.log");
    let _guard = testkit::ContainerGuard {
        binary: BIN.into(),
        root: env.state.clone(),
        id: id.clone(),
    };
    let mut child = env
        .cli()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("--output")
        .arg(&log)
        .arg(&id)
        .spawn()
        .unwrap();
    let wait = std::time::Duration::from_secs(20);
    // Mounts made before the container's binds would be copied by the rbind, not
    // propagated: the host mounts only once the container runs.
    testkit::wait_for("the container to run", wait, || {
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        out.contains("running").then_some(())
    });
    // The host mounts below the HostToContainer source; the container must see it.
    let sub = h2c.join("sub");
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _sub = testkit::MountGuard(sub.clone());
    std::fs::write(sub.join("marker"), "").unwrap();
    // The container's mount below its Bidirectional volume must reach the host.
    let inner = both.join("inner");
    testkit::wait_for("the container's mount to reach the host", wait, || {
        inner.join("from-container").exists().then_some(())
    });
    let _inner = testkit::MountGuard(inner.clone());
    assert!(
        is_mountpoint(&inner),
        "the container's mount is not a mount on the host"
    );
    for dest in ["h2c", "both"] {
        assert!(
            !is_mountpoint(&rootfs_path.join(dest)),
            "the volume bind at /{dest} shows in the host's mount table"
        );
    }
    std::fs::write(both.join("done"), "").unwrap();
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}: {out}");
    assert!(
        out.contains("saw-host-mount"),
        "host mount not seen inside: {out}"
    );
    assert!(out.contains("end"), "{out}");
    assert!(
        !is_mountpoint(&inner),
        "the container's umount did not reach the host"
    );
}

/// A loop device over a 1 MiB file starting with `head`, detached when dropped.
struct TestLoop {
    dev: std::path::PathBuf,
    file: std::path::PathBuf,
}

impl TestLoop {
    fn new(env: &Env, name: &str, head: &[u8]) -> TestLoop {
        let file = env.path(name);
        let mut data = head.to_vec();
        data.resize(1 << 20, 0);
        std::fs::write(&file, data).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8(out.stdout).unwrap().trim().into();
        TestLoop { dev, file }
    }
}

impl Drop for TestLoop {
    fn drop(&mut self) {
        let root = self.file.parent().unwrap();
        if let Err(e) = testkit::detach_loop_if_backed_under(&self.dev, root) {
            eprintln!("cleanup: detach {}: {e}", self.dev.display());
        }
    }
}

/// Raw block volumes: the device nodes given as devices are usable at their paths (under
/// /dev or anywhere), read-only ones only for reading; any other device node a volume
/// shows is refused by the devices cgroup, as under runc's default spec.
#[test]
fn devices_are_usable_only_as_given() {
    if !testkit::require_root("devices_are_usable_only_as_given") {
        return;
    }
    let env = Env::new();
    let img = env.busybox("bb");
    let rw = TestLoop::new(&env, "rw.img", b"host-bytes");
    let ro = TestLoop::new(&env, "ro.img", b"read-only-bytes");
    let other = TestLoop::new(&env, "other.img", b"not-given");
    let mut cfg = sh(
        "head -c 10 /dev/xvda; echo; printf container > /dev/xvda && echo wrote-rw; \
         head -c 15 /data/ro-dev; echo; printf x > /data/ro-dev || echo ro-refused; \
         head -c 9 /other 2>&1 | grep -q 'not permitted' && echo other-refused; true",
    );
    cfg.devices = vec![
        strata_runtime::DeviceNode {
            source: rw.dev.clone(),
            destination: "/dev/xvda".into(),
            read_only: false,
        },
        strata_runtime::DeviceNode {
            source: ro.dev.clone(),
            destination: "/data/ro-dev".into(),
            read_only: true,
        },
    ];
    // Shown through a plain volume, not as a device: the cgroup must refuse it.
    cfg.volumes = vec![BindMount {
        source: other.dev.clone(),
        destination: "/other".into(),
        read_only: false,
        propagation: Propagation::None,
    }];
    let ran = run(&env, &testkit::unique_id("dev"), &img, &cfg);
    assert_eq!(ran.code, 0, "{}{}", ran.stderr, ran.output);
    for line in [
        "host-bytes",
        "wrote-rw",
        "read-only-bytes",
        "ro-refused",
        "other-refused",
    ] {
        assert!(
            ran.output.lines().any(|l| l == line),
            "{line:?} missing: {}",
            ran.output
        );
    }
    let mut head = [0u8; 9];
    use std::io::Read;
    std::fs::File::open(&rw.dev)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"container", "the write reached the device");

    // Not a device node: refused before anything runs.
    let mut bad = sh("true");
    bad.devices = vec![strata_runtime::DeviceNode {
        source: rw.file.clone(),
        destination: "/dev/xvdb".into(),
        read_only: false,
    }];
    let err = bad.to_spec("x", std::path::Path::new("/")).unwrap_err();
    assert!(err.to_string().contains("not a device node"), "{err}");
}
