//! The external-provisioner and external-resizer workers: CreateVolume, DeleteVolume and
//! ControllerExpandVolume over CSI, with the events `kubectl describe` shows.

use std::ops::ControlFlow;
use std::time::Duration;

use strata_store::Store;
use tracing::{debug, info, warn};

use super::{Controller, Requeue};
use crate::binder::class::claim_class;
use crate::binder::{Event, EventType};
use crate::error::{Error, Result, chain};
use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use crate::k8s_openapi::api::storage::v1::StorageClass;
use crate::meta::{self, add_finalizer, has_finalizer, remove_finalizer};
use crate::metrics::csi_reason;
use crate::names::snapshot::FINALIZER_CLONING;
use crate::names::{self, reason};
use crate::provision::class::ClassConfig;
use crate::provision::immediate::{self, Placed};
use crate::provision::request::{
    AccessMode, AccessType, Capability, ContentSource, DriverInfo, Placement, build_create_request,
};
use crate::provision::retry::{Disposition, classify};
use crate::provision::source::DataSource;
use crate::provision::volume::{Rejected, build_volume};
use crate::provision::{self, csi::CsiError, node};
use crate::secrets::{ClaimValues, SecretRef};
use crate::{expand, quantity};

impl<S: Store> Controller<S> {
    /// Provisions one claim, rate-limited per claim: after a failure the claim is not tried
    /// again before its backoff delay, however often its events re-queue it (a placement
    /// that sets selected-node again right after a reschedule must not make a hot loop).
    pub(crate) async fn provision(&self, k: &str) -> Result<Requeue> {
        let now = std::time::Instant::now();
        if let Some(until) = self.holds().get(k).copied()
            && until > now
        {
            return Ok(Requeue::After(until - now));
        }
        let delay = match self.provision_once(k).await {
            Ok(Requeue::Done) => {
                self.holds().remove(k);
                return Ok(Requeue::Done);
            }
            Ok(Requeue::After(d)) => d,
            Ok(Requeue::Backoff) => self.next_backoff("provision", k),
            Err(e) if e.is_conflict() => return Err(e),
            Err(e) => {
                warn!(pvc = k, error = %chain(&e), "provisioning failed");
                self.next_backoff("provision", k)
            }
        };
        self.holds().insert(k.to_string(), now + delay);
        Ok(Requeue::After(delay))
    }

    fn holds(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        self.provision_holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    #[tracing::instrument(skip_all, fields(pvc = %k))]
    async fn provision_once(&self, k: &str) -> Result<Requeue> {
        let found = self.found()?;
        let driver = &found.info;
        let (pvc, class) = {
            let c = self.cache();
            let Some(pvc) = c.claims.get(k).cloned() else {
                return Ok(Requeue::Done);
            };
            if !provision::should_provision(&pvc, &driver.name, &c.classes) {
                return Ok(Requeue::Done);
            }
            // A PV with the claim's volume name exists: provisioned already, the binder binds.
            if c.volumes.get(&provision::volume_name(&pvc)).is_some() {
                return Ok(Requeue::Done);
            }
            let class = c.classes.get(claim_class(&pvc)).cloned();
            (pvc, class)
        };
        let Some(class) = class else {
            return Ok(Requeue::Done);
        };
        let pvc = if !self.config.per_node || node::claim_is_for(&pvc, &self.config.node_id) {
            pvc
        } else if meta::annotation(&pvc.metadata, names::ANN_SELECTED_NODE)
            .is_some_and(|n| !n.is_empty())
        {
            return Ok(Requeue::Done);
        } else {
            // should_provision passed without a node: an Immediate class.
            match self.place_immediate(&pvc, &class, &driver.name).await? {
                ControlFlow::Continue(taken) => taken,
                ControlFlow::Break(requeue) => return Ok(requeue),
            }
        };
        let class_name = claim_class(&pvc).to_string();
        let failed = |msg: String| {
            Event::on_claim(
                &pvc,
                EventType::Warning,
                reason::PROVISIONING_FAILED,
                format!("failed to provision volume with StorageClass {class_name:?}: {msg}"),
            )
        };
        let cfg = match ClassConfig::from_class(&class) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.provisioned(Err("InvalidClass"));
                self.record(&failed(e)).await;
                return Ok(Requeue::Backoff);
            }
        };
        let source = match self.resolve_source(&pvc, driver) {
            Ok(s) => s,
            Err(e) => {
                // Not ready yet or not usable: said on the claim, retried (upstream retries
                // too); a source becoming ready wakes the claim at once.
                self.metrics.provisioned(Err("InvalidSource"));
                self.record(&failed(e)).await;
                return Ok(Requeue::Backoff);
            }
        };
        let nodes = vec![self.config.node_id.clone()];
        let mut request = match build_create_request(
            &pvc,
            &cfg,
            driver,
            &self.config.default_fs_type,
            &Placement { nodes: &nodes },
            source,
        ) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.provisioned(Err("InvalidRequest"));
                self.record(&failed(e)).await;
                return Ok(Requeue::Backoff);
            }
        };
        // The class's secrets for this claim; the PV records the references.
        let secrets = match cfg
            .secrets
            .resolve_all(&request.name, &ClaimValues::of(&pvc))
        {
            Ok(s) => s,
            Err(e) => {
                self.metrics.provisioned(Err("InvalidSecretParameters"));
                self.record(&failed(e.to_string())).await;
                return Ok(Requeue::Backoff);
            }
        };
        self.record(&Event::on_claim(
            &pvc,
            EventType::Normal,
            reason::PROVISIONING,
            format!(
                "External provisioner is provisioning volume for claim {:?}",
                meta::claim_key(&pvc)
            ),
        ))
        .await;
        // Read before anything is made: a Secret not there yet fails this attempt alone,
        // and the backoff retries it.
        request.secrets = match self
            .optional_secret_data(secrets.provisioner.as_ref())
            .await
        {
            Ok(data) => data,
            Err(e) => {
                self.metrics.provisioned(Err("SecretUnavailable"));
                self.record(&failed(chain(&e))).await;
                return Ok(Requeue::Backoff);
            }
        };
        let clone_of = match (&request.source, provision::source::data_source(&pvc)) {
            (Some(ContentSource::Volume(_)), Some(ds)) => Some(ds.name().to_string()),
            _ => None,
        };
        if let Some(src) = &clone_of {
            self.set_cloning_protection(meta::namespace(&pvc.metadata), src, true)
                .await?;
        }
        let created = self.csi.create_volume(&request).await;
        if let Some(src) = &clone_of {
            // The copy is done (or failed): the source may go; a retry protects it again.
            self.set_cloning_protection(meta::namespace(&pvc.metadata), src, false)
                .await?;
        }
        let created = match created {
            Ok(v) => v,
            Err(e) => return self.provision_failed(&pvc, &cfg, e, failed).await,
        };
        let pv = match build_volume(
            &pvc,
            &cfg,
            &driver.name,
            &found.identity,
            &request,
            &created,
            &secrets,
        ) {
            Ok(pv) => pv,
            Err(rejected @ Rejected::TooSmall { .. }) => {
                // The driver made less than asked: take it back (with the secrets it was
                // made with), then report.
                if let Err(e) = self
                    .csi
                    .delete_volume(&created.volume_id, &request.secrets)
                    .await
                {
                    warn!(volume_id = %created.volume_id, error = %e, "deleting an undersized volume failed");
                }
                self.metrics.provisioned(Err("TooSmall"));
                self.record(&failed(rejected.to_string())).await;
                return Ok(Requeue::Backoff);
            }
        };
        // Saving the PV is retried here with backoff so a created volume is not forgotten;
        // should the process die first, the next attempt's CreateVolume (same name) returns
        // the same volume.
        let mut delay = Duration::from_millis(50);
        let saved = loop {
            match self.store.create(&pv).await {
                Ok(saved) => break saved,
                Err(e) if e.is_already_exists() => match self
                    .store
                    .get::<PersistentVolume>("", meta::name(&pv.metadata))
                    .await
                {
                    Ok(existing) => break existing,
                    Err(e) => warn!(error = %chain(&e), "reading the existing PV failed"),
                },
                Err(e) if e.is_invalid() => {
                    self.metrics.provisioned(Err("InvalidVolume"));
                    return Err(e.into());
                }
                Err(e) => warn!(error = %chain(&e), "saving the PV failed, retrying"),
            }
            if self.queues.provision.is_shut_down() {
                return Ok(Requeue::Backoff);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        info!(volume = %meta::name(&saved.metadata), "provisioned");
        self.metrics.provisioned(Ok(()));
        self.capacity_changed();
        self.cache().put_volume(saved.clone());
        self.record(&Event::on_claim(
            &pvc,
            EventType::Normal,
            reason::PROVISIONING_SUCCEEDED,
            format!(
                "Successfully provisioned volume {}",
                meta::name(&saved.metadata)
            ),
        ))
        .await;
        self.queues.claims.add(meta::claim_key(&pvc));
        Ok(Requeue::Done)
    }

    /// Per-node mode: takes an unplaced Immediate claim for this node when it is this
    /// node's turn (`provision::immediate`): Continue with the claim once this node has
    /// it, else Break with when to look again.
    async fn place_immediate(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        driver: &str,
    ) -> Result<ControlFlow<Requeue, PersistentVolumeClaim>> {
        let Some(cap) = &self.config.capacity else {
            // Placing needs every node's published capacity.
            debug!("Immediate claim left alone: capacity publishing is off");
            return Ok(ControlFlow::Break(Requeue::Done));
        };
        let capacities = immediate::capacities(&self.store, &cap.namespace, driver).await?;
        match immediate::place(
            &self.store,
            pvc,
            class,
            &self.config.node_id,
            &capacities,
            cap.immediate_step,
        )
        .await?
        {
            Placed::Here(taken) => {
                info!(node = %self.config.node_id, "took the Immediate claim");
                self.cache().put_claim(taken.clone());
                Ok(ControlFlow::Continue(taken))
            }
            Placed::Elsewhere { winner } => {
                debug!(
                    winner = winner.as_deref().unwrap_or_default(),
                    "Immediate claim taken by another node"
                );
                Ok(ControlFlow::Break(Requeue::Done))
            }
            // Capacities change; the periodic resync looks again.
            Placed::NotHere => Ok(ControlFlow::Break(Requeue::Done)),
            Placed::Wait(d) => Ok(ControlFlow::Break(Requeue::After(d))),
            Placed::Changed(now) => {
                self.cache().put_claim(now);
                Ok(ControlFlow::Break(Requeue::Backoff))
            }
        }
    }

    /// The claim's data source as CSI's content source, checked against the cache.
    fn resolve_source(
        &self,
        pvc: &PersistentVolumeClaim,
        driver: &DriverInfo,
    ) -> std::result::Result<Option<ContentSource>, String> {
        let Some(ds) = provision::source::data_source(pvc) else {
            return Ok(None);
        };
        let required = meta::claim_request_bytes(pvc)?;
        let ns = meta::namespace(&pvc.metadata);
        let c = self.cache();
        let mut found = provision::source::Found::default();
        match &ds {
            DataSource::Snapshot { name, .. } => {
                found.snapshot = c.snapshots.get(&format!("{ns}/{name}"));
                found.content = found
                    .snapshot
                    .and_then(|s| s.status.as_ref())
                    .and_then(|s| s.bound_volume_snapshot_content_name.as_ref())
                    .and_then(|n| c.contents.get(n));
            }
            DataSource::Claim { name, .. } => {
                found.claim = c.claims.get(&format!("{ns}/{name}"));
                found.volume = found
                    .claim
                    .and_then(|s| c.volumes.get(meta::claim_volume_name(s)));
            }
        }
        provision::source::resolve(pvc, &ds, &found, driver, required).map(Some)
    }

    /// external-provisioner's cloning-protection finalizer on a clone's source claim.
    /// Conflicts (the binder writes claims too) are retried here on the fresh copy, so a
    /// volume already created is never made again just to drop the finalizer.
    async fn set_cloning_protection(&self, ns: &str, claim: &str, on: bool) -> Result<()> {
        let mut attempts = 0;
        loop {
            let Some(mut pvc) = self.cache().claims.get(&format!("{ns}/{claim}")).cloned() else {
                return Ok(());
            };
            let changed = if on {
                add_finalizer(&mut pvc.metadata, FINALIZER_CLONING)
            } else {
                remove_finalizer(&mut pvc.metadata, FINALIZER_CLONING)
            };
            if !changed {
                return Ok(());
            }
            match self.write_pvc(&pvc, false).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.is_conflict() && attempts < 10 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    async fn provision_failed(
        &self,
        pvc: &PersistentVolumeClaim,
        cfg: &ClassConfig,
        err: CsiError,
        failed: impl Fn(String) -> Event,
    ) -> Result<Requeue> {
        let found = self.found()?;
        let driver = &found.info;
        let selected = meta::has_annotation(&pvc.metadata, names::ANN_SELECTED_NODE);
        let disposition = classify(
            err.code,
            driver.accessibility_constraints,
            // A claim this node took by the Immediate race is released like a WFFC one.
            selected && (cfg.wait_for_first_consumer || self.config.per_node),
        );
        debug!(error = %err, ?disposition, "CreateVolume failed");
        self.metrics.provisioned(Err(csi_reason(&err)));
        self.record(&failed(err.to_string())).await;
        match disposition {
            // Maybe still running in the driver: the same call again, soon.
            Disposition::InBackground | Disposition::Final => Ok(Requeue::Backoff),
            Disposition::Infeasible => Ok(Requeue::After(
                self.config.retry_max.min(self.config.retry_start * 16),
            )),
            Disposition::Reschedule => {
                // Placement failed on that node: clear selected-node so it is picked again.
                let mut updated = pvc.clone();
                meta::remove_annotation(&mut updated.metadata, names::ANN_SELECTED_NODE);
                self.write_pvc(&updated, false).await?;
                // The published capacity was too optimistic: measure again before the
                // claim (or the scheduler) picks a node by it.
                self.capacity_changed();
                Ok(Requeue::Backoff)
            }
        }
    }

    /// The external-provisioner's PV side: its finalizer (HonorPVReclaimPolicy) and
    /// DeleteVolume for released volumes with the Delete policy.
    #[tracing::instrument(skip_all, fields(volume = %name))]
    pub(crate) async fn delete(&self, name: &str) -> Result<Requeue> {
        let found = self.found()?;
        let driver = &found.info;
        let Some(pv) = self.cache().volumes.get(name).cloned() else {
            return Ok(Requeue::Done);
        };
        if self.config.per_node && !node::volume_is_on(&pv, &self.config.node_id) {
            return Ok(Requeue::Done);
        }
        let Some(csi) = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .filter(|c| c.driver == driver.name)
        else {
            return Ok(Requeue::Done);
        };
        let volume_id = csi.volume_handle.clone();
        let policy = meta::reclaim_policy(&pv).to_string();
        let deleting = pv.metadata.deletion_timestamp.is_some();
        let has_fin = has_finalizer(&pv.metadata, names::FINALIZER_EXTERNAL_PROVISIONER);
        if policy == "Delete" && meta::volume_phase(&pv) == "Bound" && !deleting && !has_fin {
            let mut updated = pv.clone();
            add_finalizer(&mut updated.metadata, names::FINALIZER_EXTERNAL_PROVISIONER);
            self.write_pv(&updated, false).await?;
            return Ok(Requeue::Done);
        }
        if policy != "Delete" && has_fin {
            let mut updated = pv.clone();
            remove_finalizer(&mut updated.metadata, names::FINALIZER_EXTERNAL_PROVISIONER);
            self.write_pv(&updated, false).await?;
            return Ok(Requeue::Done);
        }
        // shouldDelete: Released, Delete, and (our finalizer still on, or not being deleted).
        if meta::volume_phase(&pv) != "Released" || policy != "Delete" || (deleting && !has_fin) {
            return Ok(Requeue::Done);
        }
        let secrets = match self.deletion_secrets(&pv).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.deleted(Err("InvalidSecretParameters"));
                self.record(&Event::on_volume(
                    &pv,
                    EventType::Warning,
                    reason::VOLUME_FAILED_DELETE,
                    chain(&e),
                ))
                .await;
                return Ok(Requeue::Backoff);
            }
        };
        if let Err(e) = self.csi.delete_volume(&volume_id, &secrets).await {
            self.metrics.deleted(Err(csi_reason(&e)));
            self.record(&Event::on_volume(
                &pv,
                EventType::Warning,
                reason::VOLUME_FAILED_DELETE,
                e.to_string(),
            ))
            .await;
            return Ok(Requeue::Backoff);
        }
        info!(volume_id = %volume_id, "deleted backing volume");
        self.metrics.deleted(Ok(()));
        self.capacity_changed();
        if has_fin {
            let mut updated = pv.clone();
            remove_finalizer(&mut updated.metadata, names::FINALIZER_EXTERNAL_PROVISIONER);
            match self.write_pv(&updated, false).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Requeue::Done),
                Err(e) => return Err(e),
            }
        }
        let current = self.cache().volumes.get(name).cloned();
        if let Some(pv) = current {
            self.delete_pv(&pv).await?;
        }
        Ok(Requeue::Done)
    }

    /// ControllerExpandVolume for a bound claim that asks for more than its PV has.
    #[tracing::instrument(skip_all, fields(pvc = %k))]
    pub(crate) async fn expand(&self, k: &str) -> Result<Requeue> {
        let found = self.found()?;
        let driver = &found.info;
        if !driver.expand_volume {
            return Ok(Requeue::Done);
        }
        let wanted = {
            let c = self.cache();
            let Some(pvc) = c.claims.get(k).cloned() else {
                return Ok(Requeue::Done);
            };
            let Some(pv) = c.volumes.get(meta::claim_volume_name(&pvc)).cloned() else {
                return Ok(Requeue::Done);
            };
            if pv
                .spec
                .as_ref()
                .and_then(|s| s.csi.as_ref())
                .is_none_or(|c| c.driver != driver.name)
                || (self.config.per_node && !node::volume_is_on(&pv, &self.config.node_id))
            {
                return Ok(Requeue::Done);
            }
            let class = c.classes.get(claim_class(&pvc));
            let allowed = class.is_some_and(|sc| sc.allow_volume_expansion == Some(true));
            match expand::wanted_size(&pvc, &pv, allowed) {
                Some(size) => Ok((pvc, pv, size)),
                // Asked to grow but the class is gone or forbids it: say why nothing happens.
                None if expand::wanted_size(&pvc, &pv, true).is_some() => {
                    let why = match class {
                        None => format!("its StorageClass {:?} does not exist", claim_class(&pvc)),
                        Some(_) => format!(
                            "its StorageClass {:?} does not set allowVolumeExpansion",
                            claim_class(&pvc)
                        ),
                    };
                    Err(Event::on_claim(
                        &pvc,
                        EventType::Warning,
                        reason::VOLUME_RESIZE_FAILED,
                        format!("cannot expand volume {}: {why}", meta::name(&pv.metadata)),
                    ))
                }
                None => return Ok(Requeue::Done),
            }
        };
        let (pvc, pv, size) = match wanted {
            Ok(w) => w,
            Err(event) => {
                self.metrics.expanded(Err("NotExpandable"));
                self.record(&event).await;
                return Ok(Requeue::Done);
            }
        };
        let pv_name = meta::name(&pv.metadata).to_string();
        let mut pvc = pvc;
        if meta::annotation(&pvc.metadata, names::ANN_STORAGE_RESIZER) != Some(driver.name.as_str())
        {
            meta::set_annotation(&mut pvc.metadata, names::ANN_STORAGE_RESIZER, &driver.name);
            pvc = self.write_pvc(&pvc, false).await?;
        }
        let pvc = self.write_pvc(&expand::started(&pvc, size), true).await?;
        self.record(&Event::on_claim(
            &pvc,
            EventType::Normal,
            reason::RESIZING,
            format!("External resizer is resizing volume {pv_name}"),
        ))
        .await;
        let csi = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .expect("checked above");
        let cap = expand_capability(&pv);
        let bytes = u64::try_from(size)
            .map_err(|_| Error::Invalid("requested size is too large".into()))?;
        let failed_msg = |why: String| {
            format!(
                "resize volume {pv_name:?} by resizer {:?} failed: {why}",
                driver.name
            )
        };
        // external-resizer: the Secret the PV names, read for each attempt; without it the
        // resize fails and is retried.
        let expand_ref = csi
            .controller_expand_secret_ref
            .as_ref()
            .and_then(SecretRef::from_reference);
        let secrets = match self.optional_secret_data(expand_ref.as_ref()).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.expanded(Err("SecretUnavailable"));
                return self
                    .resize_failed(&pvc, size, failed_msg(chain(&e)), false)
                    .await;
            }
        };
        match self
            .csi
            .expand_volume(&csi.volume_handle, bytes, cap.as_ref(), &secrets)
            .await
        {
            Ok((got, node_required)) => {
                let new_size = u128::try_from(got)
                    .ok()
                    .filter(|g| *g > 0)
                    .unwrap_or(size)
                    .max(size);
                self.write_pv(
                    &expand::expanded_volume(&pv, &pvc, new_size, node_required),
                    false,
                )
                .await?;
                let pvc = self
                    .write_pvc(
                        &expand::controller_done(&pvc, new_size, node_required),
                        true,
                    )
                    .await?;
                let (r, msg) = if node_required {
                    (
                        reason::FILE_SYSTEM_RESIZE_REQUIRED,
                        "Require file system resize of volume on node".to_string(),
                    )
                } else {
                    (
                        reason::VOLUME_RESIZE_SUCCESSFUL,
                        "Resize volume succeeded".to_string(),
                    )
                };
                self.record(&Event::on_claim(&pvc, EventType::Normal, r, msg))
                    .await;
                info!(size = %quantity::format_bytes(new_size).0, node_required, "expanded");
                self.metrics.expanded(Ok(()));
                Ok(Requeue::Done)
            }
            Err(e) => {
                // INVALID_ARGUMENT / OUT_OF_RANGE will not succeed by retrying the same size.
                let infeasible = matches!(e.code, Some(3) | Some(11));
                self.metrics.expanded(Err(csi_reason(&e)));
                self.resize_failed(&pvc, size, failed_msg(e.to_string()), infeasible)
                    .await
            }
        }
    }

    /// A failed resize: the claim's status and a VolumeResizeFailed event; retried with
    /// back-off unless the size is `infeasible`.
    async fn resize_failed(
        &self,
        pvc: &PersistentVolumeClaim,
        size: u128,
        msg: String,
        infeasible: bool,
    ) -> Result<Requeue> {
        self.write_pvc(&expand::failed(pvc, size, msg.clone(), infeasible), true)
            .await?;
        self.record(&Event::on_claim(
            pvc,
            EventType::Warning,
            reason::VOLUME_RESIZE_FAILED,
            msg,
        ))
        .await;
        Ok(if infeasible {
            Requeue::Done
        } else {
            Requeue::Backoff
        })
    }
}

/// The capability sent with ControllerExpandVolume: the PV's mode and access type.
fn expand_capability(pv: &PersistentVolume) -> Option<Capability> {
    let mode = match meta::volume_access_modes(pv).first().map(String::as_str) {
        Some("ReadOnlyMany") => AccessMode::MultiNodeReaderOnly,
        Some("ReadWriteMany") => AccessMode::MultiNodeMultiWriter,
        Some(_) => AccessMode::SingleNodeWriter,
        None => return None,
    };
    let access_type = if meta::volume_volume_mode(pv) == "Block" {
        AccessType::Block
    } else {
        let fs_type = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .and_then(|c| c.fs_type.clone())
            .unwrap_or_default();
        AccessType::Mount {
            fs_type,
            mount_flags: pv
                .spec
                .as_ref()
                .and_then(|s| s.mount_options.clone())
                .unwrap_or_default(),
        }
    };
    Some(Capability { access_type, mode })
}
