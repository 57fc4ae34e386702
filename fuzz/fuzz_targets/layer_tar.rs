#![no_main]

// The reader's own source, compiled here: it needs only std, and depending on
// strata-runtime would build that crate's whole tree (libcontainer, oci-spec, zstd,
// ...) with coverage instrumentation, which took most of an hour on the shared
// machines. runtime/tests/fuzz_seeds.rs names the crate's module the same way.
#[path = "../../runtime/src/image/tar_reader.rs"]
#[allow(dead_code)]
mod tar_reader;

#[path = "../checks/layer_tar.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
