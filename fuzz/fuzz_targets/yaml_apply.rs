#![no_main]

#[path = "../checks/yaml_apply.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
