//! `Store::write_batch`: several updates in one call, with the outcome of making them one
//! after another (and `Batch::write_in_order`, the fallback of backends without
//! transactions, agreeing with the embedded store's one transaction).

use std::collections::BTreeMap;

use futures::StreamExt as _;
use strata_store::k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus,
    VolumeResourceRequirements,
};
use strata_store::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strata_store::{Batch, BatchOutcome, EmbeddedStore, Object, Store, WatchEvent, WatchStream};

fn claim(name: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn volume(name: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
            host_path: Some(Default::default()),
            ..Default::default()
        }),
        status: None,
    }
}

fn rv(m: &ObjectMeta) -> u64 {
    m.resource_version.as_deref().unwrap().parse().unwrap()
}

/// A bind's four writes, each computed from the objects as read before the batch.
fn bind(
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
) -> (
    PersistentVolume,
    PersistentVolume,
    PersistentVolumeClaim,
    PersistentVolumeClaim,
) {
    let mut pv_spec = pv.clone();
    pv_spec.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        ..Default::default()
    });
    let mut pv_status = pv_spec.clone();
    pv_status.status = Some(PersistentVolumeStatus {
        phase: Some("Bound".into()),
        ..Default::default()
    });
    let mut pvc_spec = pvc.clone();
    pvc_spec.spec.as_mut().unwrap().volume_name = pv.metadata.name.clone();
    let mut pvc_status = pvc_spec.clone();
    pvc_status.status = Some(PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        ..Default::default()
    });
    (pv_spec, pv_status, pvc_spec, pvc_status)
}

async fn setup() -> (
    tempfile::TempDir,
    EmbeddedStore,
    PersistentVolume,
    PersistentVolumeClaim,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let pv = store.create(&volume("pv-1")).await.unwrap();
    let pvc = store.create(&claim("c-1")).await.unwrap();
    (dir, store, pv, pvc)
}

fn batch_of(
    writes: &(
        PersistentVolume,
        PersistentVolume,
        PersistentVolumeClaim,
        PersistentVolumeClaim,
    ),
) -> Batch<EmbeddedStore> {
    let mut b = Batch::new();
    b.update(&writes.0).unwrap();
    b.update_status(&writes.1).unwrap();
    b.update(&writes.2).unwrap();
    b.update_status(&writes.3).unwrap();
    b
}

/// What a batch left: the versions it returned, and the stored objects.
async fn check_bound(store: &EmbeddedStore, outcome: BatchOutcome, start: u64) {
    assert!(outcome.failed.is_none(), "{:?}", outcome.failed);
    let written = outcome.written;
    assert_eq!(written.len(), 4);
    let versions: Vec<u64> = written
        .iter()
        .map(|w| {
            w.0["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        versions,
        (start + 1..=start + 4).collect::<Vec<_>>(),
        "one version per write, in order, each write carrying the one before"
    );
    let pv: PersistentVolume = written[1].clone().into_object().unwrap();
    assert_eq!(pv.status.unwrap().phase.as_deref(), Some("Bound"));
    let stored: PersistentVolume = store.get("", "pv-1").await.unwrap();
    assert_eq!(rv(&stored.metadata), start + 2);
    assert!(
        stored.spec.unwrap().claim_ref.is_some(),
        "the spec write kept"
    );
    assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Bound"));
    let stored: PersistentVolumeClaim = store.get("default", "c-1").await.unwrap();
    assert_eq!(rv(&stored.metadata), start + 4);
    assert_eq!(stored.spec.unwrap().volume_name.as_deref(), Some("pv-1"));
    assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Bound"));
}

/// The versions of the next `n` events, each a modification.
async fn modified<K: Object>(watch: &mut WatchStream<K>, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        match watch.next().await.unwrap().unwrap() {
            WatchEvent::Modified(o) => out.push(rv(o.metadata())),
            other => panic!("{}", other.type_name()),
        }
    }
    out
}

#[tokio::test]
async fn a_batch_is_its_writes_in_order_and_the_watch_sees_each() {
    let (_dir, store, pv, pvc) = setup().await;
    let start = store.revision().await.unwrap();
    let mut pv_watch = store.watch::<PersistentVolume>(None, start).await.unwrap();
    let mut pvc_watch = store
        .watch::<PersistentVolumeClaim>(None, start)
        .await
        .unwrap();
    let outcome = store.write_batch(batch_of(&bind(&pv, &pvc))).await;
    check_bound(&store, outcome, start).await;
    assert_eq!(store.revision().await.unwrap(), start + 4);
    assert_eq!(modified(&mut pv_watch, 2).await, [start + 1, start + 2]);
    assert_eq!(modified(&mut pvc_watch, 2).await, [start + 3, start + 4]);
    // An empty batch writes nothing.
    let outcome = store.write_batch(Batch::new()).await;
    assert!(outcome.written.is_empty() && outcome.failed.is_none());
    assert_eq!(store.revision().await.unwrap(), start + 4);
}

#[tokio::test]
async fn the_fallback_in_order_has_the_same_outcome() {
    let (_dir, store, pv, pvc) = setup().await;
    let start = store.revision().await.unwrap();
    let outcome = batch_of(&bind(&pv, &pvc)).write_in_order(&store).await;
    check_bound(&store, outcome, start).await;
}

/// A conflict on the third write: the first two stay, the rest is not made, and the
/// error says which write failed.
#[tokio::test]
async fn a_failed_write_keeps_the_ones_before_and_stops() {
    for in_order in [false, true] {
        let (_dir, store, pv, pvc) = setup().await;
        // Someone else changes the claim after the batch was decided.
        let mut other = pvc.clone();
        other.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
        let other = store.update(&other).await.unwrap();
        let start = store.revision().await.unwrap();
        let batch = batch_of(&bind(&pv, &pvc));
        let outcome = if in_order {
            batch.write_in_order(&store).await
        } else {
            store.write_batch(batch).await
        };
        let (index, err) = outcome.failed.expect("the claim write conflicts");
        assert_eq!(index, 2, "in_order={in_order}");
        assert!(err.is_conflict(), "{err}");
        assert_eq!(outcome.written.len(), 2);
        assert_eq!(store.revision().await.unwrap(), start + 2);
        let stored: PersistentVolume = store.get("", "pv-1").await.unwrap();
        assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Bound"));
        let stored: PersistentVolumeClaim = store.get("default", "c-1").await.unwrap();
        assert_eq!(stored, other, "the claim writes were not made");
        // The log holds the two writes made and nothing after them.
        let mut watch = store
            .watch::<PersistentVolumeClaim>(None, start)
            .await
            .unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_millis(200), watch.next()).await;
        assert!(next.is_err(), "no claim change was logged: {next:?}");
    }
}

/// A write that fails its own checks (here: its object does not exist) is refused with
/// the error of its single call.
#[tokio::test]
async fn a_refused_write_is_reported_like_its_single_call() {
    let (_dir, store, pv, pvc) = setup().await;
    let (a, b, mut c, d) = bind(&pv, &pvc);
    c.metadata.name = Some("no-such-claim".into());
    let start = store.revision().await.unwrap();
    let outcome = store.write_batch(batch_of(&(a, b, c.clone(), d))).await;
    let (index, err) = outcome.failed.unwrap();
    assert_eq!(index, 2);
    let single = store.update(&c).await.unwrap_err();
    assert!(
        err.is_not_found() && single.is_not_found(),
        "{err} / {single}"
    );
    assert_eq!(err.to_string(), single.to_string());
    assert_eq!(store.revision().await.unwrap(), start + 2);
}

/// Several binds in one call: each batch as its own `write_batch` would make it. A
/// conflict in the second stops only that one (its first two writes stay, as a single
/// batch keeps them); the first and third are made whole, and the watch sees every write
/// made, in order. The fallback of one call after another agrees.
#[tokio::test]
async fn batches_in_one_call_fail_alone() {
    for in_order in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut pairs = Vec::new();
        for i in 1..=3 {
            let pv = store.create(&volume(&format!("pv-{i}"))).await.unwrap();
            let pvc = store.create(&claim(&format!("c-{i}"))).await.unwrap();
            pairs.push((pv, pvc));
        }
        // Someone else changes the second claim after the binds were decided.
        let mut other = pairs[1].1.clone();
        other.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
        let other = store.update(&other).await.unwrap();
        let start = store.revision().await.unwrap();
        let mut pvc_watch = store
            .watch::<PersistentVolumeClaim>(None, start)
            .await
            .unwrap();
        let batches: Vec<_> = pairs
            .iter()
            .map(|(pv, pvc)| batch_of(&bind(pv, pvc)))
            .collect();
        let outcomes = if in_order {
            let mut out = Vec::new();
            for b in batches {
                out.push(b.write_in_order(&store).await);
            }
            out
        } else {
            store.write_batches(batches).await.unwrap()
        };
        assert_eq!(outcomes.len(), 3);
        let (index, err) = outcomes[1].failed.as_ref().expect("the second conflicts");
        assert_eq!(*index, 2, "in_order={in_order}");
        assert!(err.is_conflict(), "{err}");
        assert!(outcomes[0].failed.is_none() && outcomes[2].failed.is_none());
        assert_eq!(
            outcomes.iter().map(|o| o.written.len()).collect::<Vec<_>>(),
            [4, 2, 4]
        );
        assert_eq!(store.revision().await.unwrap(), start + 10);
        for i in [1, 3] {
            let c: PersistentVolumeClaim = store.get("default", &format!("c-{i}")).await.unwrap();
            assert_eq!(c.status.unwrap().phase.as_deref(), Some("Bound"), "c-{i}");
            let pv: PersistentVolume = store.get("", &format!("pv-{i}")).await.unwrap();
            assert_eq!(pv.status.unwrap().phase.as_deref(), Some("Bound"), "pv-{i}");
        }
        let c: PersistentVolumeClaim = store.get("default", "c-2").await.unwrap();
        assert_eq!(c, other, "the conflicting claim was not written");
        // The third batch's first write follows the second's two, with no gap.
        let first_of_third: PersistentVolume =
            outcomes[2].written[0].clone().into_object().unwrap();
        assert_eq!(rv(&first_of_third.metadata), start + 7);
        let claims = modified(&mut pvc_watch, 4).await;
        assert_eq!(claims, [start + 3, start + 4, start + 9, start + 10]);
    }
}

/// Batches never carry versions between each other: a second batch about an object the
/// first changed conflicts, it is a decision about the object as it was before.
#[tokio::test]
async fn a_later_batch_about_the_same_object_conflicts() {
    let (_dir, store, pv, pvc) = setup().await;
    let start = store.revision().await.unwrap();
    let writes = bind(&pv, &pvc);
    let outcomes = store
        .write_batches(vec![batch_of(&writes), batch_of(&writes)])
        .await
        .unwrap();
    assert!(outcomes[0].failed.is_none());
    let (index, err) = outcomes[1].failed.as_ref().unwrap();
    assert_eq!(*index, 0);
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.revision().await.unwrap(), start + 4);
    // Nothing at all is one empty outcome per batch and no transaction.
    let outcomes = store
        .write_batches(vec![Batch::new(), Batch::new()])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 2);
    assert!(
        outcomes
            .iter()
            .all(|o| o.written.is_empty() && o.failed.is_none())
    );
    assert_eq!(store.revision().await.unwrap(), start + 4);
}
