//! The store interface the control loops are written against, and its value types.

use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch::{Batch, BatchOutcome};
use crate::error::Result;
use crate::kinds::KindRef;

/// Every top-level k8s-openapi object type the store can hold.
pub trait Object:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
    /// Kind, apiVersion and scope, for the untyped core.
    fn kind_ref() -> KindRef {
        KindRef::of::<Self>()
    }
}

impl<K> Object for K where
    K: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A consistent snapshot: `items` as of `resource_version`. Watching from that version
/// afterwards misses nothing.
#[derive(Debug, Clone)]
pub struct ObjectList<K> {
    pub items: Vec<K>,
    pub resource_version: u64,
}

/// One change seen by a watch. Each carries the object with its new resourceVersion
/// (for `Deleted`, the last state, with the version of the deletion).
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
}

impl<K> WatchEvent<K> {
    pub fn object(&self) -> &K {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }
    pub fn into_object(self) -> K {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }
    pub fn map<T>(self, f: impl FnOnce(K) -> T) -> WatchEvent<T> {
        match self {
            WatchEvent::Added(o) => WatchEvent::Added(f(o)),
            WatchEvent::Modified(o) => WatchEvent::Modified(f(o)),
            WatchEvent::Deleted(o) => WatchEvent::Deleted(f(o)),
        }
    }
    pub fn type_name(&self) -> &'static str {
        match self {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
        }
    }
}

/// Every change after the starting version, in order. Ends after yielding `Error::Gone`.
pub type WatchStream<K> = Pin<Box<dyn Stream<Item = Result<WatchEvent<K>>> + Send>>;

/// The outcome of a delete.
#[derive(Debug, Clone)]
pub enum Deleted<K> {
    /// Finalizers remain: deletionTimestamp is set and the object stays until they are removed.
    Pending(K),
    /// The object is gone; this is its last state.
    Gone(K),
}

impl<K> Deleted<K> {
    pub fn into_object(self) -> K {
        match self {
            Deleted::Pending(o) | Deleted::Gone(o) => o,
        }
    }
    pub fn is_gone(&self) -> bool {
        matches!(self, Deleted::Gone(_))
    }
}

/// Delete only if the stored object still has this uid and/or resourceVersion
/// (Error::Conflict otherwise), as metav1.Preconditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// core/v1 Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The narrow store interface. "" is the namespace of cluster-scoped kinds.
pub trait Store: Clone + Send + Sync + 'static {
    fn get<K: Object>(&self, namespace: &str, name: &str)
    -> impl Future<Output = Result<K>> + Send;

    /// `namespace: None` lists every namespace.
    fn list<K: Object>(
        &self,
        namespace: Option<&str>,
        selector: Option<&LabelSelector>,
    ) -> impl Future<Output = Result<ObjectList<K>>> + Send;

    /// Sets uid, creationTimestamp, resourceVersion and generation 1; honours generateName;
    /// applies defaulting and admission. AlreadyExists on a duplicate.
    fn create<K: Object>(&self, obj: &K) -> impl Future<Output = Result<K>> + Send;

    /// Compare-and-swap on metadata.resourceVersion (unconditional when it is empty).
    /// Status changes are ignored; generation grows when the spec changes. An object being
    /// deleted whose last finalizer this update removes is removed.
    fn update<K: Object>(&self, obj: &K) -> impl Future<Output = Result<K>> + Send;

    /// Compare-and-swap; only the status is taken from `obj`.
    fn update_status<K: Object>(&self, obj: &K) -> impl Future<Output = Result<K>> + Send;

    fn delete<K: Object>(
        &self,
        namespace: &str,
        name: &str,
        preconditions: Preconditions,
    ) -> impl Future<Output = Result<Deleted<K>>> + Send;

    /// Every change of kind `K` (in `namespace`, or all when None) with a resourceVersion
    /// greater than `from_resource_version`, in order. Error::Gone when that history was
    /// compacted.
    fn watch<K: Object>(
        &self,
        namespace: Option<&str>,
        from_resource_version: u64,
    ) -> impl Future<Output = Result<WatchStream<K>>> + Send;

    /// The `namespaces/{name}/finalize` subresource: only `spec.finalizers` is taken from
    /// `ns` (compare-and-swap on its resourceVersion). A namespace being deleted that is
    /// left with no finalizers is removed; its last state is returned.
    fn finalize_namespace(
        &self,
        ns: &k8s_openapi::api::core::v1::Namespace,
    ) -> impl Future<Output = Result<k8s_openapi::api::core::v1::Namespace>> + Send;

    /// Makes the updates of `batch` in order, each with the checks of its single call
    /// (compare-and-swap on resourceVersion, admission), stopping at the first that
    /// fails; the ones before it stay made. A backend with transactions makes them in
    /// one (one commit, one wake-up of the watchers, which still see one change per
    /// write in order); [`Batch::write_in_order`] is the fallback of one without.
    /// The default is that fallback.
    fn write_batch(&self, batch: Batch<Self>) -> impl Future<Output = BatchOutcome> + Send {
        async move { batch.write_in_order(self).await }
    }

    /// Makes several batches in one call, in order, each as [`Store::write_batch`] makes
    /// it: a batch that fails stops there (its earlier writes stay made) and the batches
    /// after it are still made, so the outcomes are those of one `write_batch` call per
    /// batch. A write never carries a version from another batch: batches are independent
    /// decisions, and a later one about an object an earlier one changed conflicts. A
    /// backend with transactions makes them all in one (one commit, one wake-up of the
    /// watchers); `Err` then means that transaction failed and nothing was written. The
    /// default makes one `write_batch` call after another and is never `Err`.
    fn write_batches(
        &self,
        batches: Vec<Batch<Self>>,
    ) -> impl Future<Output = Result<Vec<BatchOutcome>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(batches.len());
            for batch in batches {
                outcomes.push(self.write_batch(batch).await);
            }
            Ok(outcomes)
        }
    }

    /// Records a core/v1 Event about `involved` in its namespace; a repeat of the same
    /// type/reason/message raises `count` and `lastTimestamp` instead of adding an event.
    fn record_event(
        &self,
        involved: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> impl Future<Output = Result<()>> + Send;
}
