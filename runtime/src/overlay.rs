//! Mounting overlayfs with any number of lower layers.
//!
//! The classic mount(2) takes all options in one page, which caps an image at a few
//! dozen layers of long paths. The new mount API takes each lower dir in its own
//! fsconfig(2) call (`lowerdir+`, Linux 6.8+), so the count is only limited by
//! overlayfs itself (500 lowers). Older kernels get mount(2) while the option string
//! fits, and a clear error when it does not.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

use crate::error::{Error, Result};
use crate::sys;

/// Options every container rootfs gets: no inode index, no redirects, no metacopy,
/// so the upper dir holds whole files and plain whiteouts, which commit relies on.
const FIXED: [(&str, &str); 3] = [
    ("index", "off"),
    ("redirect_dir", "off"),
    ("metacopy", "off"),
];
const PAGE: usize = 4096;

pub struct Overlay<'a> {
    /// Highest priority first.
    pub lowers: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
}

/// Mounts `o` on `target` with private propagation, so nothing mounted beneath it
/// (volumes, the container's own mounts) leaks into other mount namespaces.
pub fn mount(o: &Overlay<'_>, target: &Path) -> Result<()> {
    match mount_new_api(o, target) {
        Ok(()) => Ok(()),
        Err(NewApi::Unsupported(e)) => {
            tracing::debug!(error = %e, "no lowerdir+ support, using mount(2)");
            mount_legacy(o, target)
        }
        Err(NewApi::Failed(e)) => Err(e),
    }
}

enum NewApi {
    Unsupported(rustix::io::Errno),
    Failed(Error),
}

fn mount_new_api(o: &Overlay<'_>, target: &Path) -> Result<(), NewApi> {
    let fail = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: rustix::io::Errno| NewApi::Failed(Error::io(what, p)(e.into()))
    };
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(NewApi::Unsupported)?;
    for (i, l) in o.lowers.iter().enumerate() {
        match rustix::mount::fsconfig_set_string(fs.as_fd(), "lowerdir+", l) {
            Ok(()) => {}
            Err(e) if i == 0 && e == rustix::io::Errno::INVAL => {
                return Err(NewApi::Unsupported(e));
            }
            Err(e) => return Err(fail("adding overlay lower", l)(e)),
        }
    }
    rustix::mount::fsconfig_set_string(fs.as_fd(), "upperdir", o.upper)
        .map_err(fail("setting overlay upper", o.upper))?;
    rustix::mount::fsconfig_set_string(fs.as_fd(), "workdir", o.work)
        .map_err(fail("setting overlay workdir", o.work))?;
    for (k, v) in FIXED {
        rustix::mount::fsconfig_set_string(fs.as_fd(), k, v)
            .map_err(fail("setting overlay option", target))?;
    }
    rustix::mount::fsconfig_create(fs.as_fd()).map_err(fail("creating overlay", target))?;
    let mnt = rustix::mount::fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(fail("creating overlay mount", target))?;
    rustix::mount::move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(fail("attaching overlay", target))?;
    sys::set_mount_attrs(&mnt, 0, Some(sys::Propagation::Private))
        .map_err(|e| NewApi::Failed(Error::io("making overlay private", target)(e.into())))?;
    Ok(())
}

fn mount_legacy(o: &Overlay<'_>, target: &Path) -> Result<()> {
    let lowers: Vec<String> = o.lowers.iter().map(|p| escape(p)).collect();
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        escape(o.upper),
        escape(o.work)
    );
    for (k, v) in FIXED {
        data.push_str(&format!(",{k}={v}"));
    }
    if data.len() >= PAGE {
        return Err(Error::invalid(
            "overlay layers",
            format!(
                "{} bytes of options exceed a page and this kernel lacks lowerdir+",
                data.len()
            ),
        ));
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| Error::invalid("overlay layers", "a path holds a NUL byte"))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| Error::io("mounting overlay", target)(e.into()))?;
    rustix::mount::mount_change(target, rustix::mount::MountPropagationFlags::PRIVATE)
        .map_err(|e| Error::io("making overlay private", target)(e.into()))
}

/// Overlay option values separate with `,` and lowers with `:`; escape both.
fn escape(p: &Path) -> String {
    p.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}
