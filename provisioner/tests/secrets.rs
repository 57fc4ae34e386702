//! The CSI secret parameters of StorageClasses and VolumeSnapshotClasses, end to end: the
//! loops in-process against an embedded store and a recording fake driver on a unix
//! socket, which answers like a driver that keeps nothing and notes the `secrets` of
//! every call. No root needed: nothing is mounted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csi_proto as pb;
use csi_proto::tonic::{self, Request, Response, Status};
use serde_json::{Value, json};
use strata_provisioner::k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Secret,
};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_provisioner::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use strata_provisioner::{Config, CsiClient, Running};
use strata_store::snapshot::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};
use strata_store::{EmbeddedStore, Object, Preconditions, Store};

mod common;

const DRIVER: &str = "secrets.csi.test";
const DEADLINE: Duration = Duration::from_secs(60);

/// One CSI call as the fake saw it: the RPC, the object it was about and its secrets.
#[derive(Debug, Clone)]
struct Call {
    rpc: &'static str,
    /// The volume's or the snapshot's name or id.
    subject: String,
    secrets: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct FakeDriver {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Fail the first CreateVolume of each name (INTERNAL), so error paths run too.
    fail_first_create: bool,
}

impl FakeDriver {
    fn note(&self, rpc: &'static str, subject: &str, secrets: &HashMap<String, String>) {
        self.calls.lock().unwrap().push(Call {
            rpc,
            subject: subject.to_string(),
            secrets: secrets.clone(),
        });
    }

    fn calls(&self, rpc: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.rpc == rpc)
            .cloned()
            .collect()
    }
}

/// The answer of the fake's RPCs these tests never reach (the provisioner does not call
/// them for the flows here); a call would fail its test loudly with UNIMPLEMENTED.
fn unimplemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc} is not part of the fake"
    )))
}

#[tonic::async_trait]
impl pb::identity_server::Identity for FakeDriver {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: DRIVER.into(),
            vendor_version: "0".into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        use pb::plugin_capability::{Service, Type, service};
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: vec![pb::PluginCapability {
                r#type: Some(Type::Service(Service {
                    r#type: service::Type::ControllerService as i32,
                })),
            }],
        }))
    }

    async fn probe(
        &self,
        _: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        Ok(Response::new(pb::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for FakeDriver {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        let first = self
            .calls("CreateVolume")
            .iter()
            .all(|c| c.subject != r.name);
        self.note("CreateVolume", &r.name, &r.secrets);
        if self.fail_first_create && first {
            return Err(Status::internal("the fake fails a first attempt"));
        }
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: r.capacity_range.map_or(0, |c| c.required_bytes),
                volume_id: r.name,
                ..Default::default()
            }),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        self.note("DeleteVolume", &r.volume_id, &r.secrets);
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume")
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume")
    }

    async fn validate_volume_capabilities(
        &self,
        _: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        unimplemented("ValidateVolumeCapabilities")
    }

    async fn list_volumes(
        &self,
        _: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        unimplemented("ListVolumes")
    }

    async fn get_capacity(
        &self,
        _: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        unimplemented("GetCapacity")
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use pb::controller_service_capability::{Rpc, Type, rpc};
        let cap = |t: rpc::Type| pb::ControllerServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                cap(rpc::Type::CreateDeleteVolume),
                cap(rpc::Type::ExpandVolume),
                cap(rpc::Type::CreateDeleteSnapshot),
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let r = req.into_inner();
        self.note("CreateSnapshot", &r.name, &r.secrets);
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(pb::Snapshot {
                size_bytes: 1 << 20,
                snapshot_id: r.name,
                source_volume_id: r.source_volume_id,
                creation_time: Some(csi_proto::prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                ready_to_use: true,
                group_snapshot_id: String::new(),
            }),
        }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let r = req.into_inner();
        self.note("DeleteSnapshot", &r.snapshot_id, &r.secrets);
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        // Every id names a ready snapshot: enough for a pre-provisioned content.
        let r = req.into_inner();
        self.note("ListSnapshots", &r.snapshot_id, &r.secrets);
        Ok(Response::new(pb::ListSnapshotsResponse {
            entries: vec![pb::list_snapshots_response::Entry {
                snapshot: Some(pb::Snapshot {
                    size_bytes: 1 << 20,
                    snapshot_id: r.snapshot_id,
                    ready_to_use: true,
                    ..Default::default()
                }),
            }],
            next_token: String::new(),
        }))
    }

    async fn get_snapshot(
        &self,
        _: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        unimplemented("GetSnapshot")
    }

    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        self.note("ControllerExpandVolume", &r.volume_id, &r.secrets);
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: r.capacity_range.map_or(0, |c| c.required_bytes),
            node_expansion_required: false,
        }))
    }

    async fn controller_get_volume(
        &self,
        _: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        unimplemented("ControllerGetVolume")
    }

    async fn controller_modify_volume(
        &self,
        _: Request<pb::ControllerModifyVolumeRequest>,
    ) -> Result<Response<pb::ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume")
    }
}

/// The fake on a socket, an embedded store and the loops. Field order is drop order.
struct Harness {
    store: EmbeddedStore,
    running: Option<Running>,
    driver: FakeDriver,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Serves `driver` on `dir/csi.sock`; returns its endpoint.
fn serve(driver: &FakeDriver, dir: &Path) -> (String, tokio::task::JoinHandle<()>) {
    let socket = dir.join("csi.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    });
    let d = driver.clone();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::identity_server::IdentityServer::new(d.clone()))
            .add_service(pb::controller_server::ControllerServer::new(d))
            .serve_with_incoming(incoming)
            .await
            .expect("fake driver serves");
    });
    (format!("unix://{}", socket.display()), server)
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(FakeDriver::default()).await
    }

    async fn start_with(driver: FakeDriver) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let (endpoint, server) = serve(&driver, dir.path());
        let store = EmbeddedStore::open(&dir.path().join("state")).expect("open store");
        let mut config = Config::new("node-1");
        config.retry_start = Duration::from_millis(100);
        config.retry_max = Duration::from_secs(1);
        let csi = CsiClient::new(&endpoint, config.csi_timeout).expect("client");
        let running = strata_provisioner::start(store.clone(), csi, config)
            .await
            .expect("start loops");
        assert_eq!(running.driver().await.name, DRIVER);
        Harness {
            store,
            running: Some(running),
            driver,
            server,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.server.abort();
    }

    async fn apply<K: Object>(&self, v: Value) -> K {
        let obj: K = serde_json::from_value(v).expect("object json");
        self.store.create(&obj).await.expect("create")
    }

    async fn delete<K: Object>(&self, ns: &str, name: &str) {
        self.store
            .delete::<K>(ns, name, Preconditions::default())
            .await
            .expect("delete");
    }

    /// The calls of `rpc` about `subject`, once there is at least one.
    async fn called(&self, rpc: &'static str, subject: &str) -> Vec<Call> {
        eventually(&format!("{rpc} of {subject}"), || async {
            let calls: Vec<Call> = self
                .driver
                .calls(rpc)
                .into_iter()
                .filter(|c| c.subject == subject)
                .collect();
            (!calls.is_empty()).then_some(calls)
        })
        .await
    }

    /// Waits for an event on `kind` `default/name` with `reason` whose message holds
    /// `needle`; returns that message.
    async fn event(&self, kind: &str, name: &str, reason: &str, needle: &str) -> String {
        eventually(
            &format!("{reason} event on {name} with {needle:?}"),
            || async {
                let evs = self.store.events_for(kind, "default", name).await.ok()?;
                evs.iter()
                    .filter(|e| e.reason.as_deref() == Some(reason))
                    .filter_map(|e| e.message.clone())
                    .find(|m| m.contains(needle))
            },
        )
        .await
    }

    async fn bound(&self, name: &str) -> PersistentVolume {
        let pvc: PersistentVolumeClaim = eventually(&format!("claim {name} Bound"), || async {
            let c: PersistentVolumeClaim = self.store.get("default", name).await.ok()?;
            (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(c)
        })
        .await;
        let pv = pvc.spec.unwrap().volume_name.unwrap();
        self.store.get("", &pv).await.expect("the bound PV")
    }
}

async fn eventually<T, F, Fut>(what: &str, cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    testkit::eventually(what, DEADLINE, cond).await
}

fn class(name: &str, params: Value) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": DRIVER,
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": true,
        "parameters": params
    })
}

fn claim(name: &str, class: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "resources": {"requests": {"storage": "1Gi"}}
        }
    })
}

fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "stringData": data
    })
}

fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn secret_ref(
    r: Option<strata_provisioner::k8s_openapi::api::core::v1::SecretReference>,
) -> (String, String) {
    let r = r.expect("a secret reference");
    (r.name.unwrap_or_default(), r.namespace.unwrap_or_default())
}

/// Grows a claim's request, retrying on conflict (the binder writes claims too).
async fn grow(h: &Harness, name: &str, size: &str) {
    for _ in 0..20 {
        let mut c: PersistentVolumeClaim = h.store.get("default", name).await.expect("claim");
        c.spec
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert("storage".into(), Quantity(size.into()));
        match h.store.update(&c).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("growing {name}: {e}"),
        }
    }
    panic!("growing {name}: conflicts every time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_secrets_reach_create_expand_and_delete_and_the_pv_names_them() {
    let h = Harness::start().await;
    h.apply::<Secret>(secret(
        "data-prov",
        &[("user", "admin"), ("password", "hunter2")],
    ))
    .await;
    h.apply::<Secret>(secret("data-grow", &[("token", "grow-token")]))
        .await;
    h.apply::<StorageClass>(class(
        "secret",
        json!({
            "pool": "p1",
            "csi.storage.k8s.io/provisioner-secret-name": "${pvc.name}-prov",
            "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
            "csi.storage.k8s.io/node-publish-secret-name": "${pvc.annotations['example.com/key']}",
            "csi.storage.k8s.io/node-publish-secret-namespace": "${pvc.namespace}",
            "csi.storage.k8s.io/node-stage-secret-name": "stage-${pv.name}",
            "csi.storage.k8s.io/node-stage-secret-namespace": "default",
            "csi.storage.k8s.io/controller-expand-secret-name": "${pvc.name}-grow",
            "csi.storage.k8s.io/controller-expand-secret-namespace": "${pvc.namespace}"
        }),
    ))
    .await;
    h.apply::<PersistentVolumeClaim>(claim(
        "data",
        "secret",
        json!({"example.com/key": "publish-key"}),
    ))
    .await;
    let pv = h.bound("data").await;
    let pv_name = pv.metadata.name.clone().unwrap();

    let created = h.called("CreateVolume", &pv_name).await;
    assert_eq!(
        created[0].secrets,
        map(&[("user", "admin"), ("password", "hunter2")]),
        "CreateVolume gets the provisioner secret's data"
    );
    let ann = pv.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann["volume.kubernetes.io/provisioner-deletion-secret-name"],
        "data-prov"
    );
    assert_eq!(
        ann["volume.kubernetes.io/provisioner-deletion-secret-namespace"],
        "default"
    );
    let csi = pv.spec.clone().unwrap().csi.unwrap();
    assert_eq!(
        secret_ref(csi.node_publish_secret_ref),
        ("publish-key".into(), "default".into())
    );
    assert_eq!(
        secret_ref(csi.node_stage_secret_ref),
        (format!("stage-{pv_name}"), "default".into())
    );
    assert_eq!(
        secret_ref(csi.controller_expand_secret_ref),
        ("data-grow".into(), "default".into())
    );
    assert!(csi.controller_publish_secret_ref.is_none() && csi.node_expand_secret_ref.is_none());

    grow(&h, "data", "2Gi").await;
    let expanded = h.called("ControllerExpandVolume", &pv_name).await;
    assert_eq!(expanded[0].secrets, map(&[("token", "grow-token")]));

    h.delete::<PersistentVolumeClaim>("default", "data").await;
    let deleted = h.called("DeleteVolume", &pv_name).await;
    assert_eq!(
        deleted[0].secrets,
        map(&[("user", "admin"), ("password", "hunter2")]),
        "DeleteVolume gets the secret the PV recorded"
    );
    eventually("PV gone", || async {
        match h.store.get::<PersistentVolume>("", &pv_name).await {
            Err(e) if e.is_not_found() => Some(()),
            _ => None,
        }
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_provisioner_secret_fails_provisioning_until_it_exists() {
    let h = Harness::start().await;
    h.apply::<StorageClass>(class(
        "secret",
        json!({
            "csi.storage.k8s.io/provisioner-secret-name": "late",
            "csi.storage.k8s.io/provisioner-secret-namespace": "default"
        }),
    ))
    .await;
    h.apply::<PersistentVolumeClaim>(claim("data", "secret", json!({})))
        .await;
    let msg = h
        .event(
            "PersistentVolumeClaim",
            "data",
            "ProvisioningFailed",
            "error getting secret late in namespace default",
        )
        .await;
    assert!(msg.contains("not found"), "{msg}");
    // Nothing half-made: the driver was never asked, no PV exists.
    assert!(h.driver.calls("CreateVolume").is_empty());
    let pvs = h.store.list::<PersistentVolume>(None, None).await.unwrap();
    assert!(pvs.items.is_empty(), "no PV before the secret exists");

    h.apply::<Secret>(secret("late", &[("key", "value")])).await;
    let pv = h.bound("data").await;
    let created = h
        .called("CreateVolume", pv.metadata.name.as_deref().unwrap())
        .await;
    assert_eq!(
        created.len(),
        1,
        "one CreateVolume, once the secret was there"
    );
    assert_eq!(created[0].secrets, map(&[("key", "value")]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_secret_parameters_are_provisioning_failures() {
    let h = Harness::start().await;
    h.apply::<StorageClass>(class(
        "half",
        json!({"csi.storage.k8s.io/provisioner-secret-name": "s"}),
    ))
    .await;
    h.apply::<StorageClass>(class(
        "badtoken",
        json!({
            "csi.storage.k8s.io/node-stage-secret-name": "s",
            "csi.storage.k8s.io/node-stage-secret-namespace": "${pvc.name}"
        }),
    ))
    .await;
    h.apply::<StorageClass>(class(
        "badname",
        json!({
            "csi.storage.k8s.io/provisioner-secret-name": "${pvc.name}_x",
            "csi.storage.k8s.io/provisioner-secret-namespace": "default"
        }),
    ))
    .await;
    h.apply::<StorageClass>(class(
        "typo",
        json!({
            "csi.storage.k8s.io/provisioner-secrets-name": "s",
            "csi.storage.k8s.io/provisioner-secrets-namespace": "default"
        }),
    ))
    .await;
    h.apply::<PersistentVolumeClaim>(claim("d", "typo", json!({})))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("a", "half", json!({})))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("b", "badtoken", json!({})))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("c", "badname", json!({})))
        .await;
    h.event(
        "PersistentVolumeClaim",
        "a",
        "ProvisioningFailed",
        "either name and namespace for Provisioner secrets specified, Both must be specified",
    )
    .await;
    h.event(
        "PersistentVolumeClaim",
        "b",
        "ProvisioningFailed",
        "error resolving value \"${pvc.name}\": invalid tokens: [\"pvc.name\"]",
    )
    .await;
    h.event(
        "PersistentVolumeClaim",
        "c",
        "ProvisioningFailed",
        "\"${pvc.name}_x\" resolved to \"c_x\" which is not a valid secret name",
    )
    .await;
    // A misspelt key is not dropped silently: the class is refused, as upstream.
    h.event(
        "PersistentVolumeClaim",
        "d",
        "ProvisioningFailed",
        "found unknown parameter key \"csi.storage.k8s.io/provisioner-secrets-name\" with reserved namespace csi.storage.k8s.io/",
    )
    .await;
    assert!(h.driver.calls("CreateVolume").is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_secret_gone_by_delete_time_does_not_block_the_delete() {
    let h = Harness::start().await;
    h.apply::<Secret>(secret("prov", &[("k", "v")])).await;
    h.apply::<StorageClass>(class(
        "secret",
        json!({
            "csi.storage.k8s.io/provisioner-secret-name": "prov",
            "csi.storage.k8s.io/provisioner-secret-namespace": "default"
        }),
    ))
    .await;
    h.apply::<PersistentVolumeClaim>(claim("data", "secret", json!({})))
        .await;
    let pv = h.bound("data").await;
    let pv_name = pv.metadata.name.unwrap();
    assert_eq!(
        pv.metadata.annotations.unwrap()["volume.kubernetes.io/provisioner-deletion-secret-name"],
        "prov"
    );
    h.delete::<Secret>("default", "prov").await;
    h.delete::<PersistentVolumeClaim>("default", "data").await;
    let deleted = h.called("DeleteVolume", &pv_name).await;
    assert!(
        deleted[0].secrets.is_empty(),
        "deleted without secrets, as upstream"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_without_the_annotations_is_deleted_with_its_class_secret() {
    let h = Harness::start().await;
    h.apply::<Secret>(secret("old-prov", &[("k", "from-class")]))
        .await;
    h.apply::<StorageClass>(class(
        "secret",
        json!({
            "csi.storage.k8s.io/provisioner-secret-name": "${pvc.name}-prov",
            "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}"
        }),
    ))
    .await;
    // As a provisioner that predates the annotations left it.
    h.apply::<PersistentVolume>(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "old-pv", "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "secret",
            "csi": {"driver": DRIVER, "volumeHandle": "old-handle"},
            "claimRef": {"namespace": "default", "name": "old"}
        }
    }))
    .await;
    let mut c = claim("old", "secret", json!({}));
    c["spec"]["volumeName"] = json!("old-pv");
    h.apply::<PersistentVolumeClaim>(c).await;
    h.bound("old").await;
    h.delete::<PersistentVolumeClaim>("default", "old").await;
    let deleted = h.called("DeleteVolume", "old-handle").await;
    assert_eq!(
        deleted[0].secrets,
        map(&[("k", "from-class")]),
        "the class's provisioner secret, resolved with the claim reference"
    );
    h.stop().await;
}

fn snapshot_class(name: &str, params: Value) -> Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": name},
        "driver": DRIVER, "deletionPolicy": "Delete",
        "parameters": params
    })
}

fn snapshot(name: &str, claim: &str, class: &str) -> Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"source": {"persistentVolumeClaimName": claim}, "volumeSnapshotClassName": class}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshotter_secrets_reach_create_and_delete_snapshot() {
    let h = Harness::start().await;
    h.apply::<StorageClass>(class("plain", json!({}))).await;
    h.apply::<PersistentVolumeClaim>(claim("data", "plain", json!({})))
        .await;
    h.bound("data").await;
    h.apply::<VolumeSnapshotClass>(snapshot_class(
        "snaps",
        json!({
            "keep": "me",
            "csi.storage.k8s.io/snapshotter-secret-name": "${volumesnapshot.name}-snap",
            "csi.storage.k8s.io/snapshotter-secret-namespace": "${volumesnapshot.namespace}"
        }),
    ))
    .await;
    h.apply::<Secret>(secret("s1-snap", &[("snapkey", "snapvalue")]))
        .await;
    h.apply::<VolumeSnapshot>(snapshot("s1", "data", "snaps"))
        .await;
    let s1: VolumeSnapshot = eventually("snapshot s1 ready", || async {
        let s: VolumeSnapshot = h.store.get("default", "s1").await.ok()?;
        (s.status.as_ref()?.ready_to_use == Some(true)).then_some(s)
    })
    .await;
    let content_name = s1
        .status
        .unwrap()
        .bound_volume_snapshot_content_name
        .unwrap();
    let content: VolumeSnapshotContent = h.store.get("", &content_name).await.unwrap();
    let ann = content.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann["snapshot.storage.kubernetes.io/deletion-secret-name"],
        "s1-snap"
    );
    assert_eq!(
        ann["snapshot.storage.kubernetes.io/deletion-secret-namespace"],
        "default"
    );
    let csi_name = format!("snapshot-{}", s1.metadata.uid.as_deref().unwrap());
    let created = h.called("CreateSnapshot", &csi_name).await;
    assert_eq!(created[0].secrets, map(&[("snapkey", "snapvalue")]));

    // A snapshot whose secret does not exist yet: an error on it, then success.
    h.apply::<VolumeSnapshot>(snapshot("s2", "data", "snaps"))
        .await;
    eventually("snapshot s2 reports the missing secret", || async {
        let s: VolumeSnapshot = h.store.get("default", "s2").await.ok()?;
        let msg = s.status?.error?.message?;
        msg.contains("cannot get credentials for snapshot content")
            .then_some(())
    })
    .await;
    assert!(
        h.driver
            .calls("CreateSnapshot")
            .iter()
            .all(|c| c.subject == csi_name),
        "no CreateSnapshot for s2 without its secret"
    );
    h.apply::<Secret>(secret("s2-snap", &[("other", "x")]))
        .await;
    eventually("snapshot s2 ready", || async {
        let s: VolumeSnapshot = h.store.get("default", "s2").await.ok()?;
        (s.status.as_ref()?.ready_to_use == Some(true)).then_some(())
    })
    .await;

    h.delete::<VolumeSnapshot>("default", "s1").await;
    let deleted = h.called("DeleteSnapshot", &csi_name).await;
    assert_eq!(deleted[0].secrets, map(&[("snapkey", "snapvalue")]));
    eventually("content gone", || async {
        match h
            .store
            .get::<VolumeSnapshotContent>("", &content_name)
            .await
        {
            Err(e) if e.is_not_found() => Some(()),
            _ => None,
        }
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_provisioned_content_is_listed_with_the_snapshotter_list_secret() {
    let h = Harness::start().await;
    h.apply::<VolumeSnapshotClass>(snapshot_class(
        "listed",
        json!({
            "csi.storage.k8s.io/snapshotter-list-secret-name": "list-${volumesnapshotcontent.name}",
            "csi.storage.k8s.io/snapshotter-list-secret-namespace": "default"
        }),
    ))
    .await;
    h.apply::<VolumeSnapshotContent>(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": "pre"},
        "spec": {"deletionPolicy": "Retain", "driver": DRIVER, "source": {"snapshotHandle": "handle-1"},
                 "volumeSnapshotClassName": "listed",
                 "volumeSnapshotRef": {"name": "pre-snap", "namespace": "default"}}
    }))
    .await;
    h.apply::<VolumeSnapshot>(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "pre-snap", "namespace": "default"},
        "spec": {"source": {"volumeSnapshotContentName": "pre"}}
    }))
    .await;
    // Not there yet: the content says so and the driver is not asked.
    eventually("content pre reports the missing list secret", || async {
        let c: VolumeSnapshotContent = h.store.get("", "pre").await.ok()?;
        let msg = c.status?.error?.message?;
        msg.contains("error getting secret list-pre in namespace default")
            .then_some(())
    })
    .await;
    assert!(h.driver.calls("ListSnapshots").is_empty());
    h.apply::<Secret>(secret("list-pre", &[("lister", "yes")]))
        .await;
    eventually("snapshot pre-snap ready", || async {
        let s: VolumeSnapshot = h.store.get("default", "pre-snap").await.ok()?;
        (s.status.as_ref()?.ready_to_use == Some(true)).then_some(())
    })
    .await;
    let listed = h.called("ListSnapshots", "handle-1").await;
    assert_eq!(listed[0].secrets, map(&[("lister", "yes")]));
    h.stop().await;
}

/// The real `strata-provisioner` binary at trace level, through every call that carries a
/// secret and the paths that fail: the secret values reach the driver and never its log
/// or an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_logged() {
    const MARK: &str = "s3cr3t-MARK-9c2d";
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = FakeDriver {
        fail_first_create: true,
        ..Default::default()
    };
    let (endpoint, server) = serve(&driver, dir.path());
    let state = dir.path().join("state");
    let store = EmbeddedStore::open(&state).expect("open store");
    let log = dir.path().join("provisioner.log");
    let mut provisioner = common::Provisioner::spawn_with_env(
        &state,
        &endpoint,
        "node-1",
        log.clone(),
        &[],
        &[("RUST_LOG", "trace")],
    );
    let h = Harness {
        store,
        running: None,
        driver,
        server,
        _dir: dir,
    };
    for name in ["prov", "grow", "snap"] {
        h.apply::<Secret>(secret(name, &[("password", MARK), (MARK, "as a key too")]))
            .await;
    }
    h.apply::<StorageClass>(class(
        "secret",
        json!({
            "csi.storage.k8s.io/provisioner-secret-name": "prov",
            "csi.storage.k8s.io/provisioner-secret-namespace": "default",
            "csi.storage.k8s.io/controller-expand-secret-name": "grow",
            "csi.storage.k8s.io/controller-expand-secret-namespace": "default"
        }),
    ))
    .await;
    h.apply::<StorageClass>(class(
        "missing",
        json!({
            "csi.storage.k8s.io/provisioner-secret-name": "absent",
            "csi.storage.k8s.io/provisioner-secret-namespace": "default"
        }),
    ))
    .await;
    h.apply::<PersistentVolumeClaim>(claim("data", "secret", json!({})))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("stuck", "missing", json!({})))
        .await;
    let pv_name = h.bound("data").await.metadata.name.unwrap();
    h.event(
        "PersistentVolumeClaim",
        "data",
        "ProvisioningFailed",
        "the fake fails a first attempt",
    )
    .await;
    h.event(
        "PersistentVolumeClaim",
        "stuck",
        "ProvisioningFailed",
        "error getting secret absent",
    )
    .await;
    grow(&h, "data", "2Gi").await;
    h.apply::<VolumeSnapshotClass>(snapshot_class(
        "snaps",
        json!({
            "csi.storage.k8s.io/snapshotter-secret-name": "snap",
            "csi.storage.k8s.io/snapshotter-secret-namespace": "default"
        }),
    ))
    .await;
    h.apply::<VolumeSnapshot>(snapshot("s1", "data", "snaps"))
        .await;
    let s1: VolumeSnapshot = eventually("snapshot s1 ready", || async {
        let s: VolumeSnapshot = h.store.get("default", "s1").await.ok()?;
        (s.status.as_ref()?.ready_to_use == Some(true)).then_some(s)
    })
    .await;
    let csi_snapshot = format!("snapshot-{}", s1.metadata.uid.as_deref().unwrap());
    h.delete::<VolumeSnapshot>("default", "s1").await;
    h.called("DeleteSnapshot", &csi_snapshot).await;
    h.delete::<PersistentVolumeClaim>("default", "data").await;
    h.called("DeleteVolume", &pv_name).await;

    // The values did go through the process, on every call that carries them.
    for (rpc, subject) in [
        ("CreateVolume", pv_name.as_str()),
        ("ControllerExpandVolume", pv_name.as_str()),
        ("DeleteVolume", pv_name.as_str()),
        ("CreateSnapshot", csi_snapshot.as_str()),
        ("DeleteSnapshot", csi_snapshot.as_str()),
    ] {
        let calls = h.called(rpc, subject).await;
        assert!(
            calls
                .iter()
                .all(|c| c.secrets.get("password").map(String::as_str) == Some(MARK)),
            "{rpc} carried the secret"
        );
    }
    let status = provisioner.terminate();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("CreateVolume failed") && text.contains("provisioned"),
        "the log holds the debug lines of the work:\n{text}"
    );
    assert!(!text.contains(MARK), "a secret in the log:\n{text}");
    let events = h
        .store
        .list::<strata_provisioner::k8s_openapi::api::core::v1::Event>(None, None)
        .await
        .expect("events");
    assert!(!events.items.is_empty());
    for e in &events.items {
        let msg = e.message.as_deref().unwrap_or_default();
        assert!(!msg.contains(MARK), "a secret in an event: {msg}");
    }
    h.stop().await;
}
