//! The OCI runtime-tools validation suite (opencontainers/runtime-tools) against
//! `strata-runtime`, as an outside user runs it: `RUNTIME=<binary> validation/X/X.t`
//! from a runtime-tools checkout. The suite is Go and built outside this repository,
//! so the test runs only when `RUNTIME_TOOLS` names such a checkout with `runtimetest`
//! and the `validation/*/*.t` programs built (docs/conformance.md says how), and says
//! that it skipped otherwise.

mod common;

use std::path::Path;
use std::process::Command;

use common::BIN;

/// The validations with no failure on this kind of machine, for runc and for us
/// (docs/conformance.md has the whole table). The others fail for runc too here
/// (cgroup v1 controllers this kernel lacks, hooks the harness cannot observe).
const CLEAN: &[&str] = &[
    "config_updates_without_affect",
    "create",
    "default",
    "delete_only_create_resources",
    "hostname",
    "kill",
    "kill_no_effect",
    "linux_cgroups_cpus",
    "linux_cgroups_relative_cpus",
    "linux_devices",
    "linux_masked_paths",
    "linux_ns_itype",
    "linux_ns_nopath",
    "linux_ns_path",
    "linux_ns_path_type",
    "linux_readonly_paths",
    "linux_rootfs_propagation",
    "linux_sysctl",
    "linux_uid_mappings",
    "mounts",
    "process",
    "process_oom_score_adj",
    "process_user",
    "root_readonly_true",
    "state",
];

#[test]
fn runtime_tools_validation_has_no_failure() {
    const TEST: &str = "runtime_tools_validation_has_no_failure";
    if !testkit::require_root(TEST) {
        return;
    }
    let Some(tools) = std::env::var_os("RUNTIME_TOOLS") else {
        eprintln!(
            "SKIPPED {TEST}: set RUNTIME_TOOLS to a runtime-tools checkout with runtimetest \
             and validation/*/*.t built (docs/conformance.md)"
        );
        return;
    };
    let tools = Path::new(&tools);
    let mut failures = Vec::new();
    for name in CLEAN {
        let program = tools
            .join("validation")
            .join(name)
            .join(format!("{name}.t"));
        assert!(program.exists(), "{} is not built", program.display());
        let out = Command::new(&program)
            .current_dir(tools)
            .env("RUNTIME", BIN)
            .output()
            .unwrap();
        let tap = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let passed = tap.lines().filter(|l| l.starts_with("ok ")).count();
        let failed: Vec<&str> = tap.lines().filter(|l| l.starts_with("not ok")).collect();
        if !out.status.success() || passed == 0 || !failed.is_empty() {
            failures.push(format!(
                "{name}: exit {:?}, {passed} ok, failed: {failed:?}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
