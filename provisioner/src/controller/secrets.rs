//! Fetching the Secrets that classes name, for the CSI calls that carry them. A Secret is
//! read with a plain get when it is needed, as the sidecars do (no informer: the
//! provisioner keeps no Secret in memory). Its data goes from the store into the request
//! and nowhere else: errors name the Secret, never its content.

use strata_store::Store;
use strata_store::snapshot::VolumeSnapshotContent;
use tracing::warn;

use super::Controller;
use crate::binder::class::volume_class;
use crate::error::chain;
use crate::k8s_openapi::api::core::v1::PersistentVolume;
use crate::meta;
use crate::secrets::{
    ClaimValues, ClassSecrets, DeletionSecret, FetchError, Kind, ParamError, SecretData, SecretRef,
    deletion_secret, read_secret, snapshotter_list_secret,
};
use crate::snapshot::content_secret;

/// Why DeleteVolume's secret could not be worked out (a fetch failure is not one: the
/// delete goes on without it).
#[derive(Debug, thiserror::Error)]
#[error("failed to get secretreference for volume {volume}")]
pub(crate) struct DeletionRefError {
    volume: String,
    #[source]
    source: ParamError,
}

impl<S: Store> Controller<S> {
    /// The data of the Secret `r` names, or none when `r` is None.
    pub(crate) async fn optional_secret_data(
        &self,
        r: Option<&SecretRef>,
    ) -> Result<SecretData, FetchError> {
        match r {
            Some(r) => read_secret(&self.store, r).await,
            None => Ok(SecretData::default()),
        }
    }

    /// DeleteVolume's secrets (`handleSecretsForDeletion`): the PV's deletion-secret
    /// annotations, else its class's provisioner secret. A Secret that cannot be read is
    /// logged and the delete goes on without it, as upstream does: the namespace holding
    /// it may be gone, and a driver that needs it says so in its answer.
    pub(crate) async fn deletion_secrets(
        &self,
        pv: &PersistentVolume,
    ) -> Result<SecretData, DeletionRefError> {
        let name = meta::name(&pv.metadata).to_string();
        let r = match deletion_secret(pv) {
            DeletionSecret::Recorded(r) => r,
            DeletionSecret::None => return Ok(SecretData::default()),
            DeletionSecret::FromClass => {
                let class_name = volume_class(pv).to_string();
                if class_name.is_empty() {
                    return Ok(SecretData::default());
                }
                let params = self
                    .cache()
                    .classes
                    .get(&class_name)
                    .map(|c| c.parameters.clone().unwrap_or_default());
                let Some(params) = params else {
                    warn!(volume = %name, class = %class_name, "StorageClass not found, deleting without secrets");
                    return Ok(SecretData::default());
                };
                let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                let values = ClaimValues {
                    name: claim.and_then(|c| c.name.as_deref()).unwrap_or_default(),
                    namespace: claim
                        .and_then(|c| c.namespace.as_deref())
                        .unwrap_or_default(),
                    annotations: None,
                };
                let resolved = ClassSecrets::of_kinds(&params, &[Kind::Provisioner])
                    .and_then(|s| s.resolve(Kind::Provisioner, &name, &values))
                    .map_err(|source| DeletionRefError {
                        volume: name.clone(),
                        source,
                    })?;
                match resolved {
                    Some(r) => r,
                    None => return Ok(SecretData::default()),
                }
            }
        };
        match read_secret(&self.store, &r).await {
            Ok(data) => Ok(data),
            Err(e) => {
                warn!(volume = %name, error = %chain(&e), "deleting without the deletion secret");
                Ok(SecretData::default())
            }
        }
    }

    /// The secrets CreateSnapshot and DeleteSnapshot of `content` pass: the Secret its
    /// deletion-secret annotations name. Unlike DeleteVolume, a Secret that cannot be read
    /// fails the call (external-snapshotter's sidecar does so for both).
    pub(crate) async fn content_secrets(
        &self,
        content: &VolumeSnapshotContent,
    ) -> Result<SecretData, String> {
        let r = content_secret(content)?;
        self.optional_secret_data(r.as_ref()).await.map_err(|e| {
            format!(
                "cannot get credentials for snapshot content {:?}: {}",
                meta::name(&content.metadata),
                chain(&e)
            )
        })
    }

    /// ListSnapshots' secrets for `content`: the snapshotter-list secret of the class it
    /// names. A content without a class, or whose class is gone, is checked without.
    pub(crate) async fn list_secrets(
        &self,
        content: &VolumeSnapshotContent,
    ) -> Result<SecretData, String> {
        let name = meta::name(&content.metadata);
        let params = content
            .spec
            .volume_snapshot_class_name
            .as_ref()
            .and_then(|c| self.cache().snapshot_classes.get(c).cloned())
            .and_then(|c| c.parameters);
        let Some(params) = params else {
            return Ok(SecretData::default());
        };
        let r = snapshotter_list_secret(&params, name).map_err(|e| {
            format!("failed to get secret reference for snapshot content {name:?}: {e}")
        })?;
        self.optional_secret_data(r.as_ref()).await.map_err(|e| {
            format!(
                "failed to get credentials for snapshot content {name:?}: {}",
                chain(&e)
            )
        })
    }
}
