//! Replays the `csi_validate` fuzz target's seeds through the check the fuzzer runs.

#[path = "../../fuzz/checks/csi_validate.rs"]
mod check;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn csi_validate_fuzz_seeds_pass() {
    replay::replay("csi_validate", check::check);
}
