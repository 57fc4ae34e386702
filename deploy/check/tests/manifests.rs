//! deploy/kustomize, deploy/overlays/strata-provisioner and deploy/helm/strata: every
//! object is a valid Kubernetes object of its kind, the node plugin is wired the way the
//! driver and the sidecars (or strata-provisioner) expect, RBAC grants what they need and
//! nothing else, and the chart renders the kustomize install (default values) and the
//! overlay (`provisioner: strata`).

use std::collections::{BTreeMap, BTreeSet};

use clap::Parser as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use serde_json::{Value, json};
use strata_deploy_check::{chart_values, deploy_dir, helm, key, kustomize, rbac};

const NAMESPACE: &str = "strata-system";

fn kustomize_objects() -> Vec<Value> {
    kustomize(&deploy_dir().join("kustomize")).unwrap()
}

/// The variant running strata-provisioner instead of the provisioner and resizer sidecars.
fn overlay_objects() -> Vec<Value> {
    kustomize(&deploy_dir().join("overlays/strata-provisioner")).unwrap()
}

fn chart() -> std::path::PathBuf {
    deploy_dir().join("helm/strata")
}

/// Deserializes `o` as `T` and back: a field that `T` does not know (a typo, a wrong
/// level of nesting) is dropped on the way and shows up as a difference.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(o: &Value) -> T {
    let t: T = serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{}: {e}", key(o)));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back,
        o,
        "{} changes when read as its k8s-openapi type",
        key(o)
    );
    t
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

fn daemonset(objects: &[Value]) -> DaemonSet {
    serde_json::from_value(one(objects, "DaemonSet").clone()).unwrap()
}

fn containers(ds: &DaemonSet) -> BTreeMap<String, Container> {
    let spec = ds.spec.template.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .map(|c| (c.name.clone(), c.clone()))
        .collect()
}

fn args(c: &Container) -> Vec<String> {
    c.args.clone().unwrap_or_default()
}

/// The value of `--flag=value` in `c`'s args.
fn flag(c: &Container, name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    args(c)
        .iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

fn has_flag(c: &Container, name: &str) -> bool {
    args(c)
        .iter()
        .any(|a| a == &format!("--{name}") || a.starts_with(&format!("--{name}=")))
}

fn env_field(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| {
            e.value_from
                .as_ref()?
                .field_ref
                .as_ref()
                .map(|f| f.field_path.clone())
        })
}

fn mount<'a>(c: &'a Container, volume: &str) -> &'a k8s_openapi::api::core::v1::VolumeMount {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .unwrap_or_else(|| panic!("{} does not mount {volume}", c.name))
}

fn host_path(ds: &DaemonSet, volume: &str) -> String {
    let spec = ds.spec.template.spec.as_ref().unwrap();
    let v = spec.volumes.iter().flatten().find(|v| v.name == volume);
    let v = v.unwrap_or_else(|| panic!("no volume {volume}"));
    v.host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{volume} is not a hostPath"))
        .path
        .clone()
}

#[test]
fn every_object_is_its_kubernetes_type() {
    every_object_is_its_type(&kustomize_objects());
    every_object_is_its_type(&overlay_objects());
}

fn every_object_is_its_type(objects: &[Value]) {
    let mut kinds = BTreeSet::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap();
        kinds.insert(kind.to_string());
        match kind {
            "Namespace" => drop(round_trip::<Namespace>(o)),
            "ServiceAccount" => drop(round_trip::<ServiceAccount>(o)),
            "CSIDriver" => drop(round_trip::<CSIDriver>(o)),
            "StorageClass" => drop(round_trip::<StorageClass>(o)),
            "DaemonSet" => drop(round_trip::<DaemonSet>(o)),
            "ClusterRole" => drop(round_trip::<ClusterRole>(o)),
            "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(o)),
            "Role" => drop(round_trip::<Role>(o)),
            "RoleBinding" => drop(round_trip::<RoleBinding>(o)),
            // A CRD kind that k8s-openapi does not have: checked field by field against
            // snapshot.storage.k8s.io/v1 (external-snapshotter client/apis).
            "VolumeSnapshotClass" => {
                assert_eq!(o["apiVersion"], "snapshot.storage.k8s.io/v1");
                let fields: BTreeSet<&str> =
                    o.as_object().unwrap().keys().map(String::as_str).collect();
                let known = BTreeSet::from([
                    "apiVersion",
                    "kind",
                    "metadata",
                    "driver",
                    "deletionPolicy",
                    "parameters",
                ]);
                assert!(fields.is_subset(&known), "unknown fields in {fields:?}");
                assert!(o["metadata"]["name"].is_string());
                let csidriver = one(objects, "CSIDriver");
                assert_eq!(o["driver"], csidriver["metadata"]["name"]);
                assert!(matches!(
                    o["deletionPolicy"].as_str(),
                    Some("Delete" | "Retain")
                ));
            }
            other => panic!("{other}: no check for this kind"),
        }
    }
    for want in [
        "CSIDriver",
        "StorageClass",
        "VolumeSnapshotClass",
        "DaemonSet",
        "ServiceAccount",
    ] {
        assert!(kinds.contains(want), "no {want}");
    }
}

#[test]
fn csidriver_matches_the_driver() {
    let objects = kustomize_objects();
    let d: CSIDriver = serde_json::from_value(one(&objects, "CSIDriver").clone()).unwrap();
    let s = d.spec;
    assert_eq!(s.attach_required, Some(false));
    assert_eq!(s.pod_info_on_mount, Some(true));
    assert_eq!(s.fs_group_policy.as_deref(), Some("File"));
    assert_eq!(
        s.volume_lifecycle_modes,
        Some(vec!["Persistent".into(), "Ephemeral".into()])
    );
    assert_eq!(s.storage_capacity, Some(true));
    assert_eq!(s.requires_republish, Some(false));
}

#[test]
fn one_class_per_backend_with_late_binding_and_expansion() {
    let objects = kustomize_objects();
    let driver = one(&objects, "CSIDriver")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut backends = BTreeSet::new();
    for o in objects.iter().filter(|o| o["kind"] == "StorageClass") {
        let sc: StorageClass = serde_json::from_value(o.clone()).unwrap();
        assert_eq!(sc.provisioner, driver);
        assert_eq!(
            sc.volume_binding_mode.as_deref(),
            Some("WaitForFirstConsumer")
        );
        assert_eq!(sc.allow_volume_expansion, Some(true));
        let params = sc.parameters.unwrap_or_default();
        // The driver refuses unknown parameters (csi/src/volumes.rs); these are the ones
        // it reads, plus the CO's fstype key that external-provisioner consumes.
        for k in params.keys() {
            assert!(
                ["pool", "fsType", "directIO", "csi.storage.k8s.io/fstype"].contains(&k.as_str()),
                "{k}"
            );
        }
        let pool = params
            .get("pool")
            .expect("every class names its pool")
            .clone();
        let fs = params
            .get("csi.storage.k8s.io/fstype")
            .cloned()
            .unwrap_or_default();
        backends.insert(format!(
            "{pool}{}{fs}",
            if fs.is_empty() { "" } else { "/" }
        ));
    }
    let want: BTreeSet<String> = ["image/ext4", "image/xfs", "btrfs", "dir"]
        .map(String::from)
        .into();
    assert_eq!(backends, want);
}

#[test]
fn node_plugin_is_wired_as_the_driver_and_sidecars_expect() {
    let objects = kustomize_objects();
    let ds = daemonset(&objects);
    let cs = containers(&ds);
    let driver_name = one(&objects, "CSIDriver")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let driver = &cs["strata-csi"];

    // The driver's own flag parser accepts the args, with the downward-API node name.
    let mut argv = vec!["strata-csi".to_string()];
    argv.extend(
        args(driver)
            .iter()
            .map(|a| a.replace("$(NODE_NAME)", "node-1")),
    );
    let config =
        strata_csi::config::Config::try_parse_from(&argv).unwrap_or_else(|e| panic!("{e}"));
    let socket = config.validate().unwrap();
    assert_eq!(config.driver_name, driver_name);
    assert_eq!(config.node_id, "node-1");
    assert_eq!(
        env_field(driver, "NODE_NAME").as_deref(),
        Some("spec.nodeName")
    );
    assert_eq!(
        driver.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "loop devices and mounts need a privileged container"
    );

    // Metrics: the port the driver binds is the container's `metrics` port, and the one
    // the pod's scrape annotation names.
    let metrics = config.metrics_address.expect("--metrics-address");
    let port = |name: &str| {
        driver
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    assert_eq!(port("metrics"), Some(i32::from(metrics.port())));
    assert_ne!(
        port("healthz"),
        port("metrics"),
        "livenessprobe owns healthz"
    );
    let annotations = ds
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref();
    assert_eq!(
        annotations.and_then(|a| a.get("prometheus.io/port")),
        Some(&metrics.port().to_string())
    );

    // One socket: the driver listens where every sidecar connects, on the host under the
    // kubelet's plugin dir, which the registrar tells the kubelet.
    let socket_dir = socket.parent().unwrap().to_str().unwrap().to_string();
    assert_eq!(mount(driver, "socket-dir").mount_path, socket_dir);
    let sidecars = [
        "node-driver-registrar",
        "csi-provisioner",
        "csi-resizer",
        "csi-snapshotter",
        "liveness-probe",
    ];
    assert_eq!(cs.len(), sidecars.len() + 1, "containers: {:?}", cs.keys());
    for name in sidecars {
        let c = &cs[name];
        assert_eq!(mount(c, "socket-dir").mount_path, socket_dir, "{name}");
        assert_eq!(flag(c, "csi-address").as_deref(), socket.to_str(), "{name}");
        assert!(
            c.image
                .as_deref()
                .unwrap()
                .starts_with("registry.k8s.io/sig-storage/"),
            "{name}"
        );
    }
    let kubelet = host_path(&ds, "kubelet-dir");
    let host_socket_dir = host_path(&ds, "socket-dir");
    assert_eq!(host_socket_dir, format!("{kubelet}/plugins/{driver_name}"));
    let registrar = &cs["node-driver-registrar"];
    assert_eq!(
        flag(registrar, "kubelet-registration-path"),
        Some(format!(
            "{host_socket_dir}/{}",
            socket.file_name().unwrap().to_str().unwrap()
        ))
    );
    assert_eq!(
        mount(registrar, "registration-dir").mount_path,
        "/registration"
    );
    assert_eq!(
        host_path(&ds, "registration-dir"),
        format!("{kubelet}/plugins_registry")
    );

    // Mounts the driver makes under the kubelet dir and in the pools must reach the host.
    let kmount = mount(driver, "kubelet-dir");
    assert_eq!(
        kmount.mount_path, kubelet,
        "same path inside and out, as the kubelet names targets"
    );
    assert_eq!(kmount.mount_propagation.as_deref(), Some("Bidirectional"));
    assert_eq!(mount(driver, "dev").mount_path, "/dev");
    assert_eq!(host_path(&ds, "dev"), "/dev");
    assert_eq!(
        mount(driver, "state-dir").mount_path,
        config.state_dir.to_str().unwrap()
    );
    assert_eq!(
        host_path(&ds, "state-dir"),
        config.state_dir.to_str().unwrap()
    );
    for pool in &config.pools {
        let volume = format!("pool-{}", pool.name);
        let m = mount(driver, &volume);
        assert_eq!(m.mount_path, pool.path.to_str().unwrap());
        assert_eq!(m.mount_propagation.as_deref(), Some("Bidirectional"));
        assert_eq!(host_path(&ds, &volume), pool.path.to_str().unwrap());
    }

    // Liveness: the kubelet probes livenessprobe's /healthz through the driver container.
    let probe = driver
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    let port = match &probe.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
            driver
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap()
                .container_port
        }
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
    };
    assert_eq!(
        flag(&cs["liveness-probe"], "http-endpoint"),
        Some(format!(":{port}"))
    );

    // Per-node provisioning with capacity tracking, owned by the DaemonSet.
    let p = &cs["csi-provisioner"];
    for f in ["node-deployment", "enable-capacity", "strict-topology"] {
        assert!(has_flag(p, f), "provisioner --{f}");
    }
    assert_eq!(
        flag(p, "capacity-ownerref-level").as_deref(),
        Some("1"),
        "pod -> DaemonSet"
    );
    assert!(
        !has_flag(p, "leader-election"),
        "per-node provisioners do not elect a leader"
    );
    assert_eq!(env_field(p, "NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(
        env_field(p, "NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(env_field(p, "POD_NAME").as_deref(), Some("metadata.name"));
    let s = &cs["csi-snapshotter"];
    assert!(has_flag(s, "node-deployment") && !has_flag(s, "leader-election"));
    assert_eq!(env_field(s, "NODE_NAME").as_deref(), Some("spec.nodeName"));
    let r = &cs["csi-resizer"];
    assert!(has_flag(r, "leader-election"), "one resizer acts at a time");
    assert_eq!(
        env_field(r, "NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
}

/// One rule a sidecar needs: `verbs` on `group/resource`, cluster-wide or (namespaced)
/// in the sidecar's own namespace.
struct Need {
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    namespaced: bool,
}

const fn cluster(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Need {
    Need {
        group,
        resource,
        verbs,
        namespaced: false,
    }
}

const fn local(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Need {
    Need {
        group,
        resource,
        verbs,
        namespaced: true,
    }
}

const EVENTS: &[&str] = &["list", "watch", "create", "update", "patch"];
const READ: &[&str] = &["get", "list", "watch"];
const LEASES: Need = local(
    "coordination.k8s.io",
    "leases",
    &["get", "watch", "list", "delete", "update", "create"],
);

/// kubernetes-csi/external-provisioner deploy/kubernetes/rbac.yaml at
/// 0688604faa43ae14273cf71fbfde4f3534ec6b8c (after v6.3.0): the ClusterRole, always.
const PROVISIONER: &[Need] = &[
    cluster(
        "",
        "persistentvolumes",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    cluster(
        "",
        "persistentvolumeclaims",
        &["get", "list", "watch", "update"],
    ),
    cluster("storage.k8s.io", "storageclasses", READ),
    cluster("", "events", EVENTS),
    cluster(
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        &["get", "list", "watch", "update"],
    ),
    cluster(
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents",
        &["get", "list"],
    ),
    cluster("storage.k8s.io", "csinodes", READ),
    cluster("", "nodes", READ),
    cluster("storage.k8s.io", "volumeattachments", READ),
];
/// Same file, Role `external-provisioner-cfg`: with --enable-capacity, and the owner
/// lookup (pkg/owner/owner.go reads the pod; level 1 takes its controller from the pod).
const PROVISIONER_CAPACITY: &[Need] = &[
    local(
        "storage.k8s.io",
        "csistoragecapacities",
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    ),
    local("", "pods", &["get"]),
];
/// Level 2 and up reads the pod's controller too (a ReplicaSet under a Deployment).
const PROVISIONER_OWNER_LEVEL_2: Need = local("apps", "replicasets", &["get"]);

/// kubernetes-csi/external-resizer deploy/kubernetes/rbac.yaml at
/// beef24d8e070f5188a7bdc7fc46f902068e4da55 (after v2.2.1).
const RESIZER: &[Need] = &[
    cluster("", "persistentvolumes", &["get", "list", "watch", "patch"]),
    cluster("", "persistentvolumeclaims", READ),
    cluster("", "pods", READ),
    cluster("", "persistentvolumeclaims/status", &["patch"]),
    cluster("", "events", EVENTS),
    cluster("storage.k8s.io", "volumeattributesclasses", READ),
];

/// kubernetes-csi/external-snapshotter deploy/kubernetes/csi-snapshotter/
/// rbac-csi-snapshotter.yaml at afb2f0d85e00e40cda621549d56fda11ccd3558b (after v8.6.0).
const SNAPSHOTTER: &[Need] = &[
    cluster("", "events", EVENTS),
    cluster("snapshot.storage.k8s.io", "volumesnapshotclasses", READ),
    cluster(
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents",
        &["get", "list", "watch", "update", "patch"],
    ),
    cluster(
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents/status",
        &["update", "patch"],
    ),
    cluster(
        "groupsnapshot.storage.k8s.io",
        "volumegroupsnapshotclasses",
        READ,
    ),
    cluster(
        "groupsnapshot.storage.k8s.io",
        "volumegroupsnapshotcontents",
        &["get", "list", "watch", "update", "patch"],
    ),
    cluster(
        "groupsnapshot.storage.k8s.io",
        "volumegroupsnapshotcontents/status",
        &["update", "patch"],
    ),
];

/// strata-provisioner --in-cluster (per-node mode), from its code: provisioner/src/
/// controller/informer.rs lists and watches these kinds cluster-wide; provision.rs and
/// binder.rs create, update and delete volumes and update claims and claim status
/// (expansion); store-kube's unconditional update reads the object first (get); its
/// event recorder creates events and patches their count; controller/secrets.rs gets the
/// Secrets a StorageClass names (in the namespace the class picks).
const STRATA_PROVISIONER: &[Need] = &[
    cluster(
        "",
        "persistentvolumes",
        &["get", "list", "watch", "create", "update", "delete"],
    ),
    cluster(
        "",
        "persistentvolumeclaims",
        &["get", "list", "watch", "update"],
    ),
    cluster("", "persistentvolumeclaims/status", &["update"]),
    cluster("storage.k8s.io", "storageclasses", &["list", "watch"]),
    cluster("", "pods", &["list", "watch"]),
    cluster("", "namespaces", &["list", "watch"]),
    cluster("apps", "statefulsets", &["list", "watch"]),
    cluster("", "events", &["create", "patch"]),
    cluster("", "secrets", &["get"]),
];
/// With --enable-capacity (provisioner/src/capacity.rs): its CSIStorageCapacity objects
/// in its namespace (listed by label, created, updated with the version listed, deleted),
/// and its own pod read once for the owner reference (main.rs).
const STRATA_PROVISIONER_CAPACITY: &[Need] = &[
    local(
        "storage.k8s.io",
        "csistoragecapacities",
        &["list", "create", "update", "delete"],
    ),
    local("", "pods", &["get"]),
];

/// What the containers of the DaemonSet need, given the flags they run with. The driver,
/// node-driver-registrar and livenessprobe never call the API server.
fn needs(ds: &DaemonSet) -> Vec<(String, &'static Need)> {
    let mut out = Vec::new();
    for (name, c) in containers(ds) {
        let mut add = |needs: &'static [Need]| out.extend(needs.iter().map(|n| (name.clone(), n)));
        match name.as_str() {
            "strata-csi" | "node-driver-registrar" | "liveness-probe" => {}
            "csi-provisioner" => {
                add(PROVISIONER);
                if has_flag(&c, "enable-capacity") {
                    add(PROVISIONER_CAPACITY);
                    let level: i32 =
                        flag(&c, "capacity-ownerref-level").map_or(1, |l| l.parse().unwrap());
                    if level >= 2 {
                        add(std::slice::from_ref(&PROVISIONER_OWNER_LEVEL_2));
                    }
                }
            }
            "csi-resizer" => add(RESIZER),
            "strata-provisioner" => {
                add(STRATA_PROVISIONER);
                if has_flag(&c, "enable-capacity") {
                    add(STRATA_PROVISIONER_CAPACITY);
                }
            }
            "csi-snapshotter" => add(SNAPSHOTTER),
            other => panic!("container {other}: add what it needs to this table"),
        }
        if has_flag(&c, "leader-election") {
            add(std::slice::from_ref(&LEASES));
        }
    }
    out
}

#[test]
fn rbac_grants_what_the_sidecars_need_and_nothing_more() {
    rbac_grants_what_is_needed_and_nothing_more(&kustomize_objects());
}

#[test]
fn rbac_grants_what_strata_provisioner_needs_and_nothing_more() {
    let objects = overlay_objects();
    rbac_grants_what_is_needed_and_nothing_more(&objects);
    // The sidecars' roles went with them.
    for o in &objects {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            !name.starts_with("strata-external-provisioner")
                && !name.starts_with("strata-external-resizer"),
            "{} is left in the overlay",
            key(o)
        );
    }
}

fn rbac_grants_what_is_needed_and_nothing_more(objects: &[Value]) {
    let ds = daemonset(objects);
    let spec = ds.spec.template.spec.as_ref().unwrap();
    let account = spec
        .service_account_name
        .clone()
        .expect("the DaemonSet names its account");
    assert!(
        objects.iter().any(|o| o["kind"] == "ServiceAccount"
            && o["metadata"]["name"] == account.as_str()
            && o["metadata"]["namespace"] == NAMESPACE),
        "ServiceAccount {account} is installed"
    );
    let granted = rbac::granted(objects, NAMESPACE, &account).unwrap();

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (container, need) in needs(&ds) {
        for verb in need.verbs {
            let ns = need.namespaced.then_some(NAMESPACE);
            if rbac::allows(&granted, ns, need.group, need.resource, verb) {
                used.insert((need.group, need.resource, *verb));
            } else {
                missing.push(format!(
                    "{container}: {verb} {}/{} ",
                    need.group, need.resource
                ));
            }
        }
    }
    assert!(missing.is_empty(), "not granted: {missing:#?}");
    let extra: Vec<String> = granted
        .iter()
        .filter(|p| !used.contains(&(p.group.as_str(), p.resource.as_str(), p.verb.as_str())))
        .map(|p| p.to_string())
        .collect();
    assert!(
        extra.is_empty(),
        "granted but no sidecar needs it: {extra:#?}"
    );
    // Least privilege also means namespaced needs stay namespaced, unless another
    // sidecar needs the same cluster-wide (the resizer reads pods everywhere).
    let all = needs(&ds);
    let cluster_wide = |n: &Need, verb: &str| {
        all.iter().any(|(_, m)| {
            !m.namespaced
                && m.group == n.group
                && m.resource == n.resource
                && m.verbs.contains(&verb)
        })
    };
    for (_, need) in all.iter().filter(|(_, n)| n.namespaced) {
        for verb in need.verbs.iter().filter(|v| !cluster_wide(need, v)) {
            assert!(
                !rbac::allows(&granted, None, need.group, need.resource, verb),
                "{verb} {}/{} is granted cluster-wide; a Role in {NAMESPACE} is enough",
                need.group,
                need.resource
            );
        }
    }
}

#[test]
fn rbac_model_notices_a_missing_rule() {
    // The coverage test above is only as good as `granted`: drop one rule and it must
    // be reported missing.
    let mut objects = kustomize_objects();
    let role = objects
        .iter_mut()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "strata-external-resizer")
        .unwrap();
    role["rules"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["resources"] != json!(["persistentvolumeclaims/status"]));
    let granted = rbac::granted(&objects, NAMESPACE, "strata-node").unwrap();
    assert!(!rbac::allows(
        &granted,
        None,
        "",
        "persistentvolumeclaims/status",
        "patch"
    ));
    assert!(rbac::allows(
        &granted,
        None,
        "",
        "persistentvolumes",
        "patch"
    ));
    // A binding to another account grants us nothing.
    assert!(
        rbac::granted(&objects, NAMESPACE, "someone-else")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn helm_defaults_render_the_kustomize_install() {
    let values = chart_values(&chart()).unwrap();
    let rendered = helm(&chart(), &values, NAMESPACE).unwrap();
    assert_same_objects(
        rendered,
        kustomize_objects(),
        |_| {},
        "the chart's default render and deploy/kustomize",
    );
}

/// Asserts that a chart render holds the same objects as a kustomize build, after
/// `normalise` on both sides. The build's Namespace is left out: the chart leaves the
/// namespace to `helm install -n ... --create-namespace`.
fn assert_same_objects(
    rendered: Vec<Value>,
    built: Vec<Value>,
    normalise: impl Fn(&mut Value),
    between: &str,
) {
    let expected: BTreeMap<String, Value> = built
        .into_iter()
        .filter(|o| o["kind"] != "Namespace")
        .map(|o| (key(&o), o))
        .collect();
    let got: BTreeMap<String, Value> = rendered.into_iter().map(|o| (key(&o), o)).collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (k, want) in &expected {
        let mut got = got[k].clone();
        let mut want = want.clone();
        normalise(&mut got);
        normalise(&mut want);
        assert_eq!(got, want, "{k} differs between {between}");
    }
}

#[test]
fn strata_provisioner_replaces_the_provisioner_and_resizer_sidecars() {
    let base = containers(&daemonset(&kustomize_objects()));
    let objects = overlay_objects();
    let ds = daemonset(&objects);
    let cs = containers(&ds);
    let names: BTreeSet<&str> = cs.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = base
        .keys()
        .map(String::as_str)
        .filter(|n| !["csi-provisioner", "csi-resizer"].contains(n))
        .chain(["strata-provisioner"])
        .collect();
    assert_eq!(names, want);
    // The other containers are untouched by the patch.
    for (name, c) in cs
        .iter()
        .filter(|(n, _)| n.as_str() != "strata-provisioner")
    {
        assert_eq!(c, &base[name], "{name} changed in the overlay");
    }
    let driver = &cs["strata-csi"];
    let p = &cs["strata-provisioner"];
    // The driver's image, which installs strata-provisioner beside strata-csi.
    assert_eq!(p.image, driver.image);
    assert_eq!(
        p.command.as_deref(),
        Some(&["/usr/local/bin/strata-provisioner".to_string()][..])
    );
    let dockerfile = std::fs::read_to_string(deploy_dir().join("image/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("/usr/local/bin/strata-provisioner"),
        "the Dockerfile installs strata-provisioner"
    );
    // The driver's socket, through the same volume at the same path.
    assert_eq!(flag(p, "csi-endpoint"), flag(driver, "endpoint"));
    let socket = flag(p, "csi-endpoint").unwrap();
    let dir = mount(p, "socket-dir").mount_path.clone();
    assert_eq!(mount(driver, "socket-dir").mount_path, dir);
    assert_eq!(socket, format!("unix://{dir}/csi.sock"));
    // Per-node mode with the pod's account, this node's name, capacity owned by the pod
    // in the pod's namespace (POD_NAMESPACE is --capacity-namespace's env).
    assert!(has_flag(p, "in-cluster") && !has_flag(p, "kubeconfig"));
    assert!(has_flag(p, "enable-capacity"));
    assert_eq!(flag(p, "node-id").as_deref(), Some("$(NODE_NAME)"));
    assert_eq!(env_field(p, "NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(
        flag(p, "capacity-owner-pod").as_deref(),
        Some("$(POD_NAME)")
    );
    assert_eq!(env_field(p, "POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        env_field(p, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    // Its /healthz answers the liveness probe on the port it binds, distinct from the
    // driver's.
    let bind = flag(p, "metrics-address").expect("--metrics-address");
    let port = p
        .ports
        .iter()
        .flatten()
        .find(|q| q.name.as_deref() == Some("prov-metrics"));
    let port = port.expect("a prov-metrics port").container_port;
    assert_eq!(bind, format!("0.0.0.0:{port}"));
    assert_ne!(flag(driver, "metrics-address"), Some(bind));
    let probe = p
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("prov-metrics".into())
    );
}

#[test]
fn helm_provisioner_strata_renders_the_overlay() {
    let mut values = chart_values(&chart()).unwrap();
    values["provisioner"] = json!("strata");
    let rendered = helm(&chart(), &values, NAMESPACE).unwrap();
    // The overlay appends strata-provisioner (a strategic merge adds new names at the
    // end); the chart puts it where the sidecars were. Order aside, the same.
    let containers_by_name = |o: &mut Value| {
        if let Some(cs) = o["spec"]["template"]["spec"]["containers"].as_array_mut() {
            cs.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        }
    };
    assert_same_objects(
        rendered,
        overlay_objects(),
        containers_by_name,
        "the chart (provisioner: strata) and the overlay",
    );
}

#[test]
fn helm_renders_the_sidecars_for_any_other_provisioner_value() {
    // Go templates have no enum check: anything but "strata" is the sidecar variant,
    // which the chart's comment documents; pin that so a change is deliberate.
    let mut values = chart_values(&chart()).unwrap();
    values["provisioner"] = json!("sidecar");
    let cs = containers(&daemonset(&helm(&chart(), &values, NAMESPACE).unwrap()));
    assert!(cs.contains_key("csi-provisioner") && !cs.contains_key("strata-provisioner"));
}

#[test]
fn strategic_merge_deletes_merges_and_appends_by_name() {
    let mut target = json!({"spec": {"containers": [
        {"name": "a", "image": "x", "args": ["1"]},
        {"name": "b", "image": "y"},
    ], "keep": 1}});
    strata_deploy_check::strategic_merge(
        &mut target,
        &json!({"spec": {"containers": [
            {"name": "b", "$patch": "delete"},
            {"name": "a", "args": ["2"]},
            {"name": "c", "image": "z"},
        ]}}),
    );
    assert_eq!(
        target,
        json!({"spec": {"containers": [
            {"name": "a", "image": "x", "args": ["2"]},
            {"name": "c", "image": "z"},
        ], "keep": 1}})
    );
}

#[test]
fn helm_values_reach_the_objects() {
    let mut values = chart_values(&chart()).unwrap();
    values["image"]["repository"] = json!("registry.example/strata-csi");
    values["image"]["tag"] = json!("1.2.3");
    values["kubeletDir"] = json!("/var/lib/k0s/kubelet");
    values["pools"] = json!([
        {"name": "fast", "kind": "image", "path": "/mnt/nvme/strata"},
        {"name": "bulk", "kind": "image", "path": "/mnt/hdd/strata"},
    ]);
    values["nodeSelector"] = json!({"strata.io/storage": "true"});
    values["tolerations"] = json!([]);
    values["resources"]["driver"] = json!({"limits": {"memory": "1Gi"}});
    values["metricsPort"] = json!(9999);
    let objects = helm(&chart(), &values, "storage").unwrap();
    let ds = daemonset(&objects);
    let spec = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(ds.metadata.namespace.as_deref(), Some("storage"));
    assert_eq!(
        spec.node_selector,
        Some(BTreeMap::from([(
            "strata.io/storage".into(),
            "true".into()
        )]))
    );
    assert_eq!(spec.tolerations, Some(vec![]));
    let cs = containers(&ds);
    let driver = &cs["strata-csi"];
    assert_eq!(
        driver.image.as_deref(),
        Some("registry.example/strata-csi:1.2.3")
    );
    assert_eq!(
        flag(driver, "metrics-address").as_deref(),
        Some("0.0.0.0:9999")
    );
    let memory = &driver.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"];
    assert_eq!(memory.0, "1Gi");
    let pools: Vec<_> = args(driver)
        .into_iter()
        .filter(|a| a.starts_with("--pool="))
        .collect();
    assert_eq!(
        pools,
        [
            "--pool=fast=image:/mnt/nvme/strata",
            "--pool=bulk=image:/mnt/hdd/strata"
        ]
    );
    assert_eq!(host_path(&ds, "pool-bulk"), "/mnt/hdd/strata");
    assert_eq!(mount(driver, "pool-fast").mount_path, "/mnt/nvme/strata");
    assert_eq!(
        mount(driver, "kubelet-dir").mount_path,
        "/var/lib/k0s/kubelet"
    );
    assert_eq!(
        flag(&cs["node-driver-registrar"], "kubelet-registration-path").as_deref(),
        Some("/var/lib/k0s/kubelet/plugins/local.csi.strata.io/csi.sock")
    );
    // Bindings follow the release namespace, so the account still gets its rules.
    let granted = rbac::granted(&objects, "storage", "strata-node").unwrap();
    assert!(rbac::allows(
        &granted,
        Some("storage"),
        "storage.k8s.io",
        "csistoragecapacities",
        "create"
    ));
}

/// The kubernetes-csi sidecar binaries in `STRATA_SIDECARS` (a directory holding them by
/// their plain names, built outside this repository: docs/cluster.md); None, said on
/// stderr, when it is not set.
fn sidecars_dir(test: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os("STRATA_SIDECARS") {
        Some(d) => Some(d.into()),
        None => {
            eprintln!(
                "SKIPPED {test}: STRATA_SIDECARS does not name a directory of kubernetes-csi sidecar binaries"
            );
            None
        }
    }
}

/// What a sidecar binary says its version is (`--version`), if it says.
fn sidecar_version(bin: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .map(str::to_string)
}

/// Every sidecar of every install variant parses the flags the manifests give it: a flag
/// the sidecar does not know, or a value it refuses, would crash-loop the DaemonSet's pod
/// in a cluster. Each sidecar runs with the container's args (`$(VAR)` given a value) and
/// `--help`, which parses them and exits before connecting anywhere.
#[test]
fn the_sidecars_accept_the_manifests_flags() {
    const TEST: &str = "the_sidecars_accept_the_manifests_flags";
    let Some(dir) = sidecars_dir(TEST) else {
        return;
    };
    let refused = [
        "unknown flag",
        "unknown shorthand flag",
        "flag provided but not defined",
        "invalid argument",
        "invalid value",
        "bad flag syntax",
    ];
    let mut checked = 0;
    for (variant, objects) in [
        ("kustomize", kustomize_objects()),
        ("overlays/strata-provisioner", overlay_objects()),
    ] {
        for c in containers(&daemonset(&objects)).values() {
            let image = c.image.clone().unwrap_or_default();
            let Some(rest) = image.strip_prefix("registry.k8s.io/sig-storage/") else {
                continue;
            };
            let (name, pinned) = rest.split_once(':').unwrap_or((rest, "?"));
            let bin = dir.join(name);
            assert!(
                bin.is_file(),
                "{TEST}: {} has no {name} (the manifests run {image})",
                dir.display()
            );
            let found = sidecar_version(&bin).unwrap_or_else(|| "an unknown version".into());
            let args: Vec<String> = args(c)
                .iter()
                .map(|a| a.replace("$(NAMESPACE)", "strata-system"))
                .collect();
            let out = std::process::Command::new(&bin)
                .args(&args)
                .arg("--help")
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
            let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
            let first = text.lines().next().unwrap_or("");
            assert!(
                !refused.iter().any(|r| first.contains(r)),
                "{variant}: {name} {found} (the manifests pin {pinned}) refuses the args {args:?}: {first}"
            );
            eprintln!("{variant}: {name} {found} (pinned {pinned}) accepts {args:?}");
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} sidecars found in the manifests"
    );
}
