//! Shared by the `layer_tar` fuzz target and `runtime/tests/fuzz_seeds.rs`, each of
//! which has the reader module at `crate::tar_reader`.

use std::io::Read;

/// The layer tar reader on arbitrary bytes: every entry and its data read to the
/// end without a panic; an error is a fine answer, a hang or crash is not.
pub fn check(data: &[u8]) {
    let mut r = crate::tar_reader::TarReader::new(data);
    let mut buf = [0u8; 4096];
    while let Ok(Some(_entry)) = r.next_entry() {
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
