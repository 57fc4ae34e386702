//! The Kubernetes API server as a [`Store`]: the control loops and `volctl` written against
//! `strata_store::Store` run unchanged against a real cluster.
//!
//! Requests are built from each k8s-openapi type's group, version and plural, so every kind
//! the store knows works without a table here. What the API server already does (defaulting,
//! admission, finalizers, graceful deletion) is left to it; this backend adds only what the
//! trait promises beyond a plain request:
//! - `list` pages through `limit`/`continue` and returns the first page's resourceVersion;
//! - `watch` is one stream across the server's watch timeouts: when the server ends a watch
//!   it is reopened from the last version seen (bookmarks included), and only a `410 Gone`
//!   ends it, with `Error::Gone`, after which the caller re-lists (the informers do);
//! - `update`/`update_status` with an empty resourceVersion are unconditional: read,
//!   replace, and on a conflict read and replace again (a few times); with a version they
//!   are compare-and-swap and a conflict is the caller's;
//! - `delete` returns the object with its finalizers still pending, or its last state;
//! - `record_event` raises `count` of an event it recorded before, as client-go's
//!   correlator does, instead of adding one per repeat.
//!
//! resourceVersions are opaque strings to Kubernetes clients; the `Store` trait orders them
//! as numbers, which holds for etcd-backed API servers (they are etcd revisions). A version
//! that is not a number is refused as invalid rather than guessed at.
//!
//! Knows nothing of the loops that use it.
#![forbid(unsafe_code)]

mod error;
mod events;
mod selector;
mod watch;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::core::Request;
use kube::core::params::{DeleteParams, GetParams, ListParams, PostParams};
use kube::core::{ObjectList as KubeList, Status};
use strata_store::k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use strata_store::kinds::KindRef;
use strata_store::{
    Batch, BatchOutcome, Deleted, Error, EventType, Object, ObjectList, Preconditions, Result,
    Store, WatchStream,
};

pub use error::backend;

/// How many objects one list page asks for.
const PAGE: u32 = 500;
/// How often an unconditional update re-reads after a conflict before giving up.
const CONFLICT_RETRIES: usize = 5;

/// A store backed by an API server through a kube-rs client.
#[derive(Clone)]
pub struct KubeStore {
    client: kube::Client,
    events: Arc<Mutex<events::Recorded>>,
    component: String,
    /// Pause before reopening a watch the server ended at once (a proxy that closes every
    /// watch must not become a request loop).
    watch_pause: Duration,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    /// A store over `client`; events it records name `component` as their source.
    pub fn new(client: kube::Client, component: &str) -> KubeStore {
        KubeStore {
            client,
            events: Arc::default(),
            component: component.to_string(),
            watch_pause: Duration::from_secs(1),
        }
    }

    /// Connects with the kubeconfig at `kubeconfig` (its current context), or without one
    /// with the in-cluster service account (`KUBERNETES_SERVICE_HOST` and the mounted
    /// token), as kubectl and the sidecars do.
    pub async fn connect(kubeconfig: Option<&Path>, component: &str) -> Result<KubeStore> {
        let config = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| backend(format!("reading kubeconfig {}", path.display()), e))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| backend(format!("kubeconfig {}", path.display()), e))?
            }
            None => kube::Config::incluster()
                .map_err(|e| backend("in-cluster configuration (no --kubeconfig)", e))?,
        };
        let client =
            kube::Client::try_from(config).map_err(|e| backend("building the API client", e))?;
        Ok(KubeStore::new(client, component))
    }

    #[cfg(test)]
    fn with_watch_pause(mut self, pause: Duration) -> KubeStore {
        self.watch_pause = pause;
        self
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: http::Request<Vec<u8>>,
        what: &What<'_>,
    ) -> Result<T> {
        self.client
            .request::<T>(req)
            .await
            .map_err(|e| error::from_kube(e, what))
    }

    async fn get_inner<K: Object>(&self, namespace: &str, name: &str) -> Result<K> {
        let what = What::of::<K>(namespace, name);
        let req = Request::new(url::<K>(namespace))
            .get(name, &GetParams::default())
            .map_err(|e| error::request(e, &what))?;
        self.call(req, &what).await
    }

    /// PUT of the object (or of `subresource`): compare-and-swap when it carries a
    /// resourceVersion; else the current version is read first and the replace retried on
    /// a conflict.
    async fn replace<K: Object>(&self, obj: &K, subresource: Option<&str>) -> Result<K> {
        let meta = obj.metadata();
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        let what = What::of::<K>(namespace, name);
        let unconditional = meta
            .resource_version
            .as_deref()
            .unwrap_or_default()
            .is_empty();
        let mut attempt = 0;
        loop {
            let mut body = obj.clone();
            if unconditional {
                let current: K = self.get_inner(namespace, name).await?;
                body.metadata_mut().resource_version = current.metadata().resource_version.clone();
            }
            let data = serde_json::to_vec(&body).map_err(|e| backend("encoding the object", e))?;
            let r = Request::new(url::<K>(namespace));
            let req = match subresource {
                Some(sub) => r.replace_subresource(sub, name, &PostParams::default(), data),
                None => r.replace(name, &PostParams::default(), data),
            }
            .map_err(|e| error::request(e, &what))?;
            match self.call::<K>(req, &what).await {
                Err(e) if e.is_conflict() && unconditional && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(
                        kind = K::KIND,
                        name,
                        attempt,
                        "conflict on an unconditional update; re-reading"
                    );
                }
                other => return other,
            }
        }
    }
}

/// The object a request is about, for error messages and mapping.
pub(crate) struct What<'a> {
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> What<'a> {
    fn of<K: Object>(namespace: &'a str, name: &'a str) -> What<'a> {
        What {
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            namespace,
            name,
        }
    }
}

/// `/api/v1/namespaces/NS/pods`, `/apis/storage.k8s.io/v1/storageclasses`, ...; an empty
/// namespace of a namespaced kind means every namespace.
fn url<K: Object>(namespace: &str) -> String {
    let prefix = if K::GROUP.is_empty() {
        format!("/api/{}", K::VERSION)
    } else {
        format!("/apis/{}/{}", K::GROUP, K::VERSION)
    };
    if KindRef::of::<K>().namespaced && !namespace.is_empty() {
        format!("{prefix}/namespaces/{namespace}/{}", K::URL_PATH_SEGMENT)
    } else {
        format!("{prefix}/{}", K::URL_PATH_SEGMENT)
    }
}

/// A resourceVersion as the trait orders it.
fn version(rv: Option<&str>, what: &str) -> Result<u64> {
    let rv = rv.unwrap_or_default();
    rv.parse().map_err(|_| Error::Invalid {
        field: format!("{what}.metadata.resourceVersion"),
        reason: format!("{rv:?} is not a number; only etcd-backed API servers are supported"),
    })
}

impl Store for KubeStore {
    async fn get<K: Object>(&self, namespace: &str, name: &str) -> Result<K> {
        self.get_inner(namespace, name).await
    }

    async fn list<K: Object>(
        &self,
        namespace: Option<&str>,
        selector: Option<&LabelSelector>,
    ) -> Result<ObjectList<K>> {
        let what = What::of::<K>(namespace.unwrap_or_default(), "");
        let mut params = ListParams {
            limit: Some(PAGE),
            label_selector: selector.map(selector::to_query).transpose()?,
            ..Default::default()
        };
        let mut items = Vec::new();
        let mut resource_version = None;
        loop {
            let req = Request::new(url::<K>(namespace.unwrap_or_default()))
                .list(&params)
                .map_err(|e| error::request(e, &what))?;
            let page: KubeList<K> = self.call(req, &what).await?;
            // Every page of one list is the snapshot of the first.
            if resource_version.is_none() {
                resource_version = Some(version(
                    page.metadata.resource_version.as_deref(),
                    &format!("{} list", K::KIND),
                )?);
            }
            items.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => break,
            }
        }
        Ok(ObjectList {
            items,
            resource_version: resource_version.unwrap_or_default(),
        })
    }

    async fn create<K: Object>(&self, obj: &K) -> Result<K> {
        let meta = obj.metadata();
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let name = meta
            .name
            .as_deref()
            .or(meta.generate_name.as_deref())
            .unwrap_or_default();
        let what = What::of::<K>(namespace, name);
        let mut body = obj.clone();
        // The API server refuses a create that carries a version.
        body.metadata_mut().resource_version = None;
        let data = serde_json::to_vec(&body).map_err(|e| backend("encoding the object", e))?;
        let req = Request::new(url::<K>(namespace))
            .create(&PostParams::default(), data)
            .map_err(|e| error::request(e, &what))?;
        self.call(req, &what).await
    }

    async fn update<K: Object>(&self, obj: &K) -> Result<K> {
        self.replace(obj, None).await
    }

    async fn update_status<K: Object>(&self, obj: &K) -> Result<K> {
        self.replace(obj, Some("status")).await
    }

    async fn delete<K: Object>(
        &self,
        namespace: &str,
        name: &str,
        preconditions: Preconditions,
    ) -> Result<Deleted<K>> {
        let what = What::of::<K>(namespace, name);
        // The last state, for a delete that answers with a bare Status.
        let before: K = self.get_inner(namespace, name).await?;
        let params = DeleteParams {
            preconditions: Some(kube::core::params::Preconditions {
                uid: preconditions.uid.or_else(|| before.metadata().uid.clone()),
                resource_version: preconditions.resource_version,
            }),
            ..Default::default()
        };
        let req = Request::new(url::<K>(namespace))
            .delete(name, &params)
            .map_err(|e| error::request(e, &what))?;
        let answer: serde_json::Value = self.call(req, &what).await?;
        if answer["kind"] == "Status" {
            let status: Status =
                serde_json::from_value(answer).map_err(|e| backend("decoding a Status", e))?;
            tracing::debug!(kind = K::KIND, name, status = ?status.status, "deleted");
            return Ok(Deleted::Gone(before));
        }
        let obj: K = serde_json::from_value(answer)
            .map_err(|e| backend(format!("decoding the deleted {}", K::KIND), e))?;
        // Still there with a deletionTimestamp: finalizers (or a grace period) hold it.
        if obj.metadata().deletion_timestamp.is_some() {
            Ok(Deleted::Pending(obj))
        } else {
            Ok(Deleted::Gone(obj))
        }
    }

    async fn watch<K: Object>(
        &self,
        namespace: Option<&str>,
        from_resource_version: u64,
    ) -> Result<WatchStream<K>> {
        watch::open(
            self.clone(),
            namespace.map(str::to_string),
            from_resource_version,
        )
        .await
    }

    /// No transactions across objects in the API: one request after another.
    async fn write_batch(&self, batch: Batch<Self>) -> BatchOutcome {
        batch.write_in_order(self).await
    }

    async fn finalize_namespace(&self, ns: &Namespace) -> Result<Namespace> {
        self.replace(ns, Some("finalize")).await
    }

    async fn record_event(
        &self,
        involved: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        events::record(self, involved, type_, reason, message).await
    }
}

#[cfg(test)]
mod tests;
