//! volctl end to end through its binary, in a temp state dir, while this test process
//! holds the same store open.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use strata_store::k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, PersistentVolumeClaim};
use strata_store::{EmbeddedStore, EventType, Store};

const VOLCTL: &str = env!("CARGO_BIN_EXE_volctl");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(VOLCTL);
        c.args(args)
            .env("STRATA_STATE_DIR", self.state())
            .env_remove("CI_VOLCTL_UNUSED");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "volctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "volctl {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }
}

const BAD: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: ok-before}
data: {a: b}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data2}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 10Gx}}
";

#[test]
fn apply_get_and_reapply() {
    let env = Env::new();
    let web = examples().join("quickstart.yaml");
    let out = env.ok(&["apply", "-f", web.to_str().unwrap()]);
    assert_eq!(
        out,
        "storageclass/strata-local created\nconfigmap/hello-config created\nsecret/hello-secret created\nstatefulset/hello created\n"
    );
    let again = env.ok(&["apply", "-f", web.to_str().unwrap()]);
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");
    let sc = env.ok(&["get", "sc"]);
    let mut lines = sc.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        [
            "strata-local",
            "(default)",
            "local.csi.strata.io",
            "Delete",
            "WaitForFirstConsumer",
            "true"
        ]
    );
    // --state-dir after the verb, overriding the environment.
    let other = Env::new();
    let sts = other.ok(&[
        "get",
        "sts",
        "hello",
        "--state-dir",
        env.state().to_str().unwrap(),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&sts).unwrap();
    assert_eq!(v["spec"]["replicas"], 2);
    assert_eq!(
        v["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Delete"
    );
    // ... and before it.
    let cm = other.ok(&[
        "--state-dir",
        env.state().to_str().unwrap(),
        "get",
        "configmaps",
        "-o",
        "yaml",
    ]);
    assert!(
        cm.contains("kind: List") && cm.contains("greeting: hello from strata"),
        "{cm}"
    );
    let err = other.fails(&["get", "cm"]);
    assert!(
        err.contains("no store in"),
        "reading never creates a store: {err}"
    );
    assert!(!other.state().exists());
}

#[test]
fn get_takes_several_names_like_delete() {
    let env = Env::new();
    let f = env.write(
        "cms.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
    );
    env.ok(&["apply", "-f", &f]);
    let out = env.ok(&["get", "cm", "a", "b", "-o", "name"]);
    assert_eq!(out, "configmap/a\nconfigmap/b\n");
    // One missing name: the others are shown, the missing one named, the exit non-zero.
    let res = env.run(&["get", "cm", "a", "nope", "b", "-o", "name"]);
    assert!(!res.status.success());
    assert_eq!(
        String::from_utf8_lossy(&res.stdout),
        "configmap/a\nconfigmap/b\n"
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("nope") && err.contains("1 of 3"), "{err}");
    // A single name still prints the object itself, not a List.
    let one: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "cm", "a", "-o", "json"])).unwrap();
    assert_eq!(one["kind"], "ConfigMap");
    let two: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "cm", "a", "b", "-o", "json"])).unwrap();
    assert_eq!(two["items"].as_array().unwrap().len(), 2);
}

#[test]
fn invalid_manifest_names_document_and_field_and_stores_nothing() {
    let env = Env::new();
    let f = env.write("bad.yaml", BAD);
    let err = env.fails(&["apply", "-f", &f]);
    assert!(
        err.contains("document 3 (PersistentVolumeClaim data2): spec.resources.requests.storage: invalid quantity \"10Gx\""),
        "{err}"
    );
    assert!(err.contains("bad.yaml"), "names the file: {err}");
    let out = env.run(&["get", "cm"]);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "nothing stored"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("No resources found"));
    for (text, want) in [
        (
            "apiVersion: v1\nkind: Gadget\nmetadata: {name: g}\n",
            "unknown kind",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ../etc}\n",
            "metadata.name",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: x}\n",
            "metadata.name: Required value",
        ),
        ("kind: [\n", "parsing YAML"),
    ] {
        let f = env.write("case.yaml", text);
        let err = env.fails(&["apply", "-f", &f]);
        assert!(err.contains(want), "{text:?}: {err}");
    }
    // Oversized input is refused before parsing.
    let big = "#".repeat(9 << 20);
    let f = env.write("big.yaml", &big);
    assert!(env.fails(&["apply", "-f", &f]).contains("larger than"));
    assert!(
        env.fails(&["get", "widgets"])
            .contains("doesn't have a resource type")
    );
}

#[test]
fn namespaces_are_listed_created_and_deleted() {
    let env = Env::new();
    let f = env.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
    );
    assert_eq!(env.ok(&["apply", "-f", &f]), "namespace/team created\n");
    let ns = env.ok(&["get", "ns"]);
    for name in ["default", "kube-public", "kube-system", "team"] {
        assert!(
            ns.lines()
                .any(|l| l.starts_with(name) && l.contains("Active")),
            "{ns}"
        );
    }
    let err = env.fails(&[
        "apply",
        "-f",
        &env.write(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: other}\n",
        ),
    ]);
    assert!(err.contains("namespaces \"other\" not found"), "{err}");
    let err = env.fails(&["delete", "ns", "default"]);
    assert!(
        err.contains("namespaces \"default\" is forbidden: this namespace may not be deleted"),
        "{err}"
    );
    // Without strata-provisioner's namespace controller it stays Terminating, as a
    // namespace does in a cluster whose controller-manager is down.
    let out = env.ok(&["delete", "ns", "team"]);
    assert!(
        out.contains("namespace \"team\" marked for deletion; pending until finalizers are removed: kubernetes"),
        "{out}"
    );
    assert!(env.ok(&["get", "ns", "team"]).contains("Terminating"));
    let err = env.fails(&[
        "apply",
        "-f",
        &env.write(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: team}\n",
        ),
    ]);
    assert!(
        err.contains(
            "unable to create new content in namespace team because it is being terminated"
        ),
        "{err}"
    );
}

#[test]
fn apply_from_stdin_and_directory() {
    let env = Env::new();
    let mut child = env
        .cmd(&["apply", "-f", "-", "-n", "team"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: piped}\ndata: {k: v}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // The namespace first, wherever the file has it, as kubectl orders them.
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "namespace/team created\nconfigmap/piped created\n"
    );
    assert!(env.ok(&["get", "cm", "-n", "team"]).contains("piped"));
    let all = env.ok(&["get", "cm", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");

    let out = env.ok(&["apply", "-f", examples().to_str().unwrap()]);
    assert!(
        out.contains("persistentvolume/static-data created"),
        "{out}"
    );
    assert!(out.contains("statefulset/hello created"), "{out}");
    let pv = env.ok(&["get", "pv", "-o", "wide"]);
    assert!(
        pv.contains("default/static-claim") && pv.contains("Retain"),
        "{pv}"
    );
    let by_label = env.ok(&["get", "pv", "-l", "tier=static", "-o", "name"]);
    assert_eq!(by_label, "persistentvolume/static-data\n");
    let both = env.ok(&["get", "pv,pvc"]);
    assert!(
        both.contains("static-data") && both.contains("static-claim") && both.contains("\n\nNAME"),
        "{both}"
    );
    let pvc = env.ok(&["get", "pvc"]);
    let header: Vec<&str> = pvc
        .lines()
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_events_and_delete_respects_finalizers() {
    let env = Env::new();
    // This process keeps the store open the whole time, as strata-provisioner would.
    let store = EmbeddedStore::open(&env.state()).unwrap();
    let f = examples().join("static-pv.yaml");
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let pvc: PersistentVolumeClaim = store.get("default", "static-claim").await.unwrap();
    let involved = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: Some("static-claim".into()),
        namespace: Some("default".into()),
        uid: pvc.metadata.uid.clone(),
        ..Default::default()
    };
    for _ in 0..2 {
        store
            .record_event(
                &involved,
                EventType::Warning,
                "ProvisioningFailed",
                "no space left on pool",
            )
            .await
            .unwrap();
    }
    let text = env.ok(&["describe", "pvc", "static-claim"]);
    assert!(
        text.contains("Finalizers:   [kubernetes.io/pvc-protection]"),
        "{text}"
    );
    let events = text
        .split_once("Events:\n")
        .map(|x| x.1)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        events.contains("Warning") && events.contains("ProvisioningFailed"),
        "{events}"
    );
    assert!(
        events.contains("(x2 over") && events.contains("no space left on pool"),
        "{events}"
    );

    // Without a name, as kubectl: every object of the kind, here the one claim and the
    // one PV (cluster-scoped, whatever the namespace).
    // (Compared without the events, whose ages move on between the two calls.)
    let all = env.ok(&["describe", "pvc"]);
    let (fields, events) = all
        .split_once("Events:\n")
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(Some(fields), text.split_once("Events:\n").map(|x| x.0));
    assert!(events.contains("no space left on pool"), "{all}");
    let pvs = env.ok(&["describe", "pv"]);
    assert!(
        pvs.starts_with("Name:") && pvs.matches("\nName:").count() == 0,
        "{pvs}"
    );
    let none = env.run(&["describe", "pvc", "-n", "empty"]);
    assert!(none.status.success(), "{none:?}");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found in empty namespace."),
        "{none:?}"
    );

    let out = env.ok(&["delete", "pvc", "static-claim"]);
    assert!(
        out.contains("marked for deletion") && out.contains("kubernetes.io/pvc-protection"),
        "{out}"
    );
    assert!(env.ok(&["get", "pvc"]).contains("Terminating"));
    // A controller removes the finalizer while `delete --wait` waits.
    let mut waiter = Killed(
        env.cmd(&["delete", "pvc", "static-claim", "--wait", "120"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(waiter.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("marked for deletion"), "{line}");
    let mut pvc: PersistentVolumeClaim = store.get("default", "static-claim").await.unwrap();
    pvc.metadata.finalizers = None;
    store.update(&pvc).await.unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "persistentvolumeclaim \"static-claim\" deleted\n");
    assert!(waiter.0.wait().unwrap().success());
    let err = env.fails(&["delete", "pvc", "static-claim"]);
    assert!(err.contains("not found"), "{err}");
    env.ok(&["delete", "pvc", "static-claim", "--ignore-not-found"]);
    // delete -f removes what the manifest names (the PV is held by pv-protection).
    let out = env.ok(&["delete", "-f", f.to_str().unwrap(), "--ignore-not-found"]);
    assert!(
        out.contains("persistentvolume \"static-data\" marked for deletion"),
        "{out}"
    );
}

/// `delete -f --wait` of a claim and the pod that holds it, in that order: the claim's
/// pvc-protection finalizer goes only once the pod is deleted, so every object must be
/// deleted before any is waited for (it waited for the claim first and timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_file_with_wait_deletes_everything_before_waiting() {
    let env = Env::new();
    let store = EmbeddedStore::open(&env.state()).unwrap();
    let f = env.write(
        "claim-and-user.yaml",
        "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: held}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: user, finalizers: [example.com/hold]}
data: {a: b}
",
    );
    env.ok(&["apply", "-f", &f]);
    let pvc: PersistentVolumeClaim = store.get("default", "held").await.unwrap();
    assert_eq!(
        pvc.metadata.finalizers.as_deref(),
        Some(&["kubernetes.io/pvc-protection".to_string()][..])
    );
    let mut waiter = Killed(
        env.cmd(&["delete", "-f", &f, "--wait", "120"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The protection controller's part: the claim's finalizer goes once its user is
    // being deleted (the old order waited for the claim first and never got here).
    let start = std::time::Instant::now();
    loop {
        let cm: ConfigMap = store.get("default", "user").await.unwrap();
        if cm.metadata.deletion_timestamp.is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the ConfigMap was never marked for deletion"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pvc: PersistentVolumeClaim = store.get("default", "held").await.unwrap();
    pvc.metadata.finalizers = None;
    store.update(&pvc).await.unwrap();
    let mut cm: ConfigMap = store.get("default", "user").await.unwrap();
    cm.metadata.finalizers = None;
    store.update(&cm).await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut waiter.0.stdout.take().unwrap(), &mut text).unwrap();
    assert!(waiter.0.wait().unwrap().success(), "{text}");
    for want in [
        "persistentvolumeclaim \"held\" deleted",
        "configmap \"user\" deleted",
    ] {
        assert!(text.contains(want), "{text}");
    }
}

/// Kills the watching child even when an assertion fails.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn get_watch_streams_changes_from_other_processes() {
    let env = Env::new();
    let f = env.write(
        "one.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\ndata: {a: b}\n",
    );
    env.ok(&["apply", "-f", &f]);
    let mut child = Killed(
        env.cmd(&["get", "cm", "-w"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let mut wait_line = |want: &str| {
        testkit::wait_for(want, Duration::from_secs(60), || {
            while let Ok(l) = rx.try_recv() {
                lines.push(l);
            }
            lines.iter().any(|l| l.starts_with(want)).then_some(())
        });
    };
    wait_line("first");
    let g = env.write(
        "two.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: second}\ndata: {a: b}\n",
    );
    env.ok(&["apply", "-f", &g]);
    wait_line("second");
    env.ok(&["delete", "cm", "first"]);
    // The deletion shows as one more row for "first".
    testkit::wait_for("a second row for first", Duration::from_secs(60), || {
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        (lines.iter().filter(|l| l.starts_with("first")).count() >= 2).then_some(())
    });
}
