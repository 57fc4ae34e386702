//! Crash safety: a child process stops dead at each point of a write (see
//! `strata_store::failpoint`); what remains must be all of that write or none of it, with
//! the object table, the watch log and the revision counter consistent.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use strata_store::failpoint;
use strata_store::k8s_openapi::api::core::v1::ConfigMap;
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strata_store::{Batch, EmbeddedStore, Preconditions, Store, StoreOptions};

const DIR: &str = "STRATA_STORE_CRASH_DIR";
const OP: &str = "STRATA_STORE_CRASH_OP";

fn cm(name: &str, v: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".into(), v.into())])),
        ..Default::default()
    }
}

/// Not a test of its own: the child process body. Without the variables it does nothing.
#[test]
fn crash_child() {
    let (Some(dir), Ok(op)) = (std::env::var_os(DIR), std::env::var(OP)) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let options = StoreOptions {
            // Small enough that the child's write compacts the parent's history.
            watch_history: if op == "create-compacting" {
                2
            } else {
                100_000
            },
            ..Default::default()
        };
        let store = EmbeddedStore::open_with(Path::new(&dir), options).unwrap();
        match op.as_str() {
            "delete" => {
                store
                    .delete::<ConfigMap>("default", "before", Preconditions::default())
                    .await
                    .unwrap();
            }
            "batches" => {
                // Two batches in one call; the crash point lies between them.
                let mut first: ConfigMap = store.get("default", "before").await.unwrap();
                first.data = Some(BTreeMap::from([("v".into(), "first".into())]));
                let mut second = first.clone();
                second.metadata.resource_version = None;
                second.data = Some(BTreeMap::from([("v".into(), "second".into())]));
                let (mut a, mut b) = (Batch::new(), Batch::new());
                a.update(&first).unwrap();
                b.update(&second).unwrap();
                store.write_batches(vec![a, b]).await.unwrap();
            }
            _ => {
                store.create(&cm("victim", "x")).await.unwrap();
            }
        }
    });
}

fn revision_columns(db: &Path) -> (String, i64, i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let revision: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let max_obj: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(resource_version), 0) FROM objects",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let max_log: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(resource_version), 0) FROM watch_log",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (integrity, revision, max_obj, max_log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failpoint_leaves_all_or_nothing() {
    for point in failpoint::POINTS {
        let dir = tempfile::tempdir().unwrap();
        let before_rev;
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let mut c = store.create(&cm("before", "0")).await.unwrap();
            for i in 1..10 {
                c.data = Some(BTreeMap::from([("v".into(), i.to_string())]));
                c = store.update(&c).await.unwrap();
            }
            before_rev = store.revision().await.unwrap();
        }
        let op = match *point {
            "remove:object-deleted" => "delete",
            "write:compacted" => "create-compacting",
            "batch:between-plans" => "batches",
            _ => "create",
        };
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--test-threads=1"])
            .env(DIR, dir.path())
            .env(OP, op)
            .env(failpoint::ENV, point)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(nix::libc::SIGABRT),
            "{point}: the child must stop there"
        );

        // Committed before the crash, not yet synced: a process crash keeps it.
        let committed = matches!(*point, "write:after-commit" | "write:before-sync");
        let (integrity, revision, max_obj, max_log) =
            revision_columns(&dir.path().join("store.db"));
        assert_eq!(integrity, "ok", "{point}");
        let want = before_rev + u64::from(committed);
        assert_eq!(revision as u64, want, "{point}: revision");
        assert_eq!(max_log, revision, "{point}: the log ends at the revision");
        assert!(max_obj <= revision, "{point}");

        let store = EmbeddedStore::open(dir.path()).unwrap();
        let victim = store.get::<ConfigMap>("default", "victim").await;
        let before = store.get::<ConfigMap>("default", "before").await;
        match op {
            "delete" => assert!(before.is_ok(), "{point}: the delete did not commit"),
            "batches" => assert_eq!(
                before.unwrap().data.unwrap()["v"],
                "9",
                "{point}: neither batch committed"
            ),
            _ => assert_eq!(
                victim.is_ok(),
                committed,
                "{point}: victim present iff committed"
            ),
        }
        // The history the uncommitted compaction would have dropped is still there.
        assert!(
            store.watch::<ConfigMap>(None, 0).await.is_ok(),
            "{point}: history intact"
        );
        // And the store goes on from where the last commit left it.
        let next = store.create(&cm("after", "1")).await.unwrap();
        assert_eq!(
            next.metadata.resource_version,
            Some((want + 1).to_string()),
            "{point}"
        );
    }
}
