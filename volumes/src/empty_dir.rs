//! emptyDir volumes: a directory on the node's disk, or a tmpfs for `medium: Memory` whose
//! `size=` is the `sizeLimit`, so the kernel enforces the limit.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::EmptyDirVolumeSource;

use crate::error::{Context, Error, Result};
use crate::mount;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Disk,
    /// tmpfs, with a size in bytes when the volume sets `sizeLimit`.
    Memory {
        size: Option<u64>,
    },
}

impl Medium {
    pub fn of(src: &EmptyDirVolumeSource) -> Result<Medium> {
        match src.medium.as_deref().unwrap_or("") {
            "" => Ok(Medium::Disk),
            "Memory" => {
                let size = match &src.size_limit {
                    None => None,
                    Some(q) => {
                        let v = strata_store::quantity::parse(&q.0)
                            .ok()
                            .and_then(|q| q.to_bytes())
                            .filter(|v| *v > 0)
                            .ok_or_else(|| Error::InvalidArgument {
                                field: "emptyDir.sizeLimit",
                                reason: format!("{:?} is not a positive size", q.0),
                            })?;
                        Some(v)
                    }
                };
                Ok(Medium::Memory { size })
            }
            other => Err(Error::InvalidArgument {
                field: "emptyDir.medium",
                reason: format!("{other:?} is not supported (use \"\" or \"Memory\")"),
            }),
        }
    }
}

/// Makes the volume directory (0777, as the kubelet does) and, for Memory, mounts the
/// tmpfs once; calling it again changes nothing. With fsGroup the directory joins the
/// group with setgid so new files inherit it.
pub fn set_up(dir: &Path, medium: Medium, fs_group: Option<u32>) -> Result<()> {
    std::fs::create_dir_all(dir).at("create directory", dir)?;
    if let Medium::Memory { size } = medium
        && !mount::is_mounted(dir)?
    {
        mount::mount_tmpfs(dir, size)?;
    }
    let mut mode = 0o777;
    if let Some(gid) = fs_group {
        nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid))).at("chown", dir)?;
        mode |= 0o2000;
    }
    let current = std::fs::metadata(dir).at("stat", dir)?.permissions().mode() & 0o7777;
    if current != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).at("chmod", dir)?;
    }
    Ok(())
}
