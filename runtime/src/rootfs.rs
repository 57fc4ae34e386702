//! A container's root filesystem: overlayfs of the image layers, a per-container
//! init layer and a writable upper, and commit of that upper into a new image.
//!
//! ```text
//! <store>/containers/<id>/rootfs.json   the image it was made from (gc reads it)
//!                         init/          /etc/hosts, /etc/hostname, /etc/resolv.conf,
//!                                        /dev, /proc, /sys mount points
//!                         upper/ work/   overlay upper and workdir
//!                         merged/        the mounted rootfs handed to the runtime
//! ```
//!
//! The init layer sits above the image layers, so the container sees our hosts
//! and resolv.conf; a commit leaves those paths out (even when the container wrote
//! to them), as image content must not carry one pod's network identity.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::container::validate_id;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::format;
use crate::image::pack::PackSpec;
use crate::image::{Image, ImageStore};
use crate::overlay::{self, Overlay};
use crate::volumes;

/// The init layer's files and mount points (relative to the rootfs).
pub const INIT_FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];
pub const INIT_DIRS: [&str; 3] = ["dev", "proc", "sys"];

/// The contents of a container's init layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitLayer {
    pub hostname: String,
    pub hosts: String,
    pub resolv_conf: String,
}

impl InitLayer {
    /// Loopback entries plus the hostname, and the host's resolv.conf (empty when
    /// the host has none).
    pub fn for_hostname(hostname: &str) -> InitLayer {
        InitLayer {
            hostname: hostname.to_string(),
            hosts: format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
            ),
            resolv_conf: fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    image: Image,
}

/// One container's rootfs in an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct Rootfs {
    dir: PathBuf,
    image: Image,
}

impl Rootfs {
    /// Prepares and mounts the rootfs of container `id` from `image`.
    #[tracing::instrument(skip_all, fields(id = %id, image = %image.name))]
    pub fn create(store: &ImageStore, id: &str, image: &Image, init: &InitLayer) -> Result<Rootfs> {
        validate_id(id)?;
        for l in &image.diff_ids {
            if !store.layer_path(l).is_dir() {
                return Err(Error::LayerNotFound(l.clone()));
            }
        }
        let dir = store.root().join("containers").join(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::ContainerExists(id.into()));
            }
            Err(e) => return Err(Error::io("creating container dir", &dir)(e)),
        }
        let rootfs = Rootfs {
            dir,
            image: image.clone(),
        };
        let r = (|| {
            // The record first: from here on gc keeps the layers.
            let rec = rootfs.dir.join("rootfs.json");
            let record = Record {
                image: image.clone(),
            };
            fs::write(&rec, format::encode(&record, false)).map_err(Error::io("writing", &rec))?;
            for sub in ["upper", "work", "merged", "init/etc"] {
                let p = rootfs.dir.join(sub);
                fs::create_dir_all(&p).map_err(Error::io("creating", &p))?;
            }
            for d in INIT_DIRS {
                let p = rootfs.dir.join("init").join(d);
                fs::create_dir(&p).map_err(Error::io("creating", &p))?;
            }
            let init_dir = rootfs.dir.join("init");
            for (rel, content) in
                INIT_FILES
                    .iter()
                    .zip([&init.hosts, &init.hostname, &init.resolv_conf])
            {
                let p = init_dir.join(rel);
                let body = if *rel == "etc/hostname" {
                    format!("{content}\n")
                } else {
                    content.clone()
                };
                fs::write(&p, body).map_err(Error::io("writing init file", &p))?;
            }
            rootfs.mount(store)
        })();
        if let Err(e) = r {
            let _ = rootfs.remove();
            return Err(e);
        }
        Ok(rootfs)
    }

    /// An existing container rootfs (mounted or not).
    pub fn open(store: &ImageStore, id: &str) -> Result<Rootfs> {
        validate_id(id)?;
        let dir = store.root().join("containers").join(id);
        let rec_path = dir.join("rootfs.json");
        let bytes = fs::read(&rec_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ContainerNotFound(id.into()),
            _ => Error::io("reading", &rec_path)(e),
        })?;
        let (rec, _): (Record, _) = format::decode(&rec_path, &bytes, format::same_shape)?;
        Ok(Rootfs {
            dir,
            image: rec.image,
        })
    }

    /// The mounted root filesystem, for `root.path` in config.json.
    pub fn path(&self) -> PathBuf {
        self.dir.join("merged")
    }

    pub fn image(&self) -> &Image {
        &self.image
    }

    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// Mounts the overlay unless it already is.
    pub fn mount(&self, store: &ImageStore) -> Result<()> {
        if is_mountpoint(&self.path())? {
            return Ok(());
        }
        let mut lowers = vec![self.dir.join("init")];
        lowers.extend(
            self.image
                .diff_ids
                .iter()
                .rev()
                .map(|d| store.layer_path(d)),
        );
        let o = Overlay {
            lowers: &lowers,
            upper: &self.upper(),
            work: &self.dir.join("work"),
        };
        overlay::mount(&o, &self.path())
    }

    /// Unmounts the rootfs and anything still mounted beneath it (volumes).
    pub fn unmount(&self) -> Result<()> {
        volumes::unmount(&self.path())
    }

    /// Unmounts and deletes the container's rootfs, upper layer included.
    pub fn remove(&self) -> Result<()> {
        self.unmount()?;
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing container dir", &self.dir)(e)),
        }
    }

    /// Turns the upper layer, minus init-layer paths, into a new verified layer on
    /// top of the container's image, recorded as image `name`.
    #[tracing::instrument(skip_all, fields(image = %name))]
    pub fn commit(&self, store: &ImageStore, name: &str) -> Result<Image> {
        let exclude: HashSet<PathBuf> = INIT_FILES
            .iter()
            .chain(INIT_DIRS.iter())
            .map(PathBuf::from)
            .collect();
        let upper = self.upper();
        let spec = PackSpec {
            dir: &upper,
            overlay_upper: true,
            exclude: &exclude,
        };
        let layer = store.add_layer(&spec)?;
        let defaults = store.defaults(&self.image)?;
        store.assemble(name, Some(&self.image), vec![layer], &defaults)
    }
}

/// Layers referenced by container rootfs dirs, which gc must keep.
pub(crate) fn layers_in_use(store: &ImageStore) -> Result<Vec<Digest>> {
    let dir = store.root().join("containers");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).map_err(Error::io("listing", &dir))? {
        let e = e.map_err(Error::io("listing", &dir))?;
        let rec = e.path().join("rootfs.json");
        match fs::read(&rec) {
            Ok(b) => {
                let (r, _): (Record, _) = format::decode(&rec, &b, format::same_shape)?;
                out.extend(r.image.diff_ids);
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io("reading", rec)(err)),
        }
    }
    Ok(out)
}

/// True when `p` is the root of a mount (same-device binds too), by one statx.
fn is_mountpoint(p: &Path) -> Result<bool> {
    strata_mountinfo::is_mount_point(p).map_err(Error::io("checking for a mount at", p))
}
