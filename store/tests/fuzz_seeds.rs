//! Replays the `yaml_apply` fuzz target's seeds through the check the fuzzer runs.

#[path = "../../fuzz/checks/yaml_apply.rs"]
mod check;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn yaml_apply_fuzz_seeds_pass() {
    replay::replay("yaml_apply", check::check);
}
