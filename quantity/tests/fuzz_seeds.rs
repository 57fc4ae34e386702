//! Replays the `quantity` fuzz target's seeds through the check the fuzzer runs.

#[path = "../../fuzz/checks/quantity.rs"]
mod check;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn quantity_fuzz_seeds_pass() {
    replay::replay("quantity", check::check);
}
