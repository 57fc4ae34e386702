//! `bench-csi-create`: sequential CreateVolume (then DeleteVolume) rate of a CSI driver,
//! one request at a time, each answered before the next is sent: the figure the CO sees when
//! it provisions claims one by one. Runs against the real `strata-csi` (started here on a
//! pool of the chosen kind) or any driver already listening on a unix socket (`--endpoint`,
//! e.g. the reference hostpath driver), with the same requests, so the two compare.
//!
//! Prints the driver's CPU time (user + system, from /proc/PID/stat) per create and per
//! delete next to the rates: unlike a rate, it does not depend on how loaded the machine
//! is. For a driver at `--endpoint`, pass its pid with `--driver-pid`.
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

/// Sequential CreateVolume/DeleteVolume rate of strata-csi or of another driver.
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
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
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
    println!(
        "{what}; {} sequential creates, then deletes, per round",
        args.volumes
    );
    let mut ctl = ControllerClient::new(channel);
    for round in 0..args.rounds {
        let mut ids = Vec::with_capacity(args.volumes);
        let mut lat = Vec::with_capacity(args.volumes);
        let cpu0 = pid.and_then(cpu_ticks);
        let start = Instant::now();
        for i in 0..args.volumes {
            let t = Instant::now();
            let v = ctl
                .create_volume(request(format!("bench-{round}-{i}"), pool, args.size_mib))
                .await
                .map_err(|s| anyhow::anyhow!("CreateVolume: {s}"))?
                .into_inner()
                .volume
                .context("no volume")?;
            lat.push(t.elapsed());
            ids.push(v.volume_id);
        }
        let created = start.elapsed();
        let cpu1 = pid.and_then(cpu_ticks);
        let c = Summary::of(&lat).context("no samples")?;
        lat.clear();
        let start = Instant::now();
        for id in ids {
            let t = Instant::now();
            ctl.delete_volume(DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("DeleteVolume: {s}"))?;
            lat.push(t.elapsed());
        }
        let deleted = start.elapsed();
        let cpu2 = pid.and_then(cpu_ticks);
        let diff = |a: Option<u64>, b: Option<u64>| b?.checked_sub(a?);
        let d = Summary::of(&lat).context("no samples")?;
        println!(
            "round {round}: create {:>7.0}/s (p50 {}, p99 {}, driver CPU {}/create)   \
             delete {:>7.0}/s (p50 {}, p99 {}, driver CPU {}/delete)",
            rate(args.volumes, created),
            ms(c.p50),
            ms(c.p99),
            cpu_per_op(diff(cpu0, cpu1), args.volumes),
            rate(args.volumes, deleted),
            ms(d.p50),
            ms(d.p99),
            cpu_per_op(diff(cpu1, cpu2), args.volumes),
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
