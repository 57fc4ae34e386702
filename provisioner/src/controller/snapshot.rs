//! The snapshot-controller and csi-snapshotter workers in one process: VolumeSnapshots get
//! their content (dynamic) or are bound to one (pre-provisioned) and mirror its status;
//! contents get CreateSnapshot / ListSnapshots / DeleteSnapshot over CSI. Finalizers are
//! upstream's: a snapshot is held while a claim is restored from it (and, with a Delete
//! policy, while bound), a content while its snapshot is bound to it, a claim while a
//! snapshot of it is being taken. Failures become the snapshot's `status.error` and a
//! Warning event on it.

use std::sync::Arc;

use strata_store::snapshot::{
    VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent, VolumeSnapshotContentStatus,
    VolumeSnapshotStatus,
};
use strata_store::{Preconditions, Store, WatchEvent};
use tracing::{debug, info};

use super::cache::{Cache, key};
use super::informer::Informed;
use super::{Controller, Requeue};
use crate::binder::{Event, EventType};
use crate::error::Result;
use crate::k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use crate::meta::{self, add_finalizer, has_finalizer, remove_finalizer};
use crate::names::snapshot::{
    ANN_BEING_CREATED, ANN_BEING_DELETED, FINALIZER_AS_SOURCE, FINALIZER_BOUND, FINALIZER_CONTENT,
    FINALIZER_PVC_AS_SOURCE, reason,
};
use crate::provision::source::{self, DataSource};
use crate::snapshot::{
    content_reference, create_parameters, csi_snapshot_name, deletes_snapshot, error_now,
    expected_content, holds_source_claim, is_bound, new_content, pick_class, same_error,
    snapshot_reference, snapshotter_secret, source_volume, status_from_content,
};

/// Events about a snapshot name it even when a content's worker records them.
fn on_snapshot(r: &ObjectReference, type_: EventType, reason: &'static str, msg: String) -> Event {
    let mut involved = r.clone();
    involved.kind = Some("VolumeSnapshot".into());
    involved.api_version = Some(strata_store::snapshot::API_VERSION.into());
    Event {
        involved,
        type_,
        reason,
        message: msg,
    }
}

/// CSI codes after which the call may still be running in the driver.
fn maybe_in_progress(code: Option<i32>) -> bool {
    use csi_proto::tonic::Code;
    matches!(code, Some(c) if c == Code::Aborted as i32
        || c == Code::DeadlineExceeded as i32
        || c == Code::Unavailable as i32
        || c == Code::ResourceExhausted as i32)
}

impl<S: Store> Controller<S> {
    async fn write_snapshot(&self, s: &VolumeSnapshot, status: bool) -> Result<VolumeSnapshot> {
        let r = if status {
            self.store.update_status(s).await
        } else {
            self.store.update(s).await
        };
        match r {
            Ok(new) => {
                self.cache().put_snapshot(new.clone());
                Ok(new)
            }
            Err(e) => {
                if e.is_conflict() || e.is_not_found() {
                    let (ns, name) = (meta::namespace(&s.metadata), meta::name(&s.metadata));
                    match self.store.get::<VolumeSnapshot>(ns, name).await {
                        Ok(fresh) => self.cache().put_snapshot(fresh),
                        Err(g) if g.is_not_found() => {
                            let rv = meta::resource_version(&s.metadata);
                            self.cache().drop_snapshot(&key(&s.metadata), rv);
                        }
                        Err(_) => {}
                    }
                }
                Err(e.into())
            }
        }
    }

    async fn write_content(
        &self,
        c: &VolumeSnapshotContent,
        status: bool,
    ) -> Result<VolumeSnapshotContent> {
        let r = if status {
            self.store.update_status(c).await
        } else {
            self.store.update(c).await
        };
        match r {
            Ok(new) => {
                self.cache().put_content(new.clone());
                Ok(new)
            }
            Err(e) => {
                if e.is_conflict() || e.is_not_found() {
                    let name = meta::name(&c.metadata);
                    match self.store.get::<VolumeSnapshotContent>("", name).await {
                        Ok(fresh) => self.cache().put_content(fresh),
                        Err(g) if g.is_not_found() => {
                            let rv = meta::resource_version(&c.metadata);
                            self.cache().drop_content(name, rv);
                        }
                        Err(_) => {}
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Records a failure on the snapshot: its `status.error` (rewritten only when the
    /// message changes) and a Warning event.
    async fn snapshot_failed(
        &self,
        snapshot: &VolumeSnapshot,
        reason: &'static str,
        message: String,
    ) -> Result<()> {
        debug!(reason, %message, "snapshot not taken");
        let error = error_now(message.clone());
        let mut status = snapshot.status.clone().unwrap_or_default();
        if !same_error(status.error.as_ref(), Some(&error)) {
            status.error = Some(error);
            status.ready_to_use.get_or_insert(false);
            let mut updated = snapshot.clone();
            updated.status = Some(status);
            self.write_snapshot(&updated, true).await?;
        }
        self.record(&on_snapshot(
            &snapshot_reference(snapshot),
            EventType::Warning,
            reason,
            message,
        ))
        .await;
        Ok(())
    }

    /// Writes the status if it says something new, with the events upstream records when a
    /// snapshot is first cut and first ready.
    async fn set_snapshot_status(
        &self,
        snapshot: &VolumeSnapshot,
        status: VolumeSnapshotStatus,
    ) -> Result<VolumeSnapshot> {
        let old = snapshot.status.clone().unwrap_or_default();
        let unchanged = VolumeSnapshotStatus {
            error: None,
            ..old.clone()
        } == VolumeSnapshotStatus {
            error: None,
            ..status.clone()
        } && same_error(old.error.as_ref(), status.error.as_ref());
        if unchanged {
            return Ok(snapshot.clone());
        }
        let mut updated = snapshot.clone();
        updated.status = Some(status.clone());
        let saved = self.write_snapshot(&updated, true).await?;
        let name = format!(
            "{}/{}",
            meta::namespace(&snapshot.metadata),
            meta::name(&snapshot.metadata)
        );
        let r = snapshot_reference(&saved);
        if old.creation_time.is_none() && status.creation_time.is_some() {
            self.record(&on_snapshot(
                &r,
                EventType::Normal,
                reason::CREATED,
                format!("Snapshot {name} was successfully created by the CSI driver."),
            ))
            .await;
        }
        if old.ready_to_use != Some(true) && status.ready_to_use == Some(true) {
            info!(snapshot = %name, "snapshot ready");
            self.record(&on_snapshot(
                &r,
                EventType::Normal,
                reason::READY,
                format!("Snapshot {name} is ready to use."),
            ))
            .await;
        }
        Ok(saved)
    }

    /// The snapshot-controller's `syncSnapshot` for one `namespace/name`.
    #[tracing::instrument(skip_all, fields(snapshot = %k))]
    pub(crate) async fn sync_snapshot(&self, k: &str) -> Result<Requeue> {
        let Some(mut snapshot) = self.cache().snapshots.get(k).cloned() else {
            return Ok(Requeue::Done);
        };
        if snapshot.metadata.deletion_timestamp.is_some() {
            return self.snapshot_deleted(snapshot).await;
        }
        let bound_delete = self
            .cache()
            .contents
            .get(&expected_content(&snapshot))
            .is_some_and(|c| is_bound(&snapshot, c) && deletes_snapshot(c));
        let mut updated = snapshot.clone();
        let mut changed = add_finalizer(&mut updated.metadata, FINALIZER_AS_SOURCE);
        if bound_delete {
            changed |= add_finalizer(&mut updated.metadata, FINALIZER_BOUND);
        }
        if changed {
            snapshot = self.write_snapshot(&updated, false).await?;
        }
        let source = snapshot.spec.source.clone();
        match (
            source.volume_snapshot_content_name,
            source.persistent_volume_claim_name,
        ) {
            (Some(content), _) => self.sync_preprovisioned(snapshot, &content).await,
            (None, Some(claim)) => self.sync_dynamic(snapshot, &claim).await,
            // Admission refuses a snapshot without a source.
            (None, None) => Ok(Requeue::Done),
        }
    }

    async fn sync_preprovisioned(
        &self,
        snapshot: VolumeSnapshot,
        content_name: &str,
    ) -> Result<Requeue> {
        let Some(content) = self.cache().contents.get(content_name).cloned() else {
            let msg = format!("VolumeSnapshotContent {content_name:?} not found");
            self.snapshot_failed(&snapshot, reason::CONTENT_MISSING, msg)
                .await?;
            return Ok(Requeue::Backoff);
        };
        let r = &content.spec.volume_snapshot_ref;
        let names_it = r.name.as_deref() == snapshot.metadata.name.as_deref()
            && r.namespace.as_deref() == snapshot.metadata.namespace.as_deref();
        let other_uid = r
            .uid
            .as_deref()
            .is_some_and(|u| Some(u) != snapshot.metadata.uid.as_deref());
        if !names_it || other_uid {
            let msg = format!(
                "VolumeSnapshotContent {content_name:?} is bound to VolumeSnapshot {}/{} (uid {}), not to this one",
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default(),
                r.uid.as_deref().unwrap_or("<none>")
            );
            self.snapshot_failed(&snapshot, reason::CONTENT_MISMATCH, msg)
                .await?;
            return Ok(Requeue::Done);
        }
        let content = if r.uid.is_none() {
            // Bind: the content now belongs to this snapshot (`checkandBindSnapshotContent`).
            let mut bound = content.clone();
            bound.spec.volume_snapshot_ref = snapshot_reference(&snapshot);
            let saved = self.write_content(&bound, false).await?;
            self.queues.contents.add(content_name.to_string());
            saved
        } else {
            content
        };
        self.set_snapshot_status(&snapshot, status_from_content(&snapshot, &content))
            .await?;
        Ok(Requeue::Done)
    }

    async fn sync_dynamic(&self, snapshot: VolumeSnapshot, claim: &str) -> Result<Requeue> {
        let found = self.found()?;
        let driver = &found.info;
        let ns = meta::namespace(&snapshot.metadata).to_string();
        let name = crate::snapshot::content_name(&snapshot);
        let existing = self.cache().contents.get(&name).cloned();
        if let Some(content) = existing {
            if !is_bound(&snapshot, &content) {
                let msg = format!(
                    "VolumeSnapshotContent {name:?} exists and is bound to another VolumeSnapshot"
                );
                self.snapshot_failed(&snapshot, reason::CONTENT_MISMATCH, msg)
                    .await?;
                return Ok(Requeue::Done);
            }
            let saved = self
                .set_snapshot_status(&snapshot, status_from_content(&snapshot, &content))
                .await?;
            if saved.status.as_ref().and_then(|s| s.ready_to_use) == Some(true) {
                self.release_source_claim(&ns, claim).await?;
            }
            return Ok(Requeue::Done);
        }
        let failed = |msg: String| format!("Failed to create snapshot content with error {msg}");
        let picked = {
            let c = self.cache();
            let pvc = c.claims.get(&format!("{ns}/{claim}"));
            let pv = pvc.and_then(|p| c.volumes.get(meta::claim_volume_name(p)));
            source_volume(pvc, pv, claim).and_then(|(pv, pv_driver, handle)| {
                if pv_driver != driver.name {
                    return Err(format!(
                        "the volume of PersistentVolumeClaim {claim:?} is of driver {pv_driver:?}; strata-provisioner takes snapshots of {:?} volumes only",
                        driver.name
                    ));
                }
                if !driver.create_delete_snapshot {
                    return Err(format!("driver {:?} does not support snapshots", driver.name));
                }
                let class = pick_class(&snapshot, &c.snapshot_classes, &pv_driver)?;
                // Resolved now and recorded on the content, which CreateSnapshot and
                // DeleteSnapshot read it from.
                let secret = snapshotter_secret(class, &snapshot).map_err(|e| e.to_string())?;
                Ok((pv.clone(), class.clone(), handle, secret))
            })
        };
        let (pv, class, handle, secret) = match picked {
            Ok(p) => p,
            Err(msg) => {
                self.snapshot_failed(&snapshot, reason::CONTENT_CREATION_FAILED, failed(msg))
                    .await?;
                return Ok(Requeue::Backoff);
            }
        };
        let mut snapshot = snapshot;
        if snapshot.spec.volume_snapshot_class_name.is_none() {
            // `SetDefaultSnapshotClass`: the default is written down once.
            let mut named = snapshot.clone();
            named.spec.volume_snapshot_class_name = class.metadata.name.clone();
            snapshot = self.write_snapshot(&named, false).await?;
        }
        self.protect_source_claim(&ns, claim).await?;
        let content = new_content(&snapshot, &pv, &class, &handle, secret.as_ref());
        let saved = match self.store.create(&content).await {
            Ok(c) => c,
            Err(e) if e.is_already_exists() => {
                self.store.get::<VolumeSnapshotContent>("", &name).await?
            }
            Err(e) => {
                let msg = failed(strata_report::chain(&e));
                self.snapshot_failed(&snapshot, reason::CONTENT_CREATION_FAILED, msg)
                    .await?;
                return Ok(Requeue::Backoff);
            }
        };
        info!(content = %name, "created VolumeSnapshotContent");
        self.cache().put_content(saved.clone());
        self.queues.contents.add(name);
        if is_bound(&snapshot, &saved) {
            self.set_snapshot_status(&snapshot, status_from_content(&snapshot, &saved))
                .await?;
        }
        Ok(Requeue::Done)
    }

    /// Adds the pvc-as-source finalizer: the claim stays while a snapshot of it is taken.
    async fn protect_source_claim(&self, ns: &str, claim: &str) -> Result<()> {
        let Some(pvc) = self.cache().claims.get(&format!("{ns}/{claim}")).cloned() else {
            return Ok(());
        };
        let mut updated = pvc;
        if add_finalizer(&mut updated.metadata, FINALIZER_PVC_AS_SOURCE) {
            self.write_pvc(&updated, false).await?;
        }
        Ok(())
    }

    /// Removes the pvc-as-source finalizer once no snapshot of the claim is in progress.
    async fn release_source_claim(&self, ns: &str, claim: &str) -> Result<()> {
        let pvc = {
            let c = self.cache();
            let held = c
                .snapshots
                .values()
                .any(|s| holds_source_claim(s, ns, claim));
            match c.claims.get(&format!("{ns}/{claim}")) {
                Some(p) if !held && has_finalizer(&p.metadata, FINALIZER_PVC_AS_SOURCE) => {
                    p.clone()
                }
                _ => return Ok(()),
            }
        };
        let mut updated = pvc;
        remove_finalizer(&mut updated.metadata, FINALIZER_PVC_AS_SOURCE);
        match self.write_pvc(&updated, false).await {
            Err(e) if e.is_not_found() => Ok(()),
            r => r.map(drop),
        }
    }

    /// `processSnapshotWithDeletionTimestamp`: wait for claims being restored from it, mark
    /// and (Delete policy) delete its content, then let it go.
    async fn snapshot_deleted(&self, snapshot: VolumeSnapshot) -> Result<Requeue> {
        let ns = meta::namespace(&snapshot.metadata).to_string();
        let name = meta::name(&snapshot.metadata).to_string();
        let (content, restoring) = {
            let c = self.cache();
            let content = c
                .contents
                .get(&expected_content(&snapshot))
                .filter(|content| is_bound(&snapshot, content))
                .cloned();
            let restoring: Vec<String> = c
                .claims
                .values()
                .filter(|p| source::restoring_from(p, &ns, &name))
                .map(|p| meta::name(&p.metadata).to_string())
                .collect();
            (content, restoring)
        };
        if !restoring.is_empty() && has_finalizer(&snapshot.metadata, FINALIZER_AS_SOURCE) {
            self.record(&on_snapshot(
                &snapshot_reference(&snapshot),
                EventType::Warning,
                reason::SNAPSHOT_DELETE_PENDING,
                format!(
                    "Snapshot is being used to restore a PVC ({}); it is deleted once they are provisioned",
                    restoring.join(", ")
                ),
            ))
            .await;
            // The claims' events wake this sync again.
            return Ok(Requeue::Done);
        }
        if let Some(content) = content {
            let mut marked = content.clone();
            meta::set_annotation(&mut marked.metadata, ANN_BEING_DELETED, "yes");
            let content = if marked.metadata.annotations != content.metadata.annotations {
                self.write_content(&marked, false).await?
            } else {
                content
            };
            if deletes_snapshot(&content) && content.metadata.deletion_timestamp.is_none() {
                let pre = Preconditions {
                    uid: content.metadata.uid.clone(),
                    resource_version: None,
                };
                let content_name = meta::name(&content.metadata).to_string();
                match self
                    .store
                    .delete::<VolumeSnapshotContent>("", &content_name, pre)
                    .await
                {
                    Ok(d) => {
                        let gone = d.is_gone();
                        let obj = d.into_object();
                        let mut c = self.cache();
                        if gone {
                            c.drop_content(&content_name, meta::resource_version(&obj.metadata));
                        } else {
                            c.put_content(obj);
                        }
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                self.queues.contents.add(content_name);
            }
        }
        let mut released = snapshot.clone();
        let a = remove_finalizer(&mut released.metadata, FINALIZER_AS_SOURCE);
        let b = remove_finalizer(&mut released.metadata, FINALIZER_BOUND);
        if a || b {
            match self.write_snapshot(&released, false).await {
                Err(e) if e.is_not_found() => {}
                r => {
                    r?;
                }
            }
        }
        if let Some(claim) = &snapshot.spec.source.persistent_volume_claim_name {
            self.release_source_claim(&ns, claim).await?;
        }
        Ok(Requeue::Done)
    }

    /// The csi-snapshotter's `syncContent` for one content.
    #[tracing::instrument(skip_all, fields(content = %name))]
    pub(crate) async fn sync_content(&self, name: &str) -> Result<Requeue> {
        let found = self.found()?;
        let driver = found.info.name.clone();
        let Some(mut content) = self.cache().contents.get(name).cloned() else {
            return Ok(Requeue::Done);
        };
        if content.spec.driver != driver {
            return Ok(Requeue::Done);
        }
        if content.metadata.deletion_timestamp.is_some() {
            return self.content_deleted(content).await;
        }
        let mut updated = content.clone();
        if add_finalizer(&mut updated.metadata, FINALIZER_CONTENT) {
            content = self.write_content(&updated, false).await?;
        }
        if self.content_orphaned(&content).await? {
            return Ok(Requeue::Done);
        }
        let status = content.status.clone().unwrap_or_default();
        if status.ready_to_use == Some(true) && status.snapshot_handle.is_some() {
            return Ok(Requeue::Done);
        }
        let source = content.spec.source.clone();
        match (source.volume_handle, source.snapshot_handle) {
            (Some(volume), _) => self.take_snapshot(content, &volume).await,
            (None, Some(handle)) => self.check_snapshot(content, &handle).await,
            (None, None) => Ok(Requeue::Done),
        }
    }

    /// A content bound to a snapshot that is gone: with the Delete policy it goes too
    /// (the snapshot-controller deletes such contents); with Retain it stays.
    async fn content_orphaned(&self, content: &VolumeSnapshotContent) -> Result<bool> {
        let r = &content.spec.volume_snapshot_ref;
        let Some(uid) = r.uid.clone() else {
            return Ok(false);
        };
        let (ns, sname) = (
            r.namespace.clone().unwrap_or_default(),
            r.name.clone().unwrap_or_default(),
        );
        let cached = self
            .cache()
            .snapshots
            .get(&format!("{ns}/{sname}"))
            .is_some_and(|s| meta::uid(&s.metadata) == uid);
        if cached || !deletes_snapshot(content) {
            return Ok(false);
        }
        // The cache may lag a snapshot just created: ask the store.
        match self.store.get::<VolumeSnapshot>(&ns, &sname).await {
            Ok(s) if meta::uid(&s.metadata) == uid => {
                self.cache().put_snapshot(s);
                return Ok(false);
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        info!(snapshot = %format!("{ns}/{sname}"), "the content's VolumeSnapshot is gone: deleting it");
        let mut marked = content.clone();
        meta::set_annotation(&mut marked.metadata, ANN_BEING_DELETED, "yes");
        let marked = self.write_content(&marked, false).await?;
        let pre = Preconditions {
            uid: marked.metadata.uid.clone(),
            resource_version: None,
        };
        match self
            .store
            .delete::<VolumeSnapshotContent>("", meta::name(&marked.metadata), pre)
            .await
        {
            Ok(d) => {
                let obj = d.into_object();
                self.cache().put_content(obj);
                self.queues
                    .contents
                    .add(meta::name(&marked.metadata).to_string());
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }

    async fn content_failed(
        &self,
        content: &VolumeSnapshotContent,
        reason: &'static str,
        message: String,
    ) -> Result<()> {
        let error = error_now(message.clone());
        let mut status = content.status.clone().unwrap_or_default();
        if !same_error(status.error.as_ref(), Some(&error)) {
            status.error = Some(error);
            status.ready_to_use.get_or_insert(false);
            let mut updated = content.clone();
            updated.status = Some(status);
            self.write_content(&updated, true).await?;
        }
        self.record(&Event {
            involved: content_reference(content),
            type_: EventType::Warning,
            reason,
            message: message.clone(),
        })
        .await;
        self.record(&on_snapshot(
            &content.spec.volume_snapshot_ref,
            EventType::Warning,
            reason,
            message,
        ))
        .await;
        self.wake_snapshot_of(content);
        Ok(())
    }

    fn wake_snapshot_of(&self, content: &VolumeSnapshotContent) {
        let r = &content.spec.volume_snapshot_ref;
        self.queues.snapshots.add(format!(
            "{}/{}",
            r.namespace.as_deref().unwrap_or_default(),
            r.name.as_deref().unwrap_or_default()
        ));
    }

    /// CreateSnapshot for a dynamic content; called again until the driver says ready.
    async fn take_snapshot(&self, content: VolumeSnapshotContent, volume: &str) -> Result<Requeue> {
        let class_name = content
            .spec
            .volume_snapshot_class_name
            .clone()
            .unwrap_or_default();
        let class: Option<VolumeSnapshotClass> =
            self.cache().snapshot_classes.get(&class_name).cloned();
        let params = match class
            .ok_or_else(|| format!("VolumeSnapshotClass {class_name:?} not found"))
            .and_then(|c| create_parameters(&c))
        {
            Ok(p) => p,
            Err(msg) => {
                self.content_failed(&content, reason::CREATION_FAILED, msg)
                    .await?;
                return Ok(Requeue::Backoff);
            }
        };
        let secrets = match self.content_secrets(&content).await {
            Ok(s) => s,
            Err(msg) => {
                let msg = format!(
                    "failed to get input parameters to create snapshot for content {:?}: {msg}",
                    meta::name(&content.metadata)
                );
                self.content_failed(&content, reason::CREATION_FAILED, msg)
                    .await?;
                return Ok(Requeue::Backoff);
            }
        };
        let mut content = content;
        let mut marked = content.clone();
        meta::set_annotation(&mut marked.metadata, ANN_BEING_CREATED, "yes");
        if marked.metadata.annotations != content.metadata.annotations {
            content = self.write_content(&marked, false).await?;
        }
        let csi_name = csi_snapshot_name(&content);
        debug!(name = %csi_name, volume, "CreateSnapshot");
        match self
            .csi
            .create_snapshot(&csi_name, volume, &params, &secrets)
            .await
        {
            Ok(snap) => {
                let mut updated = content.clone();
                updated.status = Some(VolumeSnapshotContentStatus {
                    snapshot_handle: Some(snap.snapshot_id.clone()),
                    creation_time: snap.creation_time,
                    restore_size: Some(snap.size_bytes),
                    ready_to_use: Some(snap.ready_to_use),
                    error: None,
                    volume_group_snapshot_handle: None,
                });
                let saved = self.write_content(&updated, true).await?;
                if snap.ready_to_use {
                    let mut done = saved.clone();
                    if meta::remove_annotation(&mut done.metadata, ANN_BEING_CREATED) {
                        self.write_content(&done, false).await?;
                    }
                    info!(snapshot_id = %snap.snapshot_id, "snapshot taken");
                }
                self.wake_snapshot_of(&saved);
                Ok(if snap.ready_to_use {
                    Requeue::Done
                } else {
                    Requeue::Backoff
                })
            }
            Err(e) => {
                if !maybe_in_progress(e.code) {
                    // Final: nothing runs in the driver any more.
                    let mut done = content.clone();
                    if meta::remove_annotation(&mut done.metadata, ANN_BEING_CREATED) {
                        content = self.write_content(&done, false).await?;
                    }
                }
                let msg = format!("failed to take snapshot of the volume {volume}: {e}");
                self.content_failed(&content, reason::CREATION_FAILED, msg)
                    .await?;
                Ok(Requeue::Backoff)
            }
        }
    }

    /// A pre-provisioned content: the driver's ListSnapshots says whether and how big.
    async fn check_snapshot(
        &self,
        content: VolumeSnapshotContent,
        handle: &str,
    ) -> Result<Requeue> {
        let secrets = match self.list_secrets(&content).await {
            Ok(s) => s,
            Err(msg) => {
                self.content_failed(&content, reason::CREATION_FAILED, msg)
                    .await?;
                return Ok(Requeue::Backoff);
            }
        };
        match self.csi.get_snapshot(handle, &secrets).await {
            Ok(Some(snap)) => {
                let mut updated = content.clone();
                updated.status = Some(VolumeSnapshotContentStatus {
                    snapshot_handle: Some(snap.snapshot_id),
                    creation_time: snap.creation_time,
                    restore_size: Some(snap.size_bytes),
                    ready_to_use: Some(snap.ready_to_use),
                    error: None,
                    volume_group_snapshot_handle: None,
                });
                let saved = self.write_content(&updated, true).await?;
                self.wake_snapshot_of(&saved);
                Ok(if snap.ready_to_use {
                    Requeue::Done
                } else {
                    Requeue::Backoff
                })
            }
            Ok(None) => {
                let msg = format!("the driver does not know snapshot {handle:?}");
                self.content_failed(&content, reason::CREATION_FAILED, msg)
                    .await?;
                Ok(Requeue::Backoff)
            }
            Err(e) => {
                let msg = format!("failed to read snapshot {handle:?}: {e}");
                self.content_failed(&content, reason::CREATION_FAILED, msg)
                    .await?;
                Ok(Requeue::Backoff)
            }
        }
    }

    /// A content being deleted: held while a live snapshot is bound to it; with the Delete
    /// policy the storage snapshot goes first.
    async fn content_deleted(&self, content: VolumeSnapshotContent) -> Result<Requeue> {
        let r = &content.spec.volume_snapshot_ref;
        let live = self
            .cache()
            .snapshots
            .get(&format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default()
            ))
            .is_some_and(|s| is_bound(s, &content) && s.metadata.deletion_timestamp.is_none());
        if live {
            // Bound protection: its snapshot's deletion wakes this again.
            return Ok(Requeue::Done);
        }
        if deletes_snapshot(&content) {
            let mut handle = content
                .status
                .as_ref()
                .and_then(|s| s.snapshot_handle.clone());
            let recreate = handle.is_none()
                && meta::has_annotation(&content.metadata, ANN_BEING_CREATED)
                && content.spec.source.volume_handle.is_some();
            // Read only when a call is made: a content whose snapshot was never taken goes
            // without its Secret.
            let secrets = if handle.is_some() || recreate {
                match self.content_secrets(&content).await {
                    Ok(s) => s,
                    Err(msg) => {
                        self.content_failed(&content, reason::DELETE_FAILED, msg)
                            .await?;
                        return Ok(Requeue::Backoff);
                    }
                }
            } else {
                Default::default()
            };
            if recreate && let Some(volume) = &content.spec.source.volume_handle {
                // A CreateSnapshot whose answer was never recorded (a crash): ask again by
                // the same name, which returns the snapshot it made, so it is not leaked.
                let params = self
                    .cache()
                    .snapshot_classes
                    .get(
                        content
                            .spec
                            .volume_snapshot_class_name
                            .as_deref()
                            .unwrap_or_default(),
                    )
                    .and_then(|c| create_parameters(c).ok())
                    .unwrap_or_default();
                match self
                    .csi
                    .create_snapshot(&csi_snapshot_name(&content), volume, &params, &secrets)
                    .await
                {
                    Ok(s) => handle = Some(s.snapshot_id),
                    // The source volume is gone, so nothing was or can be made from it.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        let msg = format!("failed to find the snapshot to delete: {e}");
                        self.content_failed(&content, reason::DELETE_FAILED, msg)
                            .await?;
                        return Ok(Requeue::Backoff);
                    }
                }
            }
            if let Some(h) = handle {
                if let Err(e) = self.csi.delete_snapshot(&h, &secrets).await {
                    let msg = format!("failed to delete snapshot {h:?}: {e}");
                    self.content_failed(&content, reason::DELETE_FAILED, msg)
                        .await?;
                    return Ok(Requeue::Backoff);
                }
                info!(snapshot_id = %h, "deleted snapshot");
            }
        }
        let mut released = content.clone();
        if remove_finalizer(&mut released.metadata, FINALIZER_CONTENT) {
            match self.write_content(&released, false).await {
                Err(e) if e.is_not_found() => {}
                r => {
                    r?;
                }
            }
        }
        Ok(Requeue::Done)
    }
}

/// Claims restoring from a snapshot or cloning a claim wait for it: wake their
/// provisioning at once (dropping the backoff hold a "not ready yet" left).
fn wake_claims_using<S: Store>(
    ctl: &Controller<S>,
    c: &Cache,
    ns: &str,
    source_name: &str,
    snapshot: bool,
) {
    let prefix = format!("{ns}/");
    let sourced = c
        .claims_with_source
        .range(prefix.clone()..)
        .take_while(|k| k.starts_with(&prefix));
    for (k, pvc) in sourced.filter_map(|k| c.claims.get(k).map(|pvc| (k, pvc))) {
        let uses = match source::data_source(pvc) {
            Some(DataSource::Snapshot { name, .. }) => snapshot && name == source_name,
            Some(DataSource::Claim { name, .. }) => !snapshot && name == source_name,
            None => false,
        };
        if uses && meta::claim_volume_name(pvc).is_empty() {
            ctl.provision_holds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(k);
            ctl.queues.provision.add(k.clone());
        }
    }
}

/// A claim changed: snapshots of it (waiting for it to bind, or holding its finalizer), the
/// snapshot it restores from (whose deletion waits for it) and claims cloning it.
pub(super) fn claim_changed<S: Store>(ctl: &Controller<S>, c: &Cache, pvc: &PersistentVolumeClaim) {
    if ctl.config.per_node {
        return;
    }
    let ns = meta::namespace(&pvc.metadata);
    let name = meta::name(&pvc.metadata);
    for (k, s) in &c.snapshots {
        if meta::namespace(&s.metadata) == ns
            && s.spec.source.persistent_volume_claim_name.as_deref() == Some(name)
        {
            ctl.queues.snapshots.add(k.clone());
        }
    }
    if let Some(DataSource::Snapshot { name: s, .. }) = source::data_source(pvc) {
        ctl.queues.snapshots.add(format!("{ns}/{s}"));
    }
    wake_claims_using(ctl, c, ns, name, false);
}

impl Informed for VolumeSnapshotClass {
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self> {
        ctl.cache().snapshot_classes.values().cloned().collect()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, initial: bool) {
        let mut c = ctl.cache();
        match ev {
            WatchEvent::Deleted(o) => {
                c.drop_snapshot_class(meta::name(&o.metadata), meta::resource_version(&o.metadata))
            }
            WatchEvent::Added(o) | WatchEvent::Modified(o) => c.put_snapshot_class(o),
        }
        if !initial {
            // Snapshots and contents waiting for a class.
            for (k, s) in &c.snapshots {
                if s.status.as_ref().and_then(|s| s.ready_to_use) != Some(true) {
                    ctl.queues.snapshots.add(k.clone());
                }
            }
            for (k, content) in &c.contents {
                if content.status.as_ref().and_then(|s| s.ready_to_use) != Some(true) {
                    ctl.queues.contents.add(k.clone());
                }
            }
        }
    }
}

impl Informed for VolumeSnapshot {
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self> {
        ctl.cache().snapshots.values().cloned().collect()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, _initial: bool) {
        let mut c = ctl.cache();
        let k = key(&ev.object().metadata);
        let snapshot = ev.object().clone();
        match ev {
            WatchEvent::Deleted(o) => c.drop_snapshot(&k, meta::resource_version(&o.metadata)),
            WatchEvent::Added(o) | WatchEvent::Modified(o) => c.put_snapshot(o),
        }
        ctl.queues.snapshots.add(k);
        // Its content (bound protection, orphan check) and the claim it was taken of
        // (whose finalizer may go now).
        ctl.queues.contents.add(expected_content(&snapshot));
        let ns = meta::namespace(&snapshot.metadata);
        if let Some(claim) = &snapshot.spec.source.persistent_volume_claim_name
            && let Some(pvc) = c.claims.get(&format!("{ns}/{claim}"))
            && has_finalizer(&pvc.metadata, FINALIZER_PVC_AS_SOURCE)
        {
            for (sk, s) in &c.snapshots {
                if meta::namespace(&s.metadata) == ns
                    && s.spec.source.persistent_volume_claim_name.as_deref() == Some(claim)
                {
                    ctl.queues.snapshots.add(sk.clone());
                }
            }
        }
        wake_claims_using(ctl, &c, ns, meta::name(&snapshot.metadata), true);
    }
}

impl Informed for VolumeSnapshotContent {
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self> {
        ctl.cache().contents.values().cloned().collect()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, _initial: bool) {
        let mut c = ctl.cache();
        let name = meta::name(&ev.object().metadata).to_string();
        let content = ev.object().clone();
        match ev {
            WatchEvent::Deleted(o) => c.drop_content(&name, meta::resource_version(&o.metadata)),
            WatchEvent::Added(o) | WatchEvent::Modified(o) => c.put_content(o),
        }
        ctl.queues.contents.add(name);
        ctl.wake_snapshot_of(&content);
    }
}

/// The snapshot kinds' informers: standalone only (a cluster runs its own
/// snapshot-controller, and may not even have the CRDs).
pub(super) async fn start_informers<S: Store>(
    ctl: &Arc<Controller<S>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    if ctl.config.per_node {
        return Ok(Vec::new());
    }
    Ok(vec![
        super::informer::start::<S, VolumeSnapshotClass>(ctl, stop.clone()).await?,
        super::informer::start::<S, VolumeSnapshotContent>(ctl, stop.clone()).await?,
        super::informer::start::<S, VolumeSnapshot>(ctl, stop).await?,
    ])
}
