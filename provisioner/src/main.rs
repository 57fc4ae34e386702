//! `strata-provisioner`: the binder, dynamic provisioner, expansion and StatefulSet loops
//! against the embedded store, talking to `strata-csi` over its unix socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use strata_provisioner::{Config, CsiClient};
use tracing::info;

/// Runs the PV/PVC binder, the dynamic provisioner, volume expansion and the StatefulSet
/// controller until SIGTERM or SIGINT.
#[derive(Parser, Debug)]
#[command(name = "strata-provisioner", version)]
struct Args {
    /// State directory holding the object store (store.db).
    #[arg(long, env = "STRATA_STATE_DIR", default_value = "/var/lib/strata")]
    state_dir: PathBuf,
    /// The CSI driver's endpoint, unix:///PATH.
    #[arg(long)]
    csi_endpoint: String,
    /// This node's name: the topology offered to the driver and where pods without a node
    /// get their WaitForFirstConsumer claims placed.
    #[arg(long)]
    node_id: String,
    /// Filesystem for volumes whose class sets no csi.storage.k8s.io/fstype.
    #[arg(long, default_value = "ext4")]
    default_fstype: String,
    /// Concurrent CreateVolume/DeleteVolume calls.
    #[arg(long, default_value_t = 16)]
    worker_threads: usize,
    /// Per-call CSI timeout in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// First retry delay in milliseconds (doubles up to --retry-interval-max).
    #[arg(long, default_value_t = 1000)]
    retry_interval_start: u64,
    /// Longest retry delay in seconds.
    #[arg(long, default_value_t = 300)]
    retry_interval_max: u64,
    /// Seconds between periodic resyncs of every object (the safety net behind the
    /// watches; the controller-manager's PV binder uses 15). 0 turns it off.
    #[arg(long, default_value_t = 15)]
    resync_period: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (provisioning, deletion and
    /// expansion outcomes, queue depths, driver state) and /healthz (200 while every loop
    /// runs, also while waiting for the driver; 503 once one died). Port 0 picks a free
    /// port, logged. Off when not given.
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Run against the Kubernetes API server of this kubeconfig (its current context)
    /// instead of the state dir, in per-node mode: only claims whose
    /// volume.kubernetes.io/selected-node is --node-id are provisioned, only volumes pinned
    /// to it deleted or expanded; binding, StatefulSets and garbage collection are left to
    /// the cluster. An alternative to the provisioner and resizer sidecars.
    #[arg(long, value_name = "PATH", conflicts_with = "in_cluster")]
    kubeconfig: Option<PathBuf>,
    /// As --kubeconfig, with the pod's service account (in-cluster configuration).
    #[arg(long)]
    in_cluster: bool,
    /// Per-node mode: publish one CSIStorageCapacity per StorageClass of the driver for
    /// this node's topology segment, from the driver's GetCapacity (what the scheduler
    /// places pods by, and what Immediate claims are placed by).
    #[arg(long)]
    enable_capacity: bool,
    /// Namespace of the CSIStorageCapacity objects (the driver's namespace).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    capacity_namespace: Option<String>,
    /// The pod (in --capacity-namespace) that owns the CSIStorageCapacity objects, so they
    /// are collected with it; the DaemonSet passes its own pod name. Without it they have
    /// no owner.
    #[arg(long, value_name = "NAME")]
    capacity_owner_pod: Option<String>,
    /// Seconds between capacity refreshes (also refreshed when a class changes and after
    /// each volume created or deleted here).
    #[arg(long, default_value_t = 60)]
    capacity_poll_interval: u64,
    /// Immediate claims (per-node mode, with --enable-capacity): the fitting node ranked k
    /// for a claim takes it once the claim is k times this many seconds old, so a first
    /// choice that is down delays the claim instead of stranding it.
    #[arg(long, default_value_t = 15)]
    immediate_turn: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    strata_report::init_daemon_logging("info");
    let args = Args::parse();
    let mut config = Config::new(&args.node_id);
    config.default_fs_type = args.default_fstype.clone();
    config.provision_workers = args.worker_threads.max(1);
    config.csi_timeout = Duration::from_secs(args.timeout.max(1));
    config.retry_start = Duration::from_millis(args.retry_interval_start.max(1));
    config.retry_max = Duration::from_secs(args.retry_interval_max.max(1));
    config.resync = Duration::from_secs(args.resync_period);

    let csi = CsiClient::new(&args.csi_endpoint, config.csi_timeout).map_err(anyhow::Error::msg)?;
    // Events this process records name it as their source, as kubectl describe shows.
    let component = "strata-provisioner";
    if args.kubeconfig.is_some() || args.in_cluster {
        config.per_node = true;
        let store = strata_store_kube::KubeStore::connect(args.kubeconfig.as_deref(), component)
            .await
            .context("connecting to the API server")?;
        if args.enable_capacity {
            config.capacity = Some(capacity_config(&store, &args).await?);
        }
        info!(node = %args.node_id, "per-node mode against the API server");
        return run(store, csi, config, &args).await;
    }
    if args.enable_capacity {
        anyhow::bail!("--enable-capacity needs --kubeconfig or --in-cluster (per-node mode)");
    }
    let state_dir = args.state_dir.clone();
    // Its writes are ordered, not acknowledged one by one: a control loop redoes a lost tail.
    let options = strata_store::StoreOptions::controller(component);
    let store = tokio::task::spawn_blocking(move || {
        strata_store::EmbeddedStore::open_with(&state_dir, options)
    })
    .await
    .context("opening the store")?
    .with_context(|| format!("opening the store in {}", args.state_dir.display()))?;
    run(store, csi, config, &args).await
}

/// The capacity publisher's namespace, owner and period from the flags; the owner pod is
/// read once for its uid.
async fn capacity_config<S: strata_store::Store>(
    store: &S,
    args: &Args,
) -> anyhow::Result<strata_provisioner::CapacityConfig> {
    use strata_provisioner::k8s_openapi::api::core::v1::Pod;
    use strata_provisioner::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    let namespace = args.capacity_namespace.clone().context(
        "--enable-capacity needs --capacity-namespace (or POD_NAMESPACE): where the objects go",
    )?;
    let owner = match &args.capacity_owner_pod {
        None => None,
        Some(name) => {
            let pod: Pod = store
                .get(&namespace, name)
                .await
                .with_context(|| format!("reading the owner pod {namespace}/{name}"))?;
            Some(OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: name.clone(),
                uid: pod.metadata.uid.unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            })
        }
    };
    Ok(strata_provisioner::CapacityConfig {
        namespace,
        owner,
        poll: Duration::from_secs(args.capacity_poll_interval.max(1)),
        immediate_step: Duration::from_secs(args.immediate_turn.max(1)),
    })
}

/// Runs the loops on `store` until SIGTERM or SIGINT.
async fn run<S: strata_store::Store>(
    store: S,
    csi: CsiClient,
    config: Config,
    args: &Args,
) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let running = tokio::select! {
        r = strata_provisioner::start(store, csi, config) => r.context("starting the control loops")?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    info!(node = %args.node_id, "running");
    let _endpoint = match args.metrics_address {
        Some(addr) => {
            let mut registry = Registry::with_prefix("strata_provisioner");
            running.register_metrics(&mut registry);
            let status = Arc::clone(running.status());
            let health = Arc::new(move || strata_provisioner::metrics::health(&status));
            match strata_metrics::Endpoint::bind(addr, registry, health).await {
                Ok(e) => Some(e),
                Err(e) => {
                    running.shutdown().await;
                    return Err(e).with_context(|| format!("binding --metrics-address {addr}"));
                }
            }
        }
        None => None,
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: finishing in-flight work"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: finishing in-flight work"),
    }
    running.shutdown().await;
    Ok(())
}
