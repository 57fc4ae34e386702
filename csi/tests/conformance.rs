//! CSI v1.12 conformance of `strata-csi`, black-box over its unix socket.
//!
//! Every RPC: its success path, its idempotent repeat, and each error code the spec mandates
//! (`container-storage-interface/spec: spec.md`, summarised in the k8s-semantics §5-§6). Each
//! test collects all broken rules in a [`Checks`] and reports them together, naming the rule.
//! Runs with every capability the driver advertises: advertising is taken as a promise.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;

const R_INVALID: &str = "CSI §Error Scheme: missing/invalid field → INVALID_ARGUMENT";
const R_128: &str = "CSI §Size Limits: strings ≤ 128 bytes; larger → INVALID_ARGUMENT";
const R_4K: &str = "CSI §Size Limits: maps ≤ 4 KiB; larger → INVALID_ARGUMENT";
const R_IDS: &str =
    "ARCHITECTURE.md invariants: ids validated (charset, no traversal) → INVALID_ARGUMENT";

fn long(n: usize) -> String {
    "a".repeat(n)
}

/// A map over 4 KiB made of short, valid keys and values.
fn big_map() -> std::collections::HashMap<String, String> {
    (0..48)
        .map(|i| (format!("key{i:02}"), "v".repeat(100)))
        .collect()
}

fn xfs_snw() -> VolumeCapability {
    mount_cap("xfs", Mode::SingleNodeWriter)
}

fn cap_mode(m: Mode) -> VolumeCapability {
    mount_cap("ext4", m)
}

// ---------------------------------------------------------------- Identity

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_rpcs() {
    if !testkit::require_root("identity_rpcs") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("identity_rpcs");
    let rule = "CSI GetPluginInfo: name and vendor_version REQUIRED; name ≤ 63, DNS-like";
    let info = c
        .ok(
            "GetPluginInfo",
            rule,
            env.ident.get_plugin_info(GetPluginInfoRequest {}).await,
        )
        .unwrap_or_default();
    c.check(
        "GetPluginInfo name",
        rule,
        info.name == DEFAULT_DRIVER_NAME,
        &info.name,
    );
    c.check(
        "GetPluginInfo vendor_version",
        rule,
        !info.vendor_version.is_empty(),
        &info.vendor_version,
    );
    let again = env.ident.get_plugin_info(GetPluginInfoRequest {}).await;
    c.check(
        "GetPluginInfo repeat",
        "RPCs are idempotent",
        again
            .as_ref()
            .map(|r| r.get_ref() == &info)
            .unwrap_or(false),
        again.map(|r| r.into_inner()),
    );

    let caps = c
        .ok(
            "GetPluginCapabilities",
            "CSI GetPluginCapabilities",
            env.ident
                .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
                .await,
        )
        .unwrap_or_default();
    use plugin_capability::{Type as PT, service, volume_expansion};
    let services: HashSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(PT::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    let expansion: HashSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(PT::VolumeExpansion(e)) => Some(e.r#type),
            _ => None,
        })
        .collect();
    for want in [
        service::Type::ControllerService,
        service::Type::VolumeAccessibilityConstraints,
        service::Type::GroupControllerService,
    ] {
        c.check(
            &format!("plugin capability {want:?}"),
            "driver contract: advertises CONTROLLER_SERVICE, VOLUME_ACCESSIBILITY_CONSTRAINTS, GROUP_CONTROLLER_SERVICE",
            services.contains(&(want as i32)),
            &services,
        );
    }
    c.check(
        "plugin capability VolumeExpansion ONLINE",
        "driver contract: online expansion",
        expansion.contains(&(volume_expansion::Type::Online as i32)),
        &expansion,
    );

    let probe = c.ok(
        "Probe",
        "CSI Probe: healthy → OK",
        env.ident.probe(ProbeRequest {}).await,
    );
    if let Some(p) = probe {
        c.check(
            "Probe ready",
            "CSI Probe: ready absent or true once serving",
            p.ready.is_none_or(|b| b),
            p.ready,
        );
    }
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_name_flag_is_reported() {
    if !testkit::require_root("driver_name_flag_is_reported") {
        return;
    }
    let pool = LoopPool::dir();
    let config = DriverConfig::new(BIN, NODE)
        .pool(POOL, pool.path())
        .driver_name("other.csi.example.org");
    let driver = DriverProcess::start(config).await;
    let info = driver
        .identity()
        .await
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo")
        .into_inner();
    assert_eq!(
        info.name, "other.csi.example.org",
        "--driver-name is the plugin name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_checks_the_pools() {
    if !testkit::require_root("probe_checks_the_pools") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("probe_checks_the_pools");
    let aside = env.pool.root().join("moved-away");
    std::fs::rename(env.pool.path(), &aside).unwrap();
    c.code(
        "Probe with the pool dir gone",
        "CSI Probe: unhealthy / missing dependency → FAILED_PRECONDITION; driver contract: Probe really checks pools",
        env.ident.probe(ProbeRequest {}).await,
        Code::FailedPrecondition,
    );
    std::fs::rename(&aside, env.pool.path()).unwrap();
    c.ok(
        "Probe with the pool back",
        "CSI Probe: healthy → OK",
        env.ident.probe(ProbeRequest {}).await,
    );
    c.finish();
}

// ---------------------------------------------------------------- Socket and process

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0600_stale_socket_replaced_and_sigterm_exits_zero() {
    if !testkit::require_root("socket_is_0600_stale_socket_replaced_and_sigterm_exits_zero") {
        return;
    }
    let pool = LoopPool::dir();
    let config = DriverConfig::new(BIN, NODE).pool(POOL, pool.path());
    let mut driver = DriverProcess::start(config).await;
    let md = std::fs::symlink_metadata(driver.socket()).unwrap();
    assert!(md.file_type().is_socket(), "endpoint is a unix socket");
    assert_eq!(
        md.permissions().mode() & 0o777,
        0o600,
        "driver contract: the socket is created 0600"
    );

    // A crash leaves the socket file behind: the next start must replace it.
    driver.kill();
    assert!(driver.socket().exists(), "SIGKILL leaves the socket file");
    driver.restart(&[]).await;
    let mut ident = driver.identity().await;
    ident
        .probe(ProbeRequest {})
        .await
        .expect("Probe after replacing a stale socket");
    let mode = std::fs::metadata(driver.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the replacement socket is 0600 too");
    // An idle client connection (as a kubelet keeps) must not keep the driver alive.

    driver.signal(nix::sys::signal::Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| driver.wait_exit(WAIT));
    assert_eq!(
        status.code(),
        Some(0),
        "driver contract: SIGTERM → exit 0, got {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_rpcs() {
    if !testkit::require_root("sigterm_drains_in_flight_rpcs") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(256 << 20)).await;
    let vol = env.create("v", 64 * MIB).await;
    let staging = env.driver.mkdir("staging");
    // A stage (loop attach, mkfs, mount) is the slowest common RPC; SIGTERM it mid-way.
    let mut node = env.node.clone();
    let req = stage_req(&vol, &staging, snw());
    let rpc = tokio::spawn(async move { node.node_stage_volume(req).await });
    // Wait until the RPC is in the driver's hands: its loop device appears.
    let pool = env.pool.path().to_owned();
    tokio::task::block_in_place(|| {
        testkit::wait_for("stage to attach a loop device", WAIT, || {
            (!testkit::loops_backed_under(&pool).is_empty() || rpc.is_finished()).then_some(())
        })
    });
    env.driver.signal(nix::sys::signal::Signal::SIGTERM);
    let res = rpc.await.unwrap();
    assert!(
        res.is_ok(),
        "driver contract: SIGTERM drains in-flight RPCs, got {:?}",
        res.err().map(|s| show(&s))
    );
    let status = tokio::task::block_in_place(|| env.driver.wait_exit(WAIT));
    assert_eq!(status.code(), Some(0), "SIGTERM → exit 0, got {status}");
    assert!(mount_at(&staging).is_some(), "the drained stage completed");
}

// ---------------------------------------------------------------- Capabilities

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_cover_the_issue() {
    if !testkit::require_root("capabilities_cover_the_issue") {
        return;
    }
    use controller_service_capability::rpc::Type as C;
    use node_service_capability::rpc::Type as N;
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("capabilities_cover_the_issue");
    let ctl = env.controller_caps().await;
    for want in [
        C::CreateDeleteVolume,
        C::ListVolumes,
        C::GetCapacity,
        C::CreateDeleteSnapshot,
        C::ListSnapshots,
        C::CloneVolume,
        C::ExpandVolume,
        C::VolumeCondition,
        C::GetVolume,
        C::ModifyVolume,
    ] {
        c.check(
            &format!("controller capability {want:?}"),
            "driver contract: the controller RPCs listed there are advertised",
            ctl.contains(&(want as i32)),
            &ctl,
        );
    }
    // GET_SNAPSHOT is alpha in CSI 1.12: off by default (csi-sanity v5.4.0 refuses a
    // driver that advertises a capability it does not know), on with a flag.
    c.check(
        "controller capability GetSnapshot off by default",
        "issue 9: alpha capabilities are gated like the sidecars' alpha features",
        !ctl.contains(&(C::GetSnapshot as i32)),
        &ctl,
    );
    c.code(
        "GetSnapshot without --enable-alpha-capabilities",
        "CSI §Error Scheme: RPC not implemented → UNIMPLEMENTED",
        env.ctl
            .get_snapshot(GetSnapshotRequest {
                snapshot_id: "x".into(),
                ..Default::default()
            })
            .await,
        Code::Unimplemented,
    );
    let mut alpha = Env::with_config(PoolFs::Dir, "", &["--enable-alpha-capabilities"]).await;
    let alpha_caps = alpha.controller_caps().await;
    c.check(
        "controller capability GetSnapshot with --enable-alpha-capabilities",
        "issue 9: the alpha flag switches GET_SNAPSHOT on",
        alpha_caps.contains(&(C::GetSnapshot as i32)),
        &alpha_caps,
    );
    drop(alpha);
    let node = env.node_caps().await;
    for want in [
        N::StageUnstageVolume,
        N::GetVolumeStats,
        N::ExpandVolume,
        N::VolumeCondition,
        N::VolumeMountGroup,
    ] {
        c.check(
            &format!("node capability {want:?}"),
            "driver contract: the node RPCs listed there are advertised",
            node.contains(&(want as i32)),
            &node,
        );
    }
    let group = c
        .ok(
            "GroupControllerGetCapabilities",
            "GROUP_CONTROLLER_SERVICE advertised ⇒ GroupControllerGetCapabilities works",
            env.group
                .group_controller_get_capabilities(GroupControllerGetCapabilitiesRequest {})
                .await,
        )
        .unwrap_or_default();
    let has_group = group.capabilities.iter().any(|cap| {
        matches!(cap.r#type, Some(group_controller_service_capability::Type::Rpc(r))
            if r.r#type == group_controller_service_capability::rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32)
    });
    c.check(
        "group capability CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT",
        "driver contract: GroupController create/get/delete",
        has_group,
        &group,
    );

    // What is not advertised answers UNIMPLEMENTED, so that the CO does not retry.
    let unimplemented = "CSI §Error Scheme: RPC not implemented → UNIMPLEMENTED";
    if !ctl.contains(&(C::PublishUnpublishVolume as i32)) {
        c.code(
            "ControllerPublishVolume without PUBLISH_UNPUBLISH_VOLUME",
            unimplemented,
            env.ctl
                .controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: "x".into(),
                    node_id: NODE.into(),
                    volume_capability: Some(snw()),
                    ..Default::default()
                })
                .await,
            Code::Unimplemented,
        );
        c.code(
            "ControllerUnpublishVolume without PUBLISH_UNPUBLISH_VOLUME",
            unimplemented,
            env.ctl
                .controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                    volume_id: "x".into(),
                    node_id: NODE.into(),
                    ..Default::default()
                })
                .await,
            Code::Unimplemented,
        );
    }
    let plugin = env
        .ident
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .expect("GetPluginCapabilities")
        .into_inner();
    let metadata = plugin.capabilities.iter().any(|cap| {
        matches!(&cap.r#type, Some(plugin_capability::Type::Service(s))
            if s.r#type == plugin_capability::service::Type::SnapshotMetadataService as i32)
    });
    if !metadata {
        let mut sm = csi_proto::snapshot_metadata_client::SnapshotMetadataClient::new(
            env.driver.channel().await,
        );
        c.code(
            "GetMetadataAllocated without SNAPSHOT_METADATA_SERVICE",
            unimplemented,
            sm.get_metadata_allocated(GetMetadataAllocatedRequest {
                snapshot_id: "x".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.map(|_| ())),
            Code::Unimplemented,
        );
    }
    c.finish();
}

/// Every advertised capability is exercised once with a valid request: advertising a
/// capability whose RPC fails is worse than not advertising it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_capability_works() {
    if !testkit::require_root("every_advertised_capability_works") {
        return;
    }
    use controller_service_capability::rpc::Type as C;
    use node_service_capability::rpc::Type as N;
    let mut env = Env::with_config(
        PoolFs::Ext4(512 << 20),
        "",
        &["--enable-alpha-capabilities"],
    )
    .await;
    let mut c = Checks::new("every_advertised_capability_works");
    let rule = "capability advertised ⇒ its RPC works";
    let vol = env.create("cap-src", 64 * MIB).await;
    for cap in env.controller_caps().await {
        let what = format!("controller capability {:?}", C::try_from(cap));
        match C::try_from(cap) {
            Ok(C::CreateDeleteVolume) => {
                let v = env.create("cap-cd", 32 * MIB).await;
                let r = env
                    .ctl
                    .delete_volume(DeleteVolumeRequest {
                        volume_id: v.volume_id,
                        ..Default::default()
                    })
                    .await;
                c.ok(&what, rule, r);
            }
            Ok(C::PublishUnpublishVolume) | Ok(C::PublishReadonly) => {
                let readonly = cap == C::PublishReadonly as i32;
                let r = env
                    .ctl
                    .controller_publish_volume(ControllerPublishVolumeRequest {
                        volume_id: vol.volume_id.clone(),
                        node_id: NODE.into(),
                        volume_capability: Some(snw()),
                        readonly,
                        volume_context: vol.volume_context.clone(),
                        ..Default::default()
                    })
                    .await;
                c.ok(&format!("{what} publish"), rule, r);
                let r = env
                    .ctl
                    .controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                        volume_id: vol.volume_id.clone(),
                        node_id: NODE.into(),
                        ..Default::default()
                    })
                    .await;
                c.ok(&format!("{what} unpublish"), rule, r);
            }
            Ok(C::ListVolumes) | Ok(C::ListVolumesPublishedNodes) => {
                let r = env.ctl.list_volumes(ListVolumesRequest::default()).await;
                c.ok(&what, rule, r);
            }
            Ok(C::GetCapacity) => {
                let r = env
                    .ctl
                    .get_capacity(GetCapacityRequest {
                        volume_capabilities: vec![snw()],
                        parameters: params(&[("pool", POOL)]),
                        accessible_topology: None,
                    })
                    .await;
                c.ok(&what, rule, r);
            }
            Ok(C::CreateDeleteSnapshot) => {
                let r = env
                    .ctl
                    .create_snapshot(CreateSnapshotRequest {
                        name: "cap-snap".into(),
                        source_volume_id: vol.volume_id.clone(),
                        ..Default::default()
                    })
                    .await;
                if let Some(s) = c.ok(&what, rule, r).and_then(|r| r.snapshot) {
                    let r = env
                        .ctl
                        .delete_snapshot(DeleteSnapshotRequest {
                            snapshot_id: s.snapshot_id,
                            ..Default::default()
                        })
                        .await;
                    c.ok(&what, rule, r);
                }
            }
            Ok(C::ListSnapshots) => {
                let r = env
                    .ctl
                    .list_snapshots(ListSnapshotsRequest::default())
                    .await;
                c.ok(&what, rule, r);
            }
            Ok(C::GetSnapshot) => {
                let s = env.snapshot("cap-get", &vol.volume_id).await;
                let r = env
                    .ctl
                    .get_snapshot(GetSnapshotRequest {
                        snapshot_id: s.snapshot_id,
                        ..Default::default()
                    })
                    .await;
                c.ok(&what, rule, r);
            }
            Ok(C::CloneVolume) => {
                let mut req = create_req("cap-clone", 64 * MIB);
                req.volume_content_source = Some(volume_source(&vol.volume_id));
                let r = env.ctl.create_volume(req).await;
                c.ok(&what, rule, r);
            }
            Ok(C::ExpandVolume) => {
                let r = env
                    .ctl
                    .controller_expand_volume(ControllerExpandVolumeRequest {
                        volume_id: vol.volume_id.clone(),
                        capacity_range: Some(CapacityRange {
                            required_bytes: 80 * MIB,
                            limit_bytes: 0,
                        }),
                        volume_capability: Some(snw()),
                        ..Default::default()
                    })
                    .await;
                c.ok(&what, rule, r);
            }
            Ok(C::VolumeCondition) | Ok(C::GetVolume) => {
                let r = env
                    .ctl
                    .controller_get_volume(ControllerGetVolumeRequest {
                        volume_id: vol.volume_id.clone(),
                    })
                    .await;
                if let Some(r) = c.ok(&what, rule, r)
                    && cap == C::VolumeCondition as i32
                {
                    c.check(
                        &what,
                        "VOLUME_CONDITION ⇒ ControllerGetVolume returns status.volume_condition",
                        r.status.and_then(|s| s.volume_condition).is_some(),
                        "no volume_condition",
                    );
                }
            }
            Ok(C::SingleNodeMultiWriter) => {
                let mut req = create_req("cap-snmw", 32 * MIB);
                req.volume_capabilities = vec![cap_mode(Mode::SingleNodeMultiWriter)];
                let r = env.ctl.create_volume(req).await;
                c.ok(&what, rule, r);
            }
            Ok(C::ModifyVolume) => {
                let r = env
                    .ctl
                    .controller_modify_volume(ControllerModifyVolumeRequest {
                        volume_id: vol.volume_id.clone(),
                        mutable_parameters: params(&[("directIO", "true")]),
                        ..Default::default()
                    })
                    .await;
                c.ok(&what, rule, r);
            }
            Ok(C::Unknown) | Err(_) => c.fail(
                &what,
                "capabilities are values the spec defines",
                format!("unknown controller capability {cap}"),
            ),
        }
    }

    let staging = env.stage(&vol, "cap-staging", snw()).await;
    for cap in env.node_caps().await {
        let what = format!("node capability {:?}", N::try_from(cap));
        match N::try_from(cap) {
            // Exercised by the stage above and the unstage below.
            Ok(N::StageUnstageVolume) => {
                c.check(&what, rule, true, ());
            }
            Ok(N::GetVolumeStats) | Ok(N::VolumeCondition) => {
                let r = env
                    .node
                    .node_get_volume_stats(NodeGetVolumeStatsRequest {
                        volume_id: vol.volume_id.clone(),
                        volume_path: path_str(&staging),
                        staging_target_path: path_str(&staging),
                    })
                    .await;
                if let Some(r) = c.ok(&what, rule, r)
                    && cap == N::VolumeCondition as i32
                {
                    c.check(
                        &what,
                        "VOLUME_CONDITION ⇒ NodeGetVolumeStats returns volume_condition",
                        r.volume_condition.is_some(),
                        "no volume_condition",
                    );
                }
            }
            Ok(N::ExpandVolume) => {
                let r = env
                    .node
                    .node_expand_volume(NodeExpandVolumeRequest {
                        volume_id: vol.volume_id.clone(),
                        volume_path: path_str(&staging),
                        staging_target_path: path_str(&staging),
                        capacity_range: Some(CapacityRange {
                            required_bytes: 80 * MIB,
                            limit_bytes: 0,
                        }),
                        volume_capability: Some(snw()),
                        ..Default::default()
                    })
                    .await;
                c.ok(&what, rule, r);
            }
            Ok(N::SingleNodeMultiWriter) => {
                let v = env.create("cap-nsnmw", 32 * MIB).await;
                let st = env
                    .stage(
                        &v,
                        "cap-snmw-staging",
                        cap_mode(Mode::SingleNodeMultiWriter),
                    )
                    .await;
                let t1 = env.target_path("cap-snmw-1");
                let t2 = env.target_path("cap-snmw-2");
                for t in [&t1, &t2] {
                    let r = env
                        .node
                        .node_publish_volume(publish_req(
                            &v,
                            &st,
                            t,
                            cap_mode(Mode::SingleNodeMultiWriter),
                            false,
                        ))
                        .await;
                    c.ok(&format!("{what}: publish at two targets"), rule, r);
                }
                env.unpublish(&v.volume_id, &t1).await;
                env.unpublish(&v.volume_id, &t2).await;
                env.unstage(&v.volume_id, &st).await;
            }
            Ok(N::VolumeMountGroup) => {
                let v = env.create("cap-group", 32 * MIB).await;
                let mut cap = snw();
                if let Some(volume_capability::AccessType::Mount(m)) = &mut cap.access_type {
                    m.volume_mount_group = "4321".into();
                }
                let st = env.driver.mkdir("cap-group-staging");
                let r = env
                    .node
                    .node_stage_volume(stage_req(&v, &st, cap.clone()))
                    .await;
                c.ok(&format!("{what} stage"), rule, r);
                let t = env.target_path("cap-group");
                let r = env
                    .node
                    .node_publish_volume(publish_req(&v, &st, &t, cap, false))
                    .await;
                c.ok(&format!("{what} publish"), rule, r);
                env.unpublish(&v.volume_id, &t).await;
                env.unstage(&v.volume_id, &st).await;
            }
            Ok(N::Unknown) | Err(_) => c.fail(
                &what,
                "capabilities are values the spec defines",
                format!("unknown node capability {cap}"),
            ),
        }
    }
    env.unstage(&vol.volume_id, &staging).await;
    c.finish();
}

fn volume_source(id: &str) -> VolumeContentSource {
    VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: id.into(),
            },
        )),
    }
}

fn snapshot_source(id: &str) -> VolumeContentSource {
    VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    }
}

// ---------------------------------------------------------------- CreateVolume

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_volume_success_and_idempotency() {
    if !testkit::require_root("create_volume_success_and_idempotency") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("create_volume_success_and_idempotency");
    let req = create_req("pvc-1", 64 * MIB);
    let first = c
        .ok(
            "CreateVolume",
            "CSI CreateVolume success",
            env.ctl.create_volume(req.clone()).await,
        )
        .and_then(|r| r.volume)
        .expect("CreateVolume must work for the rest of this test");
    c.check(
        "volume_id set",
        "CSI Volume.volume_id REQUIRED",
        !first.volume_id.is_empty(),
        &first,
    );
    c.check(
        "capacity honours capacity_range",
        "CSI CreateVolume: capacity ≥ required_bytes",
        first.capacity_bytes >= 64 * MIB,
        first.capacity_bytes,
    );
    c.check(
        "accessible_topology is this node",
        "driver contract: returns accessible_topology with topology.strata.io/node",
        first.accessible_topology == vec![node_topology(NODE)],
        &first.accessible_topology,
    );
    c.check(
        "one image file in the pool",
        "driver contract: a sparse file per volume in the pool directory",
        env.pool.files().len() == 1,
        env.pool.files(),
    );

    let again = c
        .ok(
            "CreateVolume repeat",
            "CSI CreateVolume: same name + compatible → OK with the same volume",
            env.ctl.create_volume(req.clone()).await,
        )
        .and_then(|r| r.volume);
    c.check(
        "repeat returns the same Volume",
        "CSI CreateVolume idempotency: same Volume",
        again.as_ref() == Some(&first),
        &again,
    );
    let mut smaller = req.clone();
    smaller.capacity_range = Some(CapacityRange {
        required_bytes: 32 * MIB,
        limit_bytes: 0,
    });
    let r = env.ctl.create_volume(smaller).await;
    if let Some(v) = c
        .ok(
            "CreateVolume repeat, smaller required_bytes, no limit",
            "CSI CreateVolume: existing volume compatible with capacity_range → OK",
            r,
        )
        .and_then(|r| r.volume)
    {
        c.check(
            "compatible repeat returns the same id",
            "CSI CreateVolume idempotency",
            v.volume_id == first.volume_id,
            &v,
        );
    }
    c.check(
        "repeats made no new file",
        "idempotent CreateVolume creates nothing new",
        env.pool.files().len() == 1,
        env.pool.files(),
    );

    let rule = "CSI CreateVolume: same name, incompatible → ALREADY_EXISTS";
    let mut bigger = req.clone();
    bigger.capacity_range = Some(CapacityRange {
        required_bytes: 128 * MIB,
        limit_bytes: 0,
    });
    c.code(
        "same name, larger required_bytes",
        rule,
        env.ctl.create_volume(bigger).await,
        Code::AlreadyExists,
    );
    let mut limited = req.clone();
    limited.capacity_range = Some(CapacityRange {
        required_bytes: 16 * MIB,
        limit_bytes: 32 * MIB,
    });
    c.code(
        "same name, limit_bytes below the volume's size",
        rule,
        env.ctl.create_volume(limited).await,
        Code::AlreadyExists,
    );
    let mut other_fs = req.clone();
    other_fs.parameters.insert("fsType".into(), "xfs".into());
    other_fs.volume_capabilities = vec![mount_cap("xfs", Mode::SingleNodeWriter)];
    other_fs.capacity_range = Some(CapacityRange {
        required_bytes: 320 * MIB,
        limit_bytes: 0,
    });
    c.code(
        "same name, other fsType",
        rule,
        env.ctl.create_volume(other_fs).await,
        Code::AlreadyExists,
    );
    let mut other_topo = req.clone();
    other_topo.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![node_topology("node-elsewhere")],
        preferred: vec![],
    });
    c.code_in(
        "same name, topology that excludes the volume",
        "CSI CreateVolume: same name but not accessible from accessibility_requirements → ALREADY_EXISTS (or RESOURCE_EXHAUSTED)",
        env.ctl.create_volume(other_topo).await,
        &[Code::AlreadyExists, Code::ResourceExhausted],
    );
    let src = env.create("pvc-src", 32 * MIB).await;
    let mut with_src = req.clone();
    with_src.volume_content_source = Some(volume_source(&src.volume_id));
    c.code(
        "same name, with a content source",
        rule,
        env.ctl.create_volume(with_src).await,
        Code::AlreadyExists,
    );

    // Names are any Unicode but control characters; they never become paths.
    for name in [
        "pvc-ünïcode-名前",
        "../../escape",
        "a/b/../c",
        "/abs/name",
        "..",
    ] {
        let r = env.ctl.create_volume(create_req(name, 16 * MIB)).await;
        if let Some(v) = c
            .ok(
                &format!("CreateVolume name {name:?}"),
                "CSI CreateVolume: name is any Unicode except control characters",
                r,
            )
            .and_then(|r| r.volume)
        {
            c.check(
                &format!("volume_id for name {name:?}"),
                R_IDS,
                !v.volume_id.contains('/') && !v.volume_id.contains(".."),
                &v.volume_id,
            );
        }
    }
    let outside: Vec<_> = std::fs::read_dir(env.pool.root())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "pool")
        .collect();
    c.check(
        "names never create files outside the pool",
        "ARCHITECTURE.md invariants: every path resolved beneath its pool",
        outside.is_empty(),
        outside,
    );
    let listed = env.list_volumes().await.len();
    c.check(
        "ListVolumes sees every created volume",
        "CSI ListVolumes",
        listed == 7,
        listed,
    );
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_volume_invalid_arguments_change_nothing() {
    if !testkit::require_root("create_volume_invalid_arguments_change_nothing") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("create_volume_invalid_arguments_change_nothing");
    let base = create_req("pvc-bad", 32 * MIB);
    let mut cases: Vec<(&str, CreateVolumeRequest, &str)> = Vec::new();
    let mut r = base.clone();
    r.name = String::new();
    cases.push(("missing name", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capabilities.clear();
    cases.push(("missing volume_capabilities", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capabilities[0].access_type = None;
    cases.push(("capability without access_type", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capabilities[0].access_mode = None;
    cases.push(("capability without access_mode", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capabilities[0].access_mode = Some(volume_capability::AccessMode { mode: 0 });
    cases.push(("access mode UNKNOWN", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capabilities[0].access_mode = Some(volume_capability::AccessMode { mode: 99 });
    cases.push(("access mode out of the enum", r, R_INVALID));
    let mut r = base.clone();
    r.capacity_range = Some(CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    cases.push((
        "negative required_bytes",
        r,
        "CSI CapacityRange: MUST NOT be negative",
    ));
    let mut r = base.clone();
    r.capacity_range = Some(CapacityRange {
        required_bytes: 0,
        limit_bytes: -5,
    });
    cases.push((
        "negative limit_bytes",
        r,
        "CSI CapacityRange: MUST NOT be negative",
    ));
    let mut r = base.clone();
    r.parameters.insert("colour".into(), "blue".into());
    cases.push((
        "unknown parameter key",
        r,
        "driver contract: parameters are pool, fsType",
    ));
    let mut r = base.clone();
    r.parameters.insert("pool".into(), "no-such-pool".into());
    cases.push(("unknown pool", r, R_INVALID));
    let mut r = base.clone();
    r.parameters.insert("fsType".into(), "ntfs".into());
    cases.push(("fsType ntfs", r, "driver contract: fsType ext4|xfs"));
    let mut r = base.clone();
    r.volume_capabilities = vec![mount_cap("vfat", Mode::SingleNodeWriter)];
    cases.push((
        "capability fs_type vfat",
        r,
        "driver contract: fsType ext4|xfs",
    ));
    let mut r = base.clone();
    r.name = "pvc-\u{1}-ctl".into();
    cases.push((
        "name with a control character",
        r,
        "CSI CreateVolume: name excludes control characters",
    ));
    let mut r = base.clone();
    r.name = long(129);
    cases.push(("name of 129 bytes", r, R_128));
    let mut r = base.clone();
    r.secrets = big_map();
    cases.push(("secrets over 4 KiB", r, R_4K));
    let mut r = base.clone();
    r.parameters.insert("pool".into(), long(200));
    cases.push(("parameter value over 128 bytes", r, R_128));
    let mut r = base.clone();
    r.volume_content_source = Some(snapshot_source(""));
    cases.push(("content source with empty snapshot_id", r, R_INVALID));
    let mut r = base.clone();
    r.volume_content_source = Some(VolumeContentSource { r#type: None });
    cases.push(("content source with no type", r, R_INVALID));
    let mut r = base.clone();
    r.volume_content_source = Some(snapshot_source("../../etc/passwd"));
    cases.push(("snapshot_id with traversal", r, R_IDS));
    let mut r = base.clone();
    r.volume_content_source = Some(volume_source(&long(129)));
    cases.push(("source volume_id of 129 bytes", r, R_128));
    let mut r = base.clone();
    r.accessibility_requirements = Some(TopologyRequirement::default());
    cases.push((
        "accessibility_requirements with neither list",
        r,
        "CSI TopologyRequirement: if set, requisite or preferred MUST be set",
    ));
    let mut r = base.clone();
    r.mutable_parameters = params(&[("bogus", "1")]);
    cases.push((
        "unknown mutable parameter",
        r,
        "driver contract: mutable parameter is directIO only",
    ));
    let mut r = base.clone();
    r.mutable_parameters = params(&[("directIO", "maybe")]);
    cases.push((
        "directIO not a bool",
        r,
        "driver contract: directIO is \"true\"/\"false\"",
    ));
    let mut r = base.clone();
    if let Some(volume_capability::AccessType::Mount(m)) = &mut r.volume_capabilities[0].access_type
    {
        m.mount_flags = vec!["x".repeat(100); 50];
    }
    cases.push((
        "mount_flags over 4 KiB",
        r,
        "CSI MountVolume: mount_flags ≤ 4 KiB",
    ));

    // Each case under its own name: one accepted by mistake must not turn the next into an
    // ALREADY_EXISTS.
    for (i, (what, mut req, rule)) in cases.into_iter().enumerate() {
        if req.name == "pvc-bad" {
            req.name = format!("pvc-bad-{i}");
        }
        c.code(
            &format!("CreateVolume {what}"),
            rule,
            env.ctl.create_volume(req).await,
            Code::InvalidArgument,
        );
    }
    // A limit below the requirement is either malformed or an unsupported range.
    let mut r = base.clone();
    r.name = "pvc-bad-range".into();
    r.capacity_range = Some(CapacityRange {
        required_bytes: 64 * MIB,
        limit_bytes: 32 * MIB,
    });
    c.code_in(
        "CreateVolume limit_bytes < required_bytes",
        "CSI CreateVolume: an unsatisfiable capacity_range → INVALID_ARGUMENT or OUT_OF_RANGE",
        env.ctl.create_volume(r).await,
        &[Code::InvalidArgument, Code::OutOfRange],
    );
    let mut r = base.clone();
    r.name = "pvc-bad-tiny".into();
    r.capacity_range = Some(CapacityRange {
        required_bytes: 0,
        limit_bytes: 4096,
    });
    c.code(
        "CreateVolume limit_bytes of 4 KiB (no filesystem fits)",
        "CSI CreateVolume: capacity not supported → OUT_OF_RANGE",
        env.ctl.create_volume(r).await,
        Code::OutOfRange,
    );

    c.check(
        "bad requests created no file",
        "bad input changes nothing",
        env.pool.files().is_empty(),
        env.pool.files(),
    );
    let listed = env.list_volumes().await;
    c.check(
        "bad requests created no volume",
        "bad input changes nothing",
        listed.is_empty(),
        listed,
    );
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_volume_capacity_topology_and_pool_full() {
    if !testkit::require_root("create_volume_capacity_topology_and_pool_full") {
        return;
    }
    let mut env = Env::new(PoolFs::Xfs(320 << 20)).await;
    let mut c = Checks::new("create_volume_capacity_topology_and_pool_full");
    let cap = c
        .ok(
            "GetCapacity",
            "CSI GetCapacity",
            env.ctl
                .get_capacity(GetCapacityRequest {
                    volume_capabilities: vec![snw()],
                    parameters: params(&[("pool", POOL)]),
                    accessible_topology: Some(node_topology(NODE)),
                })
                .await,
        )
        .unwrap_or_default();
    let free = env.pool.free_bytes() as i64;
    c.check(
        "GetCapacity is the pool's real free space",
        "driver contract: GetCapacity returns the real free space of the pool",
        cap.available_capacity > 0 && cap.available_capacity <= free,
        (cap.available_capacity, free),
    );
    if let Some(max) = cap.maximum_volume_size {
        c.check(
            "maximum_volume_size within the pool",
            "CSI GetCapacity: maximum_volume_size is the largest volume that can be created",
            max > 0 && max <= 320 * MIB,
            max,
        );
    }
    let mut r = create_req("xfs-too-small", 16 * MIB);
    r.parameters.insert("fsType".into(), "xfs".into());
    r.volume_capabilities = vec![mount_cap("xfs", Mode::SingleNodeWriter)];
    r.capacity_range = Some(CapacityRange {
        required_bytes: 16 * MIB,
        limit_bytes: 100 * MIB,
    });
    c.code(
        "CreateVolume xfs with limit_bytes below the smallest xfs",
        "CSI CreateVolume: capacity not supported → OUT_OF_RANGE",
        env.ctl.create_volume(r).await,
        Code::OutOfRange,
    );
    let other = c
        .ok(
            "GetCapacity for another node's topology",
            "CSI GetCapacity honours accessible_topology",
            env.ctl
                .get_capacity(GetCapacityRequest {
                    volume_capabilities: vec![snw()],
                    parameters: params(&[("pool", POOL)]),
                    accessible_topology: Some(node_topology("node-elsewhere")),
                })
                .await,
        )
        .unwrap_or_default();
    c.check(
        "no capacity on another node",
        "driver contract: GetCapacity honours topology",
        other.available_capacity == 0,
        other.available_capacity,
    );
    c.code(
        "GetCapacity for an unknown pool",
        R_INVALID,
        env.ctl
            .get_capacity(GetCapacityRequest {
                volume_capabilities: vec![snw()],
                parameters: params(&[("pool", "no-such-pool")]),
                accessible_topology: None,
            })
            .await,
        Code::InvalidArgument,
    );

    c.code(
        "CreateVolume larger than the pool",
        "CSI CreateVolume: cannot provision (no space) → RESOURCE_EXHAUSTED",
        env.ctl.create_volume(create_req("too-big", 1 << 30)).await,
        Code::ResourceExhausted,
    );
    let mut r = create_req("elsewhere", 32 * MIB);
    r.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![node_topology("node-elsewhere")],
        preferred: vec![node_topology("node-elsewhere")],
    });
    c.code(
        "CreateVolume with requisite topology of another node",
        "CSI TopologyRequirement: cannot be accessible from requisite → RESOURCE_EXHAUSTED",
        env.ctl.create_volume(r).await,
        Code::ResourceExhausted,
    );
    let mut r = create_req("other-key", 32 * MIB);
    r.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![Topology {
            segments: params(&[("topology.strata.io/zone", "z1")]),
        }],
        preferred: vec![],
    });
    c.code(
        "CreateVolume with a topology key the driver does not have",
        "CSI TopologyRequirement: unsatisfiable → RESOURCE_EXHAUSTED",
        env.ctl.create_volume(r).await,
        Code::ResourceExhausted,
    );
    let mut r = create_req("here", 32 * MIB);
    r.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![node_topology("node-elsewhere"), node_topology(NODE)],
        preferred: vec![node_topology("node-elsewhere"), node_topology(NODE)],
    });
    if let Some(v) = c
        .ok(
            "CreateVolume with this node among requisite",
            "CSI TopologyRequirement: some requisite satisfiable → OK",
            env.ctl.create_volume(r).await,
        )
        .and_then(|r| r.volume)
    {
        c.check(
            "accessible_topology is this node only",
            "CSI CreateVolume: accessible_topology ⊆ requisite and true",
            v.accessible_topology == vec![node_topology(NODE)],
            &v.accessible_topology,
        );
    }
    c.check(
        "failed creates left no file",
        "bad input changes nothing",
        env.pool.files().len() == 1,
        env.pool.files(),
    );
    c.finish();
}

/// A source that lives on another node is a scheduling problem, not a missing object.
/// Pool accounting: the capacities of a pool's volumes add up to at most its size times
/// its overcommit ratio (1 by default), even while the sparse images use nothing; what is
/// left is what GetCapacity reports, and it is recounted from the records after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_accounting_and_overcommit() {
    if !testkit::require_root("pool_accounting_and_overcommit") {
        return;
    }
    const RULE: &str = "issue 9: provisioned bytes per pool, overcommit ratio, GetCapacity = what can still be provisioned";
    let mut c = Checks::new("pool_accounting_and_overcommit");
    async fn available(env: &mut Env) -> i64 {
        env.ctl
            .get_capacity(GetCapacityRequest {
                volume_capabilities: vec![snw()],
                parameters: params(&[("pool", POOL)]),
                accessible_topology: None,
            })
            .await
            .expect("GetCapacity")
            .into_inner()
            .available_capacity
    }
    fn total_bytes(path: &Path) -> i64 {
        let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
        (st.blocks() as u64 * st.fragment_size() as u64) as i64
    }
    let round = |b: i64| b / MIB * MIB;

    // Ratio 1: two volumes of 60% of the pool do not both fit, although both images
    // would be sparse and the filesystem stays nearly empty.
    let mut env = Env::new(PoolFs::Xfs(320 << 20)).await;
    let total = total_bytes(env.pool.path());
    let size = round(total * 6 / 10);
    let before = available(&mut env).await;
    c.check(
        "GetCapacity before",
        RULE,
        before <= round(total),
        (before, total),
    );
    let v1 = env.create("acct-1", size).await;
    let after = available(&mut env).await;
    c.check(
        "GetCapacity after a create",
        RULE,
        after <= round(total - size) && after > 0,
        (after, total - size),
    );
    let r = env.ctl.create_volume(create_req("acct-2", size)).await;
    let why = r
        .as_ref()
        .err()
        .map(|s| s.message().to_string())
        .unwrap_or_default();
    c.code(
        "a create beyond the pool's size",
        RULE,
        r,
        Code::ResourceExhausted,
    );
    c.check(
        "the refusal says why",
        RULE,
        why.contains("provisioned"),
        &why,
    );
    let grow = env
        .ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v1.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: round(total) + MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await;
    c.code(
        "an expansion beyond the pool's size",
        RULE,
        grow,
        Code::ResourceExhausted,
    );
    env.restart(&[]).await;
    let again = available(&mut env).await;
    c.check(
        "recounted after a restart",
        RULE,
        again == after,
        (again, after),
    );
    env.delete(&v1.volume_id).await;
    let freed = available(&mut env).await;
    c.check(
        "a delete gives the capacity back",
        RULE,
        freed >= before - MIB,
        (freed, before),
    );
    let r = env.ctl.create_volume(create_req("acct-2", size)).await;
    c.ok("the same create after the delete", RULE, r);
    drop(env);

    // Ratio 2.5: four such volumes fit (240% of the pool), a fifth (300%) does not.
    let mut env = Env::with_config(PoolFs::Xfs(320 << 20), ",overcommit=2.5", &[]).await;
    let total = total_bytes(env.pool.path());
    let size = round(total * 6 / 10);
    for i in 0..4 {
        let r = env
            .ctl
            .create_volume(create_req(&format!("oc-{i}"), size))
            .await;
        c.ok(&format!("overcommitted create {i} (ratio 2.5)"), RULE, r);
    }
    let r = env.ctl.create_volume(create_req("oc-4", size)).await;
    c.code(
        "a create beyond 2.5 times the pool",
        RULE,
        r,
        Code::ResourceExhausted,
    );
    let left = available(&mut env).await;
    c.check(
        "GetCapacity with overcommit",
        RULE,
        left <= round(total * 5 / 2 - 4 * size) + MIB,
        (left, total * 5 / 2 - 4 * size),
    );
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_source_from_another_node_is_resource_exhausted() {
    if !testkit::require_root("content_source_from_another_node_is_resource_exhausted") {
        return;
    }
    let mut a = Env::on_node(PoolFs::Dir, "node-a").await;
    let mut b = Env::on_node(PoolFs::Dir, "node-b").await;
    let mut c = Checks::new("content_source_from_another_node_is_resource_exhausted");
    let vb = b.create("on-b", 32 * MIB).await;
    let sb = b.snapshot("snap-on-b", &vb.volume_id).await;
    let rule = "driver contract: a snapshot or source volume on another node → RESOURCE_EXHAUSTED, never NOT_FOUND";
    let mut r = create_req("from-b-snap", 32 * MIB);
    r.volume_content_source = Some(snapshot_source(&sb.snapshot_id));
    c.code(
        "restore from node-b's snapshot on node-a",
        rule,
        a.ctl.create_volume(r).await,
        Code::ResourceExhausted,
    );
    let mut r = create_req("from-b-vol", 32 * MIB);
    r.volume_content_source = Some(volume_source(&vb.volume_id));
    c.code(
        "clone node-b's volume on node-a",
        rule,
        a.ctl.create_volume(r).await,
        Code::ResourceExhausted,
    );
    // The same ids once deleted on their own node are plain NOT_FOUND there.
    b.ctl
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: sb.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    b.delete(&vb.volume_id).await;
    let mut r = create_req("from-gone-snap", 32 * MIB);
    r.volume_content_source = Some(snapshot_source(&sb.snapshot_id));
    c.code(
        "restore from a deleted snapshot of this node",
        "CSI CreateVolume: source snapshot missing → NOT_FOUND",
        b.ctl.create_volume(r).await,
        Code::NotFound,
    );
    let mut r = create_req("from-gone-vol", 32 * MIB);
    r.volume_content_source = Some(volume_source(&vb.volume_id));
    c.code(
        "clone a deleted volume of this node",
        "CSI CreateVolume: source volume missing → NOT_FOUND",
        b.ctl.create_volume(r).await,
        Code::NotFound,
    );
    c.check(
        "node-a's pool untouched",
        "failed creates change nothing",
        a.pool.files().is_empty(),
        a.pool.files(),
    );
    c.finish();
}

// ---------------------------------------------------------------- DeleteVolume, ids

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_volume_and_id_validation() {
    if !testkit::require_root("delete_volume_and_id_validation") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(256 << 20)).await;
    let mut c = Checks::new("delete_volume_and_id_validation");
    let v = env.create("pvc-del", 32 * MIB).await;
    let del = |id: &str| DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    };
    c.code(
        "DeleteVolume without volume_id",
        R_INVALID,
        env.ctl.delete_volume(del("")).await,
        Code::InvalidArgument,
    );
    c.code(
        "DeleteVolume with a 129-byte id",
        R_128,
        env.ctl.delete_volume(del(&long(129))).await,
        Code::InvalidArgument,
    );
    // A file next to the pool that a traversing id could reach.
    let victim = env.pool.root().join("victim.img");
    std::fs::write(&victim, b"keep me").unwrap();
    for id in [
        "../victim",
        "../victim.img",
        "a/../../victim",
        "/etc/passwd",
        "vol\0nul",
    ] {
        c.code(
            &format!("DeleteVolume id {id:?}"),
            R_IDS,
            env.ctl.delete_volume(del(id)).await,
            Code::InvalidArgument,
        );
    }
    // Dots alone are inside the id charset: rejecting them or treating them as an unknown
    // id are both safe, as long as nothing outside the pool is touched.
    for id in ["..", "...", ".", "..victim"] {
        let r = env.ctl.delete_volume(del(id)).await;
        c.check(
            &format!("DeleteVolume id {id:?}"),
            "ARCHITECTURE.md invariants: an id never becomes a path outside the pool",
            r.as_ref()
                .map(|_| true)
                .unwrap_or_else(|s| s.code() == Code::InvalidArgument),
            r.map(|r| r.into_inner()).map_err(|s| show(&s)),
        );
    }
    c.check(
        "traversing ids deleted nothing",
        "ARCHITECTURE.md invariants: no traversal",
        victim.exists() && env.pool.files().len() == 1,
        env.pool.files(),
    );

    // In use: staged volumes are not deleted, and stay intact.
    let staging = env.stage(&v, "staging", snw()).await;
    c.code(
        "DeleteVolume of a staged volume",
        "CSI DeleteVolume: volume in use → FAILED_PRECONDITION, volume left untouched",
        env.ctl.delete_volume(del(&v.volume_id)).await,
        Code::FailedPrecondition,
    );
    c.check(
        "staged volume still mounted after the refused delete",
        "CSI DeleteVolume: FAILED_PRECONDITION leaves the volume untouched",
        mount_at(&staging).is_some() && env.pool.files().len() == 1,
        env.pool.files(),
    );
    env.unstage(&v.volume_id, &staging).await;

    c.ok(
        "DeleteVolume",
        "CSI DeleteVolume success",
        env.ctl.delete_volume(del(&v.volume_id)).await,
    );
    c.check(
        "image file removed",
        "DeleteVolume frees the volume's storage",
        env.pool.files().is_empty(),
        env.pool.files(),
    );
    c.ok(
        "DeleteVolume repeat",
        "CSI DeleteVolume: already gone → OK",
        env.ctl.delete_volume(del(&v.volume_id)).await,
    );
    let listed = env.list_volumes().await;
    c.check(
        "deleted volume not listed",
        "CSI ListVolumes",
        listed.is_empty(),
        listed,
    );
    // An id of the driver's own format that never existed.
    let mut unknown = v.volume_id.clone();
    let last = unknown.pop().unwrap();
    unknown.push(if last == '0' { '1' } else { '0' });
    c.ok(
        "DeleteVolume of an unknown id",
        "CSI DeleteVolume: unknown id → OK",
        env.ctl.delete_volume(del(&unknown)).await,
    );
    c.finish();
}

/// Replacing a volume's image with a symlink out of the pool must not make the driver act
/// on the symlink's target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_symlinked_out_of_the_pool_is_refused() {
    if !testkit::require_root("image_symlinked_out_of_the_pool_is_refused") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("image_symlinked_out_of_the_pool_is_refused");
    let v = env.create("pvc-link", 32 * MIB).await;
    let files = env.pool.files();
    assert_eq!(files.len(), 1, "one image file: {files:?}");
    let image = &files[0];
    let outside = env.pool.root().join("outside.img");
    std::fs::rename(image, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, image).unwrap();

    let staging = env.driver.mkdir("staging");
    let r = env
        .node
        .node_stage_volume(stage_req(&v, &staging, snw()))
        .await;
    c.check(
        "NodeStage through a symlinked image fails",
        "ARCHITECTURE.md invariants: paths resolved beneath the pool without following symlinks out of it",
        r.is_err(),
        r.map(|r| r.into_inner()),
    );
    let attached: Vec<_> = testkit::loops_backed_under(env.pool.root());
    c.check(
        "no loop device on the outside file",
        "ARCHITECTURE.md invariants: never follow symlinks out of the pool",
        attached.is_empty(),
        attached,
    );
    c.check(
        "nothing mounted at the staging path",
        "a failed stage leaves nothing mounted",
        mount_at(&staging).is_none(),
        mount_at(&staging),
    );
    let _ = env
        .ctl
        .delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await;
    c.check(
        "DeleteVolume did not delete the symlink's target",
        "ARCHITECTURE.md invariants: never follow symlinks out of the pool",
        outside.exists(),
        &outside,
    );
    c.finish();
}

// ---------------------------------------------------------------- Validate, List, Get

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_list_and_get_volume() {
    if !testkit::require_root("validate_list_and_get_volume") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("validate_list_and_get_volume");
    let gone_vol = deleted_id(&mut env).await;
    let mut vols = Vec::new();
    for i in 0..5 {
        vols.push(env.create(&format!("pvc-list-{i}"), 16 * MIB).await);
    }
    let v = vols[0].clone();
    let validate = |id: &str, caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_context: v.volume_context.clone(),
        volume_capabilities: caps,
        parameters: params(&[("pool", POOL)]),
        ..Default::default()
    };
    if let Some(r) = c.ok(
        "ValidateVolumeCapabilities supported",
        "CSI ValidateVolumeCapabilities",
        env.ctl
            .validate_volume_capabilities(validate(&v.volume_id, vec![snw()]))
            .await,
    ) {
        c.check(
            "supported capability confirmed",
            "CSI ValidateVolumeCapabilities: confirmed iff all supported",
            r.confirmed
                .as_ref()
                .is_some_and(|conf| conf.volume_capabilities == vec![snw()]),
            &r,
        );
    }
    if let Some(r) = c.ok(
        "ValidateVolumeCapabilities with another fs type",
        "CSI ValidateVolumeCapabilities",
        env.ctl
            .validate_volume_capabilities(validate(
                &v.volume_id,
                vec![snw(), mount_cap("xfs", Mode::SingleNodeWriter)],
            ))
            .await,
    ) {
        c.check(
            "ext4 volume not confirmed for xfs",
            "CSI ValidateVolumeCapabilities: confirmed empty if any unsupported, message set",
            r.confirmed.is_none() && !r.message.is_empty(),
            &r,
        );
    }
    c.code(
        "ValidateVolumeCapabilities unknown volume",
        "CSI ValidateVolumeCapabilities: volume does not exist → NOT_FOUND",
        env.ctl
            .validate_volume_capabilities(validate(&gone_vol, vec![snw()]))
            .await,
        Code::NotFound,
    );
    c.code(
        "ValidateVolumeCapabilities without volume_id",
        R_INVALID,
        env.ctl
            .validate_volume_capabilities(validate("", vec![snw()]))
            .await,
        Code::InvalidArgument,
    );
    c.code(
        "ValidateVolumeCapabilities without capabilities",
        R_INVALID,
        env.ctl
            .validate_volume_capabilities(validate(&v.volume_id, vec![]))
            .await,
        Code::InvalidArgument,
    );
    c.code(
        "ValidateVolumeCapabilities id with traversal",
        R_IDS,
        env.ctl
            .validate_volume_capabilities(validate("../x", vec![snw()]))
            .await,
        Code::InvalidArgument,
    );

    // Paging.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let Some(r) = c.ok(
            "ListVolumes page",
            "CSI ListVolumes paging",
            env.ctl
                .list_volumes(ListVolumesRequest {
                    max_entries: 2,
                    starting_token: token.clone(),
                })
                .await,
        ) else {
            break;
        };
        pages += 1;
        c.check(
            "page ≤ max_entries",
            "CSI ListVolumes: at most max_entries",
            r.entries.len() <= 2,
            r.entries.len(),
        );
        seen.extend(
            r.entries
                .into_iter()
                .filter_map(|e| e.volume.map(|v| v.volume_id)),
        );
        if r.next_token.is_empty() || pages > 10 {
            break;
        }
        token = r.next_token;
    }
    let mut want: Vec<_> = vols.iter().map(|v| v.volume_id.clone()).collect();
    want.sort();
    seen.sort();
    c.check(
        "pages cover every volume once",
        "CSI ListVolumes: paging returns all entries",
        seen == want,
        (&seen, &want),
    );
    c.code(
        "ListVolumes with a bad starting_token",
        "CSI ListVolumes: invalid starting_token → ABORTED",
        env.ctl
            .list_volumes(ListVolumesRequest {
                max_entries: 2,
                starting_token: "not-a-token-%%".into(),
            })
            .await,
        Code::Aborted,
    );
    c.code(
        "ListVolumes with negative max_entries",
        "CSI ListVolumes: max_entries MUST NOT be negative",
        env.ctl
            .list_volumes(ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );

    // ControllerGetVolume.
    if let Some(r) = c.ok(
        "ControllerGetVolume",
        "CSI ControllerGetVolume",
        env.ctl
            .controller_get_volume(ControllerGetVolumeRequest {
                volume_id: v.volume_id.clone(),
            })
            .await,
    ) {
        c.check(
            "ControllerGetVolume returns the volume",
            "CSI ControllerGetVolume: volume REQUIRED",
            r.volume.as_ref().map(|x| &x.volume_id) == Some(&v.volume_id),
            &r.volume,
        );
        let cond = r.status.and_then(|s| s.volume_condition);
        c.check(
            "healthy volume condition",
            "driver contract: ControllerGetVolume with volume condition",
            cond.as_ref().is_some_and(|c| !c.abnormal),
            cond,
        );
    }
    c.code(
        "ControllerGetVolume unknown",
        "CSI ControllerGetVolume: volume does not exist → NOT_FOUND",
        env.ctl
            .controller_get_volume(ControllerGetVolumeRequest {
                volume_id: gone_vol.clone(),
            })
            .await,
        Code::NotFound,
    );
    c.code(
        "ControllerGetVolume without volume_id",
        R_INVALID,
        env.ctl
            .controller_get_volume(ControllerGetVolumeRequest {
                volume_id: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    c.finish();
}

/// A well-formed id of this driver that does not exist (created, then deleted).
async fn deleted_id(env: &mut Env) -> String {
    let v = env
        .create(
            &format!(
                "gone-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ),
            16 * MIB,
        )
        .await;
    env.delete(&v.volume_id).await;
    v.volume_id
}

async fn deleted_snapshot_id(env: &mut Env, source: &str) -> String {
    let s = env.snapshot("gone-snap", source).await;
    env.ctl
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: s.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    s.snapshot_id
}

// ---------------------------------------------------------------- Snapshots, restore, clone

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_and_clone() {
    if !testkit::require_root("snapshots_restore_and_clone") {
        return;
    }
    let mut env =
        Env::with_config(PoolFs::Xfs(512 << 20), "", &["--enable-alpha-capabilities"]).await;
    let mut c = Checks::new("snapshots_restore_and_clone");
    let v = env.create("pvc-snap-src", 32 * MIB).await;
    let w = env.create("pvc-other", 32 * MIB).await;
    let req = CreateSnapshotRequest {
        name: "snap-1".into(),
        source_volume_id: v.volume_id.clone(),
        ..Default::default()
    };
    let snap = c
        .ok(
            "CreateSnapshot",
            "CSI CreateSnapshot success",
            env.ctl.create_snapshot(req.clone()).await,
        )
        .and_then(|r| r.snapshot)
        .expect("CreateSnapshot must work for the rest of this test");
    c.check(
        "snapshot fields",
        "CSI Snapshot: snapshot_id, source_volume_id, creation_time REQUIRED; ready after the cut",
        !snap.snapshot_id.is_empty()
            && snap.source_volume_id == v.volume_id
            && snap.creation_time.is_some()
            && snap.ready_to_use,
        &snap,
    );
    c.check(
        "size_bytes of a 32 MiB volume",
        "CSI Snapshot.size_bytes: 0 = unknown, else the source size",
        snap.size_bytes == 0 || snap.size_bytes >= 32 * MIB,
        snap.size_bytes,
    );
    let again = c
        .ok(
            "CreateSnapshot repeat",
            "CSI CreateSnapshot: same name + same source → OK, same snapshot",
            env.ctl.create_snapshot(req.clone()).await,
        )
        .and_then(|r| r.snapshot);
    c.check(
        "repeat returns the same snapshot",
        "CSI CreateSnapshot idempotency",
        again.as_ref().map(|s| (&s.snapshot_id, &s.creation_time))
            == Some((&snap.snapshot_id, &snap.creation_time)),
        &again,
    );
    let mut other = req.clone();
    other.source_volume_id = w.volume_id.clone();
    c.code(
        "CreateSnapshot same name, other source",
        "CSI CreateSnapshot: same name, different source → ALREADY_EXISTS",
        env.ctl.create_snapshot(other).await,
        Code::AlreadyExists,
    );
    let mut r = req.clone();
    r.name = String::new();
    c.code(
        "CreateSnapshot without name",
        R_INVALID,
        env.ctl.create_snapshot(r).await,
        Code::InvalidArgument,
    );
    let mut r = req.clone();
    r.source_volume_id = String::new();
    c.code(
        "CreateSnapshot without source_volume_id",
        R_INVALID,
        env.ctl.create_snapshot(r).await,
        Code::InvalidArgument,
    );
    let mut r = req.clone();
    r.name = long(129);
    c.code(
        "CreateSnapshot name of 129 bytes",
        R_128,
        env.ctl.create_snapshot(r).await,
        Code::InvalidArgument,
    );
    let mut r = req.clone();
    r.name = "snap-x".into();
    r.parameters = params(&[("bogus", "1")]);
    c.code(
        "CreateSnapshot unknown parameter",
        R_INVALID,
        env.ctl.create_snapshot(r).await,
        Code::InvalidArgument,
    );
    let mut r = req.clone();
    r.name = "snap-of-nothing".into();
    r.source_volume_id = deleted_id(&mut env).await;
    c.code(
        "CreateSnapshot of an unknown volume",
        "CSI CreateSnapshot: source volume does not exist → NOT_FOUND",
        env.ctl.create_snapshot(r).await,
        Code::NotFound,
    );

    // List / Get.
    let s2 = env.snapshot("snap-2", &w.volume_id).await;
    let all = env.list_snapshots().await;
    c.check(
        "ListSnapshots lists both",
        "CSI ListSnapshots",
        all.len() == 2,
        &all,
    );
    let by_id = c
        .ok(
            "ListSnapshots by snapshot_id",
            "CSI ListSnapshots filter",
            env.ctl
                .list_snapshots(ListSnapshotsRequest {
                    snapshot_id: snap.snapshot_id.clone(),
                    ..Default::default()
                })
                .await,
        )
        .unwrap_or_default();
    c.check(
        "filter by snapshot_id",
        "CSI ListSnapshots: snapshot_id filter → that snapshot only",
        by_id.entries.len() == 1
            && by_id.entries[0].snapshot.as_ref().map(|s| &s.snapshot_id)
                == Some(&snap.snapshot_id),
        &by_id,
    );
    let by_src = c
        .ok(
            "ListSnapshots by source_volume_id",
            "CSI ListSnapshots filter",
            env.ctl
                .list_snapshots(ListSnapshotsRequest {
                    source_volume_id: w.volume_id.clone(),
                    ..Default::default()
                })
                .await,
        )
        .unwrap_or_default();
    c.check(
        "filter by source_volume_id",
        "CSI ListSnapshots: source_volume_id filter",
        by_src.entries.len() == 1
            && by_src.entries[0].snapshot.as_ref().map(|s| &s.snapshot_id) == Some(&s2.snapshot_id),
        &by_src,
    );
    let gone = deleted_snapshot_id(&mut env, &w.volume_id).await;
    let none = c
        .ok(
            "ListSnapshots by an unknown snapshot_id",
            "CSI ListSnapshots: unknown snapshot_id → OK with no entries",
            env.ctl
                .list_snapshots(ListSnapshotsRequest {
                    snapshot_id: gone.clone(),
                    ..Default::default()
                })
                .await,
        )
        .unwrap_or_default();
    c.check(
        "unknown snapshot_id lists nothing",
        "CSI ListSnapshots: unknown snapshot_id → empty",
        none.entries.is_empty(),
        &none,
    );
    let p1 = c
        .ok(
            "ListSnapshots max_entries 1",
            "CSI ListSnapshots paging",
            env.ctl
                .list_snapshots(ListSnapshotsRequest {
                    max_entries: 1,
                    ..Default::default()
                })
                .await,
        )
        .unwrap_or_default();
    c.check(
        "first page has one entry and a token",
        "CSI ListSnapshots paging",
        p1.entries.len() == 1 && !p1.next_token.is_empty(),
        &p1,
    );
    if !p1.next_token.is_empty() {
        let p2 = c
            .ok(
                "ListSnapshots second page",
                "CSI ListSnapshots paging",
                env.ctl
                    .list_snapshots(ListSnapshotsRequest {
                        max_entries: 1,
                        starting_token: p1.next_token.clone(),
                        ..Default::default()
                    })
                    .await,
            )
            .unwrap_or_default();
        c.check(
            "second page has the other snapshot",
            "CSI ListSnapshots paging",
            p2.entries.len() == 1 && p2.entries[0].snapshot != p1.entries[0].snapshot,
            &p2,
        );
    }
    c.code(
        "ListSnapshots with a bad starting_token",
        "CSI ListSnapshots: invalid starting_token → ABORTED",
        env.ctl
            .list_snapshots(ListSnapshotsRequest {
                max_entries: 1,
                starting_token: "garbage!".into(),
                ..Default::default()
            })
            .await,
        Code::Aborted,
    );
    if let Some(r) = c.ok(
        "GetSnapshot",
        "CSI GetSnapshot",
        env.ctl
            .get_snapshot(GetSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await,
    ) {
        c.check(
            "GetSnapshot returns the snapshot",
            "CSI GetSnapshot",
            r.snapshot.as_ref().map(|s| &s.snapshot_id) == Some(&snap.snapshot_id),
            &r,
        );
    }
    c.code(
        "GetSnapshot unknown",
        "CSI GetSnapshot: does not exist → NOT_FOUND",
        env.ctl
            .get_snapshot(GetSnapshotRequest {
                snapshot_id: gone.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    c.code(
        "GetSnapshot without snapshot_id",
        R_INVALID,
        env.ctl.get_snapshot(GetSnapshotRequest::default()).await,
        Code::InvalidArgument,
    );

    // Restore and clone.
    let mut r = create_req("restored", 32 * MIB);
    r.volume_content_source = Some(snapshot_source(&snap.snapshot_id));
    if let Some(rv) = c
        .ok(
            "CreateVolume from snapshot",
            "CSI CreateVolume from a snapshot (CREATE_DELETE_SNAPSHOT)",
            env.ctl.create_volume(r.clone()).await,
        )
        .and_then(|r| r.volume)
    {
        c.check(
            "restore echoes content_source",
            "CSI Volume.content_source MUST be set when created from a source",
            rv.content_source == r.volume_content_source,
            &rv.content_source,
        );
        let again = env.ctl.create_volume(r.clone()).await;
        c.check(
            "restore repeat returns the same volume",
            "CSI CreateVolume idempotency with a source",
            again
                .as_ref()
                .ok()
                .and_then(|x| x.get_ref().volume.as_ref())
                .map(|x| &x.volume_id)
                == Some(&rv.volume_id),
            again.map(|r| r.into_inner()),
        );
    }
    let mut r = create_req("restored-small", 16 * MIB);
    r.capacity_range = Some(CapacityRange {
        required_bytes: 8 * MIB,
        limit_bytes: 16 * MIB,
    });
    r.volume_content_source = Some(snapshot_source(&snap.snapshot_id));
    c.code(
        "restore into a volume smaller than the snapshot",
        "CSI CreateVolume: capacity smaller than the source snapshot → OUT_OF_RANGE",
        env.ctl.create_volume(r).await,
        Code::OutOfRange,
    );
    let mut r = create_req("restored-gone", 32 * MIB);
    r.volume_content_source = Some(snapshot_source(&gone));
    c.code(
        "restore from an unknown snapshot",
        "CSI CreateVolume: source snapshot does not exist → NOT_FOUND",
        env.ctl.create_volume(r).await,
        Code::NotFound,
    );
    let mut r = create_req("cloned", 48 * MIB);
    r.volume_content_source = Some(volume_source(&v.volume_id));
    if let Some(cv) = c
        .ok(
            "CreateVolume clone, larger than its source",
            "CSI CreateVolume clone (CLONE_VOLUME); larger → deliver the larger size",
            env.ctl.create_volume(r.clone()).await,
        )
        .and_then(|r| r.volume)
    {
        c.check(
            "clone echoes content_source and its size",
            "CSI Volume.content_source MUST be set; capacity_range honoured when cloning",
            cv.content_source == r.volume_content_source && cv.capacity_bytes >= 48 * MIB,
            &cv,
        );
    }
    let mut r2 = r.clone();
    r2.volume_content_source = Some(volume_source(&w.volume_id));
    c.code(
        "clone same name, other source",
        "CSI CreateVolume: same name, different content source → ALREADY_EXISTS",
        env.ctl.create_volume(r2).await,
        Code::AlreadyExists,
    );

    // Deleting a snapshot's source: independent (OK, snapshot still restorable) or refused
    // with FAILED_PRECONDITION and the volume left intact.
    let del = env
        .ctl
        .delete_volume(DeleteVolumeRequest {
            volume_id: w.volume_id.clone(),
            ..Default::default()
        })
        .await;
    match del {
        Ok(_) => {
            let mut r = create_req("from-orphan", 32 * MIB);
            r.volume_content_source = Some(snapshot_source(&s2.snapshot_id));
            c.ok(
                "restore a snapshot whose source was deleted",
                "CSI §Snapshot: volumes and snapshots independent ⇒ snapshot outlives its source",
                env.ctl.create_volume(r).await,
            );
        }
        Err(s) => {
            c.check(
                "DeleteVolume of a snapshot source",
                "CSI DeleteVolume: dependent snapshots → FAILED_PRECONDITION",
                s.code() == Code::FailedPrecondition,
                show(&s),
            );
        }
    }

    // DeleteSnapshot.
    let dreq = DeleteSnapshotRequest {
        snapshot_id: snap.snapshot_id.clone(),
        ..Default::default()
    };
    c.ok(
        "DeleteSnapshot",
        "CSI DeleteSnapshot",
        env.ctl.delete_snapshot(dreq.clone()).await,
    );
    c.ok(
        "DeleteSnapshot repeat",
        "CSI DeleteSnapshot: unknown → OK",
        env.ctl.delete_snapshot(dreq).await,
    );
    c.code(
        "DeleteSnapshot without snapshot_id",
        R_INVALID,
        env.ctl
            .delete_snapshot(DeleteSnapshotRequest::default())
            .await,
        Code::InvalidArgument,
    );
    c.code(
        "DeleteSnapshot id with traversal",
        R_IDS,
        env.ctl
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: "../../x".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    c.code(
        "DeleteSnapshot id of 129 bytes",
        R_128,
        env.ctl
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: long(129),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    let listed = env.list_snapshots().await;
    c.check(
        "deleted snapshot not listed",
        "CSI ListSnapshots",
        listed.iter().all(|s| s.snapshot_id != snap.snapshot_id),
        &listed,
    );
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_snapshots() {
    if !testkit::require_root("group_snapshots") {
        return;
    }
    let mut env = Env::new(PoolFs::Xfs(512 << 20)).await;
    let mut c = Checks::new("group_snapshots");
    let a = env.create("g-a", 32 * MIB).await;
    let b = env.create("g-b", 32 * MIB).await;
    let x = env.create("g-x", 32 * MIB).await;
    let req = CreateVolumeGroupSnapshotRequest {
        name: "group-1".into(),
        source_volume_ids: vec![a.volume_id.clone(), b.volume_id.clone()],
        ..Default::default()
    };
    let g = c
        .ok(
            "CreateVolumeGroupSnapshot",
            "CSI CreateVolumeGroupSnapshot",
            env.group.create_volume_group_snapshot(req.clone()).await,
        )
        .and_then(|r| r.group_snapshot)
        .expect("CreateVolumeGroupSnapshot must work for the rest of this test");
    let members: Vec<_> = g
        .snapshots
        .iter()
        .map(|s| s.source_volume_id.clone())
        .collect();
    c.check(
        "one snapshot per source, each with the group id",
        "CSI VolumeGroupSnapshot: snapshots[] with group_snapshot_id set",
        !g.group_snapshot_id.is_empty()
            && g.snapshots.len() == 2
            && members.contains(&a.volume_id)
            && members.contains(&b.volume_id)
            && g.snapshots
                .iter()
                .all(|s| s.group_snapshot_id == g.group_snapshot_id)
            && g.creation_time.is_some()
            && g.ready_to_use,
        &g,
    );
    let again = c
        .ok(
            "CreateVolumeGroupSnapshot repeat",
            "CSI CreateVolumeGroupSnapshot: idempotent on name + sources",
            env.group.create_volume_group_snapshot(req.clone()).await,
        )
        .and_then(|r| r.group_snapshot);
    c.check(
        "repeat returns the same group",
        "CSI CreateVolumeGroupSnapshot idempotency",
        again.as_ref().map(|x| &x.group_snapshot_id) == Some(&g.group_snapshot_id),
        &again,
    );
    let mut r = req.clone();
    r.source_volume_ids = vec![a.volume_id.clone(), x.volume_id.clone()];
    c.code(
        "CreateVolumeGroupSnapshot same name, other sources",
        "CSI CreateVolumeGroupSnapshot: same name, different sources → ALREADY_EXISTS",
        env.group.create_volume_group_snapshot(r).await,
        Code::AlreadyExists,
    );
    let mut r = req.clone();
    r.name = String::new();
    c.code(
        "CreateVolumeGroupSnapshot without name",
        R_INVALID,
        env.group.create_volume_group_snapshot(r).await,
        Code::InvalidArgument,
    );
    let mut r = req.clone();
    r.name = "group-empty".into();
    r.source_volume_ids.clear();
    c.code(
        "CreateVolumeGroupSnapshot without sources",
        R_INVALID,
        env.group.create_volume_group_snapshot(r).await,
        Code::InvalidArgument,
    );
    let before = env.list_snapshots().await.len();
    let mut r = req.clone();
    r.name = "group-missing".into();
    r.source_volume_ids = vec![x.volume_id.clone(), deleted_id(&mut env).await];
    c.code(
        "CreateVolumeGroupSnapshot with an unknown source",
        "CSI CreateVolumeGroupSnapshot: source does not exist → NOT_FOUND",
        env.group.create_volume_group_snapshot(r).await,
        Code::NotFound,
    );
    let after = env.list_snapshots().await.len();
    c.check(
        "failed group left no partial snapshot",
        "CSI CreateVolumeGroupSnapshot: the SP cleans up partial snapshots itself",
        after == before,
        (before, after),
    );

    let ids: Vec<_> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    let get = |gid: &str, ids: Vec<String>| GetVolumeGroupSnapshotRequest {
        group_snapshot_id: gid.into(),
        snapshot_ids: ids,
        ..Default::default()
    };
    if let Some(r) = c.ok(
        "GetVolumeGroupSnapshot",
        "CSI GetVolumeGroupSnapshot",
        env.group
            .get_volume_group_snapshot(get(&g.group_snapshot_id, ids.clone()))
            .await,
    ) {
        c.check(
            "GetVolumeGroupSnapshot returns the group",
            "CSI GetVolumeGroupSnapshot",
            r.group_snapshot.as_ref().map(|x| &x.group_snapshot_id) == Some(&g.group_snapshot_id),
            &r,
        );
    }
    c.code(
        "GetVolumeGroupSnapshot with mismatched snapshot_ids",
        "CSI GetVolumeGroupSnapshot: snapshot_ids mismatch → INVALID_ARGUMENT",
        env.group
            .get_volume_group_snapshot(get(&g.group_snapshot_id, vec![ids[0].clone()]))
            .await,
        Code::InvalidArgument,
    );
    c.code(
        "GetVolumeGroupSnapshot without id",
        R_INVALID,
        env.group
            .get_volume_group_snapshot(get("", ids.clone()))
            .await,
        Code::InvalidArgument,
    );
    c.code(
        "DeleteSnapshot of a group member",
        "k8s-semantics §5.4: DeleteSnapshot of a snapshot in a group → INVALID_ARGUMENT",
        env.ctl
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: ids[0].clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    // A member restores like any snapshot.
    let mut r = create_req("from-group", 32 * MIB);
    r.volume_content_source = Some(snapshot_source(&ids[0]));
    c.ok(
        "restore from a group member",
        "CSI: group snapshots are usable as a volume source",
        env.ctl.create_volume(r).await,
    );
    let del = |gid: &str, ids: Vec<String>| DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: gid.into(),
        snapshot_ids: ids,
        ..Default::default()
    };
    c.code(
        "DeleteVolumeGroupSnapshot with mismatched snapshot_ids",
        "CSI DeleteVolumeGroupSnapshot: snapshot_ids mismatch → INVALID_ARGUMENT",
        env.group
            .delete_volume_group_snapshot(del(&g.group_snapshot_id, vec![ids[1].clone()]))
            .await,
        Code::InvalidArgument,
    );
    c.code(
        "DeleteVolumeGroupSnapshot without group_snapshot_id",
        R_INVALID,
        env.group
            .delete_volume_group_snapshot(del("", ids.clone()))
            .await,
        Code::InvalidArgument,
    );
    c.ok(
        "DeleteVolumeGroupSnapshot",
        "CSI DeleteVolumeGroupSnapshot",
        env.group
            .delete_volume_group_snapshot(del(&g.group_snapshot_id, ids.clone()))
            .await,
    );
    c.ok(
        "DeleteVolumeGroupSnapshot repeat",
        "CSI DeleteVolumeGroupSnapshot: unknown → OK",
        env.group
            .delete_volume_group_snapshot(del(&g.group_snapshot_id, ids.clone()))
            .await,
    );
    c.code(
        "GetVolumeGroupSnapshot after delete",
        "CSI GetVolumeGroupSnapshot: does not exist → NOT_FOUND",
        env.group
            .get_volume_group_snapshot(get(&g.group_snapshot_id, ids.clone()))
            .await,
        Code::NotFound,
    );
    let left = env.list_snapshots().await;
    c.check(
        "group members gone with the group",
        "CSI DeleteVolumeGroupSnapshot deletes its snapshots",
        left.iter().all(|s| !ids.contains(&s.snapshot_id)),
        &left,
    );
    c.finish();
}

// ---------------------------------------------------------------- Expand, Modify

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_expand_and_modify() {
    if !testkit::require_root("controller_expand_and_modify") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let mut c = Checks::new("controller_expand_and_modify");
    let gone_vol = deleted_id(&mut env).await;
    let v = env.create("pvc-grow", 64 * MIB).await;
    let expand = |id: &str, req: i64, lim: i64| ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        }),
        volume_capability: Some(snw()),
        ..Default::default()
    };
    if let Some(r) = c.ok(
        "ControllerExpandVolume",
        "CSI ControllerExpandVolume",
        env.ctl
            .controller_expand_volume(expand(&v.volume_id, 96 * MIB, 0))
            .await,
    ) {
        c.check(
            "expanded capacity and node expansion required for a mount volume",
            "CSI ControllerExpandVolume: capacity_bytes ≥ required; node_expansion_required for a filesystem",
            r.capacity_bytes >= 96 * MIB && r.node_expansion_required,
            r,
        );
    }
    if let Some(r) = c.ok(
        "ControllerExpandVolume repeat",
        "CSI ControllerExpandVolume: already ≥ target → OK",
        env.ctl
            .controller_expand_volume(expand(&v.volume_id, 96 * MIB, 0))
            .await,
    ) {
        c.check(
            "repeat keeps the size",
            "CSI ControllerExpandVolume idempotency",
            r.capacity_bytes >= 96 * MIB,
            r,
        );
    }
    if let Some(r) = c.ok(
        "ControllerExpandVolume to a smaller size",
        "CSI ControllerExpandVolume: already ≥ target → OK",
        env.ctl
            .controller_expand_volume(expand(&v.volume_id, 32 * MIB, 0))
            .await,
    ) {
        c.check(
            "never shrinks",
            "CSI ControllerExpandVolume: volumes only grow",
            r.capacity_bytes >= 96 * MIB,
            r,
        );
    }
    c.code(
        "ControllerExpandVolume with a limit below the current size",
        "CSI ControllerExpandVolume: capacity range not supported → OUT_OF_RANGE",
        env.ctl
            .controller_expand_volume(expand(&v.volume_id, 32 * MIB, 48 * MIB))
            .await,
        Code::OutOfRange,
    );
    c.code(
        "ControllerExpandVolume unknown",
        "CSI ControllerExpandVolume: volume does not exist → NOT_FOUND",
        env.ctl
            .controller_expand_volume(expand(&gone_vol, 96 * MIB, 0))
            .await,
        Code::NotFound,
    );
    c.code(
        "ControllerExpandVolume without volume_id",
        R_INVALID,
        env.ctl
            .controller_expand_volume(expand("", 96 * MIB, 0))
            .await,
        Code::InvalidArgument,
    );
    let mut r = expand(&v.volume_id, 0, 0);
    r.capacity_range = None;
    c.code(
        "ControllerExpandVolume without capacity_range",
        R_INVALID,
        env.ctl.controller_expand_volume(r).await,
        Code::InvalidArgument,
    );

    // ModifyVolume.
    let modify = |id: &str, kv: &[(&str, &str)]| ControllerModifyVolumeRequest {
        volume_id: id.into(),
        mutable_parameters: params(kv),
        ..Default::default()
    };
    let get_params =
        |r: &ControllerGetVolumeResponse| r.volume.as_ref().map(|v| v.volume_context.clone());
    let before = env
        .ctl
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .map(|r| r.into_inner());
    c.ok(
        "ControllerModifyVolume directIO=true",
        "driver contract: mutable parameter directIO",
        env.ctl
            .controller_modify_volume(modify(&v.volume_id, &[("directIO", "true")]))
            .await,
    );
    c.ok(
        "ControllerModifyVolume repeat",
        "CSI ControllerModifyVolume: idempotent",
        env.ctl
            .controller_modify_volume(modify(&v.volume_id, &[("directIO", "true")]))
            .await,
    );
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let bad: &[Case] = &[
        (
            "unknown key next to a valid one",
            &[("directIO", "false"), ("bogus", "1")],
            "CSI ControllerModifyVolume: unsupported key → INVALID_ARGUMENT, nothing applied",
        ),
        (
            "immutable key fsType",
            &[("fsType", "xfs")],
            "driver contract: immutable keys → INVALID_ARGUMENT",
        ),
        (
            "directIO value not a bool",
            &[("directIO", "yes please")],
            "driver contract: directIO is \"true\"/\"false\"",
        ),
        (
            "no mutable_parameters",
            &[],
            "CSI ControllerModifyVolume: mutable_parameters REQUIRED",
        ),
    ];
    for (what, kv, rule) in bad {
        c.code(
            &format!("ControllerModifyVolume {what}"),
            rule,
            env.ctl
                .controller_modify_volume(modify(&v.volume_id, kv))
                .await,
            Code::InvalidArgument,
        );
    }
    c.code(
        "ControllerModifyVolume unknown volume",
        "CSI ControllerModifyVolume: volume does not exist → NOT_FOUND",
        env.ctl
            .controller_modify_volume(modify(&gone_vol, &[("directIO", "true")]))
            .await,
        Code::NotFound,
    );
    c.code(
        "ControllerModifyVolume without volume_id",
        R_INVALID,
        env.ctl
            .controller_modify_volume(modify("", &[("directIO", "true")]))
            .await,
        Code::InvalidArgument,
    );
    let after = env
        .ctl
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .map(|r| r.into_inner());
    c.check(
        "refused modifies left the volume's context unchanged",
        "CSI ControllerModifyVolume: INVALID_ARGUMENT ⇒ no partial change",
        before.as_ref().ok().map(get_params) == after.as_ref().ok().map(get_params),
        (&before, &after),
    );
    c.finish();
}

// ---------------------------------------------------------------- Node: info, stage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_info() {
    if !testkit::require_root("node_info") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("node_info");
    if let Some(r) = c.ok(
        "NodeGetInfo",
        "CSI NodeGetInfo",
        env.node.node_get_info(NodeGetInfoRequest {}).await,
    ) {
        c.check(
            "node_id is --node-id",
            "CSI NodeGetInfo: node_id REQUIRED",
            r.node_id == NODE,
            &r.node_id,
        );
        c.check(
            "max_volumes_per_node not negative",
            "CSI NodeGetInfo: max_volumes_per_node MUST NOT be negative",
            r.max_volumes_per_node >= 0,
            r.max_volumes_per_node,
        );
        c.check(
            "topology is topology.strata.io/node = node id",
            "driver contract: topology key topology.strata.io/node",
            r.accessible_topology == Some(node_topology(NODE)),
            &r.accessible_topology,
        );
    }
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stage_unstage() {
    if !testkit::require_root("node_stage_unstage") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let mut c = Checks::new("node_stage_unstage");
    let gone_vol = deleted_id(&mut env).await;
    let v = env.create("pvc-stage", 64 * MIB).await;
    let staging = env.driver.mkdir("staging");
    let mut flags = snw();
    if let Some(volume_capability::AccessType::Mount(m)) = &mut flags.access_type {
        m.mount_flags = vec!["noatime".into()];
    }
    let req = stage_req(&v, &staging, flags.clone());
    c.ok(
        "NodeStageVolume",
        "CSI NodeStageVolume",
        env.node.node_stage_volume(req.clone()).await,
    );
    let m = mount_at(&staging);
    c.check(
        "staged filesystem mounted at staging_target_path with mount_flags",
        "driver contract: mount at the staging path with mount_flags",
        m.as_ref()
            .is_some_and(|m| m.fs_type == "ext4" && m.mount_options.contains("noatime")),
        &m,
    );
    c.ok(
        "NodeStageVolume repeat",
        "CSI NodeStageVolume: already staged with the same cap → OK",
        env.node.node_stage_volume(req.clone()).await,
    );
    let mounts = testkit::mounts_under(env.driver.dir()).len();
    c.check(
        "repeat did not stack a second mount",
        "idempotent NodeStageVolume changes nothing",
        mounts == 1,
        testkit::mounts_under(env.driver.dir()),
    );
    let mut other = req.clone();
    other.volume_capability = Some(cap_mode(Mode::SingleNodeReaderOnly));
    c.code(
        "NodeStageVolume same path, other access mode",
        "CSI NodeStageVolume: staged at that path with an incompatible cap → ALREADY_EXISTS",
        env.node.node_stage_volume(other).await,
        Code::AlreadyExists,
    );
    let mut other = req.clone();
    other.volume_capability = Some(block_cap(Mode::SingleNodeWriter));
    c.code(
        "NodeStageVolume same path, block instead of mount",
        "CSI NodeStageVolume: staged at that path with an incompatible cap → ALREADY_EXISTS",
        env.node.node_stage_volume(other).await,
        Code::AlreadyExists,
    );

    let v2 = env.create("pvc-stage-2", 64 * MIB).await;
    let st2 = env.driver.mkdir("staging-2");
    let base = stage_req(&v2, &st2, snw());
    let mut cases: Vec<(&str, NodeStageVolumeRequest, &str)> = Vec::new();
    let mut r = base.clone();
    r.volume_id = String::new();
    cases.push(("without volume_id", r, R_INVALID));
    let mut r = base.clone();
    r.staging_target_path = String::new();
    cases.push(("without staging_target_path", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capability = None;
    cases.push(("without volume_capability", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capability = Some(VolumeCapability {
        access_type: None,
        access_mode: Some(volume_capability::AccessMode { mode: 1 }),
    });
    cases.push(("capability without access_type", r, R_INVALID));
    let mut r = base.clone();
    r.staging_target_path = "relative/staging".into();
    cases.push((
        "relative staging path",
        r,
        "bad paths get a clear error (INVALID_ARGUMENT)",
    ));
    let mut r = base.clone();
    r.staging_target_path = format!("{}/../staging-2", st2.display());
    cases.push((
        "staging path with ..",
        r,
        "path traversal in target paths → INVALID_ARGUMENT",
    ));
    let mut r = base.clone();
    r.volume_id = long(129);
    cases.push(("volume_id of 129 bytes", r, R_128));
    let mut r = base.clone();
    r.volume_id = "../../etc".into();
    cases.push(("volume_id with traversal", r, R_IDS));
    let mut r = base.clone();
    r.secrets = big_map();
    cases.push(("secrets over 4 KiB", r, R_4K));
    for (what, req, rule) in cases {
        c.code(
            &format!("NodeStageVolume {what}"),
            rule,
            env.node.node_stage_volume(req).await,
            Code::InvalidArgument,
        );
    }
    let mut r = base.clone();
    r.volume_capability = Some(mount_cap("btrfs", Mode::SingleNodeWriter));
    c.code_in(
        "NodeStageVolume fs_type btrfs",
        "CSI NodeStageVolume: capability not supported → FAILED_PRECONDITION (or INVALID_ARGUMENT)",
        env.node.node_stage_volume(r).await,
        &[Code::FailedPrecondition, Code::InvalidArgument],
    );
    let mut r = base.clone();
    r.volume_id = deleted_id(&mut env).await;
    c.code(
        "NodeStageVolume unknown volume",
        "CSI NodeStageVolume: volume does not exist → NOT_FOUND",
        env.node.node_stage_volume(r).await,
        Code::NotFound,
    );
    // The CO creates the staging dir; the driver must not mount through a symlink it finds
    // there.
    let elsewhere = env.driver.mkdir("elsewhere");
    let link = env.driver.path("staging-link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let r = env
        .node
        .node_stage_volume(stage_req(&v2, &link, snw()))
        .await;
    c.check(
        "NodeStageVolume onto a symlinked staging path fails",
        "symlink tricks in target paths: never mount through a symlink",
        r.is_err(),
        r.map(|r| r.into_inner()),
    );
    c.check(
        "nothing mounted at the symlink's target",
        "symlink tricks in target paths",
        mount_at(&elsewhere).is_none(),
        mount_at(&elsewhere),
    );
    c.check(
        "bad stages mounted nothing and attached no extra loop device",
        "bad input changes nothing",
        mount_at(&st2).is_none()
            && tokio::task::block_in_place(|| settle(|| env.pool.loop_devices().len() == 1)),
        (
            env.pool.loop_devices(),
            testkit::mounts_under(env.driver.dir()),
        ),
    );

    // Unstage.
    let unstage = |id: &str, p: &Path| NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: path_str(p),
    };
    c.code(
        "NodeUnstageVolume without volume_id",
        R_INVALID,
        env.node.node_unstage_volume(unstage("", &staging)).await,
        Code::InvalidArgument,
    );
    c.code(
        "NodeUnstageVolume without staging_target_path",
        R_INVALID,
        env.node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    c.ok(
        "NodeUnstageVolume",
        "CSI NodeUnstageVolume",
        env.node
            .node_unstage_volume(unstage(&v.volume_id, &staging))
            .await,
    );
    c.check(
        "unstage unmounts and detaches",
        "driver contract: NodeUnstageVolume undoes the stage",
        mount_at(&staging).is_none()
            && tokio::task::block_in_place(|| settle(|| env.pool.loop_devices().is_empty())),
        (mount_at(&staging), env.pool.loop_devices()),
    );
    c.ok(
        "NodeUnstageVolume repeat",
        "CSI NodeUnstageVolume: not staged → OK",
        env.node
            .node_unstage_volume(unstage(&v.volume_id, &staging))
            .await,
    );
    c.ok(
        "NodeUnstageVolume of an unknown volume",
        "CSI NodeUnstageVolume: unknown / not staged → OK",
        env.node
            .node_unstage_volume(unstage(&gone_vol, &staging))
            .await,
    );
    // Staging again formats nothing anew: data written survives unstage + stage.
    let st = env.stage(&v, "staging", snw()).await;
    let (_, err) = write_pattern(&st.join("keep"), 1 << 20, 7);
    assert!(err.is_none(), "write to staged volume: {err:?}");
    env.unstage(&v.volume_id, &st).await;
    let st = env.stage(&v, "staging", snw()).await;
    c.check(
        "a second stage keeps the filesystem",
        "driver contract: make the filesystem only if the image has none",
        has_pattern(&st.join("keep"), 1 << 20, 7),
        "data lost across unstage/stage",
    );
    env.unstage(&v.volume_id, &st).await;
    c.finish();
}

// ---------------------------------------------------------------- Node: publish

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_publish_unpublish() {
    if !testkit::require_root("node_publish_unpublish") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let mut c = Checks::new("node_publish_unpublish");
    let gone_vol = deleted_id(&mut env).await;
    let v = env.create("pvc-pub", 64 * MIB).await;
    let staging = env.stage(&v, "staging", snw()).await;
    let target = env.target_path("pod-1");
    let req = publish_req(&v, &staging, &target, snw(), false);
    c.ok(
        "NodePublishVolume",
        "CSI NodePublishVolume",
        env.node.node_publish_volume(req.clone()).await,
    );
    c.check(
        "the SP created target_path and mounted it",
        "CSI NodePublishVolume: the SP creates target_path",
        target.is_dir() && mount_at(&target).is_some_and(|m| !m.read_only()),
        mount_at(&target),
    );
    c.ok(
        "NodePublishVolume repeat",
        "CSI NodePublishVolume: same target and args → OK",
        env.node.node_publish_volume(req.clone()).await,
    );
    let stacked = testkit::mountinfo()
        .into_iter()
        .filter(|m| m.mount_point == target)
        .count();
    c.check(
        "repeat did not stack a second mount",
        "idempotent NodePublishVolume changes nothing",
        stacked == 1,
        stacked,
    );

    let base = publish_req(&v, &staging, &env.target_path("pod-bad"), snw(), false);
    let mut cases: Vec<(&str, NodePublishVolumeRequest, &str)> = Vec::new();
    let mut r = base.clone();
    r.volume_id = String::new();
    cases.push(("without volume_id", r, R_INVALID));
    let mut r = base.clone();
    r.target_path = String::new();
    cases.push(("without target_path", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capability = None;
    cases.push(("without volume_capability", r, R_INVALID));
    let mut r = base.clone();
    r.volume_capability = Some(VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: None,
    });
    cases.push(("capability without access_mode", r, R_INVALID));
    let mut r = base.clone();
    r.target_path = "relative/target".into();
    cases.push((
        "relative target path",
        r,
        "bad paths get a clear error (INVALID_ARGUMENT)",
    ));
    let mut r = base.clone();
    r.target_path = format!("{}/../../escape", staging.display());
    cases.push((
        "target path with ..",
        r,
        "path traversal in target paths → INVALID_ARGUMENT",
    ));
    let mut r = base.clone();
    r.volume_id = long(129);
    cases.push(("volume_id of 129 bytes", r, R_128));
    let mut r = base.clone();
    r.volume_id = "..%2f..".into();
    cases.push(("volume_id outside the charset", r, R_IDS));
    let mut r = base.clone();
    r.secrets = big_map();
    cases.push(("secrets over 4 KiB", r, R_4K));
    for (what, req, rule) in cases {
        c.code(
            &format!("NodePublishVolume {what}"),
            rule,
            env.node.node_publish_volume(req).await,
            Code::InvalidArgument,
        );
    }
    let mut r = base.clone();
    r.staging_target_path = String::new();
    c.code(
        "NodePublishVolume without staging_target_path",
        "CSI NodePublishVolume: STAGE_UNSTAGE advertised and no staging path → FAILED_PRECONDITION",
        env.node.node_publish_volume(r).await,
        Code::FailedPrecondition,
    );
    let mut r = base.clone();
    r.staging_target_path = path_str(&env.driver.mkdir("never-staged"));
    c.code(
        "NodePublishVolume from a staging path that is not staged",
        "CSI NodePublishVolume: volume not staged there → FAILED_PRECONDITION",
        env.node.node_publish_volume(r).await,
        Code::FailedPrecondition,
    );
    let mut r = base.clone();
    r.volume_id = deleted_id(&mut env).await;
    c.code(
        "NodePublishVolume unknown volume",
        "CSI NodePublishVolume: volume does not exist → NOT_FOUND",
        env.node.node_publish_volume(r).await,
        Code::NotFound,
    );
    // A target that is a symlink to elsewhere must not be mounted through.
    let elsewhere = env.driver.mkdir("elsewhere");
    let link = env.target_path("pod-link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let r = env
        .node
        .node_publish_volume(publish_req(&v, &staging, &link, snw(), false))
        .await;
    c.check(
        "NodePublishVolume onto a symlinked target fails",
        "symlink tricks in target paths: never mount through a symlink",
        r.is_err(),
        r.map(|r| r.into_inner()),
    );
    c.check(
        "nothing mounted at the symlink's target",
        "symlink tricks in target paths",
        mount_at(&elsewhere).is_none(),
        mount_at(&elsewhere),
    );

    // Unpublish.
    let unpub = |id: &str, p: &Path| NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: path_str(p),
    };
    c.code(
        "NodeUnpublishVolume without volume_id",
        R_INVALID,
        env.node.node_unpublish_volume(unpub("", &target)).await,
        Code::InvalidArgument,
    );
    c.code(
        "NodeUnpublishVolume without target_path",
        R_INVALID,
        env.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                target_path: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    c.ok(
        "NodeUnpublishVolume",
        "CSI NodeUnpublishVolume",
        env.node
            .node_unpublish_volume(unpub(&v.volume_id, &target))
            .await,
    );
    c.check(
        "unpublish removes what publish created",
        "CSI NodeUnpublishVolume: delete what was created at target_path",
        !target.exists() && mount_at(&target).is_none(),
        target.exists(),
    );
    c.ok(
        "NodeUnpublishVolume repeat",
        "CSI NodeUnpublishVolume: idempotent",
        env.node
            .node_unpublish_volume(unpub(&v.volume_id, &target))
            .await,
    );
    c.ok(
        "NodeUnpublishVolume of an unknown volume",
        "CSI NodeUnpublishVolume: unknown / not published → OK",
        env.node
            .node_unpublish_volume(unpub(&gone_vol, &target))
            .await,
    );

    // Read-only publish (after the rw one is gone: single-node-writer allows one publish).
    let ro = env.publish(&v, &staging, "pod-ro", snw(), true).await;
    c.check(
        "readonly publish is a read-only mount",
        "CSI NodePublishVolume: readonly → read-only mount",
        mount_at(&ro).is_some_and(|m| m.read_only()),
        mount_at(&ro),
    );
    env.unpublish(&v.volume_id, &ro).await;

    // Block.
    let b = env.create("pvc-block", 32 * MIB).await;
    let bst = env
        .stage(&b, "block-staging", block_cap(Mode::SingleNodeWriter))
        .await;
    let bt = env.target_path("pod-block");
    c.ok(
        "NodePublishVolume block",
        "CSI NodePublishVolume: Block → the device at target_path",
        env.node
            .node_publish_volume(publish_req(
                &b,
                &bst,
                &bt,
                block_cap(Mode::SingleNodeWriter),
                false,
            ))
            .await,
    );
    let ft = std::fs::metadata(&bt).map(|m| m.file_type().is_block_device());
    c.check(
        "block target is a block device",
        "driver contract: Block volumes published as the device node",
        matches!(ft, Ok(true)),
        ft,
    );
    env.unpublish(&b.volume_id, &bt).await;
    c.check(
        "block unpublish removes the target",
        "CSI NodeUnpublishVolume: delete what was created at target_path",
        !bt.exists(),
        &bt,
    );
    env.unstage(&b.volume_id, &bst).await;
    env.unstage(&v.volume_id, &staging).await;
    c.finish();
}

/// The k8s-semantics §5.6 matrix for a second NodePublishVolume of one volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_publish_matrix() {
    if !testkit::require_root("second_publish_matrix") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let mut c = Checks::new("second_publish_matrix");
    let mut modes = vec![Mode::SingleNodeWriter];
    let node_caps = env.node_caps().await;
    let snmw =
        node_caps.contains(&(node_service_capability::rpc::Type::SingleNodeMultiWriter as i32));
    if snmw {
        modes.extend([Mode::SingleNodeSingleWriter, Mode::SingleNodeMultiWriter]);
    }
    // Multi-node modes only where the driver confirms them for a volume.
    let probe = env.create("probe-modes", 16 * MIB).await;
    for m in [Mode::MultiNodeMultiWriter] {
        let r = env
            .ctl
            .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: probe.volume_id.clone(),
                volume_capabilities: vec![cap_mode(m)],
                volume_context: probe.volume_context.clone(),
                ..Default::default()
            })
            .await;
        if r.is_ok_and(|r| r.into_inner().confirmed.is_some()) {
            modes.push(m);
        }
    }
    for (i, mode) in modes.iter().enumerate() {
        let multi = matches!(
            mode,
            Mode::SingleNodeMultiWriter | Mode::MultiNodeMultiWriter
        );
        let mut req = create_req(&format!("matrix-{i}"), 32 * MIB);
        req.volume_capabilities = vec![cap_mode(*mode)];
        let v = env.create_req(req).await;
        let st = env
            .stage(&v, &format!("m{i}-staging"), cap_mode(*mode))
            .await;
        let t1 = env.target_path(&format!("m{i}-t1"));
        let t2 = env.target_path(&format!("m{i}-t2"));
        let t3 = env.target_path(&format!("m{i}-t3"));
        let p = |t: &Path, ro: bool| publish_req(&v, &st, t, cap_mode(*mode), ro);
        env.node
            .node_publish_volume(p(&t1, false))
            .await
            .unwrap_or_else(|s| panic!("first publish {mode:?}: {}", show(&s)));
        let rule =
            |cell: &str| format!("k8s-semantics §5.6 second-publish matrix, {mode:?}, {cell}");
        c.ok(
            &format!("{mode:?}: T1=T2, P1=P2"),
            &rule("T1=T2,P1=P2 → OK"),
            env.node.node_publish_volume(p(&t1, false)).await,
        );
        c.code(
            &format!("{mode:?}: T1=T2, P1≠P2"),
            &rule("T1=T2,P1≠P2 → ALREADY_EXISTS"),
            env.node.node_publish_volume(p(&t1, true)).await,
            Code::AlreadyExists,
        );
        if multi {
            c.ok(
                &format!("{mode:?}: T1≠T2, P1=P2"),
                &rule("T1≠T2,P1=P2 → OK"),
                env.node.node_publish_volume(p(&t2, false)).await,
            );
            c.ok(
                &format!("{mode:?}: T1≠T2, P1≠P2"),
                &rule("T1≠T2,P1≠P2 → OK"),
                env.node.node_publish_volume(p(&t3, true)).await,
            );
        } else {
            c.code(
                &format!("{mode:?}: T1≠T2, P1=P2"),
                &rule("T1≠T2,P1=P2 → FAILED_PRECONDITION"),
                env.node.node_publish_volume(p(&t2, false)).await,
                Code::FailedPrecondition,
            );
            c.code(
                &format!("{mode:?}: T1≠T2, P1≠P2"),
                &rule("T1≠T2,P1≠P2 → FAILED_PRECONDITION"),
                env.node.node_publish_volume(p(&t3, true)).await,
                Code::FailedPrecondition,
            );
            c.check(
                &format!("{mode:?}: refused publishes mounted nothing"),
                "a refused publish changes nothing",
                mount_at(&t2).is_none() && mount_at(&t3).is_none(),
                (mount_at(&t2), mount_at(&t3)),
            );
        }
        for t in [&t1, &t2, &t3] {
            env.unpublish(&v.volume_id, t).await;
        }
        env.unstage(&v.volume_id, &st).await;
    }
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stats_and_expand() {
    if !testkit::require_root("node_stats_and_expand") {
        return;
    }
    // xfs: it grows online with CAP_SYS_ADMIN alone (ext4 also needs CAP_SYS_RESOURCE,
    // see data.rs).
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("node_stats_and_expand");
    let gone_vol = deleted_id(&mut env).await;
    let v = env.create_fs("pvc-stats", 320 * MIB, "xfs").await;
    let staging = env.stage(&v, "staging", xfs_snw()).await;
    let target = env.publish(&v, &staging, "pod", xfs_snw(), false).await;
    let stats = |id: &str, p: &Path| NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path_str(p),
        staging_target_path: String::new(),
    };
    for (what, path) in [("published", &target), ("staged", &staging)] {
        if let Some(r) = c.ok(
            &format!("NodeGetVolumeStats on the {what} path"),
            "CSI NodeGetVolumeStats: volume_path is any staged or published path",
            env.node
                .node_get_volume_stats(stats(&v.volume_id, path))
                .await,
        ) {
            let bytes = r
                .usage
                .iter()
                .find(|u| u.unit == volume_usage::Unit::Bytes as i32);
            let inodes = r
                .usage
                .iter()
                .find(|u| u.unit == volume_usage::Unit::Inodes as i32);
            c.check(
                &format!("{what}: bytes and inodes usage"),
                "driver contract: NodeGetVolumeStats gives this volume's bytes and inodes",
                bytes.is_some_and(|u| u.total > 0 && u.total <= 320 * MIB && u.used > 0)
                    && inodes.is_some_and(|u| u.total > 0),
                &r.usage,
            );
            c.check(
                &format!("{what}: normal condition"),
                "VOLUME_CONDITION: healthy volume is not abnormal",
                r.volume_condition.as_ref().is_some_and(|c| !c.abnormal),
                &r.volume_condition,
            );
        }
    }
    c.code(
        "NodeGetVolumeStats without volume_id",
        R_INVALID,
        env.node.node_get_volume_stats(stats("", &target)).await,
        Code::InvalidArgument,
    );
    c.code(
        "NodeGetVolumeStats without volume_path",
        R_INVALID,
        env.node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: v.volume_id.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    let empty = env.driver.mkdir("not-a-volume");
    c.code(
        "NodeGetVolumeStats on a path where the volume is not",
        "CSI NodeGetVolumeStats: volume not present at volume_path → NOT_FOUND",
        env.node
            .node_get_volume_stats(stats(&v.volume_id, &empty))
            .await,
        Code::NotFound,
    );
    // csi-sanity's "volume not found" cases send a relative path: no volume can be there.
    for (volume_id, what) in [(&v.volume_id, "known"), (&gone_vol, "unknown")] {
        c.code(
            &format!("NodeGetVolumeStats of a {what} volume at a relative path"),
            "CSI NodeGetVolumeStats: volume not present at volume_path → NOT_FOUND",
            env.node
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: volume_id.clone(),
                    volume_path: "some/path".into(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
        );
    }
    c.code(
        "NodeGetVolumeStats unknown volume",
        "CSI NodeGetVolumeStats: volume does not exist → NOT_FOUND",
        env.node
            .node_get_volume_stats(stats(&gone_vol, &target))
            .await,
        Code::NotFound,
    );

    // NodeExpandVolume.
    env.ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 448 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(xfs_snw()),
            ..Default::default()
        })
        .await
        .expect("ControllerExpandVolume");
    let expand = |id: &str, p: &Path| NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: path_str(p),
        staging_target_path: path_str(&staging),
        capacity_range: Some(CapacityRange {
            required_bytes: 448 * MIB,
            limit_bytes: 0,
        }),
        volume_capability: Some(xfs_snw()),
        ..Default::default()
    };
    if let Some(r) = c.ok(
        "NodeExpandVolume",
        "CSI NodeExpandVolume",
        env.node
            .node_expand_volume(expand(&v.volume_id, &target))
            .await,
    ) {
        c.check(
            "NodeExpandVolume capacity",
            "CSI NodeExpandVolume: capacity_bytes ≥ required",
            r.capacity_bytes == 0 || r.capacity_bytes >= 448 * MIB,
            r.capacity_bytes,
        );
    }
    c.ok(
        "NodeExpandVolume repeat",
        "CSI NodeExpandVolume: already ≥ target → OK",
        env.node
            .node_expand_volume(expand(&v.volume_id, &target))
            .await,
    );
    c.code(
        "NodeExpandVolume without volume_id",
        R_INVALID,
        env.node.node_expand_volume(expand("", &target)).await,
        Code::InvalidArgument,
    );
    c.code(
        "NodeExpandVolume without volume_path",
        R_INVALID,
        env.node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_path: String::new(),
                ..expand(&v.volume_id, &target)
            })
            .await,
        Code::InvalidArgument,
    );
    c.code(
        "NodeExpandVolume at a relative path",
        "CSI NodeExpandVolume: volume not found at volume_path → NOT_FOUND",
        env.node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_path: "some/path".into(),
                staging_target_path: String::new(),
                ..expand(&gone_vol, &target)
            })
            .await,
        Code::NotFound,
    );
    c.code(
        "NodeExpandVolume unknown volume",
        "CSI NodeExpandVolume: volume does not exist → NOT_FOUND",
        env.node
            .node_expand_volume(expand(&gone_vol, &target))
            .await,
        Code::NotFound,
    );
    c.code(
        "NodeExpandVolume on a path where the volume is not",
        "CSI NodeExpandVolume: volume_path not a staged/published path of the volume → NOT_FOUND",
        env.node
            .node_expand_volume(NodeExpandVolumeRequest {
                staging_target_path: String::new(),
                ..expand(&v.volume_id, &empty)
            })
            .await,
        Code::NotFound,
    );
    env.unpublish(&v.volume_id, &target).await;
    env.unstage(&v.volume_id, &staging).await;
    c.finish();
}

// ---------------------------------------------------------------- Busy → ABORTED

/// Two operations on one volume at once: the second gets ABORTED while the first is running,
/// and succeeds after it. The first CreateSnapshot is held at its failpoint (armed `=hold`)
/// after it has taken its locks and written its intent, so it is in flight for exactly as
/// long as the test needs, whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_on_one_volume_are_aborted() {
    if !testkit::require_root("concurrent_operations_on_one_volume_are_aborted") {
        return;
    }
    const HELD: &str = "create_snapshot:after_intent";
    let mut env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("concurrent_operations_on_one_volume_are_aborted");
    let v = env.create("pvc-busy", 64 * MIB).await;
    env.restart(&[&format!("{HELD}=hold")]).await;

    let req = CreateSnapshotRequest {
        name: "held-snap".into(),
        source_volume_id: v.volume_id.clone(),
        ..Default::default()
    };
    let first = tokio::spawn({
        let mut ctl = env.ctl.clone();
        let req = req.clone();
        async move { ctl.create_snapshot(req).await }
    });
    env.driver.wait_held(HELD, WAIT);
    let same = env.ctl.create_snapshot(req.clone()).await;
    let expand = env
        .ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 128 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(snw()),
            ..Default::default()
        })
        .await;
    let delete = env
        .ctl
        .delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await;
    assert!(!first.is_finished(), "the held CreateSnapshot answered");
    c.code_in(
        "CreateSnapshot of the same name while the first is in flight",
        "CSI CreateSnapshot: operation pending for the snapshot → ABORTED",
        same,
        &[Code::Aborted],
    );
    c.code(
        "ControllerExpandVolume while a snapshot of it is being cut",
        "CSI §Error Scheme / k8s-semantics §5.2: a second operation on a busy volume → ABORTED",
        expand,
        Code::Aborted,
    );
    c.code(
        "DeleteVolume while a snapshot of it is being cut",
        "CSI §Error Scheme: an operation pending for the volume → ABORTED",
        delete,
        Code::Aborted,
    );
    env.driver.release(HELD);
    c.ok(
        "the first CreateSnapshot",
        "the in-flight operation completes",
        first.await.unwrap(),
    );
    c.ok(
        "CreateSnapshot retried after the first finished",
        "CSI CreateSnapshot idempotency",
        env.ctl.create_snapshot(req).await,
    );
    c.finish();
}

// ---------------------------------------------------------------- Ephemeral inline volumes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_inline_volume() {
    if !testkit::require_root("ephemeral_inline_volume") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let mut c = Checks::new("ephemeral_inline_volume");
    let target = env.target_path("pod-eph");
    let req = NodePublishVolumeRequest {
        volume_id: "csi-0123456789abcdef".into(),
        target_path: path_str(&target),
        volume_capability: Some(snw()),
        readonly: false,
        volume_context: params(&[("csi.storage.k8s.io/ephemeral", "true"), ("pool", POOL)]),
        ..Default::default()
    };
    c.ok(
        "NodePublishVolume ephemeral",
        "driver contract: ephemeral inline volumes",
        env.node.node_publish_volume(req.clone()).await,
    );
    c.check(
        "ephemeral volume mounted and writable",
        "driver contract: ephemeral inline volumes",
        mount_at(&target).is_some() && write_pattern(&target.join("f"), 4096, 1).1.is_none(),
        mount_at(&target),
    );
    c.ok(
        "NodePublishVolume ephemeral repeat",
        "CSI NodePublishVolume idempotency",
        env.node.node_publish_volume(req.clone()).await,
    );
    c.ok(
        "NodeUnpublishVolume ephemeral",
        "CSI NodeUnpublishVolume",
        env.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: req.volume_id.clone(),
                target_path: req.target_path.clone(),
            })
            .await,
    );
    tokio::task::block_in_place(|| {
        testkit::wait_for("ephemeral volume to go", Duration::from_secs(10), || {
            env.pool.loop_devices().is_empty().then_some(())
        })
    });
    c.check(
        "unpublish deletes the ephemeral volume",
        "ephemeral volumes live as long as their publish",
        env.pool.files().is_empty() && !target.exists(),
        env.pool.files(),
    );
    c.finish();
}

// ---------------------------------------------------------------- Other users of loop devices

/// The driver shares the machine's loop devices with everyone else. It must only ever detach
/// devices it attached itself, also when a device number it used a moment ago has just been
/// freed and taken by another process (autoclear runs down asynchronously after umount).
/// A foreign attacher grabs free devices over and over while the driver stages and unstages;
/// none of the foreign devices may be detached under its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_loop_devices_are_never_detached() {
    if !testkit::require_root("foreign_loop_devices_are_never_detached") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let vol = env.create("churn", 32 * MIB).await;
    let foreign = LoopPool::dir();
    let file = foreign.path().join("foreign.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacher = std::thread::spawn({
        let stop = stop.clone();
        let file = file.clone();
        let root = foreign.root().to_owned();
        move || {
            let mut stolen = Vec::new();
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new("losetup")
                    .args(["--find", "--show"])
                    .arg(&file)
                    .output()
                    .unwrap();
                let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if dev.is_empty() {
                    continue;
                }
                rounds += 1;
                // Hold it for a few hundred sysfs reads, checking it stays ours.
                for _ in 0..300 {
                    let now = testkit::LoopDevice::by_name(&dev);
                    if now.as_ref().map(|l| &l.backing_file) != Some(&file) {
                        stolen.push(format!("{dev}: now {now:?}"));
                        break;
                    }
                }
                let _ = testkit::detach_loop_if_backed_under(std::path::Path::new(&dev), &root);
            }
            (rounds, stolen)
        }
    });
    let staging = env.driver.mkdir("churn-staging");
    // A mount option the filesystem rejects: the stage fails after its device is attached,
    // so the driver's error path has to give the device back.
    let mut bad = snw();
    if let Some(volume_capability::AccessType::Mount(m)) = &mut bad.access_type {
        m.mount_flags = vec!["no-such-ext4-option".into()];
    }
    for _ in 0..60 {
        env.node
            .node_stage_volume(stage_req(&vol, &staging, snw()))
            .await
            .unwrap_or_else(|s| panic!("stage: {}", show(&s)));
        env.unstage(&vol.volume_id, &staging).await;
        let r = env
            .node
            .node_stage_volume(stage_req(&vol, &staging, bad.clone()))
            .await;
        assert!(r.is_err(), "a stage with a bogus mount option must fail");
    }
    tokio::task::block_in_place(|| settle(|| env.pool.loop_devices().is_empty()));
    let left = env.pool.loop_devices();
    assert!(left.is_empty(), "failed stages left loop devices: {left:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, stolen) = attacher.join().unwrap();
    assert!(rounds > 0, "the foreign attacher never got a device");
    assert!(
        stolen.is_empty(),
        "ARCHITECTURE.md invariants / safety: the driver detached {} loop device(s) it did not attach \
         (of {rounds} foreign attachments): {stolen:?}",
        stolen.len()
    );
}

// ---------------------------------------------------------------- Secrets

/// Every `secrets` field is marked `csi_secret` in csi.proto: it must never reach the log,
/// not even at trace level, nor come back in an error message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_logged() {
    if !testkit::require_root("secrets_are_never_logged") {
        return;
    }
    const MARK: &str = "s3cr3t-MARK-7f1e";
    let pool = LoopPool::dir();
    let config = DriverConfig::new(BIN, NODE)
        .pool(POOL, pool.path())
        .env("RUST_LOG", "trace");
    let driver = DriverProcess::start(config).await;
    let mut env = Env::connect(driver, pool).await;
    let secrets = params(&[("password", MARK), ("token", MARK)]);
    let mut c = Checks::new("secrets_are_never_logged");
    let mut messages = Vec::new();
    let mut note = |r: Result<(), Status>| {
        if let Err(s) = r {
            messages.push(s.message().to_owned());
        }
    };

    let mut req = create_req("secret-vol", 32 * MIB);
    req.secrets = secrets.clone();
    let vol = env.create_req(req.clone()).await;
    // The same secrets on failing requests: error paths log too.
    let mut bad = req.clone();
    bad.name = "secret-bad".into();
    bad.parameters.insert("bogus".into(), "1".into());
    note(env.ctl.create_volume(bad).await.map(drop));
    note(
        env.ctl
            .create_snapshot(CreateSnapshotRequest {
                name: "secret-snap".into(),
                source_volume_id: vol.volume_id.clone(),
                secrets: secrets.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    note(
        env.ctl
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 48 * MIB,
                    limit_bytes: 0,
                }),
                secrets: secrets.clone(),
                volume_capability: Some(snw()),
            })
            .await
            .map(drop),
    );
    note(
        env.ctl
            .controller_modify_volume(ControllerModifyVolumeRequest {
                volume_id: vol.volume_id.clone(),
                secrets: secrets.clone(),
                mutable_parameters: params(&[("directIO", "sideways")]),
            })
            .await
            .map(drop),
    );
    let staging = env.driver.mkdir("secret-staging");
    let mut st = stage_req(&vol, &staging, snw());
    st.secrets = secrets.clone();
    note(env.node.node_stage_volume(st).await.map(drop));
    let target = env.target_path("secret-pod");
    let mut pb = publish_req(&vol, &staging, &target, snw(), false);
    pb.secrets = secrets.clone();
    note(env.node.node_publish_volume(pb.clone()).await.map(drop));
    let mut pb_bad = pb.clone();
    pb_bad.target_path = "relative".into();
    note(env.node.node_publish_volume(pb_bad).await.map(drop));
    note(
        env.node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                volume_path: path_str(&target),
                staging_target_path: path_str(&staging),
                capacity_range: Some(CapacityRange {
                    required_bytes: 48 * MIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(snw()),
                secrets: secrets.clone(),
            })
            .await
            .map(drop),
    );
    env.unpublish(&vol.volume_id, &target).await;
    env.unstage(&vol.volume_id, &staging).await;
    for s in env.list_snapshots().await {
        note(
            env.ctl
                .delete_snapshot(DeleteSnapshotRequest {
                    snapshot_id: s.snapshot_id,
                    secrets: secrets.clone(),
                })
                .await
                .map(drop),
        );
    }
    note(
        env.ctl
            .delete_volume(DeleteVolumeRequest {
                volume_id: vol.volume_id.clone(),
                secrets: secrets.clone(),
            })
            .await
            .map(drop),
    );
    let log = env.driver.log_text();
    c.check(
        "the driver logged at trace level",
        "the check below looked at a real log",
        log.lines().count() > 10,
        log.lines().count(),
    );
    let leaked: Vec<_> = log.lines().filter(|l| l.contains(MARK)).collect();
    c.check(
        "no secret in the log",
        "csi.proto csi_secret / ARCHITECTURE.md invariants: secrets never logged",
        leaked.is_empty(),
        &leaked,
    );
    let echoed: Vec<_> = messages.iter().filter(|m| m.contains(MARK)).collect();
    c.check(
        "no secret in error messages",
        "csi.proto csi_secret: secrets never leave the plugin",
        echoed.is_empty(),
        &echoed,
    );
    c.finish();
}

// ---------------------------------------------------------------- Identical requests at once

/// A CO that times out and retries can have the same request in flight several times. Each
/// copy ends OK (the same result) or ABORTED ("already in progress"), and exactly one volume,
/// one mount and one loop device come out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_converge() {
    if !testkit::require_root("concurrent_identical_requests_converge") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let mut c = Checks::new("concurrent_identical_requests_converge");
    let rule = "CSI idempotency: concurrent identical requests → OK (same result) or ABORTED";
    const N: usize = 12;

    let mut set = tokio::task::JoinSet::new();
    for _ in 0..N {
        let mut ctl = env.ctl.clone();
        set.spawn(async move { ctl.create_volume(create_req("racy", 64 * MIB)).await });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(v) => {
                ids.insert(v.into_inner().volume.map(|v| v.volume_id));
            }
            Err(s) => {
                c.check(
                    "CreateVolume copy",
                    rule,
                    s.code() == Code::Aborted,
                    show(&s),
                );
            }
        }
    }
    c.check("CreateVolume copies agree", rule, ids.len() == 1, &ids);
    let files = env.pool.files();
    c.check(
        "one image for the racing creates",
        "concurrent identical creates make one volume",
        files.len() == 1,
        &files,
    );
    let vol = env.create("racy", 64 * MIB).await;

    let staging = env.driver.mkdir("racy-staging");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..N {
        let mut node = env.node.clone();
        let req = stage_req(&vol, &staging, snw());
        set.spawn(async move { node.node_stage_volume(req).await });
    }
    while let Some(r) = set.join_next().await {
        if let Err(s) = r.unwrap() {
            c.check(
                "NodeStageVolume copy",
                rule,
                s.code() == Code::Aborted,
                show(&s),
            );
        }
    }
    env.node
        .node_stage_volume(stage_req(&vol, &staging, snw()))
        .await
        .unwrap_or_else(|s| panic!("stage after the race: {}", show(&s)));
    let stacked = testkit::mountinfo()
        .into_iter()
        .filter(|m| m.mount_point == staging)
        .count();
    c.check(
        "one mount at the staging path",
        "concurrent identical stages mount once",
        stacked == 1,
        stacked,
    );
    c.check(
        "one loop device",
        "concurrent identical stages attach once",
        env.pool.loop_devices().len() == 1,
        env.pool.loop_devices(),
    );

    let target = env.target_path("racy-pod");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..N {
        let mut node = env.node.clone();
        let req = publish_req(&vol, &staging, &target, snw(), false);
        set.spawn(async move { node.node_publish_volume(req).await });
    }
    while let Some(r) = set.join_next().await {
        if let Err(s) = r.unwrap() {
            c.check(
                "NodePublishVolume copy",
                rule,
                s.code() == Code::Aborted,
                show(&s),
            );
        }
    }
    let stacked = testkit::mountinfo()
        .into_iter()
        .filter(|m| m.mount_point == target)
        .count();
    c.check(
        "one mount at the target path",
        "concurrent identical publishes mount once",
        stacked == 1,
        stacked,
    );
    env.unpublish(&vol.volume_id, &target).await;
    c.check(
        "one unpublish removes the target",
        "CSI NodeUnpublishVolume",
        mount_at(&target).is_none() && !target.exists(),
        mount_at(&target),
    );
    env.unstage(&vol.volume_id, &staging).await;
    c.finish();
}

// ---------------------------------------------------------------- One driver per socket and state

/// Runs `strata-csi` with `args` and waits up to 5 s for it to exit; kills it and returns
/// None when it is still running at the deadline.
fn run_briefly(args: &[&std::ffi::OsStr]) -> Option<std::process::ExitStatus> {
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn strata-csi");
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if start.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A second driver must not steal a live driver's socket, share its state dir, or delete a
/// file that is not a socket at the endpoint path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_is_refused() {
    if !testkit::require_root("a_second_instance_is_refused") {
        return;
    }
    let env = Env::new(PoolFs::Dir).await;
    let mut c = Checks::new("a_second_instance_is_refused");
    let pool_arg = format!("{POOL}=image:{}", env.pool.path().display());
    let other_state = env.driver.mkdir("other-state");
    let other_sock = env.driver.path("other.sock");
    let endpoint = |p: &Path| format!("unix://{}", p.display());
    let args = |sock: &Path, state: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "--endpoint".into(),
            endpoint(sock).into(),
            "--node-id".into(),
            NODE.into(),
            "--state-dir".into(),
            state.into(),
            "--pool".into(),
            pool_arg.clone().into(),
        ]
    };
    let os = |v: &Vec<std::ffi::OsString>| -> Vec<std::ffi::OsString> { v.clone() };

    // Same socket, other state dir: the live socket must not be replaced.
    let a = os(&args(env.driver.socket(), &other_state));
    let st = tokio::task::block_in_place(|| {
        run_briefly(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>())
    });
    c.check(
        "second driver on a live socket exits with an error",
        "a live endpoint is not stale: only a crashed driver's socket is replaced",
        st.is_some_and(|s| !s.success()),
        st,
    );
    let mut ident = env.driver.identity().await;
    c.ok(
        "the first driver still serves its socket",
        "a second instance must not take the socket away",
        ident.probe(ProbeRequest {}).await,
    );

    // Same state dir, other socket: two writers on one state would corrupt it.
    let a = os(&args(&other_sock, env.driver.state_dir()));
    let st = tokio::task::block_in_place(|| {
        run_briefly(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>())
    });
    c.check(
        "second driver on a state dir in use exits with an error",
        "ARCHITECTURE.md driver durability: one process owns the state store",
        st.is_some_and(|s| !s.success()),
        st,
    );

    // A regular file where the socket should go is somebody's data, not a stale socket.
    let not_sock = env.driver.path("precious.sock");
    std::fs::create_dir_all(not_sock.parent().unwrap()).unwrap();
    std::fs::write(&not_sock, b"not a socket").unwrap();
    let fresh_state = env.driver.mkdir("fresh-state");
    let a = os(&args(&not_sock, &fresh_state));
    let st = tokio::task::block_in_place(|| {
        run_briefly(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>())
    });
    c.check(
        "driver refuses an endpoint path holding a regular file",
        "driver contract: only a stale socket is replaced",
        st.is_some_and(|s| !s.success())
            && std::fs::read(&not_sock).is_ok_and(|b| b == b"not a socket"),
        (st, std::fs::read(&not_sock).ok().map(|b| b.len())),
    );
    c.finish();
}

/// The command line is a contract other tooling drives (the driver contract): `--help` documents
/// every flag, and bad flags fail fast with a message instead of serving something else.
#[test]
fn binary_contract_flags() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run strata-csi --help");
    assert!(out.status.success(), "--help exits 0");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--endpoint",
        "--node-id",
        "--state-dir",
        "--pool",
        "--driver-name",
    ] {
        assert!(help.contains(flag), "--help documents {flag}:\n{help}");
    }
    if !testkit::require_root("binary_contract_flags") {
        return;
    }
    let pool = LoopPool::dir();
    let dir = LoopPool::dir();
    let sock = format!("unix://{}", dir.path().join("csi.sock").display());
    let state = dir.path().join("state");
    let good_pool = format!("{POOL}=image:{}", pool.path().display());
    let cases: &[(&str, Vec<String>)] = &[
        (
            "a tcp endpoint",
            vec!["--endpoint".into(), "tcp://127.0.0.1:9999".into()],
        ),
        (
            "an unknown pool kind",
            vec![
                "--pool".into(),
                format!("{POOL}=floppy:{}", pool.path().display()),
            ],
        ),
        (
            "a pool spec without a path",
            vec!["--pool".into(), format!("{POOL}=image:")],
        ),
        (
            "a pool dir that does not exist",
            vec![
                "--pool".into(),
                format!("{POOL}=image:{}/missing", pool.path().display()),
            ],
        ),
        (
            "a pool with overcommit 0",
            vec![
                "--pool".into(),
                format!("{POOL}=image:{},overcommit=0", pool.path().display()),
            ],
        ),
        (
            "a pool with a malformed overcommit ratio",
            vec![
                "--pool".into(),
                format!("{POOL}=image:{},overcommit=lots", pool.path().display()),
            ],
        ),
        (
            "a pool with an unknown option",
            vec![
                "--pool".into(),
                format!("{POOL}=image:{},colour=red", pool.path().display()),
            ],
        ),
        (
            "a node id with a slash",
            vec!["--node-id".into(), "node/a".into()],
        ),
        (
            "the same pool name twice",
            vec![
                "--pool".into(),
                good_pool.clone(),
                "--pool".into(),
                good_pool.clone(),
            ],
        ),
    ];
    for (what, over) in cases {
        // Start from a good command line and replace (or add) the flags of the case.
        let mut args: Vec<(String, String)> = vec![
            ("--endpoint".into(), sock.clone()),
            ("--node-id".into(), NODE.into()),
            ("--state-dir".into(), state.display().to_string()),
        ];
        let mut pools = vec![good_pool.clone()];
        let mut i = 0;
        let mut case_pools = Vec::new();
        while i + 1 < over.len() {
            if over[i] == "--pool" {
                case_pools.push(over[i + 1].clone());
            } else if let Some(a) = args.iter_mut().find(|(k, _)| *k == over[i]) {
                a.1 = over[i + 1].clone();
            }
            i += 2;
        }
        if !case_pools.is_empty() {
            pools = case_pools;
        }
        let mut cmd = std::process::Command::new(BIN);
        for (k, v) in &args {
            cmd.arg(k).arg(v);
        }
        for p in &pools {
            cmd.arg("--pool").arg(p);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded wait; a driver that starts serving anyway is killed, then reported.
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            status.is_some_and(|s| !s.success()) && !err.trim().is_empty(),
            "driver contract: strata-csi with {what} must exit non-zero with a message, got {status:?} \
             (None: still serving after 10 s): {err}"
        );
    }
}
