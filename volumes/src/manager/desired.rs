//! The desired set: the pods that should have volumes here, and tombstones for those
//! that never should again. Every set-up checks it under the pod's lock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::Pod;
use strata_store::meta;

use super::{VolumeManager, wants_volumes};

/// Which pods should have volumes, as the Pod watch (and `run`'s lists) last said, and
/// which were deleted or torn down. Every sync checks this under the pod's lock right
/// before it sets anything up, so a queued retry or a sync racing a deletion can never
/// re-create volumes of a pod that is gone.
#[derive(Debug, Default)]
pub(super) struct Desired {
    /// By UID: pods placed here that are not finished.
    pub(super) pods: HashMap<String, Pod>,
    /// By UID: pods deleted, finished or torn down, and since when. UIDs are never reused
    /// and a finished pod never runs again, so a UID here is never set up again.
    pub(super) gone: HashMap<String, Instant>,
    /// With admission required ([`VolumeManager::require_admission`]): the UIDs admitted
    /// so far. None: every pod placed here is.
    pub(super) admitted: Option<HashSet<String>>,
}

impl Desired {
    /// Gone for good: out of the desired set, tombstoned and no longer admitted.
    fn bury(&mut self, uid: String) {
        self.pods.remove(&uid);
        if let Some(admitted) = self.admitted.as_mut() {
            admitted.remove(&uid);
        }
        self.gone.insert(uid, Instant::now());
    }

    fn is_admitted(&self, uid: &str) -> bool {
        self.admitted.as_ref().is_none_or(|a| a.contains(uid))
    }
}

/// How long a tombstone outlives the pod: far longer than any sync that could still
/// carry the pod's object (syncs are bounded by store and driver timeouts).
pub(super) const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

impl<S: Store> VolumeManager<S> {
    /// From now on, sets up the volumes of a pod only once [`Self::admit`] has named it:
    /// for a consumer whose pod runner decides whether a pod placed here may run
    /// (strata-node), as the kubelet's volume manager waits for its pod workers'
    /// admission. Until then the watches, retries and reconciles set nothing up for the
    /// pod, and leave what it has on disk alone. Without this call every pod placed
    /// here is admitted.
    pub fn require_admission(&self) {
        let mut d = self.inner.desired.lock().expect("lock");
        d.admitted.get_or_insert_with(HashSet::new);
    }

    /// Admits pod `uid` to this node (see [`Self::require_admission`]): its volumes may
    /// now be set up. A pod already gone stays gone.
    pub fn admit(&self, uid: &str) {
        let mut d = self.inner.desired.lock().expect("lock");
        if d.gone.contains_key(uid) {
            return;
        }
        if let Some(admitted) = d.admitted.as_mut() {
            admitted.insert(uid.to_owned());
        }
    }

    /// Whether pod `uid` may have its volumes set up (see [`Self::require_admission`]).
    pub(super) fn admitted(&self, uid: &str) -> bool {
        self.inner.desired.lock().expect("lock").is_admitted(uid)
    }

    /// Marks a pod as gone for good: no sync sets it up again.
    pub(super) fn mark_gone(&self, uid: &str) {
        self.inner
            .desired
            .lock()
            .expect("lock")
            .bury(uid.to_owned());
    }

    /// The version of `pod` to set up now, or None when it must not be set up: deleted,
    /// finished or torn down since the caller got it. The watch's copy wins when newer.
    pub(super) fn current_pod(&self, pod: &Pod) -> Option<Pod> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let d = self.inner.desired.lock().expect("lock");
        if d.gone.contains_key(uid) {
            return None;
        }
        let pod = match d.pods.get(uid) {
            Some(cached)
                if meta::resource_version(&cached.metadata)
                    > meta::resource_version(&pod.metadata) =>
            {
                cached.clone()
            }
            _ => pod.clone(),
        };
        wants_volumes(&pod, &self.inner.cfg.node_name).then_some(pod)
    }

    /// Takes a Pod watch event (or a listed pod) into the desired set. Returns whether the
    /// pod should have volumes.
    pub(super) fn observe_pod(&self, pod: &Pod, deleted: bool) -> bool {
        let uid = meta::uid(&pod.metadata).to_owned();
        let node = &self.inner.cfg.node_name;
        let mut d = self.inner.desired.lock().expect("lock");
        if !deleted && wants_volumes(pod, node) {
            if d.gone.contains_key(&uid) {
                return false;
            }
            if d.pods.get(&uid).is_none_or(|old| {
                meta::resource_version(&old.metadata) <= meta::resource_version(&pod.metadata)
            }) {
                d.pods.insert(uid, pod.clone());
            }
            return true;
        }
        d.pods.remove(&uid);
        let on_node = meta::pod_node_name(pod) == Some(node);
        // Placed here and deleted or finished: never again. (A pod not placed yet may
        // still be, so it gets no tombstone.)
        if on_node || deleted {
            d.bury(uid);
        }
        false
    }

    /// Drops from the desired set the pods a full list no longer has although it is newer
    /// than what the watch delivered of them: deleted during a watch gap.
    pub(super) fn forget_unlisted(&self, listed: &[Pod], list_rv: u64) {
        let have: BTreeSet<&str> = listed
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let mut d = self.inner.desired.lock().expect("lock");
        let missing: Vec<String> = d
            .pods
            .iter()
            .filter(|(uid, p)| {
                !have.contains(uid.as_str()) && meta::resource_version(&p.metadata) <= list_rv
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in missing {
            d.bury(uid);
        }
    }
}
