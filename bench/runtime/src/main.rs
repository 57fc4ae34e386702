//! `/bin/true` in a busybox bundle under strata-runtime, runc and crun.
//!
//! Three bundles: a plain rootfs dir, a 3-layer overlay rootfs (our image store),
//! and that overlay plus 5 bind mounts. Each iteration runs every runtime once on
//! the same bundle (interleaved, so drift hits all alike) with `<rt> run`, timing
//! the whole process from spawn to exit; medians are reported.
//!
//! crun 1.8 refuses this machine's hybrid cgroups unless
//! /sys/fs/cgroup/unified/cgroup.controllers reads empty, so the harness first
//! enters a private mount namespace and binds an empty file there; all three
//! runtimes run in that same namespace.
//!
//! A fourth runner, `libcontainer-run` (built next to this harness), drives
//! libcontainer directly with nothing of ours around it: the floor for any
//! runtime on that library, which separates the library's cost from ours.
//!
//! Usage: bench-runtime [--runs N] [--strata PATH]   (as root)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use strata_runtime::{ImageDefaults, ImageStore, InitLayer, Rootfs};

struct Runtime {
    name: &'static str,
    bin: PathBuf,
    root: PathBuf,
    /// `libcontainer-run ROOT BUNDLE ID` rather than runc's command line.
    bare: bool,
}

fn main() -> Result<()> {
    let mut runs = 30usize;
    let mut strata = std::env::current_exe()?.with_file_name("strata-runtime");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--strata" => strata = args.next().context("--strata PATH")?.into(),
            other => bail!("unknown argument {other}"),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root");
    }
    enter_private_mount_ns()?;
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();

    // State roots on tmpfs, as /run is on a usual host (here / is ext4 and /run
    // lives on it, which would make every runtime's state writes disk metadata).
    let state = t.join("state");
    std::fs::create_dir(&state)?;
    nix::mount::mount(
        Some("tmpfs"),
        &state,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    let runtimes = [
        Runtime {
            name: "strata-runtime",
            bin: strata.clone(),
            root: state.join("strata"),
            bare: false,
        },
        Runtime {
            name: "runc",
            bin: "runc".into(),
            root: state.join("runc"),
            bare: false,
        },
        Runtime {
            name: "crun",
            bin: "crun".into(),
            root: state.join("crun"),
            bare: false,
        },
        Runtime {
            name: "libcontainer (bare)",
            bin: std::env::current_exe()?.with_file_name("libcontainer-run"),
            root: state.join("bare"),
            bare: true,
        },
    ];

    // Plain rootfs.
    let plain = t.join("plain");
    testkit::busybox_tree(&plain.join("rootfs"));
    write_config(&plain, &plain.join("rootfs"), &[])?;

    // 3-layer overlay: the binary, the applet links, the rest.
    let src = t.join("src");
    testkit::busybox_tree(&src);
    let (l1, l2, l3) = (t.join("l1"), t.join("l2"), t.join("l3"));
    std::fs::create_dir_all(l1.join("bin"))?;
    std::fs::rename(src.join("bin/busybox"), l1.join("bin/busybox"))?;
    std::fs::create_dir_all(&l2)?;
    std::fs::rename(src.join("bin"), l2.join("bin"))?;
    std::fs::rename(&src, &l3)?;
    let store = ImageStore::open(t.join("store"))?;
    let image = store.build_image("busybox", &[&l1, &l2, &l3], &ImageDefaults::default())?;
    let rootfs = Rootfs::create(&store, "bench", &image, &InitLayer::for_hostname("bench"))?;
    let overlay = t.join("overlay");
    write_config(&overlay, &rootfs.path(), &[])?;
    let mut vols = Vec::new();
    for i in 0..5 {
        let v = t.join(format!("vol{i}"));
        std::fs::create_dir_all(&v)?;
        vols.push((v, format!("/mnt/v{i}")));
    }
    let binds = t.join("binds");
    write_config(&binds, &rootfs.path(), &vols)?;

    let scenarios = [
        ("plain rootfs", &plain),
        ("3-layer overlay", &overlay),
        ("overlay + 5 binds", &binds),
    ];
    println!("| bundle | runtime | median ms | p10 ms | p90 ms | runs |");
    println!("|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for (label, bundle) in scenarios {
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); runtimes.len()];
        for i in 0..runs + 3 {
            for (k, rt) in runtimes.iter().enumerate() {
                let d = run_once(rt, bundle, &format!("b{k}-{i}"))?;
                if i >= 3 {
                    times[k].push(d); // the first 3 rounds warm caches
                }
            }
        }
        let mut medians = Vec::new();
        for (rt, ts) in runtimes.iter().zip(times.iter_mut()) {
            ts.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let pick = |q: f64| ts[((ts.len() - 1) as f64 * q).round() as usize];
            println!(
                "| {label} | {} | {:.1} | {:.1} | {:.1} | {} |",
                rt.name,
                ms(pick(0.5)),
                ms(pick(0.1)),
                ms(pick(0.9)),
                ts.len()
            );
            medians.push(ms(pick(0.5)));
        }
        summary.push((
            label,
            medians[0] / medians[2],
            medians[0] / medians[1],
            medians[3] / medians[2],
        ));
    }
    println!();
    for (label, vs_crun, vs_runc, bare_vs_crun) in summary {
        println!(
            "{label}: strata/crun {vs_crun:.2}x, strata/runc {vs_runc:.2}x, \
             bare libcontainer/crun {bare_vs_crun:.2}x"
        );
    }
    rootfs.remove()?;
    Ok(())
}

/// `runc spec` defaults with `/bin/true`, the given rootfs and bind mounts.
fn write_config(bundle: &Path, rootfs: &Path, binds: &[(PathBuf, String)]) -> Result<()> {
    std::fs::create_dir_all(bundle)?;
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(bundle)
        .output()?;
    if !out.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = serde_json::json!(["/bin/true"]);
    c["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
    for (src, dest) in binds {
        c["mounts"]
            .as_array_mut()
            .context("mounts")?
            .push(serde_json::json!({
                "destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate"]
            }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&c)?)?;
    Ok(())
}

fn run_once(rt: &Runtime, bundle: &Path, id: &str) -> Result<Duration> {
    let mut cmd = Command::new(&rt.bin);
    if rt.bare {
        std::fs::create_dir_all(&rt.root)?;
        cmd.arg(&rt.root).arg(bundle).arg(id);
    } else {
        cmd.arg("--root")
            .arg(&rt.root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id);
    }
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", rt.name))?;
    let took = start.elapsed();
    if !status.success() {
        bail!("{} run {id} failed: {status}", rt.name);
    }
    Ok(took)
}

/// A private mount namespace where the unified hierarchy lists no controllers,
/// the only setup in which crun 1.8 accepts hybrid cgroups.
fn enter_private_mount_ns() -> Result<()> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let controllers = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    if controllers.exists() {
        let empty =
            std::env::temp_dir().join(format!("bench-runtime-empty-{}", std::process::id()));
        std::fs::write(&empty, "")?;
        mount(
            Some(&empty),
            controllers,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        std::fs::remove_file(&empty)?;
    }
    Ok(())
}
