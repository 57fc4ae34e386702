//! One watch stream across the API server's watch timeouts.
//!
//! The server ends every watch after `timeoutSeconds` (and proxies end them sooner); the
//! stream reopens it from the newest resourceVersion it has seen, bookmarks included, so
//! the consumer sees every change once and in order. `410 Gone` (the version was
//! compacted away) ends the stream with `Error::Gone`, as the trait promises; so does any
//! other failure to reopen, after which the consumer re-lists.

use std::time::Instant;

use futures::StreamExt;
use kube::core::Request;
use kube::core::WatchEvent as KubeEvent;
use kube::core::params::WatchParams;
use strata_store::{Error, Object, Result, WatchEvent, WatchStream};

use crate::{KubeStore, What, error, url, version};

/// What the server is asked to keep a watch open for; it ends it then (or earlier).
const WATCH_SECONDS: u32 = 290;

type Events<K> = futures::stream::BoxStream<'static, kube::Result<KubeEvent<K>>>;

struct State<K> {
    store: KubeStore,
    namespace: Option<String>,
    /// The newest version delivered or bookmarked: where a reopened watch starts.
    rv: u64,
    events: Option<Events<K>>,
    opened: Instant,
    done: bool,
}

/// Opens the first watch now, so a refusal (RBAC, a bad namespace) is the caller's error.
pub(crate) async fn open<K: Object>(
    store: KubeStore,
    namespace: Option<String>,
    from: u64,
) -> Result<WatchStream<K>> {
    let events = request::<K>(&store, namespace.as_deref(), from).await?;
    let state = State {
        store,
        namespace,
        rv: from,
        events: Some(events),
        opened: Instant::now(),
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(state, next)))
}

async fn request<K: Object>(
    store: &KubeStore,
    namespace: Option<&str>,
    from: u64,
) -> Result<Events<K>> {
    let what = What::of::<K>(namespace.unwrap_or_default(), "");
    let params = WatchParams {
        bookmarks: true,
        timeout: Some(WATCH_SECONDS),
        ..Default::default()
    };
    let req = Request::new(url::<K>(namespace.unwrap_or_default()))
        .watch(&params, &from.to_string())
        .map_err(|e| error::request(e, &what))?;
    let events = store
        .client
        .request_events::<K>(req)
        .await
        .map_err(|e| error::from_kube(e, &what))?;
    Ok(events.boxed())
}

async fn next<K: Object>(mut st: State<K>) -> Option<(Result<WatchEvent<K>>, State<K>)> {
    loop {
        if st.done {
            return None;
        }
        let Some(events) = st.events.as_mut() else {
            // The last watch ended: reopen from where it stopped, not faster than the pause
            // when it lived less than that.
            let lived = st.opened.elapsed();
            if lived < st.store.watch_pause {
                tokio::time::sleep(st.store.watch_pause - lived).await;
            }
            tracing::debug!(
                kind = K::KIND,
                rv = st.rv,
                "watch ended by the server; resuming"
            );
            match request::<K>(&st.store, st.namespace.as_deref(), st.rv).await {
                Ok(events) => {
                    st.events = Some(events);
                    st.opened = Instant::now();
                    continue;
                }
                Err(e) => return Some(end(st, e)),
            }
        };
        let event = match events.next().await {
            None => {
                st.events = None;
                continue;
            }
            Some(Err(e)) => {
                let e = {
                    let what = What::of::<K>(st.namespace.as_deref().unwrap_or_default(), "");
                    error::from_kube(e, &what)
                };
                return Some(end(st, e));
            }
            Some(Ok(event)) => event,
        };
        let (event, obj_rv) = match event {
            KubeEvent::Added(o) => {
                let rv = o.metadata().resource_version.clone();
                (WatchEvent::Added(o), rv)
            }
            KubeEvent::Modified(o) => {
                let rv = o.metadata().resource_version.clone();
                (WatchEvent::Modified(o), rv)
            }
            KubeEvent::Deleted(o) => {
                let rv = o.metadata().resource_version.clone();
                (WatchEvent::Deleted(o), rv)
            }
            KubeEvent::Bookmark(b) => {
                match version(Some(&b.metadata.resource_version), "bookmark") {
                    Ok(rv) => st.rv = st.rv.max(rv),
                    Err(e) => return Some(end(st, e)),
                }
                continue;
            }
            KubeEvent::Error(status) => {
                let e = if status.code == 410 {
                    Error::Gone {
                        resource_version: st.rv,
                    }
                } else {
                    let what = What::of::<K>(st.namespace.as_deref().unwrap_or_default(), "");
                    error::from_kube(kube::Error::Api(status), &what)
                };
                return Some(end(st, e));
            }
        };
        match version(obj_rv.as_deref(), K::KIND) {
            Ok(rv) => st.rv = st.rv.max(rv),
            Err(e) => return Some(end(st, e)),
        }
        return Some((Ok(event), st));
    }
}

/// The last item: the error, after which the stream is over.
fn end<K>(mut st: State<K>, e: Error) -> (Result<WatchEvent<K>>, State<K>) {
    st.done = true;
    st.events = None;
    let e = match e {
        Error::Gone { .. } => Error::Gone {
            resource_version: st.rv,
        },
        e => e,
    };
    (Err(e), st)
}
