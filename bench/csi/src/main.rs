//! `bench-csi`: starts the real `strata-csi` on a loop-backed pool and measures
//! CreateVolume/DeleteVolume rates (sequential and N in flight), the latency of NodeStage,
//! NodePublish, NodeUnpublish and NodeUnstage, and NodePublish+NodeUnpublish pairs per second.
//!
//! Needs root (loop devices, mounts). Build the driver first:
//! `cargo build --release -p strata-csi && cargo run --release -p bench-csi -- --iterations 200`

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench_csi::{Summary, ms, rate};
use clap::Parser;
use csi_proto::volume_capability::access_mode::Mode;
use csi_proto::*;
use testkit::{DriverConfig, DriverProcess, LoopPool, PoolFs};

/// Benchmarks strata-csi over its unix socket on a loop-backed pool.
#[derive(Debug, Parser)]
struct Args {
    /// The strata-csi binary; defaults to `strata-csi` next to this executable.
    #[arg(long)]
    driver: Option<PathBuf>,
    /// Filesystem of the loop-backed pool: xfs (reflink), ext4, btrfs, or dir (a plain
    /// directory).
    #[arg(long, default_value = "xfs")]
    pool_fs: String,
    /// Pool kind: image (loop devices), btrfs (subvolumes; needs --pool-fs btrfs) or dir
    /// (project-quota directories).
    #[arg(long, default_value = "image")]
    backend: String,
    /// For --backend dir: run the pool with enforce=false (no project quotas needed).
    #[arg(long)]
    unenforced: bool,
    /// Size of the loop-backed pool in MiB.
    #[arg(long, default_value_t = 4096)]
    pool_mib: u64,
    /// Volumes created (then deleted) per CreateVolume/DeleteVolume round.
    #[arg(long, default_value_t = 1000)]
    volumes: usize,
    /// Requests in flight for the concurrent round.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Iterations of stage/publish/unpublish/unstage for the latency figures.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// NodePublish+NodeUnpublish pairs timed for the pairs/s figure.
    #[arg(long, default_value_t = 2000)]
    pairs: usize,
    /// What to run: all (the create/delete rates, node latencies and pairs), pairs (only
    /// the publish pairs), or restart (create --restart-volumes volumes, then time the
    /// driver's restart until Probe is ready and the first ListVolumes page is answered).
    #[arg(long, default_value = "all")]
    only: String,
    /// Size of each created volume in MiB.
    #[arg(long, default_value_t = 64)]
    volume_mib: i64,
    /// Volumes present for `--only restart`.
    #[arg(long, default_value_t = 10_000)]
    restart_volumes: usize,
}

const MIB: i64 = 1 << 20;
const POOL: &str = "bench";

/// `--volume-mib`.
static VOLUME_MIB: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// The capability's fs_type: ext4 on image pools, left open on tree pools.
static CAP_FS: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

fn cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: CAP_FS.get().copied().unwrap_or("ext4").into(),
                ..Default::default()
            },
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_req(name: String) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name,
        capacity_range: Some(CapacityRange {
            required_bytes: VOLUME_MIB.get().copied().unwrap_or(64) * MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap()],
        parameters: HashMap::from([("pool".to_owned(), POOL.to_owned())]),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-csi needs root: loop devices and mounts");
    }
    let driver = match args.driver.clone() {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("executable dir")?
            .join("strata-csi"),
    };
    if !driver.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p strata-csi) or pass --driver",
            driver.display()
        );
    }
    let fs = match args.pool_fs.as_str() {
        "xfs" => PoolFs::Xfs(args.pool_mib << 20),
        "ext4" => PoolFs::Ext4(args.pool_mib << 20),
        "btrfs" => PoolFs::Btrfs(args.pool_mib << 20),
        "dir" => PoolFs::Dir,
        other => bail!("--pool-fs {other}: want xfs, ext4, btrfs or dir"),
    };
    let pool = LoopPool::new(fs).context("making the pool")?;
    let spec = match (args.backend.as_str(), args.unenforced) {
        ("image", false) => format!("image:{}", pool.path().display()),
        ("btrfs", false) => format!("btrfs:{}", pool.path().display()),
        ("dir", false) => format!("dir:{}", pool.path().display()),
        ("dir", true) => format!("dir:{},enforce=false", pool.path().display()),
        (other, u) => bail!("--backend {other} (unenforced {u}): want image, btrfs or dir"),
    };
    if args.backend != "image" {
        let _ = CAP_FS.set("");
    }
    let _ = VOLUME_MIB.set(args.volume_mib);
    let proc =
        DriverProcess::start(DriverConfig::new(&driver, "bench-node").pool_spec(POOL, &spec)).await;
    println!(
        "strata-csi {} on a {} pool ({}, {} MiB), kernel {}",
        driver.display(),
        args.pool_fs,
        spec,
        args.pool_mib,
        kernel()
    );

    let mut proc = proc;
    match args.only.as_str() {
        "all" => {
            create_delete(&proc, &args, 1).await?;
            create_delete(&proc, &args, args.inflight).await?;
            node_latencies(&proc, &args).await?;
            publish_pairs(&proc, &args).await?;
        }
        "pairs" => publish_pairs(&proc, &args).await?,
        "restart" => restart(&mut proc, &args).await?,
        other => bail!("--only {other}: want all, pairs or restart"),
    }
    drop(proc);
    drop(pool);
    Ok(())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Creates `args.volumes` volumes with `inflight` requests outstanding, then deletes them the
/// same way; reports each phase's rate and latencies.
async fn create_delete(proc: &DriverProcess, args: &Args, inflight: usize) -> Result<()> {
    let ctl = proc.controller().await;
    let n = args.volumes;
    let run = |phase: &'static str, ids: Vec<String>| {
        let ctl = ctl.clone();
        async move {
            let queue = std::sync::Arc::new(std::sync::Mutex::new(ids.into_iter().enumerate()));
            let start = Instant::now();
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..inflight {
                let queue = queue.clone();
                let mut ctl = ctl.clone();
                workers.spawn(async move {
                    let mut lat = Vec::new();
                    let mut made = Vec::new();
                    loop {
                        let next = queue.lock().unwrap().next();
                        let Some((i, id)) = next else { break };
                        let t = Instant::now();
                        if phase == "create" {
                            let v = ctl
                                .create_volume(create_req(format!("bench-{inflight}-{i}")))
                                .await
                                .map_err(|s| anyhow::anyhow!("CreateVolume: {s}"))?
                                .into_inner()
                                .volume
                                .context("no volume")?;
                            made.push(v.volume_id);
                        } else {
                            ctl.delete_volume(DeleteVolumeRequest {
                                volume_id: id,
                                ..Default::default()
                            })
                            .await
                            .map_err(|s| anyhow::anyhow!("DeleteVolume: {s}"))?;
                        }
                        lat.push(t.elapsed());
                    }
                    anyhow::Ok((lat, made))
                });
            }
            let mut lat = Vec::new();
            let mut made = Vec::new();
            while let Some(r) = workers.join_next().await {
                let (l, m) = r??;
                lat.extend(l);
                made.extend(m);
            }
            let elapsed = start.elapsed();
            let s = Summary::of(&lat).context("no samples")?;
            println!(
                "{phase:>6} x{n} with {inflight:>2} in flight: {:>8.1} ops/s  p50 {}  p99 {}  max {}",
                rate(n, elapsed),
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            );
            anyhow::Ok(made)
        }
    };
    let ids = run("create", vec![String::new(); n]).await?;
    if ids.len() != n {
        bail!("created {} of {n}", ids.len());
    }
    run("delete", ids).await?;
    Ok(())
}

/// Creates the one volume a node-side measurement works on.
async fn one_volume(
    ctl: &mut controller_client::ControllerClient<csi_proto::tonic::transport::Channel>,
    name: &str,
) -> Result<Volume> {
    ctl.create_volume(create_req(name.into()))
        .await
        .map_err(|s| anyhow::anyhow!("CreateVolume: {s}"))?
        .into_inner()
        .volume
        .context("no volume")
}

/// Stage, publish, unpublish, unstage one volume `iterations` times; the first (cold: mkfs)
/// round is reported apart.
async fn node_latencies(proc: &DriverProcess, args: &Args) -> Result<()> {
    let mut ctl = proc.controller().await;
    let mut node = proc.node().await;
    let vol = one_volume(&mut ctl, "bench-node-rpcs").await?;
    let staging = proc.mkdir("bench-staging");
    let target_parent = proc.mkdir("bench-pod");
    let target = target_parent.join("mount");
    let (mut st, mut pb, mut up, mut us) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut cold = None;
    for i in 0..=args.iterations {
        let t = Instant::now();
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap()),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("NodeStageVolume: {s}"))?;
        let stage = t.elapsed();
        let t = Instant::now();
        node.node_publish_volume(publish_req(&vol, &staging, &target))
            .await
            .map_err(|s| anyhow::anyhow!("NodePublishVolume: {s}"))?;
        let publish = t.elapsed();
        let t = Instant::now();
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("NodeUnpublishVolume: {s}"))?;
        let unpublish = t.elapsed();
        let t = Instant::now();
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("NodeUnstageVolume: {s}"))?;
        let unstage = t.elapsed();
        if i == 0 {
            cold = Some(stage);
            continue;
        }
        st.push(stage);
        pb.push(publish);
        up.push(unpublish);
        us.push(unstage);
    }
    if let Some(c) = cold {
        println!("first NodeStageVolume (mkfs.ext4 of 64 MiB): {}", ms(c));
    }
    for (name, samples) in [
        ("NodeStageVolume", &st),
        ("NodePublishVolume", &pb),
        ("NodeUnpublishVolume", &up),
        ("NodeUnstageVolume", &us),
    ] {
        let s = Summary::of(samples).context("no samples")?;
        println!(
            "{name:<20} x{}: p50 {}  p99 {}  max {}",
            s.n,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: vol.volume_id,
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow::anyhow!("DeleteVolume: {s}"))?;
    Ok(())
}

fn publish_req(
    vol: &Volume,
    staging: &std::path::Path,
    target: &std::path::Path,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap()),
        readonly: false,
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    }
}

/// NodePublish+NodeUnpublish pairs per second on one staged volume, sequentially.
async fn publish_pairs(proc: &DriverProcess, args: &Args) -> Result<()> {
    let mut ctl = proc.controller().await;
    let mut node = proc.node().await;
    let vol = one_volume(&mut ctl, "bench-pairs").await?;
    let staging = proc.mkdir("pairs-staging");
    let target = proc.mkdir("pairs-pod").join("mount");
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap()),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow::anyhow!("NodeStageVolume: {s}"))?;
    let pid = proc.pid().context("driver not running")?;
    let (cpu0, cs0) = (cpu_ticks(pid), switches(pid));
    let start = Instant::now();
    let mut lat = Vec::with_capacity(args.pairs);
    for _ in 0..args.pairs {
        let t = Instant::now();
        node.node_publish_volume(publish_req(&vol, &staging, &target))
            .await
            .map_err(|s| anyhow::anyhow!("NodePublishVolume: {s}"))?;
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("NodeUnpublishVolume: {s}"))?;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let s = Summary::of(&lat).context("no samples")?;
    let (cpu1, cs1) = (cpu_ticks(pid), switches(pid));
    println!(
        "NodePublish+NodeUnpublish x{}: {:.1} pairs/s  pair p50 {}  p99 {}",
        args.pairs,
        rate(args.pairs, elapsed),
        ms(s.p50),
        ms(s.p99)
    );
    // CPU time and context switches per pair do not depend on how loaded the machine is.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    println!(
        "  driver per pair: {:.0} us CPU (user+system), {:.1} context switches",
        (cpu1 - cpu0) as f64 / hz * 1e6 / args.pairs as f64,
        (cs1 - cs0) as f64 / args.pairs as f64
    );
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .map_err(|s| anyhow::anyhow!("NodeUnstageVolume: {s}"))?;
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: vol.volume_id,
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow::anyhow!("DeleteVolume: {s}"))?;
    Ok(())
}

/// Every volume ListVolumes reports, following the paging tokens.
async fn list_all(proc: &DriverProcess) -> Result<Vec<String>> {
    let mut ctl = proc.controller().await;
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let r = ctl
            .list_volumes(ListVolumesRequest {
                max_entries: 0,
                starting_token: token,
            })
            .await
            .map_err(|s| anyhow::anyhow!("ListVolumes: {s}"))?
            .into_inner();
        ids.extend(
            r.entries
                .into_iter()
                .filter_map(|e| e.volume.map(|v| v.volume_id)),
        );
        if r.next_token.is_empty() {
            return Ok(ids);
        }
        token = r.next_token;
    }
}

/// Creates `--restart-volumes` volumes, then restarts the driver twice (SIGTERM, then
/// SIGKILL as a crash would) and reports how long each took until Probe answered ready and
/// until the first ListVolumes page came back, and that every volume is still listed.
async fn restart(proc: &mut DriverProcess, args: &Args) -> Result<()> {
    let n = args.restart_volumes;
    let ctl = proc.controller().await;
    let queue = std::sync::Arc::new(std::sync::Mutex::new(0..n));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.inflight {
        let queue = queue.clone();
        let mut ctl = ctl.clone();
        workers.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let next = queue.lock().unwrap().next();
                let Some(i) = next else { break };
                let t = Instant::now();
                ctl.create_volume(create_req(format!("restart-{i}")))
                    .await
                    .map_err(|s| anyhow::anyhow!("CreateVolume: {s}"))?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = workers.join_next().await {
        lat.extend(r??);
    }
    let s = Summary::of(&lat).context("no samples")?;
    println!(
        "created {n} volumes with {} in flight: {:.1} ops/s  p50 {}  p99 {}",
        args.inflight,
        rate(n, start.elapsed()),
        ms(s.p50),
        ms(s.p99)
    );
    let before = list_all(proc).await?;
    if before.len() != n {
        bail!("ListVolumes shows {} of {n} volumes", before.len());
    }
    for how in ["SIGTERM", "SIGKILL"] {
        let wal = std::fs::metadata(proc.state_dir().join("state.db-wal")).map_or(0, |m| m.len());
        let db = std::fs::metadata(proc.state_dir().join("state.db")).map_or(0, |m| m.len());
        println!("  before the {how} restart: state.db {db} bytes, WAL {wal} bytes");
        if how == "SIGTERM" {
            proc.signal(nix::sys::signal::Signal::SIGTERM);
            proc.wait_exit(std::time::Duration::from_secs(60));
        } else {
            proc.kill();
        }
        let t = Instant::now();
        proc.restart(&[]).await;
        let ready = t.elapsed();
        let mut ctl = proc.controller().await;
        ctl.list_volumes(ListVolumesRequest {
            max_entries: 100,
            starting_token: String::new(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("ListVolumes: {s}"))?;
        let first = t.elapsed();
        let mut after = list_all(proc).await?;
        after.sort();
        let mut want = before.clone();
        want.sort();
        if after != want {
            bail!(
                "after a {how} restart ListVolumes shows {} volumes, {} before",
                after.len(),
                want.len()
            );
        }
        println!(
            "restart after {how} with {n} volumes: Probe ready {}  first ListVolumes page {}  all {n} listed",
            ms(ready),
            ms(first)
        );
        // The driver's own account of its start-up phases.
        if let Some(line) = proc
            .log_text()
            .lines()
            .rev()
            .find(|l| l.contains("started"))
        {
            println!("  {}", line.trim());
        }
    }
    Ok(())
}

/// utime + stime of process `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Context switches (voluntary and not) of every thread of process `pid`.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}
