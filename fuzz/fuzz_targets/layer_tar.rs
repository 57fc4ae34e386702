#![no_main]

#[path = "../checks/layer_tar.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
