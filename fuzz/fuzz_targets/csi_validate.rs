#![no_main]

#[path = "../checks/csi_validate.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
