//! Setting up one secret, configMap, downwardAPI or projected volume: the tmpfs (or disk
//! directory) under the pod, then the atomic write of the payload.

use std::path::Path;

use crate::atomic_writer::{AtomicWriter, Payload, WriteOptions, WriteOutcome};
use crate::empty_dir::{self, Medium};
use crate::error::Result;
use crate::projection::Kind;

/// Idempotent: the tmpfs is mounted once; an unchanged payload writes nothing. On an
/// error the previous content stays as it was (never torn down: k8s#139474).
///
/// `nested` are mount points of other volumes below this one's mountPath (relative
/// paths): their directories are made in the volume root (0755), outside the writer's
/// names, because the runtime cannot create them in the read-only bind later.
pub fn set_up(
    dir: &Path,
    kind: Kind,
    payload: &Payload,
    fs_group: Option<u32>,
    nested: &[String],
) -> Result<WriteOutcome> {
    let medium = if kind.on_tmpfs() {
        Medium::Memory { size: None }
    } else {
        Medium::Disk
    };
    empty_dir::set_up(dir, medium, fs_group)?;
    if !nested.is_empty() {
        let root = crate::dirfd::open_dir(dir)?;
        for rel in nested {
            let clean = crate::atomic_writer::validate_path(rel)?;
            // mkdir_all_at refuses symlinks, so a payload key named like the mount point
            // makes this fail instead of creating a directory through ..data.
            crate::dirfd::mkdir_all_at(std::os::fd::AsFd::as_fd(&root), Path::new(&clean), dir)?;
        }
    }
    AtomicWriter::new(dir).write(
        payload,
        WriteOptions {
            fs_group,
            failpoint: None,
        },
    )
}
