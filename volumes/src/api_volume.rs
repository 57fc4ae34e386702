//! Setting up one secret, configMap, downwardAPI or projected volume: the tmpfs (or disk
//! directory) under the pod, then the atomic write of the payload.

use std::path::Path;

use crate::atomic_writer::{AtomicWriter, Payload, WriteOptions, WriteOutcome};
use crate::empty_dir::{self, Medium};
use crate::error::Result;
use crate::projection::Kind;

/// Idempotent: the tmpfs is mounted once; an unchanged payload writes nothing. On an
/// error the previous content stays as it was (never torn down: k8s#139474).
pub fn set_up(
    dir: &Path,
    kind: Kind,
    payload: &Payload,
    fs_group: Option<u32>,
) -> Result<WriteOutcome> {
    let medium = if kind.on_tmpfs() {
        Medium::Memory { size: None }
    } else {
        Medium::Disk
    };
    empty_dir::set_up(dir, medium, fs_group)?;
    AtomicWriter::new(dir).write(
        payload,
        WriteOptions {
            fs_group,
            failpoint: None,
        },
    )
}
