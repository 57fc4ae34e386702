//! The driver's container image without Docker: one layer holding the release binary,
//! the filesystem tools it runs (mkfs, fsck, grow) and the shared libraries they load,
//! all copied from this host, packed and written as an OCI image layout by the runtime
//! crate's image store (`strata_runtime::image`). The Dockerfile in deploy/image builds
//! the same contents from Debian packages instead.
//!
//! Libraries are found with `ldd`, which asks the host's dynamic loader, so the image
//! holds exactly what the loader would map; a library it cannot find fails the build.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_runtime::image::{ImageDefaults, ImageStore};

/// Tools the driver runs (csi/src/sys/mkfs.rs and the btrfs backend), and the util-linux
/// mount tools for debugging inside the container.
pub const DEFAULT_TOOLS: &[&str] = &[
    "mkfs.ext4",
    "e2fsck",
    "resize2fs",
    "mkfs.xfs",
    "xfs_growfs",
    "mkfs.btrfs",
    "btrfs",
    "mount",
    "umount",
];

/// Configuration files the tools read when present (mke2fs's defaults).
pub const DEFAULT_FILES: &[&str] = &["/etc/mke2fs.conf"];

/// Where the image puts the binary and the tools.
pub const BINARY_DIR: &str = "/usr/local/bin";
pub const TOOL_DIR: &str = "/usr/sbin";
const PATH_ENV: &str = "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tool {0} not found in /usr/sbin, /usr/bin, /sbin or /bin")]
    ToolNotFound(String),
    #[error("ldd {path}: {message}")]
    Ldd { path: PathBuf, message: String },
    #[error("image store")]
    Image(#[from] strata_runtime::error::Error),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Image reference recorded in the layout (`org.opencontainers.image.ref.name`).
    pub name: String,
    /// The driver binary, installed as /usr/local/bin/<file name> and the entrypoint.
    pub binary: PathBuf,
    /// Further binaries installed beside it (strata-provisioner, which the DaemonSet runs
    /// with an explicit command instead of the sidecars).
    pub extra_binaries: Vec<PathBuf>,
    /// Tool names looked up on the host, installed in /usr/sbin.
    pub tools: Vec<String>,
    /// Host files copied to the same path when they exist.
    pub files: Vec<PathBuf>,
}

/// Finds `tool` on the host.
pub fn find_tool(tool: &str) -> Result<PathBuf, Error> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::ToolNotFound(tool.to_string()))
}

/// The shared objects `elf` loads, the dynamic loader included, as host paths.
/// A static binary has none.
pub fn shared_libraries(elf: &Path) -> Result<Vec<PathBuf>, Error> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .map_err(io("running ldd on", elf))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // glibc's ldd exits 1 with this for static executables.
        if text.contains("not a dynamic executable") || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(Error::Ldd {
            path: elf.to_path_buf(),
            message: format!("{} {}", text.trim(), stderr.trim()),
        });
    }
    parse_ldd(&text).map_err(|message| Error::Ldd {
        path: elf.to_path_buf(),
        message,
    })
}

/// Parses ldd's lines: `name => /path (addr)`, `/path (addr)` (the loader), and
/// `name (addr)` for the vDSO, which the kernel provides.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if target.starts_with('/') {
            libs.push(PathBuf::from(target));
        } else if !target.starts_with("linux-vdso") && !target.starts_with("linux-gate") {
            return Err(format!("unexpected line {line:?}"));
        }
    }
    Ok(libs)
}

/// Copies `from` to `root`/`to` (following links, so a soname link becomes the file),
/// with its permission bits but without set-id bits.
fn install(root: &Path, from: &Path, to: &Path) -> Result<(), Error> {
    let dest = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    fs::copy(from, &dest).map_err(io("copying", from))?;
    let mode = fs::metadata(from)
        .map_err(io("inspecting", from))?
        .permissions()
        .mode();
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o777))
        .map_err(io("chmod", &dest))?;
    Ok(())
}

/// Lays out the image's root filesystem in `root` (an empty directory).
pub fn stage(plan: &Plan, root: &Path) -> Result<(), Error> {
    let mut elves = Vec::new();
    for binary in std::iter::once(&plan.binary).chain(&plan.extra_binaries) {
        let bin_name = binary.file_name().ok_or_else(|| Error::Io {
            what: "binary has no file name",
            path: binary.clone(),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        install(root, binary, &Path::new(BINARY_DIR).join(bin_name))?;
        elves.push(binary.clone());
    }
    for tool in &plan.tools {
        let host = find_tool(tool)?;
        install(root, &host, &Path::new(TOOL_DIR).join(tool))?;
        elves.push(host);
    }
    let mut libs = std::collections::BTreeSet::new();
    for elf in &elves {
        libs.extend(shared_libraries(elf)?);
    }
    for lib in &libs {
        install(root, lib, lib)?;
    }
    for file in plan.files.iter().filter(|f| f.is_file()) {
        install(root, file, file)?;
    }
    let tmp = root.join("tmp");
    fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(io("chmod", &tmp))?;
    Ok(())
}

/// Builds the image and writes it as an OCI layout at `out` (replaced if present).
/// `work` holds the staging tree and the image store while building.
pub fn build(plan: &Plan, work: &Path, out: &Path) -> Result<(), Error> {
    let root = work.join("rootfs");
    fs::create_dir_all(&root).map_err(io("creating", &root))?;
    stage(plan, &root)?;
    let store = ImageStore::open(work.join("store"))?;
    let entry = Path::new(BINARY_DIR).join(plan.binary.file_name().unwrap_or_default());
    let defaults = ImageDefaults {
        env: vec![PATH_ENV.to_string()],
        entrypoint: vec![entry.to_string_lossy().into_owned()],
        cmd: Vec::new(),
        working_dir: Some("/".into()),
        user: None,
    };
    let image = store.build_image(&plan.name, &[root.as_path()], &defaults)?;
    match fs::remove_dir_all(out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing", out)(e));
        }
        _ => {}
    }
    fs::create_dir_all(out).map_err(io("creating", out))?;
    store.export_layout(&image, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibblkid.so.1 => /lib/x86_64-linux-gnu/libblkid.so.1 (0x00007f38)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f38)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libblkid.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(
            parse_ldd("\tlibfoo.so.1 => not found\n")
                .unwrap_err()
                .contains("libfoo")
        );
        assert!(parse_ldd("\tweird\n").is_err());
        assert_eq!(
            parse_ldd("\tstatically linked\n").unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn unknown_tool_is_an_error() {
        assert!(matches!(
            find_tool("no-such-tool-strata"),
            Err(Error::ToolNotFound(_))
        ));
    }
}
