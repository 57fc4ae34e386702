//! The pod runner's path: image → rootfs → bundle → `Helper` (the binary as a
//! single-threaded helper process), with this process as subreaper collecting the
//! exit status. In its own test binary because a subreaper adopts every orphan.

mod common;

use common::*;
use strata_runtime::{Helper, InitLayer, Rootfs};

#[test]
fn pod_runner_flow_through_the_helper() {
    if !testkit::require_root("pod_runner_flow_through_the_helper") {
        return;
    }
    strata_runtime::become_subreaper().unwrap();
    let env = Env::new();
    let img = env.busybox("bb");
    let id = testkit::unique_id("helper");
    let rootfs = RootfsGuard(
        Rootfs::create(&env.store, &id, &img, &InitLayer::for_hostname("web-0")).unwrap(),
    );
    let cfg = sh("cat /etc/hostname; echo oops >&2; exit 5");
    let bundle = env.path("bundle");
    strata_runtime::write_bundle(&bundle, &cfg.to_spec(&id, &rootfs.0.path()).unwrap()).unwrap();
    let helper = Helper::new(BIN, &env.state);
    let _guard = testkit::ContainerGuard {
        binary: BIN.into(),
        root: env.state.clone(),
        id: id.clone(),
    };
    let log = env.path("c.log");
    let state = helper.create(&id, &bundle, &log).unwrap();
    assert_eq!(state.status, "created");
    assert_eq!(
        helper
            .list()
            .unwrap()
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    helper.start(&id).unwrap();
    // The `create` process has exited, so init was re-parented to us.
    assert_eq!(strata_runtime::wait_exit(state.pid).unwrap(), 5);
    assert_eq!(helper.state(&id).unwrap().status, "stopped");
    let err = helper.kill(&id, "TERM", false).unwrap_err().to_string();
    assert!(err.contains("cannot kill"), "{err}");
    helper.delete(&id, false).unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "web-0\noops\n");
    assert!(helper.list().unwrap().is_empty());
}
