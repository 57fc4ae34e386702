//! The decisions of external-snapshotter's snapshot-controller (`pkg/common-controller`) and
//! csi-snapshotter sidecar (`pkg/sidecar-controller`), as pure functions over objects; the
//! controller (`controller/snapshot.rs`) applies them. Standalone, one process plays both
//! parts, so the annotations they use to talk to each other are still written (a cluster's
//! tools read them) but are decided in one place.

use std::collections::BTreeMap;

use strata_store::snapshot::{
    API_VERSION, DELETION_POLICY_DELETE, VolumeSnapshot, VolumeSnapshotClass,
    VolumeSnapshotContent, VolumeSnapshotContentSource, VolumeSnapshotContentSpec,
    VolumeSnapshotError, VolumeSnapshotStatus,
};

use crate::k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use crate::meta;
use crate::names::CSI_PARAM_PREFIX;
use crate::names::snapshot::{
    ANN_DEFAULT_CLASS, ANN_DELETION_SECRET_NAME, ANN_DELETION_SECRET_NAMESPACE, FINALIZER_CONTENT,
};
use crate::secrets::{ParamError, SecretRef, is_snapshot_class_secret_key};

/// The content a dynamic snapshot gets (`snapcontent-<snapshot uid>`), so a retry after a
/// crash finds the one it made.
pub fn content_name(snapshot: &VolumeSnapshot) -> String {
    format!("snapcontent-{}", meta::uid(&snapshot.metadata))
}

/// The CSI snapshot name (the sidecar's `--snapshot-name-prefix` default `snapshot`, then the
/// VolumeSnapshot's uid): CreateSnapshot is idempotent by it.
pub fn csi_snapshot_name(content: &VolumeSnapshotContent) -> String {
    format!(
        "snapshot-{}",
        content
            .spec
            .volume_snapshot_ref
            .uid
            .as_deref()
            .unwrap_or_default()
    )
}

/// The content a snapshot is or will be bound to: the one its status names, else the
/// pre-provisioned one its source names, else the dynamic one's name.
pub fn expected_content(snapshot: &VolumeSnapshot) -> String {
    if let Some(n) = snapshot
        .status
        .as_ref()
        .and_then(|s| s.bound_volume_snapshot_content_name.clone())
    {
        return n;
    }
    match &snapshot.spec.source.volume_snapshot_content_name {
        Some(n) => n.clone(),
        None => content_name(snapshot),
    }
}

/// Whether `content` is bound to exactly this snapshot (its ref names it, uid included).
pub fn is_bound(snapshot: &VolumeSnapshot, content: &VolumeSnapshotContent) -> bool {
    let r = &content.spec.volume_snapshot_ref;
    r.name.as_deref() == snapshot.metadata.name.as_deref()
        && r.namespace.as_deref() == snapshot.metadata.namespace.as_deref()
        && r.uid.is_some()
        && r.uid.as_deref() == snapshot.metadata.uid.as_deref()
}

/// The reference a content keeps to its snapshot.
pub fn snapshot_reference(snapshot: &VolumeSnapshot) -> ObjectReference {
    ObjectReference {
        api_version: Some(API_VERSION.into()),
        kind: Some("VolumeSnapshot".into()),
        namespace: snapshot.metadata.namespace.clone(),
        name: snapshot.metadata.name.clone(),
        uid: snapshot.metadata.uid.clone(),
        resource_version: snapshot.metadata.resource_version.clone(),
        field_path: None,
    }
}

pub fn content_reference(content: &VolumeSnapshotContent) -> ObjectReference {
    ObjectReference {
        api_version: Some(API_VERSION.into()),
        kind: Some("VolumeSnapshotContent".into()),
        name: content.metadata.name.clone(),
        uid: content.metadata.uid.clone(),
        resource_version: content.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The class a dynamic snapshot uses: the one it names (of the volume's driver), else the
/// single default class of that driver (`SetDefaultSnapshotClass`).
pub fn pick_class<'a>(
    snapshot: &VolumeSnapshot,
    classes: &'a BTreeMap<String, VolumeSnapshotClass>,
    driver: &str,
) -> Result<&'a VolumeSnapshotClass, String> {
    if let Some(name) = &snapshot.spec.volume_snapshot_class_name {
        let class = classes
            .get(name)
            .ok_or_else(|| format!("VolumeSnapshotClass {name:?} not found"))?;
        if class.driver != driver {
            return Err(format!(
                "VolumeSnapshotClass {name:?} is for driver {:?}, the volume is of driver {driver:?}",
                class.driver
            ));
        }
        return Ok(class);
    }
    let defaults: Vec<&VolumeSnapshotClass> = classes
        .values()
        .filter(|c| {
            c.driver == driver && meta::annotation(&c.metadata, ANN_DEFAULT_CLASS) == Some("true")
        })
        .collect();
    match defaults[..] {
        [one] => Ok(one),
        [] => Err(format!(
            "no VolumeSnapshotClass names one and no default VolumeSnapshotClass exists for driver {driver:?}"
        )),
        _ => Err(format!(
            "{} default VolumeSnapshotClasses exist for driver {driver:?}; mark only one {ANN_DEFAULT_CLASS}",
            defaults.len()
        )),
    }
}

/// The class parameters CreateSnapshot gets: the sidecar's `csi.storage.k8s.io/` keys
/// (its secrets' pairs) removed; any other key of that prefix is refused, as
/// csi-snapshotter's `RemovePrefixedParameters` does.
pub fn create_parameters(class: &VolumeSnapshotClass) -> Result<BTreeMap<String, String>, String> {
    let params = class.parameters.clone().unwrap_or_default();
    if let Some(k) = params
        .keys()
        .find(|k| k.starts_with(CSI_PARAM_PREFIX) && !is_snapshot_class_secret_key(k))
    {
        return Err(format!(
            "failed to remove CSI Parameters of prefixed keys: found unknown parameter key {k:?} with reserved namespace {CSI_PARAM_PREFIX}"
        ));
    }
    Ok(params
        .into_iter()
        .filter(|(k, _)| !k.starts_with(CSI_PARAM_PREFIX))
        .collect())
}

/// The snapshotter secret the class names for the dynamic content of `snapshot`
/// (`getCreateSnapshotInput`); None when it names none.
pub fn snapshotter_secret(
    class: &VolumeSnapshotClass,
    snapshot: &VolumeSnapshot,
) -> Result<Option<SecretRef>, ParamError> {
    crate::secrets::snapshotter_secret(
        class.parameters.as_ref().unwrap_or(&BTreeMap::new()),
        &content_name(snapshot),
        meta::namespace(&snapshot.metadata),
        meta::name(&snapshot.metadata),
    )
}

/// The secret CreateSnapshot and DeleteSnapshot of `content` pass: the one its
/// deletion-secret annotations name (`GetCredentialsFromAnnotation`). The annotations are
/// written when the content is made, so the class may change or go meanwhile.
pub fn content_secret(content: &VolumeSnapshotContent) -> Result<Option<SecretRef>, String> {
    let ann = |k| meta::annotation(&content.metadata, k);
    match (
        ann(ANN_DELETION_SECRET_NAME),
        ann(ANN_DELETION_SECRET_NAMESPACE),
    ) {
        (Some(name), Some(namespace)) if !name.is_empty() && !namespace.is_empty() => {
            Ok(Some(SecretRef {
                name: name.to_string(),
                namespace: namespace.to_string(),
            }))
        }
        (Some(_), Some(_)) => Err(format!(
            "cannot retrieve secrets for snapshot content {:?}, err: secret name or namespace not specified",
            meta::name(&content.metadata)
        )),
        _ => Ok(None),
    }
}

/// The CSI volume behind a claim to snapshot, or why a snapshot cannot be taken yet.
pub fn source_volume<'a>(
    pvc: Option<&PersistentVolumeClaim>,
    pv: Option<&'a PersistentVolume>,
    claim_name: &str,
) -> Result<(&'a PersistentVolume, String, String), String> {
    let pvc = pvc.ok_or_else(|| format!("PersistentVolumeClaim {claim_name:?} not found"))?;
    if pvc.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "PersistentVolumeClaim {claim_name:?} is being deleted"
        ));
    }
    if meta::claim_phase(pvc) != "Bound" {
        return Err(format!(
            "PersistentVolumeClaim {claim_name:?} is not bound to a volume yet, will not attempt to take a snapshot"
        ));
    }
    let pv = pv
        .filter(|pv| meta::name(&pv.metadata) == meta::claim_volume_name(pvc))
        .ok_or_else(|| {
            format!(
                "volume {:?} of PersistentVolumeClaim {claim_name:?} not found",
                meta::claim_volume_name(pvc)
            )
        })?;
    let csi = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .ok_or_else(|| {
            format!(
                "volume {:?} of PersistentVolumeClaim {claim_name:?} is not a CSI volume",
                meta::name(&pv.metadata)
            )
        })?;
    Ok((pv, csi.driver.clone(), csi.volume_handle.clone()))
}

/// The content for a dynamic snapshot (`createSnapshotContent`), already bound to it.
pub fn new_content(
    snapshot: &VolumeSnapshot,
    pv: &PersistentVolume,
    class: &VolumeSnapshotClass,
    volume_handle: &str,
    secret: Option<&SecretRef>,
) -> VolumeSnapshotContent {
    let mut content = VolumeSnapshotContent::default();
    content.metadata.name = Some(content_name(snapshot));
    meta::add_finalizer(&mut content.metadata, FINALIZER_CONTENT);
    // Only when the class names one: upstream writes no empty pair here.
    if let Some(r) = secret {
        meta::set_annotation(&mut content.metadata, ANN_DELETION_SECRET_NAME, &r.name);
        meta::set_annotation(
            &mut content.metadata,
            ANN_DELETION_SECRET_NAMESPACE,
            &r.namespace,
        );
    }
    content.spec = VolumeSnapshotContentSpec {
        volume_snapshot_ref: snapshot_reference(snapshot),
        deletion_policy: class.deletion_policy.clone(),
        driver: class.driver.clone(),
        volume_snapshot_class_name: class.metadata.name.clone(),
        source: VolumeSnapshotContentSource {
            volume_handle: Some(volume_handle.to_string()),
            snapshot_handle: None,
        },
        source_volume_mode: Some(meta::volume_volume_mode(pv).to_string()),
    };
    content
}

/// The snapshot's status as its bound content reports it (`updateSnapshotStatus`):
/// readyToUse, restoreSize and creationTime come from the content; an error the content
/// carries is the snapshot's, else one the snapshot already has is kept while not ready.
pub fn status_from_content(
    snapshot: &VolumeSnapshot,
    content: &VolumeSnapshotContent,
) -> VolumeSnapshotStatus {
    let old = snapshot.status.clone().unwrap_or_default();
    let cs = content.status.clone().unwrap_or_default();
    let ready = cs.ready_to_use.unwrap_or(false);
    VolumeSnapshotStatus {
        bound_volume_snapshot_content_name: content.metadata.name.clone(),
        creation_time: cs
            .creation_time
            .and_then(nanos_to_time)
            .or(old.creation_time),
        ready_to_use: Some(ready),
        restore_size: cs
            .restore_size
            .and_then(|b| u128::try_from(b).ok())
            .map(crate::quantity::format_bytes)
            .or(old.restore_size),
        error: match cs.error {
            Some(e) => Some(e),
            None if ready => None,
            None => old.error,
        },
        volume_group_snapshot_name: old.volume_group_snapshot_name,
    }
}

pub fn nanos_to_time(ns: i64) -> Option<Time> {
    crate::k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(ns))
        .ok()
        .map(Time)
}

pub fn error_now(message: String) -> VolumeSnapshotError {
    VolumeSnapshotError {
        time: Some(Time(crate::k8s_openapi::jiff::Timestamp::now())),
        message: Some(message),
    }
}

/// Two errors say the same thing (their times aside): rewriting one would only move its
/// time and wake every watcher.
pub fn same_error(a: Option<&VolumeSnapshotError>, b: Option<&VolumeSnapshotError>) -> bool {
    a.map(|e| &e.message) == b.map(|e| &e.message)
}

/// Whether a snapshot still needs its source claim (`isPVCBeingUsed`): it is not being
/// deleted and is not ready yet.
pub fn holds_source_claim(snapshot: &VolumeSnapshot, ns: &str, claim: &str) -> bool {
    meta::namespace(&snapshot.metadata) == ns
        && snapshot.spec.source.persistent_volume_claim_name.as_deref() == Some(claim)
        && snapshot.metadata.deletion_timestamp.is_none()
        && snapshot.status.as_ref().and_then(|s| s.ready_to_use) != Some(true)
}

/// Whether deleting the content's object must delete the storage snapshot too.
pub fn deletes_snapshot(content: &VolumeSnapshotContent) -> bool {
    content.spec.deletion_policy == DELETION_POLICY_DELETE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;
    use crate::k8s_openapi::api::core::v1::CSIPersistentVolumeSource;
    use strata_store::snapshot::VolumeSnapshotContentStatus;

    fn snapshot(name: &str, class: Option<&str>) -> VolumeSnapshot {
        let mut s = VolumeSnapshot::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.spec.source.persistent_volume_claim_name = Some("data".into());
        s.spec.volume_snapshot_class_name = class.map(str::to_string);
        s
    }

    fn vsclass(name: &str, driver: &str, default: bool) -> VolumeSnapshotClass {
        let mut c = VolumeSnapshotClass {
            driver: driver.into(),
            deletion_policy: "Delete".into(),
            ..Default::default()
        };
        c.metadata.name = Some(name.into());
        if default {
            meta::set_annotation(&mut c.metadata, ANN_DEFAULT_CLASS, "true");
        }
        c
    }

    #[test]
    fn class_is_the_named_one_of_the_driver_else_its_single_default() {
        let mut classes = BTreeMap::new();
        classes.insert("a".to_string(), vsclass("a", "d", false));
        classes.insert("b".to_string(), vsclass("b", "d", true));
        classes.insert("x".to_string(), vsclass("x", "other", true));
        let named = pick_class(&snapshot("s", Some("a")), &classes, "d").unwrap();
        assert_eq!(named.metadata.name.as_deref(), Some("a"));
        let default = pick_class(&snapshot("s", None), &classes, "d").unwrap();
        assert_eq!(default.metadata.name.as_deref(), Some("b"));
        assert!(
            pick_class(&snapshot("s", Some("x")), &classes, "d")
                .unwrap_err()
                .contains("is for driver")
        );
        assert!(
            pick_class(&snapshot("s", Some("zz")), &classes, "d")
                .unwrap_err()
                .contains("not found")
        );
        classes.insert("c".to_string(), vsclass("c", "d", true));
        assert!(
            pick_class(&snapshot("s", None), &classes, "d")
                .unwrap_err()
                .contains("2 default")
        );
        classes.clear();
        assert!(
            pick_class(&snapshot("s", None), &classes, "d")
                .unwrap_err()
                .contains("no default")
        );
    }

    #[test]
    fn parameters_drop_sidecar_keys_and_secrets_go_on_the_content() {
        let mut c = vsclass("a", "d", false);
        c.parameters = Some(BTreeMap::from([
            ("keep".to_string(), "y".to_string()),
            (
                "csi.storage.k8s.io/snapshotter-secret-name".to_string(),
                "snap-${volumesnapshot.name}".to_string(),
            ),
            (
                "csi.storage.k8s.io/snapshotter-secret-namespace".to_string(),
                "${volumesnapshot.namespace}".to_string(),
            ),
        ]));
        assert_eq!(
            create_parameters(&c).unwrap(),
            BTreeMap::from([("keep".to_string(), "y".to_string())])
        );
        let mut unknown = c.clone();
        unknown
            .parameters
            .as_mut()
            .unwrap()
            .insert("csi.storage.k8s.io/something".into(), "x".into());
        assert!(
            create_parameters(&unknown)
                .unwrap_err()
                .contains("found unknown parameter key \"csi.storage.k8s.io/something\"")
        );
        let s = snapshot("s", Some("a"));
        let secret = snapshotter_secret(&c, &s).unwrap().unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.namespace.as_str()),
            ("snap-s", "default")
        );
        let pv = volume("pv1", "1Gi", &["ReadWriteOnce"]);
        let content = new_content(&s, &pv, &c, "h", Some(&secret));
        assert_eq!(
            meta::annotation(&content.metadata, ANN_DELETION_SECRET_NAME),
            Some("snap-s")
        );
        assert_eq!(content_secret(&content).unwrap(), Some(secret));
        let plain = new_content(&s, &pv, &vsclass("b", "d", false), "h", None);
        assert!(!meta::has_annotation(
            &plain.metadata,
            ANN_DELETION_SECRET_NAME
        ));
        assert_eq!(content_secret(&plain).unwrap(), None);
        let mut half = content.clone();
        meta::set_annotation(&mut half.metadata, ANN_DELETION_SECRET_NAMESPACE, "");
        assert!(
            content_secret(&half)
                .unwrap_err()
                .contains("secret name or namespace not specified")
        );
        c.parameters
            .as_mut()
            .unwrap()
            .remove("csi.storage.k8s.io/snapshotter-secret-namespace");
        assert!(
            snapshotter_secret(&c, &s)
                .unwrap_err()
                .to_string()
                .contains("Both must be specified")
        );
    }

    #[test]
    fn only_a_bound_claim_with_a_csi_volume_is_snapshotted() {
        let mut pvc = claim("data", "1Gi", &["ReadWriteOnce"]);
        assert!(
            source_volume(None, None, "data")
                .unwrap_err()
                .contains("not found")
        );
        assert!(
            source_volume(Some(&pvc), None, "data")
                .unwrap_err()
                .contains("not bound")
        );
        pvc.spec.as_mut().unwrap().volume_name = Some("pv1".into());
        pvc.status.get_or_insert_default().phase = Some("Bound".into());
        let mut pv = volume("pv1", "1Gi", &["ReadWriteOnce"]);
        assert!(
            source_volume(Some(&pvc), Some(&pv), "data")
                .unwrap_err()
                .contains("not a CSI volume")
        );
        pv.spec.as_mut().unwrap().csi = Some(CSIPersistentVolumeSource {
            driver: "d".into(),
            volume_handle: "h".into(),
            ..Default::default()
        });
        let (_, driver, handle) = source_volume(Some(&pvc), Some(&pv), "data").unwrap();
        assert_eq!((driver.as_str(), handle.as_str()), ("d", "h"));
    }

    #[test]
    fn dynamic_content_is_bound_and_names_the_volume() {
        let s = snapshot("s", Some("a"));
        let pv = volume("pv1", "1Gi", &["ReadWriteOnce"]);
        let c = new_content(&s, &pv, &vsclass("a", "d", false), "h", None);
        assert_eq!(c.metadata.name.as_deref(), Some("snapcontent-uid-s"));
        assert!(is_bound(&s, &c));
        assert_eq!(csi_snapshot_name(&c), "snapshot-uid-s");
        assert_eq!(c.spec.source.volume_handle.as_deref(), Some("h"));
        assert_eq!(c.spec.source_volume_mode.as_deref(), Some("Filesystem"));
        assert!(meta::has_finalizer(&c.metadata, FINALIZER_CONTENT));
        assert_eq!(expected_content(&s), "snapcontent-uid-s");
        let mut other = s.clone();
        other.metadata.uid = Some("else".into());
        assert!(
            !is_bound(&other, &c),
            "a snapshot recreated under the same name"
        );
    }

    #[test]
    fn status_follows_the_content() {
        let s = snapshot("s", None);
        let pv = volume("pv1", "1Gi", &["ReadWriteOnce"]);
        let mut c = new_content(&s, &pv, &vsclass("a", "d", false), "h", None);
        let st = status_from_content(&s, &c);
        assert_eq!(st.ready_to_use, Some(false));
        assert_eq!(
            st.bound_volume_snapshot_content_name.as_deref(),
            Some("snapcontent-uid-s")
        );
        c.status = Some(VolumeSnapshotContentStatus {
            snapshot_handle: Some("sh".into()),
            creation_time: Some(1_700_000_000_123_456_789),
            restore_size: Some(64 << 20),
            ready_to_use: Some(true),
            ..Default::default()
        });
        let mut failed = s.clone();
        failed.status = Some(VolumeSnapshotStatus {
            error: Some(error_now("x".into())),
            ..Default::default()
        });
        let st = status_from_content(&failed, &c);
        assert_eq!(st.ready_to_use, Some(true));
        assert_eq!(st.restore_size.unwrap().0, "64Mi");
        assert_eq!(
            st.creation_time.unwrap().0.as_nanosecond(),
            1_700_000_000_123_456_789
        );
        assert!(st.error.is_none(), "a ready snapshot has no error");
    }

    #[test]
    fn a_claim_is_held_while_a_snapshot_of_it_is_not_ready() {
        let mut s = snapshot("s", None);
        assert!(holds_source_claim(&s, "default", "data"));
        assert!(!holds_source_claim(&s, "default", "other"));
        s.status = Some(VolumeSnapshotStatus {
            ready_to_use: Some(true),
            ..Default::default()
        });
        assert!(!holds_source_claim(&s, "default", "data"));
    }
}
