//! One pod's worker: volumes, then init containers in order, then containers, restarts
//! under the pod's restartPolicy with back-off, status written back, and termination
//! with the grace period when the pod is deleted. One task per pod; it owns the pod's
//! containers, so no two tasks ever start or remove the same one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_runtime::State;
use strata_store::k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
};
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use strata_store::k8s_openapi::jiff::Timestamp;
use strata_store::{EventType, Store, meta};
use strata_volumes::manager::VolumeManager;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backoff::{self, Backoff};
use super::container::{Engine, Plan, StartError, Started, open_pidfd};
use super::{FINALIZER, env, exit, infra, placement, probe};
use crate::layout;
use strata_runtime::error::chain;

/// What every pod worker shares.
pub struct Shared<S: Store> {
    pub store: S,
    pub volumes: VolumeManager<S>,
    pub engine: Engine,
    pub node: String,
}

#[derive(Debug, Clone)]
enum St {
    /// Not running; start at `at` (None: never, the pod is finished).
    Waiting {
        reason: String,
        message: Option<String>,
        at: Instant,
    },
    Running {
        id: String,
        pid: i32,
        started: Timestamp,
        since: Instant,
    },
    /// Ended and will not run again.
    Terminated(ContainerStateTerminated),
}

#[derive(Debug, Clone)]
struct Ctr {
    spec: Container,
    init: bool,
    restarts: i32,
    /// Whether any run has started (the next run then counts as a restart).
    ran: bool,
    state: St,
    last: Option<ContainerStateTerminated>,
    backoff: Backoff,
    start_failures: u32,
    /// What the readiness probe last reported for the running run (true without one).
    probe_ready: bool,
    /// Whether the running run's startup probe has succeeded (true without one): until
    /// then it is neither started nor ready, and its other probes wait.
    startup_done: bool,
    /// The probe tasks of the running run, aborted when it ends.
    probes: Vec<tokio::task::AbortHandle>,
}

struct Exit {
    name: String,
    id: String,
    code: Option<i32>,
}

pub struct Worker<S: Store> {
    shared: Arc<Shared<S>>,
    /// Shared with the runner's channel: a 10-volume pod is ~26 KiB, and a hundred of
    /// them copied per holder showed in strata-node's RSS.
    pod: Arc<Pod>,
    uid: String,
    removed: bool,
    volumes_ready: bool,
    /// When to call `sync_pod` again after it failed; a set-up the volume manager
    /// finishes by itself (a claim bound) wakes the worker sooner, through `ready`.
    volumes_retry: Option<Instant>,
    ready: watch::Receiver<u64>,
    ctrs: Vec<Ctr>,
    exits: JoinSet<Exit>,
    /// The process holding the pod's namespaces, once started or found again.
    infra: Option<infra::Infra>,
    /// Resolves when the infra process ends (and reaps it when it is our child).
    infra_watch: JoinSet<()>,
    /// Since when the current infra process is ours, and the back-off of infra
    /// processes that keep ending: the next one is not started before `infra_retry`.
    infra_since: Instant,
    infra_backoff: Backoff,
    infra_retry: Option<Instant>,
    /// Probe tasks and liveness kills; dropped (aborted) with the worker.
    probe_tasks: JoinSet<()>,
    probe_tx: tokio::sync::mpsc::UnboundedSender<probe::Msg>,
    probe_rx: tokio::sync::mpsc::UnboundedReceiver<probe::Msg>,
    start_time: Time,
    /// Placed on this node (it fits, and `spec.nodeName` names it).
    placed: bool,
    /// Why the pod does not fit this node, while it does not.
    unschedulable: Option<String>,
    /// The status of a pod this node refused (see `placement::admit`): Failed, for good.
    rejected: Option<PodStatus>,
    finished: Option<&'static str>,
    written: Option<serde_json::Value>,
}

/// The reason of a run's terminated state when it was stopped with the node (`volctl
/// down`, `--release-on-exit`) rather than ending by itself: the next start runs the
/// container again whatever its restartPolicy, as after a node restart.
pub const NODE_SHUTDOWN: &str = "NodeShutdown";

/// Marks the runs of `pod` that `stopped` names (container id → exit status) as
/// terminated with [`NODE_SHUTDOWN`], not ready, and the pod not ready. False when none
/// of its runs is there (nothing to write).
pub fn mark_stopped(pod: &mut Pod, stopped: &std::collections::HashMap<String, i32>) -> bool {
    let Some(status) = pod.status.as_mut() else {
        return false;
    };
    let at = now();
    let mut changed = false;
    let lists = [
        status.init_container_statuses.iter_mut(),
        status.container_statuses.iter_mut(),
    ];
    for s in lists.into_iter().flatten().flatten() {
        let id = s
            .container_id
            .as_deref()
            .and_then(|i| i.strip_prefix("strata://"));
        let Some(code) = id.and_then(|i| stopped.get(i)) else {
            continue;
        };
        let Some(running) = s.state.as_ref().and_then(|st| st.running.as_ref()) else {
            continue;
        };
        let started_at = running.started_at.clone();
        s.state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *code,
                reason: Some(NODE_SHUTDOWN.into()),
                message: Some("stopped with the node; it runs again at the next start".into()),
                started_at,
                finished_at: Some(at.clone()),
                container_id: s.container_id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        s.ready = false;
        s.started = Some(false);
        changed = true;
    }
    if changed {
        for c in status.conditions.iter_mut().flatten() {
            if (c.type_ == "Ready" || c.type_ == "ContainersReady") && c.status != "False" {
                c.status = "False".into();
                c.reason = Some(NODE_SHUTDOWN.into());
                c.last_transition_time = Some(at.clone());
            }
        }
    }
    changed
}

/// The run a previous strata-node recorded as done, which stays done: ended and not to be
/// restarted under `policy` (an init container that succeeded). A run stopped with the
/// node is not done.
fn done_before(
    prev: &ContainerStatus,
    policy: &str,
    init: bool,
) -> Option<ContainerStateTerminated> {
    let t = prev.state.as_ref()?.terminated.as_ref()?;
    let done = t.reason.as_deref() != Some(NODE_SHUTDOWN)
        && (init && t.exit_code == 0 || !should_restart(policy, init, Some(t.exit_code)));
    done.then(|| t.clone())
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking pod runner task panicked")
}

fn policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether a run that ended with `code` (None: unknown) runs again.
pub fn should_restart(policy: &str, init: bool, code: Option<i32>) -> bool {
    let failed = code != Some(0);
    match (init, policy) {
        (_, "Never") => false,
        (true, _) => failed,
        (false, "OnFailure") => failed,
        (false, _) => true,
    }
}

impl Ctr {
    fn is_running(&self) -> bool {
        matches!(self.state, St::Running { .. })
    }

    /// Running, started (its startup probe, if any, succeeded), and its readiness probe
    /// (if any) says so.
    fn ready(&self) -> bool {
        self.is_running() && !self.init && self.startup_done && self.probe_ready
    }

    fn stop_probes(&mut self) {
        for h in self.probes.drain(..) {
            h.abort();
        }
        self.probe_ready = false;
        self.startup_done = false;
    }

    fn succeeded(&self) -> bool {
        matches!(&self.state, St::Terminated(t) if t.exit_code == 0)
    }

    fn status(&self) -> ContainerStatus {
        let state = match &self.state {
            St::Waiting {
                reason, message, ..
            } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            St::Running { started, .. } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started)),
                }),
                ..Default::default()
            },
            St::Terminated(t) => ContainerState {
                terminated: Some(t.clone()),
                ..Default::default()
            },
        };
        let container_id = match &self.state {
            St::Running { id, .. } => Some(format!("strata://{id}")),
            St::Terminated(t) => t.container_id.clone(),
            St::Waiting { .. } => None,
        };
        ContainerStatus {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id,
            ready: self.ready(),
            started: Some(self.is_running() && self.startup_done),
            restart_count: self.restarts,
            state: Some(state),
            last_state: self.last.clone().map(|t| ContainerState {
                terminated: Some(t),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The pod phase from its containers (the kubelet's `getPhase`).
fn phase(ctrs: &[Ctr], policy: &str) -> &'static str {
    if ctrs.iter().filter(|c| c.init).any(|c| !c.succeeded()) {
        return if ctrs
            .iter()
            .any(|c| c.init && matches!(&c.state, St::Terminated(t) if t.exit_code != 0))
        {
            "Failed"
        } else {
            "Pending"
        };
    }
    let app: Vec<&Ctr> = ctrs.iter().filter(|c| !c.init).collect();
    if app.iter().any(|c| c.is_running()) {
        return "Running";
    }
    if app.iter().all(|c| matches!(c.state, St::Terminated(_))) {
        let failed = app
            .iter()
            .any(|c| matches!(&c.state, St::Terminated(t) if t.exit_code != 0));
        return if failed && policy != "OnFailure" {
            "Failed"
        } else {
            "Succeeded"
        };
    }
    if app.iter().any(|c| c.ran) {
        "Running"
    } else {
        "Pending"
    }
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// The pod's hostname: `spec.hostname` or its name, or the node's with hostNetwork.
fn hostname(pod: &Pod) -> String {
    if host_network(pod) {
        return std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
    }
    let h = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    h.chars().take(63).collect()
}

impl<S: Store> Worker<S> {
    pub fn new(shared: Arc<Shared<S>>, pod: Arc<Pod>) -> Worker<S> {
        let uid = meta::uid(&pod.metadata).to_owned();
        let spec = pod.spec.clone().unwrap_or_default();
        let old = pod.status.clone().unwrap_or_default();
        let old_status = |init: bool, name: &str| -> Option<ContainerStatus> {
            let list = if init {
                &old.init_container_statuses
            } else {
                &old.container_statuses
            };
            list.iter().flatten().find(|s| s.name == name).cloned()
        };
        let soon = Instant::now();
        let mut ctrs = Vec::new();
        for (init, c) in spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| (true, c))
            .chain(spec.containers.iter().map(|c| (false, c)))
        {
            let prev = old_status(init, &c.name);
            let mut ctr = Ctr {
                spec: c.clone(),
                init,
                restarts: prev.as_ref().map_or(0, |s| s.restart_count),
                // A run recorded before (even one stopped with the node since): the
                // next run counts as a restart.
                ran: prev.as_ref().is_some_and(|s| {
                    s.restart_count > 0
                        || s.last_state.is_some()
                        || s.state
                            .as_ref()
                            .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
                }),
                state: St::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                    at: soon,
                },
                // A run stopped with the node is the last run of the one starting now.
                last: prev
                    .as_ref()
                    .and_then(|s| s.state.as_ref())
                    .and_then(|s| s.terminated.clone())
                    .filter(|t| t.reason.as_deref() == Some(NODE_SHUTDOWN))
                    .or_else(|| {
                        prev.as_ref()
                            .and_then(|s| s.last_state.as_ref())
                            .and_then(|s| s.terminated.clone())
                    }),
                backoff: Backoff::default(),
                start_failures: 0,
                probe_ready: false,
                startup_done: false,
                probes: Vec::new(),
            };
            if let Some(t) = prev
                .as_ref()
                .and_then(|s| done_before(s, policy(&pod), init))
            {
                ctr.ran = true;
                ctr.state = St::Terminated(t);
            }
            ctrs.push(ctr);
        }
        let finished = match old.phase.as_deref() {
            Some("Succeeded") => Some("Succeeded"),
            Some("Failed") => Some("Failed"),
            _ => None,
        };
        let (probe_tx, probe_rx) = tokio::sync::mpsc::unbounded_channel();
        // A pod that already ran here stays: placement is checked once, before the start.
        let placed = ctrs.iter().any(|c| c.ran) || finished.is_some();
        // Failed with a reason before anything ran: refused at admission (or evicted);
        // that status stays as written.
        let rejected =
            (finished == Some("Failed") && old.reason.is_some() && !ctrs.iter().any(|c| c.ran))
                .then(|| old.clone());
        let ready = shared.volumes.watch_ready(&uid);
        Worker {
            shared,
            ready,
            volumes_retry: None,
            placed,
            unschedulable: None,
            rejected,
            infra: None,
            infra_watch: JoinSet::new(),
            infra_since: Instant::now(),
            infra_backoff: Backoff::default(),
            infra_retry: None,
            probe_tasks: JoinSet::new(),
            probe_tx,
            probe_rx,
            start_time: old.start_time.clone().unwrap_or_else(now),
            pod,
            uid,
            removed: false,
            volumes_ready: false,
            ctrs,
            exits: JoinSet::new(),
            finished,
            written: None,
        }
    }

    fn ns(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn name(&self) -> &str {
        meta::name(&self.pod.metadata)
    }

    async fn event(&self, type_: EventType, reason: &str, message: &str) {
        if let Err(e) = self
            .shared
            .store
            .record_event(&meta::object_reference(&*self.pod), type_, reason, message)
            .await
        {
            tracing::warn!(error = %e, reason, "recording an event");
        }
    }

    /// Takes over what the runtime still holds of this pod from an earlier strata-node:
    /// the newest run of each container keeps running and is watched again; older runs,
    /// runs that never started and runs that ended meanwhile are removed (an ended run
    /// counts as an exit of unknown code).
    pub async fn adopt(&mut self, mut found: Vec<(String, Option<State>)>) {
        found.sort_by_key(|(id, _)| layout::parse_container_id(id).map_or(-1, |(_, _, n)| n));
        let mut remove = Vec::new();
        let mut ended = Vec::new();
        for (i, (id, state)) in found.iter().enumerate() {
            let Some((_, name, n)) = layout::parse_container_id(id) else {
                continue;
            };
            let newer = found[i + 1..]
                .iter()
                .any(|(o, _)| layout::parse_container_id(o).is_some_and(|(_, on, _)| on == name));
            let Some(idx) = self.ctrs.iter().position(|c| c.spec.name == name) else {
                remove.push(id.clone());
                continue;
            };
            if newer || self.finished.is_some() {
                remove.push(id.clone());
                continue;
            }
            let c = &mut self.ctrs[idx];
            c.restarts = c.restarts.max(n);
            let running = state
                .as_ref()
                .filter(|s| s.status == "running" && s.pid > 0)
                .and_then(|s| open_pidfd(s.pid).ok().map(|fd| (s, fd)));
            match running {
                Some((s, pidfd)) => {
                    c.ran = true;
                    let started = s
                        .created
                        .as_deref()
                        .and_then(|t| t.parse::<Timestamp>().ok())
                        .unwrap_or_else(Timestamp::now);
                    c.state = St::Running {
                        id: id.clone(),
                        pid: s.pid,
                        started,
                        since: Instant::now(),
                    };
                    tracing::info!(id, pid = s.pid, "adopted a running container");
                    self.watch_exit(name.to_string(), id.clone(), pidfd);
                    self.start_probes(idx);
                }
                None if state.as_ref().is_some_and(|s| s.status == "stopped") => {
                    c.ran = true;
                    ended.push((name.to_string(), id.clone()));
                }
                // Created but never started, or only a rootfs: that run never began.
                None => remove.push(id.clone()),
            }
        }
        let engine = self.shared.engine.clone();
        let uid = self.uid.clone();
        blocking(move || {
            for id in remove {
                if let Err(e) = engine.remove(&uid, &id) {
                    tracing::warn!(id, error = %e, "removing a leftover container");
                }
            }
        })
        .await;
        for (name, id) in ended {
            self.on_exit(Exit {
                name,
                id,
                code: None,
            })
            .await;
        }
        // Containers run only after every init container succeeded.
        if self.ctrs.iter().any(|c| !c.init && c.ran) {
            for c in self.ctrs.iter_mut().filter(|c| c.init && !c.succeeded()) {
                c.ran = true;
                c.state = St::Terminated(ContainerStateTerminated {
                    exit_code: 0,
                    reason: Some("Completed".into()),
                    ..Default::default()
                });
            }
        }
    }

    /// Starts the probes of container `i`'s new run: its startup probe alone when it has
    /// one (the others start once it succeeds, [`Self::startup_succeeded`]), else its
    /// liveness and readiness probes. A container without a readiness probe is ready
    /// once started.
    fn start_probes(&mut self, i: usize) {
        let c = &mut self.ctrs[i];
        c.stop_probes();
        c.startup_done = c.spec.startup_probe.is_none();
        self.spawn_probes(i);
    }

    /// The startup probe of container `i`'s run succeeded: its other probes start.
    fn startup_succeeded(&mut self, i: usize) {
        let c = &mut self.ctrs[i];
        c.stop_probes();
        c.startup_done = true;
        self.spawn_probes(i);
    }

    fn spawn_probes(&mut self, i: usize) {
        let c = &mut self.ctrs[i];
        let St::Running { id, pid, since, .. } = &c.state else {
            return;
        };
        c.probe_ready = c.spec.readiness_probe.is_none();
        if c.init {
            return;
        }
        let target = probe::Target {
            engine: self.shared.engine.clone(),
            container: c.spec.clone(),
            id: id.clone(),
            netns: match &self.infra {
                Some(i) => i.netns(),
                None => PathBuf::from(format!("/proc/{pid}/ns/net")),
            },
            started: *since,
        };
        let probes = if c.startup_done {
            vec![
                (probe::Kind::Liveness, &c.spec.liveness_probe),
                (probe::Kind::Readiness, &c.spec.readiness_probe),
            ]
        } else {
            vec![(probe::Kind::Startup, &c.spec.startup_probe)]
        };
        for (kind, p) in probes {
            if let Some(p) = p {
                let task = probe::run(p.clone(), kind, target.clone(), self.probe_tx.clone());
                c.probes.push(self.probe_tasks.spawn(task));
            }
        }
    }

    /// A probe's report: an `Unhealthy` event per failed attempt, readiness into the
    /// status, and a liveness failure kills the run (TERM, KILL after the grace period)
    /// so that the restart policy and its back-off take over.
    async fn on_probe(&mut self, msg: probe::Msg) {
        let (name, id) = match &msg {
            probe::Msg::Failed { container, id, .. }
            | probe::Msg::Changed { container, id, .. } => (container.clone(), id.clone()),
        };
        let Some(i) = self.ctrs.iter().position(|c| {
            c.spec.name == name && matches!(&c.state, St::Running { id: r, .. } if *r == id)
        }) else {
            return; // a report about a run that has ended
        };
        match msg {
            probe::Msg::Failed { kind, output, .. } => {
                let text = format!("{} probe failed: {output}", kind.word());
                tracing::debug!(pod = self.name(), container = %name, %text);
                self.event(EventType::Warning, "Unhealthy", &text).await;
            }
            probe::Msg::Changed {
                kind: probe::Kind::Readiness,
                ok,
                ..
            } => self.ctrs[i].probe_ready = ok,
            probe::Msg::Changed {
                kind: probe::Kind::Startup,
                ok: true,
                ..
            } => self.startup_succeeded(i),
            probe::Msg::Changed {
                kind: probe::Kind::Liveness,
                ok: true,
                ..
            } => {}
            probe::Msg::Changed {
                kind: kind @ (probe::Kind::Liveness | probe::Kind::Startup),
                ok: false,
                ..
            } => {
                let probe = match kind {
                    probe::Kind::Startup => &self.ctrs[i].spec.startup_probe,
                    _ => &self.ctrs[i].spec.liveness_probe,
                };
                let grace = probe
                    .as_ref()
                    .and_then(|p| p.termination_grace_period_seconds)
                    .or(self
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds))
                    .unwrap_or(30)
                    .max(0) as u64;
                self.event(
                    EventType::Normal,
                    "Killing",
                    &format!(
                        "Container {name} failed {} probe, will be restarted",
                        kind.word().to_lowercase()
                    ),
                )
                .await;
                let engine = self.shared.engine.clone();
                self.probe_tasks.spawn(async move {
                    let (e, i) = (engine.clone(), id.clone());
                    if let Err(err) = blocking(move || e.signal(&i, "TERM")).await {
                        tracing::debug!(id, error = %err, "TERM after a failed probe");
                    }
                    tokio::time::sleep(Duration::from_secs(grace)).await;
                    // Gone by now in the usual case: the error is expected then.
                    let _ = blocking(move || engine.signal(&id, "KILL")).await;
                });
            }
        }
    }

    /// Finds the pod's infra process again or starts it; false (with the reason on the
    /// waiting containers and an event) when it cannot be started. A new infra process
    /// while containers still run in the old namespaces kills them: they restart in
    /// the new ones, as the kubelet does when a sandbox changed.
    async fn ensure_infra(&mut self) -> bool {
        if self.infra.is_some() {
            return true;
        }
        let engine = self.shared.engine.clone();
        let (uid, host, hostname) = (
            self.uid.clone(),
            host_network(&self.pod),
            hostname(&self.pod),
        );
        let found = blocking(move || {
            if let Some(i) = infra::find(&engine.state_dir, &uid) {
                return Ok((i, false));
            }
            infra::start(
                &engine.node_binary,
                &engine.state_dir,
                &uid,
                &hostname,
                host,
            )
            .map(|i| (i, true))
        })
        .await;
        let (infra, new) = match found {
            Ok(x) => x,
            Err(msg) => {
                for c in self.ctrs.iter_mut() {
                    if let St::Waiting {
                        reason, message, ..
                    } = &mut c.state
                        && reason == "ContainerCreating"
                    {
                        *message = Some(msg.clone());
                    }
                }
                let text = format!("Failed to create pod sandbox: {msg}");
                self.event(EventType::Warning, "FailedCreatePodSandBox", &text)
                    .await;
                return false;
            }
        };
        match open_pidfd(infra.pid) {
            Ok(fd) => {
                self.infra_watch.spawn(async move {
                    exit::wait(fd).await;
                });
            }
            Err(e) => tracing::warn!(pod = self.name(), error = %e, "watching the infra process"),
        }
        tracing::info!(pod = self.name(), pid = infra.pid, new, "pod infra process");
        self.infra = Some(infra);
        self.infra_since = Instant::now();
        if new {
            self.kill_running(
                "SandboxChanged",
                "Pod sandbox changed, it will be killed and re-created.",
            )
            .await;
        }
        true
    }

    /// The infra process ended under running containers: a new one is made at the next
    /// step (after the kubelet's restart back-off when they keep ending), and the
    /// containers restart into it.
    async fn on_infra_exit(&mut self) {
        if self.infra.take().is_some() {
            let delay = self.infra_backoff.on_exit(self.infra_since.elapsed());
            tracing::warn!(pod = self.name(), retry_in = ?delay, "the pod's infra process ended");
            self.infra_retry = Some(Instant::now() + delay);
        }
    }

    /// KILLs every running container of the pod (their exits then follow the restart
    /// policy), with one event, if any runs.
    async fn kill_running(&mut self, reason: &str, message: &str) {
        let ids: Vec<String> = self
            .ctrs
            .iter()
            .filter_map(|c| match &c.state {
                St::Running { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return;
        }
        self.event(EventType::Normal, reason, message).await;
        let engine = self.shared.engine.clone();
        blocking(move || {
            for id in ids {
                if let Err(e) = engine.signal(&id, "KILL") {
                    tracing::debug!(id, error = %e, "KILL");
                }
            }
        })
        .await;
    }

    fn watch_exit(&mut self, name: String, id: String, pidfd: std::os::fd::OwnedFd) {
        self.exits.spawn(async move {
            let code = exit::wait(pidfd).await;
            Exit { name, id, code }
        });
    }

    /// Runs the pod until it is finalized (deleted and cleaned up) or `stop` is set;
    /// on `stop` its containers keep running for the next strata-node to adopt.
    pub async fn run(
        mut self,
        mut updates: watch::Receiver<Option<Arc<Pod>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            if self.removed || self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&mut stop).await;
                return;
            }
            let wake = if self.rejected.is_some() {
                None
            } else if self.placed || self.place().await {
                self.step().await
            } else {
                // Node labels and taints may change: look again in a while.
                Some(Instant::now() + Duration::from_secs(5))
            };
            self.write_status().await;
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    match updates.borrow_and_update().clone() {
                        Some(p) => self.pod = p,
                        None => self.removed = true,
                    }
                }
                Some(res) = self.exits.join_next(), if !self.exits.is_empty() => {
                    if let Ok(exit) = res {
                        self.on_exit(exit).await;
                    }
                }
                Some(msg) = self.probe_rx.recv() => self.on_probe(msg).await,
                Some(_) = self.infra_watch.join_next(), if !self.infra_watch.is_empty() => {
                    self.on_infra_exit().await;
                }
                Some(_) = self.probe_tasks.join_next(), if !self.probe_tasks.is_empty() => {}
                // Some pod's volumes became ready: ours, if `step` finds them so.
                Ok(()) = self.ready.changed(), if !self.volumes_ready => {}
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Checks that the pod fits this node and, when it names no node yet, places it here
    /// (writes `spec.nodeName`, as the scheduler's binding does). False while it does
    /// not fit (a FailedScheduling event when the reason changes). A pod that names this
    /// node already is admitted or rejected for good instead, as by the kubelet.
    async fn place(&mut self) -> bool {
        let info = placement::NodeInfo::read(&self.shared.store, &self.shared.node).await;
        if meta::pod_node_name(&self.pod).is_some() {
            return match placement::admit(&self.pod, &info) {
                Ok(()) => {
                    self.placed = true;
                    true
                }
                Err(r) => {
                    self.reject(r).await;
                    false
                }
            };
        }
        let fit = placement::fits(&self.pod, &info);
        let msg = match fit {
            Ok(()) => match self.bind().await {
                Ok(()) => {
                    self.placed = true;
                    self.unschedulable = None;
                    return true;
                }
                Err(e) => format!("binding the pod to node {}: {e}", self.shared.node),
            },
            Err(msg) => msg,
        };
        if self.unschedulable.as_deref() != Some(msg.as_str()) {
            tracing::info!(pod = self.name(), %msg, "pod does not fit this node");
            self.event(EventType::Warning, "FailedScheduling", &msg)
                .await;
            self.unschedulable = Some(msg);
        }
        false
    }

    /// Refuses the pod for good, as the kubelet's `rejectPod`: a Warning event with the
    /// predicate as reason, and phase Failed with "Pod was rejected: ..." (written by
    /// the caller's next status write). Nothing of it was set up: volumes wait for
    /// `step`, which a rejected pod never reaches.
    async fn reject(&mut self, r: placement::Rejection) {
        tracing::info!(pod = self.name(), reason = r.reason, message = %r.message, "pod rejected: it does not fit this node");
        self.event(EventType::Warning, r.reason, &r.message).await;
        self.finished = Some("Failed");
        self.rejected = Some(PodStatus {
            phase: Some("Failed".into()),
            reason: Some(r.reason.into()),
            message: Some(format!("Pod was rejected: {}", r.message)),
            ..Default::default()
        });
    }

    /// Writes this node into `spec.nodeName` of a pod that names none.
    async fn bind(&mut self) -> Result<(), String> {
        for _ in 0..5 {
            let spec = Arc::make_mut(&mut self.pod)
                .spec
                .get_or_insert_with(Default::default);
            if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
                return Ok(());
            }
            spec.node_name = Some(self.shared.node.clone());
            match self.shared.store.update(&*self.pod).await {
                Ok(p) => {
                    self.pod = Arc::new(p);
                    self.event(
                        EventType::Normal,
                        "Scheduled",
                        &format!(
                            "Successfully assigned {}/{} to {}",
                            self.ns(),
                            self.name(),
                            self.shared.node
                        ),
                    )
                    .await;
                    return Ok(());
                }
                Err(strata_store::Error::Conflict { .. }) => {
                    if !self.reload().await {
                        return Err("the pod is gone".into());
                    }
                }
                Err(e) => return Err(chain(&e)),
            }
        }
        Err("conflicting updates".into())
    }

    /// One pass: volumes, then the next container(s) due to start. Returns when to look
    /// again (a back-off ending), if anything is scheduled.
    async fn step(&mut self) -> Option<Instant> {
        if self.finished.is_some() {
            return None;
        }
        if !self.volumes_ready {
            self.ensure_finalizer().await;
            // Placed and admitted: from here on the volume manager may set it up.
            self.shared.volumes.admit(&self.uid);
            // Finished by the volume manager on its own (the claim it waited for bound).
            if self.shared.volumes.pod_ready(&self.uid) {
                self.volumes_ready = true;
            } else if let Some(at) = self.volumes_retry.filter(|at| *at > Instant::now()) {
                return Some(at);
            }
        }
        if !self.volumes_ready {
            match self.shared.volumes.sync_pod(&self.pod).await {
                Ok(_) => self.volumes_ready = true,
                Err(e) => {
                    // The volume manager records the FailedMount event.
                    let msg = format!("volumes not ready: {}", chain(&e));
                    for c in self.ctrs.iter_mut() {
                        if let St::Waiting {
                            reason, message, ..
                        } = &mut c.state
                            && reason == "ContainerCreating"
                        {
                            *message = Some(msg.clone());
                        }
                    }
                    let at = Instant::now() + Duration::from_secs(2);
                    self.volumes_retry = Some(at);
                    return Some(at);
                }
            }
        }
        if let Some(at) = self.infra_retry.filter(|at| *at > Instant::now())
            && self.infra.is_none()
        {
            return Some(at);
        }
        if !self.ensure_infra().await {
            return Some(Instant::now() + Duration::from_secs(2));
        }
        let now = Instant::now();
        let policy = policy(&self.pod).to_string();
        // Init containers one at a time, in order.
        let mut wake: Option<Instant> = None;
        let first_init = self.ctrs.iter().position(|c| c.init && !c.succeeded());
        let due: Vec<usize> = match first_init {
            Some(i) => match &self.ctrs[i].state {
                St::Waiting { at, .. } if *at <= now => vec![i],
                St::Waiting { at, .. } => {
                    wake = Some(*at);
                    vec![]
                }
                _ => vec![],
            },
            None => (0..self.ctrs.len())
                .filter(|&i| !self.ctrs[i].init)
                .filter(|&i| match &self.ctrs[i].state {
                    St::Waiting { at, .. } if *at <= now => true,
                    St::Waiting { at, .. } => {
                        wake = Some(wake.map_or(*at, |w| w.min(*at)));
                        false
                    }
                    _ => false,
                })
                .collect(),
        };
        for i in due {
            self.start(i).await;
            if let St::Waiting { at, .. } = &self.ctrs[i].state {
                wake = Some(wake.map_or(*at, |w| w.min(*at)));
            }
        }
        let p = phase(&self.ctrs, &policy);
        if matches!(p, "Succeeded" | "Failed") && self.ctrs.iter().all(|c| !c.is_running()) {
            self.finished = Some(p);
        }
        wake
    }

    async fn start(&mut self, i: usize) {
        let spec = self.ctrs[i].spec.clone();
        let env = match env::resolve(&self.shared.store, &self.pod, &spec).await {
            Ok(e) => e,
            Err(msg) => return self.start_failed(i, StartError::Config(msg)).await,
        };
        let volumes = {
            let vm = self.shared.volumes.clone();
            let (uid, name, env) = (self.uid.clone(), spec.name.clone(), env.clone());
            match blocking(move || vm.container_volumes(&uid, &name, &env)).await {
                Ok(v) => v,
                Err(e) => return self.start_failed(i, StartError::Config(chain(&e))).await,
            }
        };
        let c = &self.ctrs[i];
        let restart = if c.ran { c.restarts + 1 } else { 0 };
        let plan = Plan {
            pod: (*self.pod).clone(),
            container: spec.clone(),
            restart,
            env,
            volumes,
            hostname: hostname(&self.pod),
            join: self
                .infra
                .as_ref()
                .map(infra::Infra::join)
                .unwrap_or_default(),
        };
        let engine = self.shared.engine.clone();
        match blocking(move || engine.start(&plan)).await {
            Ok(Started { id, pid, pidfd }) => {
                tracing::info!(pod = self.name(), container = %spec.name, id, pid, "started");
                let c = &mut self.ctrs[i];
                if c.ran {
                    c.restarts += 1;
                }
                c.ran = true;
                c.start_failures = 0;
                c.state = St::Running {
                    id: id.clone(),
                    pid,
                    started: Timestamp::now(),
                    since: Instant::now(),
                };
                self.watch_exit(spec.name.clone(), id, pidfd);
                self.start_probes(i);
                self.event(
                    EventType::Normal,
                    "Started",
                    &format!("Started container {}", spec.name),
                )
                .await;
            }
            Err(e) => self.start_failed(i, e).await,
        }
    }

    async fn start_failed(&mut self, i: usize, e: StartError) {
        let c = &mut self.ctrs[i];
        c.start_failures += 1;
        let reason = e.reason(c.start_failures > 1).to_string();
        let delay = backoff::start_failure_delay(c.start_failures);
        let message = e.to_string();
        c.state = St::Waiting {
            reason: reason.clone(),
            message: Some(message.clone()),
            at: Instant::now() + delay,
        };
        let name = c.spec.name.clone();
        tracing::warn!(pod = self.name(), container = %name, %reason, %message, "container not started");
        let (event_reason, text) = match e {
            StartError::ImageNotFound(_) => ("Failed", format!("Failed to pull image: {message}")),
            _ => ("Failed", format!("Error: {message}")),
        };
        self.event(EventType::Warning, event_reason, &text).await;
    }

    async fn on_exit(&mut self, exit: Exit) {
        let Some(i) = self.ctrs.iter().position(|c| c.spec.name == exit.name) else {
            return;
        };
        self.ctrs[i].stop_probes();
        let (started, since) = match &self.ctrs[i].state {
            St::Running {
                id, started, since, ..
            } if *id == exit.id => (Some(*started), *since),
            // An adopted run that had already ended.
            _ => (None, Instant::now()),
        };
        let term = ContainerStateTerminated {
            exit_code: exit.code.unwrap_or(137),
            reason: Some(
                match exit.code {
                    Some(0) => "Completed",
                    Some(_) => "Error",
                    None => "ContainerStatusUnknown",
                }
                .into(),
            ),
            message: exit.code.is_none().then(|| {
                "the container ended while no strata-node watched it; its exit code is unknown"
                    .to_string()
            }),
            started_at: started.map(Time),
            finished_at: Some(now()),
            container_id: Some(format!("strata://{}", exit.id)),
            ..Default::default()
        };
        tracing::info!(pod = self.name(), container = %exit.name, id = %exit.id, code = ?exit.code, "exited");
        let engine = self.shared.engine.clone();
        let (uid, id) = (self.uid.clone(), exit.id.clone());
        if let Err(e) = blocking(move || engine.remove(&uid, &id)).await {
            tracing::warn!(id = %exit.id, error = %e, "removing an exited container");
        }
        let policy = policy(&self.pod).to_string();
        let c = &mut self.ctrs[i];
        c.last = Some(term.clone());
        if should_restart(&policy, c.init, exit.code) {
            let delay = c.backoff.on_exit(since.elapsed());
            c.state = St::Waiting {
                reason: if delay.is_zero() {
                    "ContainerCreating".into()
                } else {
                    "CrashLoopBackOff".into()
                },
                message: (!delay.is_zero()).then(|| {
                    format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs(),
                        c.spec.name,
                        meta::name(&self.pod.metadata)
                    )
                }),
                at: Instant::now() + delay,
            };
            if !delay.is_zero() {
                let msg = "Back-off restarting failed container".to_string();
                self.event(EventType::Warning, "BackOff", &msg).await;
            }
        } else {
            c.last = None;
            c.state = St::Terminated(term);
        }
    }

    fn build_status(&self) -> PodStatus {
        if let Some(rejected) = &self.rejected {
            return rejected.clone();
        }
        let old = self.pod.status.clone().unwrap_or_default();
        if let Some(msg) = &self.unschedulable {
            // The scheduler's view: Pending, and why it is not placed.
            let prev = old.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.message.as_ref() == Some(msg)
            });
            return PodStatus {
                phase: Some("Pending".into()),
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(msg.clone()),
                    last_transition_time: Some(
                        prev.and_then(|p| p.last_transition_time.clone())
                            .unwrap_or_else(now),
                    ),
                    ..Default::default()
                }]),
                ..Default::default()
            };
        }
        let policy = policy(&self.pod);
        let phase = self.finished.unwrap_or_else(|| phase(&self.ctrs, policy));
        let initialized = self.ctrs.iter().filter(|c| c.init).all(|c| c.succeeded());
        let ready = initialized && self.ctrs.iter().filter(|c| !c.init).all(Ctr::ready);
        let cond = |type_: &str, ok: bool, reason: Option<&str>| {
            let status = if ok { "True" } else { "False" };
            let prev = old
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == type_ && c.status == status);
            PodCondition {
                type_: type_.into(),
                status: status.into(),
                reason: if ok { None } else { reason.map(String::from) },
                last_transition_time: Some(
                    prev.and_then(|p| p.last_transition_time.clone())
                        .unwrap_or_else(now),
                ),
                ..Default::default()
            }
        };
        let not_ready = if phase == "Succeeded" {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![
                cond("PodScheduled", true, None),
                cond("Initialized", initialized, Some("ContainersNotInitialized")),
                cond("ContainersReady", ready, Some(not_ready)),
                cond("Ready", ready, Some(not_ready)),
            ]),
            start_time: Some(self.start_time.clone()),
            init_container_statuses: self.ctrs.iter().any(|c| c.init).then(|| {
                self.ctrs
                    .iter()
                    .filter(|c| c.init)
                    .map(Ctr::status)
                    .collect()
            }),
            container_statuses: Some(
                self.ctrs
                    .iter()
                    .filter(|c| !c.init)
                    .map(Ctr::status)
                    .collect(),
            ),
            host_ip: old.host_ip.clone(),
            pod_ip: old.pod_ip.clone(),
            ..Default::default()
        }
    }

    /// Re-reads the pod after a conflict; false when it is gone (or replaced).
    async fn reload(&mut self) -> bool {
        match self.shared.store.get::<Pod>(self.ns(), self.name()).await {
            Ok(p) if p.metadata.uid == self.pod.metadata.uid => {
                self.pod = Arc::new(p);
                true
            }
            _ => false,
        }
    }

    /// Writes the status when it changed since the last write.
    async fn write_status(&mut self) {
        let status = self.build_status();
        let value = serde_json::to_value(&status).expect("serializable");
        if self.written.as_ref() == Some(&value)
            || self
                .pod
                .status
                .as_ref()
                .is_some_and(|s| serde_json::to_value(s).ok().as_ref() == Some(&value))
        {
            self.written = Some(value);
            return;
        }
        for _ in 0..5 {
            let mut pod = (*self.pod).clone();
            pod.status = Some(status.clone());
            match self.shared.store.update_status(&pod).await {
                Ok(p) => {
                    self.pod = Arc::new(p);
                    self.written = Some(value);
                    return;
                }
                Err(strata_store::Error::Conflict { .. }) => {
                    if !self.reload().await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = self.name(), error = %e, "writing pod status");
                    return;
                }
            }
        }
    }

    /// Our finalizer keeps a deleted pod until its containers have stopped and its
    /// volumes are torn down, as the kubelet's graceful deletion does.
    async fn ensure_finalizer(&mut self) {
        for _ in 0..5 {
            if self
                .pod
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == FINALIZER)
                || self.pod.metadata.deletion_timestamp.is_some()
            {
                return;
            }
            let mut pod = (*self.pod).clone();
            pod.metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(FINALIZER.into());
            match self.shared.store.update(&pod).await {
                Ok(p) => {
                    self.pod = Arc::new(p);
                    return;
                }
                Err(strata_store::Error::Conflict { .. }) => {
                    if !self.reload().await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = self.name(), error = %e, "adding the finalizer");
                    return;
                }
            }
        }
    }

    /// Stops the containers (TERM, then KILL after the grace period), removes them,
    /// tears down the volumes and lets the pod object go. Idempotent: a strata-node
    /// killed half-way does the rest after its restart.
    async fn terminate(&mut self, stop: &mut watch::Receiver<bool>) {
        // No probe may kill or judge a container that is being stopped anyway.
        self.probe_tasks.abort_all();
        let grace = if self.removed {
            0
        } else {
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64
        };
        let running: Vec<(String, String)> = self
            .ctrs
            .iter()
            .filter_map(|c| match &c.state {
                St::Running { id, .. } => Some((c.spec.name.clone(), id.clone())),
                _ => None,
            })
            .collect();
        for (name, id) in &running {
            self.event(
                EventType::Normal,
                "Killing",
                &format!("Stopping container {name}"),
            )
            .await;
            let engine = self.shared.engine.clone();
            let id2 = id.clone();
            if let Err(e) = blocking(move || engine.signal(&id2, "TERM")).await {
                tracing::debug!(id, error = %e, "TERM");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(grace);
        let mut killed = false;
        while self.ctrs.iter().any(Ctr::is_running) && !self.exits.is_empty() {
            tokio::select! {
                Some(res) = self.exits.join_next() => {
                    if let Ok(exit) = res
                        && let Some(c) = self.ctrs.iter_mut().find(|c| c.spec.name == exit.name)
                    {
                        c.state = St::Terminated(ContainerStateTerminated {
                            exit_code: exit.code.unwrap_or(137),
                            ..Default::default()
                        });
                    }
                }
                _ = tokio::time::sleep_until(deadline), if !killed => {
                    killed = true;
                    for c in self.ctrs.iter().filter(|c| c.is_running()) {
                        let St::Running { id, .. } = &c.state else { continue };
                        let engine = self.shared.engine.clone();
                        let id = id.clone();
                        let _ = blocking(move || engine.signal(&id, "KILL")).await;
                    }
                }
                // A process that survives SIGKILL (stuck in the kernel) is removed by
                // force below rather than holding the pod forever.
                _ = tokio::time::sleep_until(deadline + Duration::from_secs(10)), if killed => break,
            }
        }
        self.exits.abort_all();
        let engine = self.shared.engine.clone();
        let uid = self.uid.clone();
        let ids: Vec<String> = running.into_iter().map(|(_, id)| id).collect();
        let removed = blocking(move || {
            let mut errors = Vec::new();
            for id in &ids {
                if let Err(e) = engine.remove(&uid, id) {
                    errors.push(format!("{id}: {e}"));
                }
            }
            // Anything else of this pod the runtime holds (runs from before a crash).
            if let Ok(all) = engine.inventory() {
                for (id, _) in all {
                    if layout::parse_container_id(&id).is_some_and(|(u, _, _)| u == uid)
                        && let Err(e) = engine.remove(&uid, &id)
                    {
                        errors.push(format!("{id}: {e}"));
                    }
                }
            }
            errors
        })
        .await;
        if !removed.is_empty() {
            tracing::warn!(pod = self.name(), errors = ?removed, "removing containers");
        }
        self.stop_infra().await;
        // Volumes next; retried until they go (a busy unmount, the driver restarting).
        let mut delay = Duration::from_millis(200);
        loop {
            match self.shared.volumes.tear_down_pod(&self.uid).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = self.name(), error = %e, "tearing down volumes");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let state = self.shared.engine.state_dir.clone();
        let logs = layout::pod_logs(&state, self.ns(), self.name(), &self.uid);
        let runner = layout::runner_dir(&state).join(&self.uid);
        blocking(move || {
            let _ = std::fs::remove_dir_all(runner);
            let _ = std::fs::remove_dir_all(logs);
        })
        .await;
        self.remove_finalizer().await;
        tracing::info!(pod = self.name(), "pod terminated and cleaned up");
    }

    /// Ends the infra process (ours, or one found from before a restart) and waits
    /// for its exit to be reaped.
    async fn stop_infra(&mut self) {
        let engine = self.shared.engine.clone();
        let uid = self.uid.clone();
        let known = self.infra.take();
        blocking(move || {
            if let Some(i) = known.or_else(|| infra::find(&engine.state_dir, &uid)) {
                infra::stop(&i);
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.infra_watch.join_next().await.is_some() {}
        })
        .await;
        self.infra_watch.abort_all();
    }

    async fn remove_finalizer(&mut self) {
        for _ in 0..5 {
            if !self.reload().await {
                return;
            }
            let mut pod = (*self.pod).clone();
            let Some(f) = pod.metadata.finalizers.as_mut() else {
                return;
            };
            if !f.iter().any(|x| x == FINALIZER) {
                return;
            }
            f.retain(|x| x != FINALIZER);
            match self.shared.store.update(&pod).await {
                Ok(_) | Err(strata_store::Error::NotFound { .. }) => return,
                Err(strata_store::Error::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(pod = self.name(), error = %e, "removing the finalizer");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_table() {
        for (policy, init, code, want) in [
            ("Always", false, Some(0), true),
            ("Always", false, Some(1), true),
            ("OnFailure", false, Some(0), false),
            ("OnFailure", false, Some(2), true),
            ("OnFailure", false, None, true),
            ("Never", false, Some(1), false),
            ("Always", true, Some(0), false),
            ("Always", true, Some(1), true),
            ("Never", true, Some(1), false),
        ] {
            assert_eq!(
                should_restart(policy, init, code),
                want,
                "{policy} init={init} {code:?}"
            );
        }
    }

    fn ctr(init: bool, state: St, ran: bool) -> Ctr {
        Ctr {
            spec: Container {
                name: "c".into(),
                ..Default::default()
            },
            init,
            restarts: 0,
            ran,
            state,
            last: None,
            backoff: Backoff::default(),
            start_failures: 0,
            probe_ready: false,
            startup_done: false,
            probes: Vec::new(),
        }
    }

    fn term(code: i32) -> St {
        St::Terminated(ContainerStateTerminated {
            exit_code: code,
            ..Default::default()
        })
    }

    fn waiting() -> St {
        St::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
            at: Instant::now(),
        }
    }

    fn running() -> St {
        St::Running {
            id: "x".into(),
            pid: 1,
            started: Timestamp::now(),
            since: Instant::now(),
        }
    }

    #[test]
    fn runs_stopped_with_the_node_run_again() {
        let status = |id: &str, state: ContainerState| ContainerStatus {
            name: "c".into(),
            container_id: Some(format!("strata://{id}")),
            ready: true,
            started: Some(true),
            state: Some(state),
            ..Default::default()
        };
        let running = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(now()),
            }),
            ..Default::default()
        };
        let mut pod = Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                container_statuses: Some(vec![
                    status("p_c_0", running.clone()),
                    status("other", running),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let stopped = std::collections::HashMap::from([("p_c_0".to_string(), 143)]);
        assert!(mark_stopped(&mut pod, &stopped));
        let st = pod.status.as_ref().unwrap();
        let [c, other] = st.container_statuses.clone().unwrap().try_into().unwrap();
        let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(
            (t.exit_code, t.reason.as_deref()),
            (143, Some(NODE_SHUTDOWN))
        );
        assert_eq!(t.container_id.as_deref(), Some("strata://p_c_0"));
        assert!(!c.ready && c.started == Some(false));
        // A run the node did not stop is left as it was.
        assert!(other.ready && other.state.as_ref().unwrap().running.is_some());
        assert_eq!(st.conditions.as_ref().unwrap()[0].status, "False");
        let c = &c;
        // Nothing left to mark: nothing to write.
        assert!(!mark_stopped(&mut pod, &stopped));
        // The next start runs it again under every policy; an exit of its own stays done
        // where the policy says so.
        for policy in ["Always", "OnFailure", "Never"] {
            assert!(done_before(c, policy, false).is_none(), "{policy}");
        }
        let mut ended = c.clone();
        ended
            .state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap()
            .reason = Some("Error".into());
        assert!(done_before(&ended, "Never", false).is_some());
        assert!(done_before(&ended, "Always", false).is_none());
    }

    #[test]
    fn phase_follows_the_kubelet() {
        assert_eq!(phase(&[ctr(false, waiting(), false)], "Always"), "Pending");
        assert_eq!(phase(&[ctr(false, running(), true)], "Always"), "Running");
        assert_eq!(phase(&[ctr(false, waiting(), true)], "Always"), "Running");
        assert_eq!(phase(&[ctr(false, term(0), true)], "Never"), "Succeeded");
        assert_eq!(phase(&[ctr(false, term(1), true)], "Never"), "Failed");
        assert_eq!(
            phase(
                &[ctr(true, running(), true), ctr(false, waiting(), false)],
                "Always"
            ),
            "Pending"
        );
        assert_eq!(
            phase(
                &[ctr(true, term(1), true), ctr(false, waiting(), false)],
                "Never"
            ),
            "Failed"
        );
        assert_eq!(
            phase(
                &[ctr(true, term(0), true), ctr(false, running(), true)],
                "Never"
            ),
            "Running"
        );
    }
}
