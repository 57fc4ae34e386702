//! Binder and provisioner benchmarks (`docs/benchmarks.md`, "Binder and provisioner").
//!
//! 1. `match`: the volume index alone, 1,000 claims against 10,000 static PVs, each match
//!    followed by the index update the binder makes (so later claims see the PV as taken).
//! 2. `static`: the full binder with the embedded store: 10,000 static PVs, then 1,000 claims
//!    created one by one; time until every claim is Bound. `static-apply`: the same 1,000
//!    claims written in one transaction (as one `volctl apply -f`), so the binder has all of
//!    them at once: time from the write until every claim is Bound.
//! 3. `dynamic`: 1,000 claims of an Immediate class, end to end through a real strata-csi
//!    (CreateVolume over its unix socket, PV created, claim bound).
//!
//! 4. `apply`: the `volctl` binary's `apply -f` of 1,000 ConfigMaps (one file), then of 1,000
//!    claims of an Immediate class with the loops and a real strata-csi running, until every
//!    claim is Bound: what a user waits for, store durability included.
//!
//! `cargo build --release -p strata-csi -p volctl -p bench-provisioner` then
//! `target/release/bench-provisioner [--claims N] [--pvs N] [match|static|static-apply|dynamic|apply]...`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use strata_provisioner::binder::{self, ClaimContext, VolumeIndex, Write};
use strata_provisioner::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_provisioner::{Config, CsiClient};
use strata_store::{EmbeddedStore, Store};
use testkit::{DriverConfig, DriverProcess, LoopPool};

#[derive(Parser)]
struct Args {
    /// Claims to bind.
    #[arg(long, default_value_t = 1000)]
    claims: usize,
    /// Static PVs for `match` and `static`.
    #[arg(long, default_value_t = 10_000)]
    pvs: usize,
    /// strata-csi binary (default: next to this binary).
    #[arg(long)]
    csi: Option<PathBuf>,
    /// volctl binary for `apply` (default: next to this binary).
    #[arg(long)]
    volctl: Option<PathBuf>,
    /// Open the control loops' store handle with acknowledged writes (a sync per write),
    /// as before they were ordered: the durable-acknowledgement cost for control loops.
    #[arg(long)]
    acknowledged_loops: bool,
    /// Which benchmarks (default: all).
    which: Vec<String>,
}

/// Set once from `--acknowledged-loops` before any benchmark runs.
static ACKNOWLEDGED_LOOPS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

const MODES: [&[&str]; 3] = [
    &["ReadWriteOnce"],
    &["ReadWriteOnce", "ReadOnlyMany"],
    &["ReadWriteMany"],
];
const CLASSES: [&str; 4] = ["", "fast", "slow", "archive"];

fn static_pv(i: usize) -> PersistentVolume {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("pv-{i:05}"), "labels": {"rack": format!("r{}", i % 7)}},
        "spec": {
            "capacity": {"storage": format!("{}Gi", 1 + (i * 7919) % 200)},
            "accessModes": MODES[i % 3],
            "storageClassName": CLASSES[i % 4],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": format!("/srv/pv-{i}")}
        },
        "status": {"phase": "Available"}
    }))
    .expect("pv json")
}

fn claim(i: usize, class: Option<&str>, size: &str) -> PersistentVolumeClaim {
    let mut spec =
        json!({"accessModes": MODES[i % 3], "resources": {"requests": {"storage": size}}});
    if let Some(c) = class {
        spec["storageClassName"] = json!(c);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("claim-{i:05}"), "namespace": "default", "uid": format!("uid-{i}")},
        "spec": spec
    }))
    .expect("claim json")
}

fn bench_match(claims: usize, pvs: usize) {
    let mut index = VolumeIndex::new();
    let t = Instant::now();
    for i in 0..pvs {
        index.upsert(static_pv(i));
    }
    let build = t.elapsed();
    let classes = BTreeMap::<String, StorageClass>::new();
    let claims: Vec<_> = (0..claims)
        .map(|i| {
            claim(
                i,
                Some(CLASSES[i % 4]),
                &format!("{}Gi", 1 + (i * 31) % 150),
            )
        })
        .collect();
    let t = Instant::now();
    let mut bound = 0;
    for c in &claims {
        let plan = binder::sync_claim(
            c,
            &ClaimContext {
                volumes: &index,
                classes: &classes,
                unscheduled_pods: &[],
            },
        );
        // What the binder's cache does after a successful PV write.
        for w in plan.writes {
            if let Write::Volume(pv) | Write::VolumeStatus(pv) = w {
                index.upsert(pv);
                bound += 1;
            }
        }
    }
    let elapsed = t.elapsed();
    println!(
        "match: {} claims against {pvs} static PVs: {:.1} ms ({:.1} us/claim), {} PV writes planned; index build {:.1} ms",
        claims.len(),
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / claims.len() as f64,
        bound,
        build.as_secs_f64() * 1e3
    );
}

/// CPU time (user + system, every thread) this process has used: the figure that does not
/// depend on the load the other users of the machine put on it. /proc/self/stat counts in
/// USER_HZ ticks, 100 a second on Linux.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |i: usize| -> u64 {
        rest.split_whitespace()
            .nth(i - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((field(14) + field(15)) * 10)
}

/// The load average, as `uptime` prints it.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Waits until `want` objects of kind `K` satisfy `done`: one list, then the watch (a list
/// every few milliseconds would take CPU from the loops being measured).
async fn wait_for<K: strata_store::Object>(
    store: &EmbeddedStore,
    want: usize,
    done: fn(&K) -> bool,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let list = store.list::<K>(None, None).await?;
    let name = |o: &K| o.metadata().name.clone().unwrap_or_default();
    let mut ready: std::collections::HashSet<String> =
        list.items.iter().filter(|o| done(o)).map(name).collect();
    let mut watch = store.watch::<K>(None, list.resource_version).await?;
    while ready.len() < want {
        let ev = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(ev)) => ev?,
            Ok(None) => bail!("the {} watch ended", K::KIND),
            Err(_) => bail!("only {}/{want} ready after 600 s", ready.len()),
        };
        let deleted = matches!(ev, strata_store::WatchEvent::Deleted(_));
        let o = ev.object();
        if done(o) && !deleted {
            ready.insert(name(o));
        } else {
            ready.remove(&name(o));
        }
    }
    Ok(())
}

async fn wait_bound(store: &EmbeddedStore, want: usize) -> anyhow::Result<()> {
    wait_for::<PersistentVolumeClaim>(store, want, |c| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    })
    .await
}

/// Creates the objects (JSON documents, at most `MAX_DOCUMENTS`) in one transaction, as
/// one `volctl apply -f` would.
async fn apply_all(store: &EmbeddedStore, docs: &[String]) -> anyhow::Result<()> {
    let manifests = strata_store::apply::parse_manifests(&docs.join("\n---\n"), "default")?;
    store.apply(manifests).await?;
    Ok(())
}

struct Env {
    store: EmbeddedStore,
    state: tempfile_dir::Dir,
    driver: DriverProcess,
    _pool: LoopPool,
}

mod tempfile_dir {
    /// A temp dir removed on drop (no extra dependency for one directory).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn env(csi: &PathBuf) -> anyhow::Result<Env> {
    let pool = LoopPool::dir();
    let driver =
        DriverProcess::start(DriverConfig::new(csi, "bench-node").pool("main", pool.path())).await;
    let state = tempfile_dir::Dir(testkit::unique_temp_dir("bench-provisioner"));
    let store = EmbeddedStore::open(&state.0).context("store")?;
    Ok(Env {
        store,
        state,
        driver,
        _pool: pool,
    })
}

async fn start_loops(e: &Env) -> anyhow::Result<strata_provisioner::Running> {
    let config = Config::new("bench-node");
    // The loops get their own handle, ordered as strata-provisioner opens it; the bench's
    // own writes stand for a user's and stay acknowledged.
    let mut options = strata_store::StoreOptions::controller("strata-provisioner");
    if ACKNOWLEDGED_LOOPS.load(std::sync::atomic::Ordering::Relaxed) {
        options.durability = strata_store::Durability::Acknowledged;
    }
    let store = EmbeddedStore::open_with(&e.state.0, options)?;
    let csi =
        CsiClient::new(&e.driver.endpoint(), config.csi_timeout).map_err(anyhow::Error::msg)?;
    Ok(strata_provisioner::start(store, csi, config).await?)
}

fn static_claim(i: usize) -> PersistentVolumeClaim {
    let mut c = claim(
        i,
        Some(CLASSES[i % 4]),
        &format!("{}Gi", 1 + (i * 31) % 150),
    );
    c.metadata.uid = None;
    c
}

/// `all_at_once`: the claims are written in one transaction, else one create each.
async fn bench_static(
    csi: &PathBuf,
    claims: usize,
    pvs: usize,
    all_at_once: bool,
) -> anyhow::Result<()> {
    let e = env(csi).await?;
    // Setup, not measured: through an ordered handle, so 10,000 creates do not wait for
    // 10,000 syncs.
    {
        let setup = EmbeddedStore::open_with(
            &e.state.0,
            strata_store::StoreOptions::controller("bench-setup"),
        )?;
        for i in 0..pvs {
            setup.create(&static_pv(i)).await?;
        }
    }
    let (t, c0) = (Instant::now(), cpu());
    let running = start_loops(&e).await?;
    // The store creates PVs Pending; the binder's first sync makes each Available.
    wait_for::<PersistentVolume>(&e.store, pvs, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available")
    })
    .await?;
    let (initial, initial_cpu) = (t.elapsed(), cpu() - c0);
    let load_before = load();
    let t = Instant::now();
    if all_at_once {
        let docs = (0..claims)
            .map(|i| serde_json::to_string(&static_claim(i)))
            .collect::<Result<Vec<_>, _>>()?;
        apply_all(&e.store, &docs).await?;
    } else {
        for i in 0..claims {
            e.store.create(&static_claim(i)).await?;
        }
    }
    let (created, c1) = (t.elapsed(), cpu());
    wait_bound(&e.store, claims).await?;
    let (total, c2) = (t.elapsed(), cpu());
    running.shutdown().await;
    println!(
        "{}: {claims} claims against {pvs} static PVs, full binder + embedded store: {:.2} s to all Bound (writing the claims {:.2} s of it; {:.2} s after the last claim was written, CPU {:.2} s = {:.2} ms a claim); initial sync of the PVs {:.2} s (CPU {:.2} s = {:.0} us a PV); load {load_before} / {}",
        if all_at_once {
            "static-apply (claims in one transaction)"
        } else {
            "static (claims created one by one)"
        },
        total.as_secs_f64(),
        created.as_secs_f64(),
        (total - created).as_secs_f64(),
        (c2 - c1).as_secs_f64(),
        (c2 - c1).as_secs_f64() * 1e3 / claims as f64,
        initial.as_secs_f64(),
        initial_cpu.as_secs_f64(),
        initial_cpu.as_secs_f64() * 1e6 / pvs as f64,
        load()
    );
    Ok(())
}

async fn bench_dynamic(csi: &PathBuf, claims: usize) -> anyhow::Result<()> {
    let e = env(csi).await?;
    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "fast"}, "provisioner": "local.csi.strata.io", "volumeBindingMode": "Immediate"
    }))?;
    e.store.create(&sc).await?;
    let running = start_loops(&e).await?;
    let (t, c0, load_before) = (Instant::now(), cpu(), load());
    for i in 0..claims {
        let mut c = claim(i, Some("fast"), "16Mi");
        c.metadata.uid = None;
        c.spec.as_mut().expect("spec").access_modes = Some(vec!["ReadWriteOnce".into()]);
        e.store.create(&c).await?;
    }
    let created = t.elapsed();
    wait_bound(&e.store, claims).await?;
    let (total, used) = (t.elapsed(), cpu() - c0);
    running.shutdown().await;
    let pvs = e
        .store
        .list::<PersistentVolume>(None, None)
        .await?
        .items
        .len();
    println!(
        "dynamic: {claims} claims, Immediate class, real strata-csi: {:.2} s to all Bound ({:.0} claims/s; creating the claims {:.2} s of it); {pvs} PVs; CPU of this process (loops and bench, not strata-csi) {:.2} s = {:.2} ms a claim; load {load_before} / {}",
        total.as_secs_f64(),
        claims as f64 / total.as_secs_f64(),
        created.as_secs_f64(),
        used.as_secs_f64(),
        used.as_secs_f64() * 1e3 / claims as f64,
        load()
    );
    Ok(())
}

/// Runs `volctl --state-dir DIR apply -f FILE` and returns its wall time.
fn volctl_apply(
    volctl: &PathBuf,
    state: &std::path::Path,
    file: &std::path::Path,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = std::process::Command::new(volctl)
        .arg("--state-dir")
        .arg(state)
        .args(["apply", "-f"])
        .arg(file)
        .output()
        .with_context(|| format!("running {}", volctl.display()))?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "volctl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

async fn bench_apply(csi: &PathBuf, volctl: &PathBuf, n: usize) -> anyhow::Result<()> {
    let e = env(csi).await?;
    let docs = |f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join("---\n");
    let objects = e.state.0.join("objects.yaml");
    std::fs::write(
        &objects,
        docs(&|i| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:05}\n  namespace: default\ndata:\n  key: value-{i}\n"
            )
        }),
    )?;
    let took = volctl_apply(volctl, &e.state.0, &objects)?;
    println!(
        "apply: volctl apply -f of {n} ConfigMaps: {:.2} s",
        took.as_secs_f64()
    );

    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "fast"}, "provisioner": "local.csi.strata.io", "volumeBindingMode": "Immediate"
    }))?;
    e.store.create(&sc).await?;
    let running = start_loops(&e).await?;
    let claims = e.state.0.join("claims.yaml");
    std::fs::write(
        &claims,
        docs(&|i| {
            format!(
                "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: claim-{i:05}\n  namespace: default\nspec:\n  storageClassName: fast\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 16Mi\n"
            )
        }),
    )?;
    let (t, c0, load_before) = (Instant::now(), cpu(), load());
    let applied = volctl_apply(volctl, &e.state.0, &claims)?;
    wait_bound(&e.store, n).await?;
    let (total, used) = (t.elapsed(), cpu() - c0);
    running.shutdown().await;
    println!(
        "apply: volctl apply -f of {n} claims, Immediate class, real strata-csi: {:.2} s to all Bound (the apply {:.2} s of it); CPU of the loops (and bench) {:.2} s = {:.2} ms a claim; load {load_before} / {}",
        total.as_secs_f64(),
        applied.as_secs_f64(),
        used.as_secs_f64(),
        used.as_secs_f64() * 1e3 / n as f64,
        load()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ACKNOWLEDGED_LOOPS.store(
        args.acknowledged_loops,
        std::sync::atomic::Ordering::Relaxed,
    );
    println!(
        "control loops' writes: {}",
        if args.acknowledged_loops {
            "acknowledged (a sync per write)"
        } else {
            "ordered (background sync), as strata-provisioner runs"
        }
    );
    let which = if args.which.is_empty() {
        vec![
            "match".into(),
            "static".into(),
            "static-apply".into(),
            "dynamic".into(),
            "apply".into(),
        ]
    } else {
        args.which.clone()
    };
    let beside = |name: &str| -> anyhow::Result<PathBuf> {
        Ok(std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join(name))
    };
    let csi = match args.csi.clone() {
        Some(p) => p,
        None => beside("strata-csi")?,
    };
    let volctl = match args.volctl.clone() {
        Some(p) => p,
        None => beside("volctl")?,
    };
    for w in &which {
        match w.as_str() {
            "match" => bench_match(args.claims, args.pvs),
            "static" => bench_static(&csi, args.claims, args.pvs, false).await?,
            "static-apply" => bench_static(&csi, args.claims, args.pvs, true).await?,
            "dynamic" => bench_dynamic(&csi, args.claims).await?,
            "apply" => bench_apply(&csi, &volctl, args.claims).await?,
            other => {
                bail!("unknown benchmark {other:?} (match, static, static-apply, dynamic, apply)")
            }
        }
    }
    Ok(())
}
