//! Many concurrent writers and a watcher: nothing lost, nothing reordered, no conflicts
//! between independent objects. Prints its throughput for the record (no timing asserts).

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt as _;
use strata_store::k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use strata_store::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strata_store::{EmbeddedStore, Store};

const CLAIMS: usize = 1000;
const WRITERS: usize = 8;

fn claim(name: String) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some("bulk".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                ..Default::default()
            }),
            storage_class_name: Some(String::new()),
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_claims_created_and_bound_by_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut ns = Namespace::default();
    ns.metadata.name = Some("bulk".into());
    store.create(&ns).await.unwrap();
    let mut watch = store
        .watch::<PersistentVolumeClaim>(Some("bulk"), 0)
        .await
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..CLAIMS).step_by(WRITERS) {
                let c = store.create(&claim(format!("c-{i:04}"))).await.unwrap();
                // The binder's two writes: spec.volumeName, then status.
                let mut c2 = c.clone();
                c2.spec.as_mut().unwrap().volume_name = Some(format!("pv-{i:04}"));
                let c2 = store.update(&c2).await.unwrap();
                let mut c3 = c2.clone();
                c3.status.as_mut().unwrap().phase = Some("Bound".into());
                store.update_status(&c3).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let writes = start.elapsed();
    let mut seen = 0;
    let mut last = 0u64;
    while seen < CLAIMS * 3 {
        let ev = watch.next().await.unwrap().unwrap();
        let rv: u64 = ev
            .object()
            .metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv > last, "events in order");
        last = rv;
        seen += 1;
    }
    let list = store
        .list::<PersistentVolumeClaim>(Some("bulk"), None)
        .await
        .unwrap();
    assert_eq!(list.items.len(), CLAIMS);
    assert!(
        list.items
            .iter()
            .all(|c| c.status.as_ref().unwrap().phase.as_deref() == Some("Bound"))
    );
    assert_eq!(list.resource_version, last);
    eprintln!(
        "{} writes by {WRITERS} tasks in {writes:?}; watch and list done after {:?}",
        CLAIMS * 3,
        start.elapsed()
    );
}
