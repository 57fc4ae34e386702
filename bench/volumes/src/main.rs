//! Volume manager benchmarks (issue 4):
//!
//! 1. atomic writer update time for payloads of 1, 100 and 1,000 keys;
//! 2. ConfigMap change → new content visible in the volumes of 100 pods, end to end
//!    through the embedded store's watch and the running manager.
//!
//! `cargo run --release -p bench-volumes [-- --rounds N]`; figures go to docs/benchmarks.md.

use std::path::Path;
use std::time::{Duration, Instant};

use bench_volumes::{ms, percentiles};
use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{ConfigMap, Pod};
use strata_store::{EmbeddedStore, Store};
use strata_volumes::atomic_writer::{AtomicWriter, FileProjection, Payload, WriteOptions};
use strata_volumes::manager::{Config, VolumeManager};

const PODS: usize = 100;

fn writer_bench(dir: &Path, keys: usize, rounds: usize) {
    let w = AtomicWriter::new(dir);
    let payload = |round: usize| -> Payload {
        (0..keys)
            .map(|k| {
                (
                    format!("key-{k:04}"),
                    FileProjection {
                        data: format!("value {k} round {round} {}", "x".repeat(64)).into_bytes(),
                        mode: 0o644,
                        fs_user: None,
                    },
                )
            })
            .collect()
    };
    w.write(&payload(0), WriteOptions::default())
        .expect("first write");
    let mut samples = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let p = payload(round);
        let start = Instant::now();
        w.write(&p, WriteOptions::default()).expect("write");
        samples.push(start.elapsed());
    }
    let (p50, p99, max) = percentiles(&mut samples);
    println!(
        "writer update, {keys:>5} keys: p50 {} p99 {} max {} ({rounds} updates)",
        ms(p50),
        ms(p99),
        ms(max)
    );
}

async fn propagation_bench(state: &Path, rounds: usize) {
    let store = EmbeddedStore::open(&state.join("store")).expect("open store");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg", "namespace": "default"},
        "data": {"version": "0", "other": "x"}}))
        .expect("configmap");
    store.create(&cm).await.expect("create configmap");
    let mut files = Vec::new();
    for i in 0..PODS {
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": format!("pod-{i}"), "namespace": "default"},
            "spec": {"nodeName": "bench", "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}}),
        )
        .expect("pod");
        let pod = store.create(&pod).await.expect("create pod");
        let uid = pod.metadata.uid.expect("uid");
        files.push(
            strata_volumes::layout::volume_dir(
                &state.join("node"),
                &uid,
                "kubernetes.io~configmap",
                "cfg",
            )
            .join("version"),
        );
    }
    let mgr = VolumeManager::new(
        store.clone(),
        Config {
            state_dir: state.join("node"),
            node_name: "bench".into(),
            csi_endpoint: None,
            issuer: strata_volumes::token::DEFAULT_ISSUER.into(),
            clock: std::time::SystemTime::now,
        },
    )
    .expect("manager");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn({
        let mgr = mgr.clone();
        async move {
            mgr.run(async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let wait_all = |want: String, start: Instant, samples: &mut Vec<Duration>| {
        let mut pending: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
        let deadline = start + Duration::from_secs(60);
        while !pending.is_empty() {
            pending.retain(|f| {
                if std::fs::read(f).ok().as_deref() == Some(want.as_bytes()) {
                    samples.push(start.elapsed());
                    false
                } else {
                    true
                }
            });
            assert!(
                Instant::now() < deadline,
                "{} pods never saw {want}",
                pending.len()
            );
            std::thread::yield_now();
        }
    };
    // Initial sync of all pods.
    let start = Instant::now();
    let mut initial = Vec::new();
    tokio::task::block_in_place(|| wait_all("0".into(), start, &mut initial));
    println!(
        "initial setup of {PODS} pods: all visible after {}",
        ms(start.elapsed())
    );

    let mut samples = Vec::with_capacity(rounds * PODS);
    let mut last_pod = Vec::with_capacity(rounds);
    let mut first_pod = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let mut cm: ConfigMap = store.get("default", "cfg").await.expect("get");
        cm.data
            .as_mut()
            .expect("data")
            .insert("version".into(), round.to_string());
        let start = Instant::now();
        store.update(&cm).await.expect("update");
        let before = samples.len();
        tokio::task::block_in_place(|| wait_all(round.to_string(), start, &mut samples));
        last_pod.push(*samples[before..].iter().max().expect("samples"));
        first_pod.push(*samples[before..].iter().min().expect("samples"));
    }
    let (p50, p99, max) = percentiles(&mut samples);
    println!(
        "configMap change -> visible, per pod ({PODS} pods x {rounds} changes): p50 {} p99 {} max {}",
        ms(p50),
        ms(p99),
        ms(max)
    );
    let (p50, p99, max) = percentiles(&mut first_pod);
    println!(
        "configMap change -> visible in the first pod: p50 {} p99 {} max {}",
        ms(p50),
        ms(p99),
        ms(max)
    );
    let (p50, p99, max) = percentiles(&mut last_pod);
    println!(
        "configMap change -> visible in all {PODS} pods: p50 {} p99 {} max {}",
        ms(p50),
        ms(p99),
        ms(max)
    );
    stop_tx.send(()).expect("stop");
    runner.await.expect("join").expect("run");
}

fn main() {
    let rounds = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("disk: {}", tmp.path().display());
    for keys in [1, 100, 1000] {
        let dir = tmp.path().join(format!("w{keys}"));
        std::fs::create_dir(&dir).expect("mkdir");
        writer_bench(
            &dir,
            keys,
            if keys == 1000 {
                rounds.min(50)
            } else {
                rounds * 4
            },
        );
    }
    // Secret and projected volumes live on tmpfs: measure there too when we may mount.
    let mem = tmp.path().join("tmpfs");
    std::fs::create_dir(&mem).expect("mkdir");
    match strata_volumes::mount::mount_tmpfs(&mem, None) {
        Ok(()) => {
            println!("tmpfs: {}", mem.display());
            for keys in [1, 100, 1000] {
                let dir = mem.join(format!("w{keys}"));
                std::fs::create_dir(&dir).expect("mkdir");
                writer_bench(
                    &dir,
                    keys,
                    if keys == 1000 {
                        rounds.min(50)
                    } else {
                        rounds * 4
                    },
                );
            }
            strata_volumes::mount::unmount(&mem).expect("unmount tmpfs");
        }
        Err(e) => println!("tmpfs: skipped ({e})"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(propagation_bench(tmp.path(), rounds));
}
