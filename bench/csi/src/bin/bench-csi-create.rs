//! `bench-csi-create`: CreateVolume (then DeleteVolume) rate of a CSI driver. By default
//! sequential, one request at a time, each answered before the next is sent: the figure the
//! CO sees when it provisions claims one by one. With `--concurrency N`, N requests are in
//! flight on one connection (as external-provisioner's workers send them), so a driver
//! that shares work among concurrent requests (strata's journal flush) can show it. Runs
//! against the real `strata-csi` (started here on a pool of the chosen kind) or any driver
//! already listening on a unix socket (`--endpoint`, e.g. the reference hostpath driver),
//! with the same requests, so the two compare.
//!
//! Prints the driver's CPU time (user + system, from /proc/PID/stat) and context switches
//! (summed over its threads; a thread that exits during a round takes its count with it)
//! per create and per delete next to the rates: unlike a rate, they do not depend on how
//! loaded the machine is. For a driver at `--endpoint`, pass its pid with `--driver-pid`.
//! The client's own CPU time per operation is printed too: it runs on the same cores.
//!
//! Needs root for strata-csi pools on loop devices.
//! `cargo build --release -p strata-csi -p bench-csi &&
//!  target/release/bench-csi-create --backend dir --unenforced --volumes 2000 --rounds 3`

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench_csi::{Summary, ms, rate};
use clap::Parser;
use csi_proto::controller_client::ControllerClient;
use csi_proto::volume_capability::access_mode::Mode;
use csi_proto::*;
use testkit::{DriverConfig, DriverProcess, LoopPool, PoolFs};

/// CreateVolume/DeleteVolume rate of strata-csi or of another driver.
#[derive(Debug, Parser)]
struct Args {
    /// A driver already listening, `unix:///path.sock`; no pool is made and no `pool`
    /// parameter is sent.
    #[arg(long)]
    endpoint: Option<String>,
    /// The strata-csi binary; defaults to `strata-csi` next to this executable.
    #[arg(long)]
    driver: Option<PathBuf>,
    /// strata-csi pool kind: dir (project-quota directories), btrfs or image.
    #[arg(long, default_value = "dir")]
    backend: String,
    /// Filesystem under the pool: dir (a directory of the host disk), xfs, xfs-prjquota,
    /// ext4, btrfs (loop-backed).
    #[arg(long, default_value = "dir")]
    pool_fs: String,
    /// dir pools: run with enforce=false (no project quotas needed).
    #[arg(long)]
    unenforced: bool,
    /// Size of a loop-backed pool in MiB.
    #[arg(long, default_value_t = 40960)]
    pool_mib: u64,
    /// Volumes created (then deleted) per round.
    #[arg(long, default_value_t = 2000)]
    volumes: usize,
    /// Capacity asked for each volume, in MiB (the pool must hold them all: dir pools
    /// count capacities against the filesystem's size).
    #[arg(long, default_value_t = 64)]
    size_mib: i64,
    /// Rounds; each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// With `--endpoint`: the driver's pid, to report its CPU time per operation.
    #[arg(long)]
    driver_pid: Option<u32>,
    /// Requests in flight at once (1: sequential).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Context switches (voluntary and not) of every thread of process `pid`.
fn ctx_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue; // the thread exited meanwhile
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().ok()?;
            }
        }
    }
    Some(total)
}

/// The driver's counters, and this client's CPU time, at one moment.
#[derive(Clone, Copy)]
struct Counters {
    ticks: Option<u64>,
    switches: Option<u64>,
    /// Shares the machine's cores with the driver: with requests in flight, the two
    /// together are what the cores must carry.
    client: Option<u64>,
}

impl Counters {
    fn read(pid: Option<u32>) -> Counters {
        Counters {
            ticks: pid.and_then(cpu_ticks),
            switches: pid.and_then(ctx_switches),
            client: cpu_ticks(std::process::id()),
        }
    }

    /// "CPU x µs, y switches" per operation since `before`.
    fn per_op(&self, before: &Counters, n: usize, what: &str) -> String {
        let diff = |a: Option<u64>, b: Option<u64>| b?.checked_sub(a?);
        let sw = match diff(before.switches, self.switches) {
            Some(s) => format!("{:.1}", s as f64 / n as f64),
            None => "?".into(),
        };
        format!(
            "driver CPU {}/{what}, {sw} ctx switches/{what}, client CPU {}/{what}",
            cpu_per_op(diff(before.ticks, self.ticks), n),
            cpu_per_op(diff(before.client, self.client), n)
        )
    }
}

/// Runs `op(i)` for i in 0..n with `concurrency` in flight, returning each latency and
/// the wall time of the whole lot.
async fn drive<F, Fut, T>(
    n: usize,
    concurrency: usize,
    op: F,
) -> Result<(Vec<std::time::Duration>, Vec<T>, std::time::Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send,
    T: Send + 'static,
{
    let op = std::sync::Arc::new(op);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (op, next) = (op.clone(), next.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                let t = Instant::now();
                let v = op(i).await?;
                out.push((i, t.elapsed(), v));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.context("benchmark task")??);
    }
    let wall = start.elapsed();
    all.sort_by_key(|(i, _, _)| *i);
    let (lat, vals) = all.into_iter().map(|(_, l, v)| (l, v)).unzip();
    Ok((lat, vals, wall))
}

/// CPU per operation in µs, from clock ticks over `n` operations.
fn cpu_per_op(ticks: Option<u64>, n: usize) -> String {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    match ticks {
        Some(t) => format!("{:.0} µs", t as f64 / hz * 1e6 / n as f64),
        None => "?".into(),
    }
}

const MIB: i64 = 1 << 20;

fn request(name: String, pool: Option<&str>, size_mib: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name,
        capacity_range: Some(CapacityRange {
            required_bytes: size_mib * MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume::default(),
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }],
        parameters: pool
            .map(|p| HashMap::from([("pool".to_owned(), p.to_owned())]))
            .unwrap_or_default(),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Keep the pool and the driver alive until the rounds are done.
    let mut _keep: Option<(DriverProcess, LoopPool)> = None;
    let mut pid = args.driver_pid;
    let (channel, pool, what) = match &args.endpoint {
        Some(ep) => {
            let sock = ep
                .strip_prefix("unix://")
                .context("--endpoint must be unix:///path")?;
            let ch = testkit::connect(std::path::Path::new(sock))
                .await
                .with_context(|| format!("connecting {ep}"))?;
            (ch, None, format!("driver at {ep}"))
        }
        None => {
            if !nix::unistd::geteuid().is_root() {
                bail!("bench-csi-create needs root to run strata-csi on its pools");
            }
            let driver = match &args.driver {
                Some(d) => d.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("executable dir")?
                    .join("strata-csi"),
            };
            let size = args.pool_mib << 20;
            let fs = match args.pool_fs.as_str() {
                "dir" => PoolFs::Dir,
                "xfs" => PoolFs::Xfs(size),
                "xfs-prjquota" => PoolFs::XfsPrjquota(size),
                "ext4" => PoolFs::Ext4(size),
                "btrfs" => PoolFs::Btrfs(size),
                other => bail!("--pool-fs {other}: want dir, xfs, xfs-prjquota, ext4 or btrfs"),
            };
            let pool = LoopPool::new(fs).context("making the pool")?;
            let opts = if args.unenforced {
                ",enforce=false"
            } else {
                ""
            };
            let spec = format!("{}:{}{opts}", args.backend, pool.path().display());
            let proc = DriverProcess::start(
                DriverConfig::new(&driver, "bench-node").pool_spec("bench", &spec),
            )
            .await;
            let ch = proc.channel().await;
            let what = format!(
                "strata-csi {} on --pool bench={spec} ({})",
                driver.display(),
                args.pool_fs
            );
            pid = proc.pid();
            _keep = Some((proc, pool));
            (ch, Some("bench"), what)
        }
    };
    let mode = if args.concurrency > 1 {
        format!("{} in flight", args.concurrency)
    } else {
        "sequential".to_string()
    };
    println!(
        "{what}; {} creates, then deletes, per round, {mode}",
        args.volumes
    );
    let ctl = ControllerClient::new(channel);
    let pool = pool.map(str::to_owned);
    for round in 0..args.rounds {
        let c0 = Counters::read(pid);
        let (lat, ids, created) = {
            let (ctl, pool, size) = (ctl.clone(), pool.clone(), args.size_mib);
            drive(args.volumes, args.concurrency, move |i| {
                let mut ctl = ctl.clone();
                let req = request(format!("bench-{round}-{i}"), pool.as_deref(), size);
                async move {
                    let v = ctl
                        .create_volume(req)
                        .await
                        .map_err(|s| anyhow::anyhow!("CreateVolume: {s}"))?
                        .into_inner()
                        .volume
                        .context("no volume")?;
                    Ok(v.volume_id)
                }
            })
            .await?
        };
        let c1 = Counters::read(pid);
        let c = Summary::of(&lat).context("no samples")?;
        let ids = std::sync::Arc::new(ids);
        let (lat, _, deleted) = {
            let (ctl, ids) = (ctl.clone(), ids.clone());
            drive(args.volumes, args.concurrency, move |i| {
                let mut ctl = ctl.clone();
                let volume_id = ids[i].clone();
                async move {
                    ctl.delete_volume(DeleteVolumeRequest {
                        volume_id,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("DeleteVolume: {s}"))?;
                    Ok(())
                }
            })
            .await?
        };
        let c2 = Counters::read(pid);
        let d = Summary::of(&lat).context("no samples")?;
        println!(
            "round {round}: create {:>7.0}/s (p50 {}, p99 {}, {})   \
             delete {:>7.0}/s (p50 {}, p99 {}, {})",
            rate(args.volumes, created),
            ms(c.p50),
            ms(c.p99),
            c1.per_op(&c0, args.volumes, "create"),
            rate(args.volumes, deleted),
            ms(d.p50),
            ms(d.p99),
            c2.per_op(&c1, args.volumes, "delete"),
        );
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "  load average: {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
