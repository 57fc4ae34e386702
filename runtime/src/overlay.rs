//! Mounting overlayfs with any number of lower layers.
//!
//! The classic mount(2) takes all options in one page, which caps an image at a few
//! dozen layers of long paths. The new mount API takes each lower dir in its own
//! fsconfig(2) call (`lowerdir+`, Linux 6.8+), so the count is only limited by
//! overlayfs itself (500 lowers). Older kernels get mount(2): with the layer paths
//! while they fit in the page, else with `/proc/self/fd/N` names for them (about
//! 200 layers), and a clear error beyond that.

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
    let data = legacy_options(o.lowers.iter().map(|p| escape(p)), o);
    if data.len() < PAGE {
        return mount_legacy_with(data, target);
    }
    // Too long for one page: name each lower by a descriptor of ours instead
    // (`/proc/self/fd/N`, ~17 bytes against ~100 for a layer path). The kernel
    // resolves them while it parses the options, in this process, and the
    // descriptors stay open until mount(2) has returned.
    let fds = o
        .lowers
        .iter()
        .map(|l| {
            rustix::fs::open(
                l,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| Error::io("opening overlay lower", l)(e.into()))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = legacy_options(
        fds.iter()
            .map(|fd| format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd))),
        o,
    );
    if data.len() >= PAGE {
        return Err(Error::invalid(
            "overlay layers",
            format!(
                "{} layers need {} bytes of options even by descriptor, more than a page, \
                 and this kernel lacks lowerdir+ (Linux 6.8)",
                o.lowers.len(),
                data.len()
            ),
        ));
    }
    let r = mount_legacy_with(data, target);
    drop(fds);
    r
}

/// The mount(2) option string naming the lowers as given.
fn legacy_options(lowers: impl Iterator<Item = String>, o: &Overlay<'_>) -> String {
    let lowers: Vec<String> = lowers.collect();
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        escape(o.upper),
        escape(o.work)
    );
    for (k, v) in FIXED {
        data.push_str(&format!(",{k}={v}"));
    }
    data
}

fn mount_legacy_with(data: String, target: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The mount(2) path older kernels take, forced here (this kernel has
    /// lowerdir+): 60 lowers of ~120-byte paths need the descriptor names.
    #[test]
    fn legacy_mount_names_lowers_by_descriptor_when_paths_overflow_the_page() {
        // Mounting overlayfs needs root.
        if !testkit::require_root("legacy_mount_names_lowers_by_descriptor") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("l".repeat(80));
        let lowers: Vec<PathBuf> = (0..60)
            .map(|i| {
                let d = deep.join(format!("layer-{i:02}-{}", "x".repeat(20)));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join(format!("f{i}")), i.to_string()).unwrap();
                std::fs::write(d.join("top"), i.to_string()).unwrap();
                d
            })
            .collect();
        let paths: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
        assert!(paths > PAGE, "only {paths} bytes of lower paths");
        let (upper, work, target) = (
            tmp.path().join("upper"),
            tmp.path().join("work"),
            tmp.path().join("merged"),
        );
        for d in [&upper, &work, &target] {
            std::fs::create_dir(d).unwrap();
        }
        let o = Overlay {
            lowers: &lowers,
            upper: &upper,
            work: &work,
        };
        mount_legacy(&o, &target).unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let _u = Unmount(&target);
        for i in 0..60 {
            assert!(target.join(format!("f{i}")).exists(), "lower {i} missing");
        }
        // Highest priority first: the first lower's file wins.
        assert_eq!(std::fs::read_to_string(target.join("top")).unwrap(), "0");
    }

    #[test]
    fn legacy_mount_refuses_more_than_the_page_holds_even_by_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let lowers: Vec<PathBuf> = (0..400).map(|_| tmp.path().to_path_buf()).collect();
        let o = Overlay {
            lowers: &lowers,
            upper: tmp.path(),
            work: tmp.path(),
        };
        let err = mount_legacy(&o, &tmp.path().join("nowhere")).unwrap_err();
        assert!(err.to_string().contains("lowerdir+"), "{err}");
    }
}
