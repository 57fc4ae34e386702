//! One pod's volumes: set up all of them (each on its own, failures reported together)
//! and tear them all down, serialised per pod UID and checked against the desired set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use strata_store::k8s_openapi::api::core::v1::{Pod, Volume};
use strata_store::meta;
use strata_store::{EventType, Store};

use super::{ObjectKind, VolumeManager};
use crate::csi_volume;
use crate::dirfd;
use crate::empty_dir::{self, Medium};
use crate::error::{Error, Result, blocking};
use crate::handoff::PreparedVolume;
use crate::host_path;
use crate::layout;
use crate::mount;
use crate::projection::{self, Kind};

impl<S: Store> VolumeManager<S> {
    /// Sets up every volume of `pod` (idempotent). Volumes that fail are reported together
    /// and retried by the next sync; the others are set up regardless. A pod deleted,
    /// finished or torn down (checked under the pod's lock, after any tear-down in flight)
    /// gets nothing and `Error::PodGone`; one not admitted yet (see
    /// [`Self::require_admission`]) gets nothing and `Error::NotAdmitted`. The newest copy
    /// the Pod watch delivered is used.
    ///
    /// The work runs as a tracked task: it finishes even when the caller stops waiting,
    /// and `run` waits for it before returning.
    pub async fn sync_pod(&self, pod: &Pod) -> Result<BTreeMap<String, PreparedVolume>> {
        let (me, p) = (self.clone(), pod.clone());
        self.tracked(
            format!("set up pod {}", meta::key(&pod.metadata)),
            async move { me.set_up_pod(&p).await },
        )
        .await
    }

    /// [`Self::sync_pod`] on the caller's task.
    #[tracing::instrument(name = "sync_pod", skip_all, fields(pod = %pod.metadata.name.as_deref().unwrap_or_default()))]
    pub(super) async fn set_up_pod(&self, pod: &Pod) -> Result<BTreeMap<String, PreparedVolume>> {
        let uid = meta::uid(&pod.metadata).to_owned();
        if !layout::valid_component(&uid) {
            return Err(Error::InvalidArgument {
                field: "metadata.uid",
                reason: format!("{uid:?} cannot name a directory"),
            });
        }
        let lock = self.pod_lock(&uid);
        let guard = lock.lock().await;
        // Checked under the pod's lock, right before setting up: a tear-down that ran
        // while this sync was queued (or a deletion seen meanwhile) wins.
        let Some(pod) = self.current_pod(pod) else {
            drop(guard);
            self.release_pod_lock(&uid, &lock);
            tracing::debug!("pod is gone or finished; nothing set up");
            return Err(Error::PodGone { uid });
        };
        if !self.admitted(&uid) {
            drop(guard);
            self.release_pod_lock(&uid, &lock);
            tracing::debug!("pod is not admitted yet; nothing set up");
            return Err(Error::NotAdmitted { uid });
        }
        let pod = &pod;
        let _guard = guard;
        let mut prepared = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut immutable = BTreeSet::new();
        for volume in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            match self.set_up_volume(pod, volume).await {
                Ok((p, imm)) => {
                    prepared.insert(volume.name.clone(), p);
                    immutable.extend(imm);
                }
                Err(e) => {
                    errors.insert(volume.name.clone(), e.to_string());
                }
            }
        }
        let first_ready = {
            let mut pods = self.inner.pods.lock().expect("lock");
            let entry = pods.entry(uid.clone()).or_default();
            let was_ready = entry.pod.is_some() && entry.errors.is_empty();
            entry.pod = Some(pod.clone());
            entry.prepared.extend(prepared.clone());
            entry.immutable = immutable;
            entry.errors = errors.clone();
            !was_ready && errors.is_empty()
        };
        if errors.is_empty() {
            if first_ready {
                tracing::info!(volumes = prepared.len(), "all volumes set up");
                self.tell_ready(&uid);
            }
            return Ok(prepared);
        }
        let message = errors
            .iter()
            .map(|(v, e)| format!("volume {v:?}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(%message, "setting up volumes failed");
        if let Err(e) = self
            .inner
            .store
            .record_event(
                &meta::object_reference(pod),
                EventType::Warning,
                "FailedMount",
                &message,
            )
            .await
        {
            tracing::warn!(error = %e, "recording FailedMount event");
        }
        Err(Error::Projection {
            volume: meta::name(&pod.metadata).to_owned(),
            errors: errors
                .into_iter()
                .map(|(v, e)| format!("{v}: {e}"))
                .collect(),
        })
    }

    pub(super) async fn set_up_volume(
        &self,
        pod: &Pod,
        volume: &Volume,
    ) -> Result<(PreparedVolume, BTreeSet<(ObjectKind, String)>)> {
        if !layout::valid_component(&volume.name) {
            return Err(Error::InvalidArgument {
                field: "volumes.name",
                reason: format!("{:?} cannot name a directory", volume.name),
            });
        }
        if let Some(kind) = Kind::of(volume) {
            return self.set_up_api_volume(pod, volume, kind).await;
        }
        let uid = meta::uid(&pod.metadata).to_owned();
        if let Some(src) = &volume.empty_dir {
            let medium = Medium::of(src)?;
            let dir = layout::volume_dir(
                &self.inner.cfg.state_dir,
                &uid,
                EMPTY_DIR_PLUGIN,
                &volume.name,
            );
            let fs_group = projection::fs_group(pod);
            let d = dir.clone();
            blocking(move || empty_dir::set_up(&d, medium, fs_group)).await?;
            return Ok((
                PreparedVolume {
                    path: dir,
                    read_only: false,
                    block: false,
                },
                BTreeSet::new(),
            ));
        }
        if volume.persistent_volume_claim.is_some() {
            return Ok((self.set_up_pvc(pod, volume).await?, BTreeSet::new()));
        }
        if let Some(hp) = &volume.host_path {
            let path = PathBuf::from(&hp.path);
            let (p, t) = (path.clone(), hp.type_.clone());
            blocking(move || host_path::check(&p, t.as_deref())).await?;
            return Ok((
                PreparedVolume {
                    path,
                    read_only: false,
                    block: false,
                },
                BTreeSet::new(),
            ));
        }
        Err(Error::InvalidArgument {
            field: "volumes",
            reason: format!(
                "volume {:?}: this volume type is not supported",
                volume.name
            ),
        })
    }

    /// Tears down everything of a pod: CSI volumes through the driver, then our own
    /// mounts, then the directory. Never deletes through a mount that is still there.
    ///
    /// Runs as a tracked task, like [`Self::sync_pod`].
    pub async fn tear_down_pod(&self, uid: &str) -> Result<()> {
        let (me, u) = (self.clone(), uid.to_owned());
        self.tracked(format!("tear down pod {uid}"), async move {
            me.tear_down_now(&u, Keep::Nothing).await
        })
        .await
    }

    /// [`Self::tear_down_pod`] on the caller's task; with [`Keep::EmptyDirs`] the pod's
    /// disk-backed emptyDir directories stay (the node stops, the pod does not).
    #[tracing::instrument(name = "tear_down_pod", skip_all, fields(pod_uid = %uid))]
    pub(super) async fn tear_down_now(&self, uid: &str, keep: Keep) -> Result<()> {
        if !layout::valid_component(uid) {
            return Err(Error::InvalidArgument {
                field: "pod uid",
                reason: format!("{uid:?} cannot name a directory"),
            });
        }
        // Tombstoned before taking the lock: syncs queued behind us find it and set
        // nothing up; a sync holding the lock now finishes first and is undone here.
        self.mark_gone(uid);
        let lock = self.pod_lock(uid);
        let guard = lock.lock().await;
        let state = self.inner.cfg.state_dir.clone();
        let pod_dir = layout::pod_dir(&state, uid);
        // subPath binds first: they pin what they show of the volumes below.
        let sub = layout::subpath_dir(&state, uid);
        blocking(move || mount::unmount_below(&sub)).await?;
        let csi_dir = pod_dir.join("volumes/kubernetes.io~csi");
        let has_csi = {
            let d = csi_dir.clone();
            blocking(move || csi_volume::read_vol_data_dirs(&d)).await?
        };
        if !has_csi.is_empty() {
            self.csi().await?.tear_down_pod(&state, uid).await?;
        }
        let d = pod_dir.clone();
        blocking(move || {
            mount::unmount_below(&d)?;
            if mount::mountinfo()?
                .iter()
                .any(|m| m.mount_point.starts_with(&d))
            {
                return Err(Error::CorruptVolume {
                    path: d.clone(),
                    reason: "mounts remain below the pod directory".into(),
                });
            }
            match keep {
                Keep::Nothing => {
                    let pods = layout::pods_dir(&state);
                    let fd = dirfd::open_dir(&pods)?;
                    dirfd::remove_all_at(
                        std::os::fd::AsFd::as_fd(&fd),
                        std::ffi::OsStr::new(d.file_name().unwrap_or_default()),
                        &pods,
                    )
                }
                Keep::EmptyDirs => remove_all_but_empty_dirs(&d),
            }
        })
        .await?;
        self.inner.pods.lock().expect("lock").remove(uid);
        self.forget_ready(uid);
        self.inner
            .tokens
            .lock()
            .expect("lock")
            .retain(|(p, _), _| p != uid);
        drop(guard);
        self.release_pod_lock(uid, &lock);
        tracing::info!("volumes torn down");
        Ok(())
    }
}

/// The plugin directory of emptyDir volumes, below a pod's `volumes`.
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// What a pod's tear-down leaves on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    Nothing,
    /// The emptyDir directories, whose contents outlive the node's stop as they outlive
    /// a reboot under the kubelet (a Memory one is an empty directory by now: its tmpfs
    /// went with the other mounts).
    EmptyDirs,
}

/// Removes everything in pod directory `pod_dir` (nothing is mounted below it) except
/// `volumes/kubernetes.io~empty-dir`.
fn remove_all_but_empty_dirs(pod_dir: &std::path::Path) -> Result<()> {
    use std::os::fd::AsFd;
    let keep = std::ffi::OsStr::new(EMPTY_DIR_PLUGIN);
    let fd = dirfd::open_dir(pod_dir)?;
    for name in dirfd::list(fd.as_fd(), pod_dir)? {
        if name != "volumes" {
            dirfd::remove_all_at(fd.as_fd(), &name, pod_dir)?;
            continue;
        }
        let vols = pod_dir.join("volumes");
        let vfd = dirfd::open_dir_at(fd.as_fd(), &name, pod_dir)?;
        for plugin in dirfd::list(vfd.as_fd(), &vols)? {
            if plugin != keep {
                dirfd::remove_all_at(vfd.as_fd(), &plugin, &vols)?;
            }
        }
    }
    Ok(())
}
