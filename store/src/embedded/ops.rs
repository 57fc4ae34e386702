//! The API server's write semantics on the JSON form, inside one store transaction.

use serde_json::{Value, json};

use super::db::{Change, Tx};
use super::namespaces;
use crate::admission;
use crate::api::{Deleted, Preconditions};
use crate::batch::{BatchOp, BatchOutcome, Versions, Written};
use crate::error::{Error, Result};
use crate::kinds::KindRef;
use crate::podpreset;
use crate::time;

/// Which part of the object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
    /// A namespace's `finalize` subresource: `spec.finalizers` only.
    Finalize,
}

/// Kinds whose status the API server resets on create (their strategies' PrepareForCreate).
fn clears_status_on_create(kind: &str) -> bool {
    matches!(
        kind,
        "PersistentVolume"
            | "PersistentVolumeClaim"
            | "Pod"
            | "StatefulSet"
            | "Namespace"
            // CRDs with a status subresource.
            | "VolumeSnapshot"
            | "VolumeSnapshotContent"
    )
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Namespace and name of `obj`, checked against the kind's scope. A namespaced object
/// without a namespace goes to "default".
pub(crate) fn identity(kind: KindRef, obj: &mut Value) -> Result<(String, String)> {
    if !obj.is_object() {
        return Err(Error::invalid("", "an object must be a JSON/YAML mapping"));
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != kind.kind => {
            return Err(Error::invalid(
                "kind",
                format!("expected {:?}, got {k:?}", kind.kind),
            ));
        }
        _ => {}
    }
    obj["kind"] = json!(kind.kind);
    obj["apiVersion"] = json!(kind.api_version);
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let ns = meta_str(obj, "namespace").to_string();
    let ns = if kind.namespaced {
        let ns = if ns.is_empty() {
            "default".to_string()
        } else {
            ns
        };
        admission::validate_name("Namespace", &ns, false).map_err(|_| {
            Error::invalid(
                "metadata.namespace",
                format!("{ns:?}: must be a DNS-1123 label"),
            )
        })?;
        obj["metadata"]["namespace"] = json!(ns);
        ns
    } else {
        if !ns.is_empty() {
            return Err(Error::invalid(
                "metadata.namespace",
                format!(
                    "Forbidden: not allowed on this type ({} is cluster-scoped)",
                    kind.kind
                ),
            ));
        }
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        String::new()
    };
    Ok((ns, meta_str(obj, "name").to_string()))
}

/// Characters upstream's generateName suffix uses (no vowels, no confusable digits).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let bytes = uuid::Uuid::new_v4();
    bytes
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| SUFFIX_ALPHABET[usize::from(*b) % SUFFIX_ALPHABET.len()] as char)
        .collect()
}

fn is_set(v: Option<&Value>) -> bool {
    v.is_some_and(|v| !v.is_null())
}

pub(crate) fn create(tx: &mut Tx<'_>, kind: KindRef, mut obj: Value) -> Result<Value> {
    let (ns, name) = identity(kind, &mut obj)?;
    let generate = meta_str(&obj, "generateName").to_string();
    if name.is_empty() && generate.is_empty() {
        return Err(Error::invalid(
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    }
    if !meta_str(&obj, "resourceVersion").is_empty() {
        return Err(Error::invalid(
            "metadata.resourceVersion",
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if name.is_empty() {
        admission::validate_name(kind.kind, &generate, true)?;
    } else {
        admission::validate_name(kind.kind, &name, false)?;
    }
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("identity made metadata");
    for server_set in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        meta.remove(server_set);
    }
    if clears_status_on_create(kind.kind)
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    admission::apply_defaults(kind.kind, &mut obj);
    admission::apply_create_status_defaults(kind.kind, &mut obj);
    if kind.kind == "PersistentVolume" {
        obj["status"]["lastPhaseTransitionTime"] = json!(time::now_rfc3339());
    }
    if kind.kind == "Pod" {
        obj["status"]["phase"] = json!("Pending");
    }
    admission::admit_create(kind.kind, &mut obj, || tx.list("StorageClass", Some("")))?;
    // The PodPreset plugin mutates before validation, as mutating admission does.
    let presets = if kind.kind == "Pod" {
        podpreset::admit(&mut obj, &tx.list("PodPreset", Some(&ns))?)?
    } else {
        podpreset::Admitted::Untouched
    };
    admission::validate_object(kind.kind, &obj)?;
    namespaces::admit_create(
        tx,
        kind,
        &ns,
        if name.is_empty() { &generate } else { &name },
    )?;

    let name = if name.is_empty() {
        // Upstream retries a taken generated name; a handful of tries finds a free one.
        let mut found = None;
        for _ in 0..16 {
            let candidate = format!("{generate}{}", random_suffix());
            if tx.get(kind.kind, &ns, &candidate)?.is_none() {
                found = Some(candidate);
                break;
            }
        }
        found.ok_or_else(|| Error::AlreadyExists {
            kind: kind.kind.into(),
            namespace: ns.clone(),
            name: generate.clone(),
        })?
    } else {
        if tx.get(kind.kind, &ns, &name)?.is_some() {
            return Err(Error::AlreadyExists {
                kind: kind.kind.into(),
                namespace: ns,
                name,
            });
        }
        name
    };
    obj["metadata"]["name"] = json!(name);
    obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    obj["metadata"]["creationTimestamp"] = json!(time::now_rfc3339());
    obj["metadata"]["generation"] = json!(1);
    if kind.kind == "Namespace" {
        namespaces::prepare_create(&mut obj);
    }
    tx.put(kind.kind, &ns, &name, &mut obj, Change::Added)?;
    if let podpreset::Admitted::Conflict { presets, message } = presets {
        // In the same transaction: the pod is never seen without the explanation.
        record_event(
            tx,
            EventSpec {
                involved: json!({
                    "kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name,
                    "uid": obj["metadata"]["uid"],
                }),
                type_: "Warning",
                reason: podpreset::CONFLICT_REASON,
                message: &format!(
                    "PodPreset {} not applied, the pod is unchanged: {message}",
                    presets.join(", ")
                ),
                component: "podpreset-admission",
                host: "",
                ttl: PODPRESET_EVENT_TTL,
            },
        )?;
    }
    Ok(obj)
}

/// The API server's default `--event-ttl`, for the events admission records (a handle's
/// own TTL applies to the events it records through `Store::record_event`).
const PODPRESET_EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

fn conflict(kind: KindRef, ns: &str, name: &str, reason: String) -> Error {
    Error::Conflict {
        kind: kind.kind.into(),
        namespace: ns.into(),
        name: name.into(),
        reason,
    }
}

fn not_found(kind: KindRef, ns: &str, name: &str) -> Error {
    Error::NotFound {
        kind: kind.kind.into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

/// Everything but metadata and status: what a generation counts.
fn spec_part(v: &Value) -> serde_json::Map<String, Value> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn has_finalizers(v: &Value) -> bool {
    v["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
}

pub(crate) fn update(tx: &mut Tx<'_>, kind: KindRef, mut obj: Value, part: Part) -> Result<Value> {
    let (ns, name) = identity(kind, &mut obj)?;
    if name.is_empty() {
        return Err(Error::invalid("metadata.name", "Required value"));
    }
    let old = tx
        .get(kind.kind, &ns, &name)?
        .ok_or_else(|| not_found(kind, &ns, &name))?;
    let want_rv = meta_str(&obj, "resourceVersion");
    let have_rv = meta_str(&old, "resourceVersion");
    if !want_rv.is_empty() && want_rv != have_rv {
        return Err(conflict(
            kind,
            &ns,
            &name,
            format!(
                "the object has been modified (resourceVersion {want_rv}, now {have_rv}); please apply your changes to the latest version and try again"
            ),
        ));
    }
    let want_uid = meta_str(&obj, "uid");
    let have_uid = meta_str(&old, "uid");
    if !want_uid.is_empty() && want_uid != have_uid {
        return Err(conflict(
            kind,
            &ns,
            &name,
            format!(
                "Precondition failed: UID in precondition: {want_uid}, UID in object meta: {have_uid}"
            ),
        ));
    }

    let mut new = match part {
        Part::Main => {
            let mut new = obj;
            let meta = new["metadata"]
                .as_object_mut()
                .expect("identity made metadata");
            meta.remove("managedFields");
            meta.remove("generateName");
            for kept in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "generateName",
                "resourceVersion",
            ] {
                match old["metadata"].get(kept) {
                    Some(v) => {
                        meta.insert(kept.into(), v.clone());
                    }
                    None => {
                        meta.remove(kept);
                    }
                }
            }
            // The status subresource owns status: a main-resource write keeps the stored one.
            let o = new.as_object_mut().expect("identity checked an object");
            match old.get("status") {
                Some(s) => {
                    o.insert("status".into(), s.clone());
                }
                None => {
                    o.remove("status");
                }
            }
            if kind.kind == "Namespace" {
                // Only the finalize subresource changes a namespace's spec.finalizers.
                match old["spec"].get("finalizers") {
                    Some(f) => new["spec"]["finalizers"] = f.clone(),
                    None => {
                        if let Some(spec) = new["spec"].as_object_mut() {
                            spec.remove("finalizers");
                        }
                    }
                }
            }
            if kind.kind == "PodPreset" {
                // The settings API's PrepareForUpdate: a preset's spec cannot change, and
                // an update silently keeps the stored one.
                match old.get("spec") {
                    Some(spec) => new["spec"] = spec.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("spec");
                        }
                    }
                }
            }
            admission::apply_defaults(kind.kind, &mut new);
            if kind.kind == "Namespace" {
                namespaces::set_name_label(&mut new);
            }
            if spec_part(&old) != spec_part(&new) {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                new["metadata"]["generation"] = json!(generation + 1);
            }
            new
        }
        Part::Status => {
            let mut new = old.clone();
            let o = new.as_object_mut().expect("stored objects are objects");
            match obj.get("status") {
                Some(s) if !s.is_null() => {
                    o.insert("status".into(), s.clone());
                }
                _ => {
                    o.remove("status");
                }
            }
            // The API server stamps a PV's phase changes (PersistentVolumeLastPhaseTransitionTime, GA 1.31).
            if kind.kind == "PersistentVolume" {
                let phase = |v: &Value| v["status"]["phase"].as_str().map(str::to_string);
                if phase(&new) != phase(&old) && new["status"].is_object() {
                    new["status"]["lastPhaseTransitionTime"] = json!(time::now_rfc3339());
                }
            }
            new
        }
        Part::Finalize => {
            if kind.kind != "Namespace" {
                return Err(Error::invalid(
                    "",
                    format!("{} has no finalize subresource", kind.kind),
                ));
            }
            namespaces::finalize(&old, &obj)?
        }
    };
    admission::validate_object(kind.kind, &new)?;
    admission::validate_update(kind.kind, &old, &new)?;
    if new == old {
        // A no-op write changes nothing, not even the resourceVersion (as upstream).
        return Ok(old);
    }
    if is_set(new["metadata"].get("deletionTimestamp"))
        && !has_finalizers(&new)
        && !namespaces::held_by_spec_finalizers(kind.kind, &new)
    {
        tx.remove(kind.kind, &ns, &name, &mut new)?;
    } else {
        tx.put(kind.kind, &ns, &name, &mut new, Change::Modified)?;
    }
    Ok(new)
}

/// The writes of a batch in order, each as [`update`] makes it, until one fails: what it
/// wrote is undone, the earlier ones stay. The error is one that leaves the transaction
/// unusable.
pub(crate) fn update_batch(
    tx: &mut Tx<'_>,
    writes: Vec<(KindRef, BatchOp, Value)>,
) -> Result<BatchOutcome> {
    let mut versions = Versions::default();
    let mut written = Vec::with_capacity(writes.len());
    for (i, (kind, op, mut obj)) in writes.into_iter().enumerate() {
        let target = versions.carry(kind, &mut obj);
        let part = match op {
            BatchOp::Update => Part::Main,
            BatchOp::UpdateStatus => Part::Status,
        };
        match tx.undo_on_error(|tx| update(tx, kind, obj, part))? {
            Ok(new) => {
                versions.record(target, &new);
                written.push(Written(new));
            }
            Err(e) => {
                return Ok(BatchOutcome {
                    written,
                    failed: Some((i, e)),
                });
            }
        }
    }
    Ok(BatchOutcome {
        written,
        failed: None,
    })
}

/// Several batches in one transaction, each as [`update_batch`] makes it: a batch that
/// fails stops there and the next one still runs. No version is carried from one batch to
/// the next. The error is one that leaves the transaction unusable.
pub(crate) fn update_batches(
    tx: &mut Tx<'_>,
    batches: Vec<Vec<(KindRef, BatchOp, Value)>>,
) -> Result<Vec<BatchOutcome>> {
    let n = batches.len();
    let mut outcomes = Vec::with_capacity(n);
    for (i, writes) in batches.into_iter().enumerate() {
        outcomes.push(update_batch(tx, writes)?);
        if i + 1 < n {
            crate::failpoint::hit("batch:between-plans");
        }
    }
    Ok(outcomes)
}

pub(crate) fn delete(
    tx: &mut Tx<'_>,
    kind: KindRef,
    ns: &str,
    name: &str,
    pre: &Preconditions,
) -> Result<Deleted<Value>> {
    let ns = if kind.namespaced && ns.is_empty() {
        "default"
    } else {
        ns
    };
    let mut obj = tx
        .get(kind.kind, ns, name)?
        .ok_or_else(|| not_found(kind, ns, name))?;
    if let Some(uid) = &pre.uid
        && uid != meta_str(&obj, "uid")
    {
        return Err(conflict(
            kind,
            ns,
            name,
            format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&obj, "uid")
            ),
        ));
    }
    if let Some(rv) = &pre.resource_version
        && rv != meta_str(&obj, "resourceVersion")
    {
        return Err(conflict(
            kind,
            ns,
            name,
            format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta_str(&obj, "resourceVersion")
            ),
        ));
    }
    if kind.kind == "Namespace" {
        let (mut obj, now) = namespaces::delete(tx, name, obj)?;
        if !now {
            return Ok(Deleted::Pending(obj));
        }
        tx.remove(kind.kind, ns, name, &mut obj)?;
        return Ok(Deleted::Gone(obj));
    }
    if has_finalizers(&obj) {
        if !is_set(obj["metadata"].get("deletionTimestamp")) {
            obj["metadata"]["deletionTimestamp"] = json!(time::now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            tx.put(kind.kind, ns, name, &mut obj, Change::Modified)?;
        }
        return Ok(Deleted::Pending(obj));
    }
    tx.remove(kind.kind, ns, name, &mut obj)?;
    Ok(Deleted::Gone(obj))
}

/// FNV-1a: a stable name for an event series, so repeats find their event by key.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

pub(crate) struct EventSpec<'a> {
    pub(crate) involved: Value,
    pub(crate) type_: &'a str,
    pub(crate) reason: &'a str,
    pub(crate) message: &'a str,
    pub(crate) component: &'a str,
    pub(crate) host: &'a str,
    pub(crate) ttl: std::time::Duration,
}

/// Removes events last seen more than `ttl` ago, as the API server's event TTL does
/// (`--event-ttl`, 1 h by default). Runs at most once per `min(ttl, 60 s)`.
fn prune_events(tx: &mut Tx<'_>, ttl: std::time::Duration) -> Result<()> {
    let now = jiff::Timestamp::now().as_second();
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let last_run = tx.meta_get("events_pruned")?.unwrap_or(0);
    if now - last_run < ttl.min(60) {
        return Ok(());
    }
    tx.meta_set("events_pruned", now)?;
    for mut ev in tx.list("Event", None)? {
        let last = ev["lastTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_second());
        if last.saturating_add(ttl) <= now {
            let ns = meta_str(&ev, "namespace").to_string();
            let name = meta_str(&ev, "name").to_string();
            tx.remove("Event", &ns, &name, &mut ev)?;
        }
    }
    Ok(())
}

/// Records or aggregates a core/v1 Event, as client-go's event correlator does for
/// identical events: same object, type, reason, message and source → count += 1.
pub(crate) fn record_event(tx: &mut Tx<'_>, ev: EventSpec<'_>) -> Result<Value> {
    let involved = &ev.involved;
    let field = |k: &str| involved.get(k).and_then(Value::as_str).unwrap_or("");
    let obj_name = field("name");
    if obj_name.is_empty() {
        return Err(Error::invalid("involvedObject.name", "Required value"));
    }
    // Cluster-scoped objects' events live in "default", as upstream records them.
    let ns = match field("namespace") {
        "" => "default",
        ns => ns,
    };
    let key = fnv1a(&[
        field("kind"),
        ns,
        obj_name,
        field("uid"),
        ev.type_,
        ev.reason,
        ev.message,
        ev.component,
    ]);
    // The object name is a DNS subdomain already; a hex suffix keeps it one.
    let name = format!("{}.{key:016x}", obj_name.trim_end_matches('.'));
    let name = if name.len() > 253 {
        format!("event.{key:016x}")
    } else {
        name
    };
    let now = time::now_rfc3339();
    let event_kind = crate::kinds::KindRef::of::<k8s_openapi::api::core::v1::Event>();
    match tx.get("Event", ns, &name)? {
        Some(mut existing) => {
            let count = existing["count"].as_i64().unwrap_or(1);
            existing["count"] = json!(count + 1);
            existing["lastTimestamp"] = json!(now);
            update(tx, event_kind, existing, Part::Main)
        }
        None => {
            prune_events(tx, ev.ttl)?;
            let mut involved = involved.clone();
            if involved
                .get("namespace")
                .is_none_or(|v| v.as_str() == Some(""))
                && let Some(o) = involved.as_object_mut()
            {
                o.remove("namespace");
            }
            let event = json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": involved,
                "type": ev.type_,
                "reason": ev.reason,
                "message": ev.message,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": ev.component, "host": ev.host},
                "reportingComponent": ev.component,
                "reportingInstance": ev.host,
            });
            create(tx, event_kind, event)
        }
    }
}
