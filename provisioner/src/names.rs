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

/// external-snapshotter's strings (`pkg/utils/util.go`) and external-provisioner's cloning
/// finalizer.
pub mod snapshot {
    /// On every VolumeSnapshot not being deleted: held while a claim is being restored from it.
    pub const FINALIZER_AS_SOURCE: &str =
        "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection";
    /// On a VolumeSnapshot bound to a content whose deletionPolicy is Delete.
    pub const FINALIZER_BOUND: &str =
        "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
    /// On every VolumeSnapshotContent: held until its snapshot is deleted (if Delete).
    pub const FINALIZER_CONTENT: &str =
        "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";
    /// On a claim while a snapshot of it is being taken.
    pub const FINALIZER_PVC_AS_SOURCE: &str =
        "snapshot.storage.kubernetes.io/pvc-as-source-protection";
    /// On a claim while a clone of it is being provisioned.
    pub const FINALIZER_CLONING: &str = "provisioner.storage.kubernetes.io/cloning-protection";
    /// On a content whose VolumeSnapshot is being deleted: DeleteSnapshot may run.
    pub const ANN_BEING_DELETED: &str =
        "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted";
    /// On a content while CreateSnapshot may be running.
    pub const ANN_BEING_CREATED: &str =
        "snapshot.storage.kubernetes.io/volumesnapshot-being-created";
    /// On a VolumeSnapshotClass: the default for its driver.
    pub const ANN_DEFAULT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";
    /// On a content: a restore may change the volume mode from its source's.
    pub const ANN_ALLOW_VOLUME_MODE_CHANGE: &str =
        "snapshot.storage.kubernetes.io/allow-volume-mode-change";
    /// Class parameters naming the snapshotter's secret (CreateSnapshot, DeleteSnapshot).
    pub const PARAM_SECRET_NAME: &str = "csi.storage.k8s.io/snapshotter-secret-name";
    pub const PARAM_SECRET_NAMESPACE: &str = "csi.storage.k8s.io/snapshotter-secret-namespace";
    /// Class parameters naming the secret ListSnapshots gets (a pre-provisioned content's
    /// status check).
    pub const PARAM_LIST_SECRET_NAME: &str = "csi.storage.k8s.io/snapshotter-list-secret-name";
    pub const PARAM_LIST_SECRET_NAMESPACE: &str =
        "csi.storage.k8s.io/snapshotter-list-secret-namespace";
    /// On a dynamic content: the snapshotter secret its class named, resolved when the
    /// content was made; CreateSnapshot and DeleteSnapshot read it from here.
    pub const ANN_DELETION_SECRET_NAME: &str =
        "snapshot.storage.kubernetes.io/deletion-secret-name";
    pub const ANN_DELETION_SECRET_NAMESPACE: &str =
        "snapshot.storage.kubernetes.io/deletion-secret-namespace";

    /// Event reasons.
    pub mod reason {
        pub const CREATING: &str = "CreatingSnapshot";
        pub const CREATED: &str = "SnapshotCreated";
        pub const READY: &str = "SnapshotReady";
        pub const CREATION_FAILED: &str = "SnapshotCreationFailed";
        pub const CONTENT_CREATION_FAILED: &str = "SnapshotContentCreationFailed";
        pub const CONTENT_MISSING: &str = "SnapshotContentMissing";
        pub const CONTENT_MISMATCH: &str = "SnapshotContentMismatch";
        pub const DELETE_FAILED: &str = "SnapshotDeleteError";
        pub const SNAPSHOT_DELETE_PENDING: &str = "SnapshotDeletePending";
    }
}
