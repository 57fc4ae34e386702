//! The unix socket, the gRPC server and shutdown.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use csi_proto as pb;
use csi_proto::tonic::transport::Server;

use crate::backend::{Backend, Pools, btrfs::BtrfsPool, dir::DirPool, image::ImagePool};
use crate::config::{Config, PoolKind};
use crate::driver::Driver;
use crate::locks::Locks;
use crate::service::Service;
use crate::state::Store;
use crate::{failpoint, reconcile};

/// Opens pools and state, reconciles, and builds the driver (blocking).
pub fn build_driver(config: &Config) -> anyhow::Result<Driver> {
    config.validate().map_err(anyhow::Error::msg)?;
    let t = std::time::Instant::now();
    let mut pools: Vec<Arc<dyn Backend>> = Vec::new();
    for spec in &config.pools {
        let pool: Arc<dyn Backend> = match spec.kind {
            PoolKind::Image => Arc::new(
                ImagePool::open(&spec.name, &spec.path)
                    .with_context(|| format!("opening pool {}", spec.name))?,
            ),
            PoolKind::Btrfs => Arc::new(
                BtrfsPool::open(&spec.name, &spec.path)
                    .with_context(|| format!("opening pool {}", spec.name))?,
            ),
            PoolKind::Dir => Arc::new(
                DirPool::open(&spec.name, &spec.path, spec.enforce)
                    .with_context(|| format!("opening pool {}", spec.name))?,
            ),
        };
        pools.push(pool);
    }
    let t_pools = t.elapsed();
    let store = Store::open(&config.state_dir).context("opening the state database")?;
    let t_store = t.elapsed();
    crate::inspect::record_pools(&config.state_dir, &config.pools)
        .context("recording the pools")?;
    let pools = Pools::new(pools);
    store.set_mirror(
        crate::meta::Mirror::open(pools.iter()).context("opening the pools' metadata records")?,
    );
    crate::meta::adopt(&store, &pools, &config.node_id)
        .context("re-adopting objects from the pools' metadata records")?;
    let t_adopt = t.elapsed();
    let d = Driver {
        node_id: config.node_id.clone(),
        driver_name: config.driver_name.clone(),
        max_volumes_per_node: config.max_volumes_per_node,
        alpha_capabilities: config.enable_alpha_capabilities,
        pools,
        overcommit: config
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.overcommit))
            .collect(),
        store,
        locks: Locks::default(),
        state_dir: config.state_dir.clone(),
        trash: crate::node_ops::Trash::open(&config.state_dir)
            .context("opening the state dir's trash")?,
    };
    reconcile::run(&d).context("reconciling state with pools, loop devices and mounts")?;
    d.store.startup_done();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    tracing::info!(
        total_ms = ms(t.elapsed()),
        pools_ms = ms(t_pools),
        store_ms = ms(t_store - t_pools),
        adopt_ms = ms(t_adopt - t_store),
        reconcile_ms = ms(t.elapsed() - t_adopt),
        "started"
    );
    Ok(d)
}

/// Removes a socket file left by a crashed server; refuses when a live server answers.
fn claim_socket(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                );
            }
        }
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another server is listening on {}", path.display());
    }
    std::fs::remove_file(path)
        .with_context(|| format!("removing stale socket {}", path.display()))?;
    Ok(())
}

/// Runs the driver until `shutdown` completes, then drains in-flight RPCs and returns.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    failpoint::init_from_env().map_err(anyhow::Error::msg)?;
    let socket = config.validate().map_err(anyhow::Error::msg)?;
    let cfg = config.clone();
    let driver = tokio::task::spawn_blocking(move || build_driver(&cfg))
        .await
        .context("start-up task")??;
    let driver = Arc::new(driver);
    let metrics = crate::metrics::Metrics::start(config.metrics_address, &driver).await?;

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    claim_socket(&socket)?;
    // Bind under a restrictive umask so the socket is never reachable by others, even
    // for the instant before the chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(&socket);
    nix::sys::stat::umask(old);
    let listener = listener.with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", socket.display()))?;
    tracing::info!(endpoint = %config.endpoint, node_id = %config.node_id, pools = config.pools.len(), "serving CSI");

    let svc = Service::new(driver.clone());
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    metrics.set_serving(true);
    let result = Server::builder()
        .layer(metrics.layer.clone())
        .add_service(pb::identity_server::IdentityServer::new(svc.clone()))
        .add_service(pb::controller_server::ControllerServer::new(svc.clone()))
        .add_service(pb::node_server::NodeServer::new(svc.clone()))
        .add_service(pb::group_controller_server::GroupControllerServer::new(
            svc.clone(),
        ))
        .add_service(pb::snapshot_metadata_server::SnapshotMetadataServer::new(
            svc,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    metrics.set_serving(false);
    let _ = std::fs::remove_file(&socket);
    // In-flight handlers have returned; blocking work they started holds its own Arc and
    // its commits are flushed by close().
    driver.store.close();
    tracing::info!("stopped");
    result.context("gRPC server")
}
