//! Standalone-node benchmarks (`docs/benchmarks.md`, "Standalone node"), through the real
//! release binaries as a user runs them: `volctl up -d` on a fresh state dir (the default
//! image pool), the busybox image from `volctl image build --busybox`, manifests applied by
//! `volctl apply -f`, and `volctl down` at the end, also after a failure.
//!
//! 1. `pod`: one claim and one pod using it: `volctl apply` until the pod is Running
//!    (`--runs` times, each a new claim, deleted again with `volctl delete --wait`).
//! 2. `sts`: a StatefulSet of `--replicas` pods with a claim each: `volctl apply` until every
//!    pod is Running, with `podManagementPolicy: Parallel` and with `OrderedReady`.
//! 3. `rss`: strata-node's VmRSS and VmHWM (from /proc) idle after `up`, then with
//!    `--rss-pods` pods Running of ten volumes each: one claim, three configMap, two
//!    secret, two projected (configMap + secret + downwardAPI), one downwardAPI and one
//!    emptyDir volume; then strata-node's VmRSS every 5 s for two minutes (min, median,
//!    max: the steady figure).
//!
//! The clock starts before `volctl apply` is spawned and stops when the store shows the
//! last pod with `status.phase: Running`, polled every 5 ms through the store API.
//!
//! `cargo build --release -p volctl -p strata-csi -p strata-provisioner -p strata-node
//! -p strata-runtime -p bench-standalone` then `target/release/bench-standalone [pod|sts|rss]...`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use strata_store::k8s_openapi::api::core::v1::Pod;
use strata_store::{EmbeddedStore, Store};

#[derive(Parser)]
struct Args {
    /// Directory of volctl and the daemons (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// State dir to use (default: a new one under the temp dir, removed at the end).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Repetitions of `pod`.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// StatefulSet replicas for `sts`.
    #[arg(long, default_value_t = 10)]
    replicas: usize,
    /// Pods (of ten volumes each) for `rss`.
    #[arg(long, default_value_t = 100)]
    rss_pods: usize,
    /// Which benchmarks (default: pod, sts, rss).
    which: Vec<String>,
}

const CLASS: &str = "
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: strata-local
  annotations:
    storageclass.kubernetes.io/is-default-class: \"true\"
provisioner: local.csi.strata.io
parameters:
  pool: default
  csi.storage.k8s.io/fstype: ext4
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
";

/// volctl against one state dir.
#[derive(Clone)]
struct Volctl {
    bin: PathBuf,
    state: PathBuf,
}

impl Volctl {
    /// Runs volctl off the async runtime; its stdout, or an error with its stderr.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--state-dir").arg(&self.state).args(args);
        let what = format!("volctl {}", args.join(" "));
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn apply(&self, name: &str, manifest: &str) -> anyhow::Result<PathBuf> {
        let path = self.state.join(format!("bench-{name}.yaml"));
        std::fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))?;
        self.run(&["apply", "-f", path.to_str().context("utf-8 path")?])
            .await?;
        Ok(path)
    }
}

/// Polls the store until `want` pods of `ns` whose name starts with `prefix` are Running.
async fn wait_running(
    store: &EmbeddedStore,
    prefix: &str,
    want: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let pods = store.list::<Pod>(Some("default"), None).await?;
        let running = pods
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(prefix))
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .count();
        if running >= want {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("{running} of {want} {prefix}* pods Running after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn claim_pod(i: usize) -> String {
    format!(
        "
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: one-{i}, namespace: default}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 16Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: one-{i}, namespace: default}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      command: [sleep, \"3600\"]
      volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
    - name: data
      persistentVolumeClaim: {{claimName: one-{i}}}
"
    )
}

fn statefulset(name: &str, replicas: usize, policy: &str, extra_volumes: bool) -> String {
    let (mounts, volumes) = if extra_volumes {
        (
            "
            - {name: cm-a, mountPath: /etc/cm-a}
            - {name: cm-b, mountPath: /etc/cm-b}
            - {name: cm-c, mountPath: /etc/cm-c}
            - {name: sec-a, mountPath: /etc/sec-a}
            - {name: sec-b, mountPath: /etc/sec-b}
            - {name: proj-a, mountPath: /etc/proj-a}
            - {name: proj-b, mountPath: /etc/proj-b}
            - {name: info, mountPath: /etc/info}
            - {name: scratch, mountPath: /scratch}",
            "
      volumes:
        - {name: cm-a, configMap: {name: bench-a}}
        - {name: cm-b, configMap: {name: bench-b}}
        - {name: cm-c, configMap: {name: bench-c}}
        - {name: sec-a, secret: {secretName: bench-a}}
        - {name: sec-b, secret: {secretName: bench-b}}
        - name: proj-a
          projected:
            sources:
              - configMap: {name: bench-a}
              - secret: {name: bench-a}
              - downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
        - name: proj-b
          projected:
            sources:
              - configMap: {name: bench-b}
              - secret: {name: bench-b}
              - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
        - name: info
          downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
        - {name: scratch, emptyDir: {}}",
        )
    } else {
        ("", "")
    };
    format!(
        "
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}, namespace: default}}
spec:
  serviceName: {name}
  replicas: {replicas}
  podManagementPolicy: {policy}
  persistentVolumeClaimRetentionPolicy: {{whenDeleted: Delete, whenScaled: Delete}}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: busybox
          command: [sleep, \"3600\"]
          volumeMounts:
            - {{name: data, mountPath: /data}}{mounts}{volumes}
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {{requests: {{storage: 16Mi}}}}
"
    )
}

/// ConfigMaps and Secrets the `rss` pods' volumes name.
fn rss_sources() -> String {
    let mut s = String::new();
    for n in ["a", "b", "c"] {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bench-{n}, namespace: default}}\ndata: {{one: \"1\", two: \"2\", three: \"3\"}}\n"
        ));
    }
    for n in ["a", "b"] {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bench-{n}, namespace: default}}\nstringData: {{user: bench, password: secret}}\n"
        ));
    }
    s
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: i32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn daemon_pid(state: &Path, short: &str) -> anyhow::Result<i32> {
    let path = state.join("run").join(format!("{short}.pid"));
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {}", path.display()))
}

fn print_memory(state: &Path, when: &str) -> anyhow::Result<()> {
    for (short, name) in [
        ("node", "strata-node"),
        ("csi", "strata-csi"),
        ("provisioner", "strata-provisioner"),
    ] {
        let (rss, hwm) = memory(daemon_pid(state, short)?)?;
        println!(
            "rss: {when}: {name} VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    Ok(())
}

async fn bench_pod(v: &Volctl, store: &EmbeddedStore, runs: usize) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for i in 0..runs {
        let manifest = claim_pod(i);
        let start = Instant::now();
        let path = v.apply(&format!("pod-{i}"), &manifest).await?;
        let applied = start.elapsed();
        wait_running(store, &format!("one-{i}"), 1, Duration::from_secs(60)).await?;
        let t = start.elapsed();
        println!(
            "pod: run {i}: apply -> Running {} (the apply itself {})",
            ms(t),
            ms(applied)
        );
        times.push(t);
        let path = path.to_str().context("utf-8 path")?.to_string();
        v.run(&["delete", "-f", &path, "--wait", "120"]).await?;
    }
    times.sort();
    println!(
        "pod: {runs} runs: min {}, median {}, max {}",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
    Ok(())
}

async fn bench_sts(v: &Volctl, store: &EmbeddedStore, replicas: usize) -> anyhow::Result<()> {
    for (name, policy) in [("par", "Parallel"), ("ord", "OrderedReady")] {
        let start = Instant::now();
        v.apply(
            &format!("sts-{name}"),
            &statefulset(name, replicas, policy, false),
        )
        .await?;
        let applied = start.elapsed();
        wait_running(
            store,
            &format!("{name}-"),
            replicas,
            Duration::from_secs(300),
        )
        .await?;
        println!(
            "sts: {replicas} replicas, {policy}: apply -> all Running {} (the apply itself {})",
            ms(start.elapsed()),
            ms(applied)
        );
        let start = Instant::now();
        v.run(&["delete", "statefulset", name, "--wait", "300"])
            .await?;
        println!(
            "sts: {policy}: delete --wait (pods, claims, volumes) {}",
            ms(start.elapsed())
        );
    }
    Ok(())
}

async fn bench_rss(v: &Volctl, store: &EmbeddedStore, pods: usize) -> anyhow::Result<()> {
    print_memory(&v.state, "idle after up")?;
    // The set is a document of its own after the sources' last one.
    let manifest = format!(
        "{}---{}",
        rss_sources(),
        statefulset("rss", pods, "Parallel", true)
    );
    let start = Instant::now();
    v.apply("rss", &manifest).await?;
    wait_running(store, "rss-", pods, Duration::from_secs(1800)).await?;
    println!(
        "rss: {pods} pods x 10 volumes ({} volumes, {pods} of them claims) Running after {}",
        pods * 10,
        ms(start.elapsed())
    );
    print_memory(&v.state, "all Running")?;
    // Let the volume manager and runners settle (first syncs, probes, status writes).
    tokio::time::sleep(Duration::from_secs(10)).await;
    print_memory(&v.state, "10 s later")?;
    // Steady state: strata-node's VmRSS every 5 s for two minutes, which spans two of
    // the volume manager's once-a-minute resyncs and the node's heap trims.
    let node = daemon_pid(&v.state, "node")?;
    let mut samples = Vec::new();
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push(memory(node)?.0);
    }
    let mut sorted = samples.clone();
    sorted.sort_unstable();
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "rss: strata-node VmRSS every 5 s for 2 min: min {:.1}, median {:.1}, max {:.1} MiB ({})",
        mib(sorted[0]),
        mib(sorted[sorted.len() / 2]),
        mib(sorted[sorted.len() - 1]),
        samples
            .iter()
            .map(|k| format!("{:.0}", mib(*k)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let start = Instant::now();
    v.run(&["delete", "statefulset", "rss", "--wait", "600"])
        .await?;
    println!("rss: delete --wait {}", ms(start.elapsed()));
    print_memory(&v.state, "after the delete")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary dir")?
            .to_path_buf(),
    };
    for b in [
        "volctl",
        "strata-csi",
        "strata-provisioner",
        "strata-node",
        "strata-runtime",
    ] {
        if !bin_dir.join(b).exists() {
            bail!("{} is missing: build it first", bin_dir.join(b).display());
        }
    }
    let (state, remove) = match args.state {
        Some(s) => (s, false),
        None => (
            std::env::temp_dir().join(format!("bench-standalone.{}", std::process::id())),
            true,
        ),
    };
    let v = Volctl {
        bin: bin_dir.join("volctl"),
        state: state.clone(),
    };
    let which = if args.which.is_empty() {
        vec!["pod".to_string(), "sts".into(), "rss".into()]
    } else {
        args.which
    };
    v.run(&["image", "build", "busybox:latest", "--busybox"])
        .await?;
    let start = Instant::now();
    v.run(&["up", "-d"]).await?;
    println!("up -d: {}", ms(start.elapsed()));
    let result = async {
        let store = EmbeddedStore::open(&state)?;
        v.apply("class", CLASS).await?;
        for w in &which {
            match w.as_str() {
                "pod" => bench_pod(&v, &store, args.runs).await?,
                "sts" => bench_sts(&v, &store, args.replicas).await?,
                "rss" => bench_rss(&v, &store, args.rss_pods).await?,
                other => bail!("unknown benchmark {other:?} (pod, sts, rss)"),
            }
        }
        anyhow::Ok(())
    }
    .await;
    // Always stop what `up` started, so a failed run leaves no mount or loop device.
    let down = v.run(&["down"]).await;
    if let Ok(out) = &down {
        print!("{out}");
    }
    if remove && result.is_ok() && down.is_ok() {
        let _ = std::fs::remove_dir_all(&state);
    }
    result.and(down.map(drop))
}
