//! `volctl logs` and `volctl exec` against real containers under `volctl up`: the
//! command's exit code becomes volctl's, `--previous` shows the run before a restart,
//! `-f` follows a running container and returns when it ends, bad input is refused.

use std::io::Read as _;
use std::process::Stdio;

use strata_e2e::{Strata, wait_for};

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: tool
  namespace: default
spec:
  nodeName: local
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c", "echo run-start; trap 'echo got-term; exit 3' TERM; while true; do sleep 0.1; done"]
    - name: side
      image: busybox
      env: [{name: GREETING, value: hi-from-env}]
      command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
"#;

fn running_run(s: &Strata, restarts: i64) -> Option<()> {
    let p = s.get("pod", "tool")?;
    let st = p["status"]["containerStatuses"].as_array()?;
    st.iter()
        .all(|c| !c["state"]["running"].is_null())
        .then_some(())
        .filter(|_| st.iter().any(|c| c["restartCount"] == restarts))
}

#[test]
fn logs_and_exec() {
    if !testkit::require_root("logs_and_exec") {
        return;
    }
    let s = Strata::up_with_busybox("e2e-podcli");
    s.ok_with(&["apply", "-f", "-"], Some(POD));
    wait_for("both containers running", || running_run(&s, 0));

    // exec: output, the container's environment, and the exit code passed on.
    let out = s.ok(&[
        "exec",
        "tool",
        "-c",
        "side",
        "--",
        "sh",
        "-c",
        "echo $GREETING",
    ]);
    assert_eq!(out, "hi-from-env\n");
    let r = s.run_with(&["exec", "tool", "--", "sh", "-c", "exit 7"], None);
    assert_eq!(r.status.code(), Some(7), "{r:?}");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("Defaulted container \"main\""), "{stderr}");
    let err = s.fails(&["exec", "tool", "-c", "nope", "--", "true"]);
    assert!(err.contains("choose one of: main, side"), "{err}");
    let err = s.fails(&["exec", "missing", "--", "true"]);
    assert!(err.contains("\"missing\" not found"), "{err}");

    // logs: the running run; no previous run yet.
    wait_for("the first run's log", || {
        s.ok(&["logs", "tool", "-c", "main"])
            .contains("run-start")
            .then_some(())
    });
    let err = s.fails(&["logs", "tool", "-c", "main", "--previous"]);
    assert!(err.contains("previous terminated container"), "{err}");

    // -f follows the run and returns once it ends: TERM the container's pid 1 by exec.
    let mut follow = s
        .volctl(&["logs", "-f", "tool", "-c", "main"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.ok(&["exec", "tool", "-c", "main", "--", "kill", "-TERM", "1"]);
    let done = wait_for("logs -f to return", || follow.try_wait().unwrap());
    assert!(done.success());
    let mut text = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.contains("run-start") && text.contains("got-term"),
        "{text}"
    );

    // The first restart is immediate: logs shows the new run, --previous the old one.
    wait_for("restarted", || running_run(&s, 1));
    let prev = s.ok(&["logs", "tool", "-c", "main", "--previous"]);
    assert!(prev.contains("got-term"), "{prev}");
    // --tail: the last line of that run only.
    let last = s.ok(&["logs", "tool", "-c", "main", "--previous", "--tail", "1"]);
    assert_eq!(last, format!("{}\n", prev.lines().last().unwrap()));
    assert!(prev.lines().count() > 1, "{prev}");
    let err = s.fails(&["logs", "tool", "--tail", "-2"]);
    assert!(err.contains("--tail"), "{err}");
    let now = wait_for("the second run's log", || {
        Some(s.ok(&["logs", "tool", "-c", "main"])).filter(|t| t.contains("run-start"))
    });
    assert!(!now.contains("got-term"), "{now}");

    s.ok(&["delete", "pod", "tool", "--wait", "30"]);
    s.ok(&["down"]);
}
