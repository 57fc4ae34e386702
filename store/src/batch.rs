//! Several updates made as one store call ([`Store::write_batch`]).
//!
//! A control loop's decision is often a few writes in a row (a bind is four: PV spec, PV
//! status, claim spec, claim status). Made one call at a time each is a transaction, a
//! thread hand-off and a wake-up of every watcher; a batch lets a backend make them in one
//! transaction. The outcome is the same as making them one after another: in order, each
//! with the checks of its single call, stopping at the first that fails, whose
//! predecessors stay written.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use crate::api::{Object, Store};
use crate::error::{Error, Result};
use crate::kinds::KindRef;

/// Which single call a batched write stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOp {
    /// [`Store::update`].
    Update,
    /// [`Store::update_status`].
    UpdateStatus,
}

type SingleFuture = Pin<Box<dyn Future<Output = Result<Value>> + Send>>;

/// One write of a [`Batch`].
pub struct BatchWrite<S> {
    pub kind: KindRef,
    pub op: BatchOp,
    /// The object as its typed struct encodes it.
    pub object: Value,
    /// The same write as a single typed call, for backends without transactions.
    single: fn(S, Value, BatchOp) -> SingleFuture,
}

/// Updates to make in order as one call; see [`Store::write_batch`].
///
/// A write to an object that an earlier write of the same batch changed carries that
/// write's new resourceVersion (its own is replaced), as a caller making the calls one by
/// one would carry it: the batch is one decision about objects as they were before it.
pub struct Batch<S> {
    writes: Vec<BatchWrite<S>>,
}

impl<S> Default for Batch<S> {
    fn default() -> Self {
        Batch { writes: Vec::new() }
    }
}

impl<S> std::fmt::Debug for Batch<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.writes.iter().map(|w| {
                (
                    w.kind.kind,
                    w.op,
                    key_of(&w.object).map(|(ns, name)| format!("{ns}/{name}")),
                )
            }))
            .finish()
    }
}

fn single<S: Store, K: Object>(store: S, object: Value, op: BatchOp) -> SingleFuture {
    Box::pin(async move {
        let obj: K = decode(object)?;
        let out = match op {
            BatchOp::Update => store.update(&obj).await?,
            BatchOp::UpdateStatus => store.update_status(&obj).await?,
        };
        encode(&out)
    })
}

fn encode<K: Object>(obj: &K) -> Result<Value> {
    serde_json::to_value(obj).map_err(|source| Error::Decode {
        kind: K::KIND.into(),
        source,
    })
}

fn decode<K: Object>(v: Value) -> Result<K> {
    serde_json::from_value(v).map_err(|source| Error::Decode {
        kind: K::KIND.into(),
        source,
    })
}

/// (namespace, name) as the object says them, for carrying versions within a batch.
fn key_of(object: &Value) -> Option<(&str, &str)> {
    let meta = object.get("metadata")?;
    let s = |k: &str| meta.get(k).and_then(Value::as_str).unwrap_or("");
    Some((s("namespace"), s("name")))
}

/// An object a batch writes: kind, namespace and name as the caller gave them.
pub(crate) type Target = (&'static str, String, String);

/// The resourceVersions a batch has written so far, by object.
#[derive(Default)]
pub(crate) struct Versions(HashMap<Target, Option<Value>>);

impl Versions {
    /// Gives `object` the version an earlier write of the batch left its object at, and
    /// returns which object it is (for [`Versions::record`]).
    pub(crate) fn carry(&self, kind: KindRef, object: &mut Value) -> Option<Target> {
        let (ns, name) = key_of(object)?;
        let target = (kind.kind, ns.to_string(), name.to_string());
        if let Some(rv) = self.0.get(&target)
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            match rv {
                Some(rv) => meta.insert("resourceVersion".into(), rv.clone()),
                None => meta.remove("resourceVersion"),
            };
        }
        Some(target)
    }

    /// Remembers the version the write to `target` left it at.
    pub(crate) fn record(&mut self, target: Option<Target>, written: &Value) {
        if let Some(target) = target {
            let rv = written
                .get("metadata")
                .and_then(|m| m.get("resourceVersion"))
                .cloned();
            self.0.insert(target, rv);
        }
    }
}

impl<S: Store> Batch<S> {
    pub fn new() -> Self {
        Batch::default()
    }

    fn push<K: Object>(&mut self, obj: &K, op: BatchOp) -> Result<()> {
        self.writes.push(BatchWrite {
            kind: K::kind_ref(),
            op,
            object: encode(obj)?,
            single: single::<S, K>,
        });
        Ok(())
    }

    /// Adds an update ([`Store::update`]).
    pub fn update<K: Object>(&mut self, obj: &K) -> Result<()> {
        self.push(obj, BatchOp::Update)
    }

    /// Adds a status update ([`Store::update_status`]).
    pub fn update_status<K: Object>(&mut self, obj: &K) -> Result<()> {
        self.push(obj, BatchOp::UpdateStatus)
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes, for a backend.
    pub fn into_writes(self) -> Vec<BatchWrite<S>> {
        self.writes
    }

    /// Makes the writes one single call after another: the fallback of a backend that
    /// cannot make them in one transaction. Same outcome, only slower.
    pub async fn write_in_order(self, store: &S) -> BatchOutcome {
        let mut versions = Versions::default();
        let mut written = Vec::with_capacity(self.writes.len());
        for (i, mut w) in self.writes.into_iter().enumerate() {
            let target = versions.carry(w.kind, &mut w.object);
            match (w.single)(store.clone(), w.object, w.op).await {
                Ok(new) => {
                    versions.record(target, &new);
                    written.push(Written(new));
                }
                Err(e) => {
                    return BatchOutcome {
                        written,
                        failed: Some((i, e)),
                    };
                }
            }
        }
        BatchOutcome {
            written,
            failed: None,
        }
    }
}

/// The stored result of one write of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Written(pub Value);

impl Written {
    /// The result as the type that was written.
    pub fn into_object<K: Object>(self) -> Result<K> {
        decode(self.0)
    }
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The stored results of the writes made, in the batch's order: every write before
    /// the failed one, or all of them.
    pub written: Vec<Written>,
    /// The first write that failed (its index in the batch) and why; it and the writes
    /// after it changed nothing.
    pub failed: Option<(usize, Error)>,
}

impl BatchOutcome {
    /// Ok with the results when every write was made.
    pub fn into_result(self) -> Result<Vec<Written>> {
        match self.failed {
            None => Ok(self.written),
            Some((_, e)) => Err(e),
        }
    }
}
