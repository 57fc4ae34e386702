//! The node's own files as pod volumes: `hostPath` (inline, or a hostPath PV) and
//! `local` PVs, as the kubelet's host-path and local-volume plugins do it
//! (k8s-semantics: hostPath types).
//!
//! A hostPath is checked against its `type` (created first for `DirectoryOrCreate`
//! and `FileOrCreate`) and handed to the runtime as it is: the container bind-mounts the
//! host path itself, and nothing is made under the pod's directory. A `local` PV's
//! path is bind-mounted at `<pod>/volumes/kubernetes.io~local-volume/<pv>`, which the
//! pod's teardown unmounts (never deleting through it: teardown checks that no mount
//! remains before it removes anything).

use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

use crate::error::{Context as _, Error, Result};
use crate::mount;

/// Checks (and for the `...OrCreate` types makes) `path` as hostPath type `type_`
/// ("" or None: no check).
pub fn check(path: &Path, type_: Option<&str>) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::InvalidArgument {
            field: "hostPath.path",
            reason: format!("{} is not an absolute path", path.display()),
        });
    }
    let type_ = type_.unwrap_or("");
    match type_ {
        "DirectoryOrCreate" if std::fs::symlink_metadata(path).is_err() => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .at("create directory", path)?;
        }
        "FileOrCreate" if std::fs::symlink_metadata(path).is_err() => {
            // O_EXCL: a file made meanwhile by someone else is left as it is.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).at("create file", path),
            }
        }
        _ => {}
    }
    let wrong = |what: &str| Error::InvalidArgument {
        field: "hostPath.type",
        reason: format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        ),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) if type_.is_empty() => return Ok(()),
        Err(e) => return Err(e).at("stat", path),
    };
    let ft = meta.file_type();
    let ok = match type_ {
        "" => true,
        "Directory" | "DirectoryOrCreate" => ft.is_dir(),
        "File" | "FileOrCreate" => ft.is_file(),
        "Socket" => ft.is_socket(),
        "CharDevice" => ft.is_char_device(),
        "BlockDevice" => ft.is_block_device(),
        other => {
            return Err(Error::InvalidArgument {
                field: "hostPath.type",
                reason: format!("unknown hostPath type {other:?}"),
            });
        }
    };
    if ok {
        Ok(())
    } else {
        Err(wrong(match type_ {
            "Directory" | "DirectoryOrCreate" => "a directory",
            "File" | "FileOrCreate" => "a file",
            "Socket" => "a socket",
            "CharDevice" => "a character device",
            _ => "a block device",
        }))
    }
}

/// Bind-mounts a `local` PV's `source` at `target` (made if missing); idempotent.
pub fn bind_local(source: &Path, target: &Path) -> Result<()> {
    if !source.is_absolute() {
        return Err(Error::InvalidArgument {
            field: "local.path",
            reason: format!("{} is not an absolute path", source.display()),
        });
    }
    if mount::is_mounted(target)? {
        return Ok(());
    }
    let meta = std::fs::metadata(source).at("stat local volume path", source)?;
    if meta.is_dir() {
        std::fs::create_dir_all(target).at("create directory", target)?;
    } else {
        // A file (or device): the mount point must be a file too.
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).at("create directory", parent)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .at("create mount point", target)?;
    }
    // Opened without following a symlink planted at its last component after the check.
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_path_nofollow())
        .open(source)
        .at("open local volume path", source)?;
    mount::bind_fd(std::os::fd::AsFd::as_fd(&fd), target, false)
}

/// O_PATH | O_NOFOLLOW: a handle on the path itself, mountable through /proc/self/fd.
fn libc_o_path_nofollow() -> i32 {
    nix::fcntl::OFlag::O_PATH.bits() | nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_and_made_as_the_kubelet() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        assert!(check(&d, Some("Directory")).is_err(), "missing");
        check(&d, Some("DirectoryOrCreate")).unwrap();
        assert!(d.is_dir());
        check(&d, Some("Directory")).unwrap();
        let err = check(&d, Some("File")).unwrap_err().to_string();
        assert!(err.contains("is not a file"), "{err}");
        let f = dir.path().join("f");
        check(&f, Some("FileOrCreate")).unwrap();
        assert!(f.is_file());
        assert!(check(&f, Some("DirectoryOrCreate")).is_err());
        check(&dir.path().join("missing"), None).unwrap();
        check(&dir.path().join("missing"), Some("")).unwrap();
        assert!(check(&f, Some("Bogus")).is_err());
        assert!(check(Path::new("rel"), None).is_err());
        assert!(check(Path::new("/dev/null"), Some("CharDevice")).is_ok());
    }
}
