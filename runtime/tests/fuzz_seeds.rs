//! Replays the `layer_tar` fuzz target's seeds through the check the fuzzer runs.

#[path = "../../fuzz/checks/layer_tar.rs"]
mod check;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn layer_tar_fuzz_seeds_pass() {
    replay::replay("layer_tar", check::check);
}
