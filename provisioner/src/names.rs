//! Exact annotation, finalizer, label and event strings Kubernetes uses (k8s-semantics §3.2).
//!
//! Kept in one place so a typo cannot make us disagree with a real cluster.

pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const ANN_MIGRATED_TO: &str = "pv.kubernetes.io/migrated-to";
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const ANN_BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
pub const ANN_STORAGE_RESIZER: &str = "volume.kubernetes.io/storage-resizer";
pub const ANN_PRE_RESIZE_CAPACITY: &str = "volume.alpha.kubernetes.io/pre-resize-capacity";
pub const ANN_DELETION_SECRET_NAME: &str = "volume.kubernetes.io/provisioner-deletion-secret-name";
pub const ANN_DELETION_SECRET_NAMESPACE: &str =
    "volume.kubernetes.io/provisioner-deletion-secret-namespace";
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
pub const ANN_BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

pub const FINALIZER_PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const FINALIZER_PV_PROTECTION: &str = "kubernetes.io/pv-protection";
pub const FINALIZER_EXTERNAL_PROVISIONER: &str =
    "external-provisioner.volume.kubernetes.io/finalizer";

/// A StorageClass provisioner that never provisions (static local volumes).
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// The driver's topology key (`NodeGetInfo.accessible_topology`), and the standard hostname label.
pub const TOPOLOGY_KEY: &str = "topology.strata.io/node";
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

/// Added to the PV's volumeAttributes by external-provisioner (k8s-semantics §3.9 step 5).
pub const CSI_PROVISIONER_IDENTITY: &str = "storage.kubernetes.io/csiProvisionerIdentity";
/// StorageClass parameter prefix reserved for the sidecars; never passed to the driver.
pub const CSI_PARAM_PREFIX: &str = "csi.storage.k8s.io/";
pub const CSI_PARAM_FSTYPE: &str = "csi.storage.k8s.io/fstype";
pub const LEGACY_PARAM_FSTYPE: &str = "fstype";

pub const YES: &str = "yes";

/// Event reasons, as `kubectl describe` shows them.
pub mod reason {
    pub const VOLUME_MISMATCH: &str = "VolumeMismatch";
    pub const FAILED_BINDING: &str = "FailedBinding";
    pub const CLAIM_LOST: &str = "ClaimLost";
    pub const CLAIM_MISBOUND: &str = "ClaimMisbound";
    pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";
    pub const WAIT_FOR_POD_SCHEDULED: &str = "WaitForPodScheduled";
    pub const EXTERNAL_PROVISIONING: &str = "ExternalProvisioning";
    pub const PROVISIONING: &str = "Provisioning";
    pub const PROVISIONING_SUCCEEDED: &str = "ProvisioningSucceeded";
    pub const PROVISIONING_FAILED: &str = "ProvisioningFailed";
    pub const VOLUME_FAILED_DELETE: &str = "VolumeFailedDelete";
    pub const VOLUME_FAILED_RECYCLE: &str = "VolumeFailedRecycle";
    pub const VOLUME_UNKNOWN_RECLAIM_POLICY: &str = "VolumeUnknownReclaimPolicy";
    pub const VOLUME_DELETE: &str = "VolumeDelete";
    pub const RESIZING: &str = "Resizing";
    pub const VOLUME_RESIZE_FAILED: &str = "VolumeResizeFailed";
    pub const FILE_SYSTEM_RESIZE_REQUIRED: &str = "FileSystemResizeRequired";
    pub const VOLUME_RESIZE_SUCCESSFUL: &str = "VolumeResizeSuccessful";
    pub const SUCCESSFUL_CREATE: &str = "SuccessfulCreate";
    pub const FAILED_CREATE: &str = "FailedCreate";
    pub const SUCCESSFUL_DELETE: &str = "SuccessfulDelete";
}
