//! Replays the `layer_tar` fuzz target's seeds through the check the fuzzer runs.

// The check reads `crate::tar_reader`, as in the fuzz target, which compiles the
// module's source itself.
use strata_runtime::image::tar_reader;

#[path = "../../fuzz/checks/layer_tar.rs"]
mod check;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn layer_tar_fuzz_seeds_pass() {
    replay::replay("layer_tar", check::check);
}
