//! core/v1 Events as `kubectl describe` shows them: one object per distinct
//! (object, type, reason, message), whose `count` and `lastTimestamp` a repeat raises, as
//! client-go's event correlator does, so a loop that retries does not flood the namespace.

use std::collections::HashMap;

use kube::core::Request;
use kube::core::params::{Patch, PatchParams};
use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{Event, ObjectReference};
use strata_store::{EventType, Result};

use crate::{KubeStore, What, error, url};

/// Distinct events remembered for counting; beyond this the memory starts again (a repeat
/// then makes a new event, which is what a restarted process does anyway).
const REMEMBERED: usize = 4096;

type Key = (String, String, String, String, &'static str, String, String);

/// Events this process made: key -> (namespace, event name, count so far).
#[derive(Debug, Default)]
pub(crate) struct Recorded(HashMap<Key, (String, String, i32)>);

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub(crate) async fn record(
    store: &KubeStore,
    involved: &ObjectReference,
    type_: EventType,
    reason: &str,
    message: &str,
) -> Result<()> {
    // Events about cluster-scoped objects (PVs, classes) live in "default", as client-go
    // puts them.
    let namespace = involved
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let key: Key = (
        involved.uid.clone().unwrap_or_default(),
        involved.kind.clone().unwrap_or_default(),
        namespace.clone(),
        involved.name.clone().unwrap_or_default(),
        type_.as_str(),
        reason.to_string(),
        message.to_string(),
    );
    let seen = lock(store).0.get(&key).cloned();
    if let Some((ns, name, count)) = seen {
        let what = What::of::<Event>(&ns, &name);
        let patch = json!({"count": count + 1, "lastTimestamp": now()});
        let req = Request::new(url::<Event>(&ns))
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .map_err(|e| error::request(e, &what))?;
        match store.call::<Event>(req, &what).await {
            Ok(_) => {
                lock(store).0.insert(key, (ns, name, count + 1));
                return Ok(());
            }
            // Expired (events live an hour) or deleted: make a new one.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let stamp = now();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": format!("{}.", involved.name.as_deref().unwrap_or("event")),
            "namespace": namespace,
        },
        "involvedObject": involved,
        "type": type_.as_str(),
        "reason": reason,
        "message": message,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": store.component},
        "reportingComponent": store.component,
        "reportingInstance": store.component,
    });
    let event: Event =
        serde_json::from_value(event).map_err(|e| crate::backend("building an Event", e))?;
    let created = <KubeStore as strata_store::Store>::create(store, &event).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    let mut recorded = lock(store);
    if recorded.0.len() >= REMEMBERED {
        recorded.0.clear();
    }
    recorded.0.insert(key, (namespace, name, 1));
    Ok(())
}

fn lock(store: &KubeStore) -> std::sync::MutexGuard<'_, Recorded> {
    store.events.lock().unwrap_or_else(|p| p.into_inner())
}
