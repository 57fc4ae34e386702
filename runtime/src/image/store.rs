//! The image store: verified blobs, layers unpacked once by diff_id, image records.
//!
//! ```text
//! <root>/blobs/sha256/<hex>      content-addressed blobs, verified before they land
//! <root>/layers/<diff_id hex>/   one unpacked layer each, renamed into place whole
//! <root>/images/<hex(name)>.json our record of a named image
//! <root>/containers/<id>/        container rootfs dirs (see rootfs.rs)
//! <root>/tmp/                    staging, same filesystem so renames are atomic
//! ```
//!
//! Layers may be plain tar, gzip or zstd (OCI and Docker media types); the blob's
//! magic bytes win over a label that says plain tar.

use std::collections::HashSet;
use std::fs;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use oci_spec::image::{
    ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndex, ImageManifest, ImageManifestBuilder, MediaType, RootFsBuilder,
};

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{Error, Result};
use crate::format;
use crate::image::pack::{self, PackSpec};
use crate::image::unpack;

/// What we keep about a named image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    pub name: String,
    pub manifest: Digest,
    pub config: Digest,
    /// Layer blobs as the manifest lists them, bottom first.
    pub layer_blobs: Vec<Digest>,
    /// Uncompressed layer digests, bottom first: the keys of unpacked layers.
    pub diff_ids: Vec<Digest>,
}

/// Process defaults from the image config, for building a container config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub layers_removed: Vec<Digest>,
    pub blobs_removed: Vec<Digest>,
    /// Staging entries of processes that died mid-import or mid-commit.
    pub staging_removed: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

fn json_err(path: &Path) -> impl FnOnce(serde_json::Error) -> Error + '_ {
    move |source| Error::Json {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_digest(d: &oci_spec::image::Digest) -> Result<Digest> {
    d.to_string().parse()
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore> {
        let root = root.into();
        for sub in ["blobs/sha256", "layers", "images", "containers", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(Error::io("creating store dir", &p))?;
        }
        let root = fs::canonicalize(&root).map_err(Error::io("resolving store root", &root))?;
        Ok(ImageStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The unpacked directory of layer `diff_id`.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", hex::encode(name)))
    }

    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Copies `src` into the blob store, verifying its digest (and size, when known)
    /// before it becomes visible. A blob already present is re-verified, not trusted.
    pub fn put_blob(&self, src: &Path, want: &Digest, size: Option<u64>) -> Result<()> {
        let dest = self.blob_path(want);
        if dest.exists() {
            return self.verify_blob(want, size);
        }
        let tmp = self.tmp_path("blob");
        let r = (|| {
            let input = fs::File::open(src).map_err(Error::io("opening blob", src))?;
            let out = fs::File::create(&tmp).map_err(Error::io("creating", &tmp))?;
            let mut w = HashingWriter::new(out);
            std::io::copy(&mut BufReader::new(input), &mut w)
                .map_err(Error::io("copying blob", src))?;
            let (f, got, n) = w.finish();
            f.sync_all().map_err(Error::io("syncing", &tmp))?;
            check(want, &got, size, n)?;
            fs::rename(&tmp, &dest).map_err(Error::io("storing blob", &dest))
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// Re-hashes a stored blob.
    pub fn verify_blob(&self, d: &Digest, size: Option<u64>) -> Result<()> {
        let p = self.blob_path(d);
        let f = fs::File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BlobNotFound(d.clone()),
            _ => Error::io("opening blob", &p)(e),
        })?;
        let (got, n) = HashingReader::new(BufReader::new(f))
            .finish()
            .map_err(Error::io("hashing blob", &p))?;
        check(d, &got, size, n)
    }

    /// Stores `bytes` as a blob and returns its digest.
    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        let dest = self.blob_path(&d);
        if !dest.exists() {
            let tmp = self.tmp_path("blob");
            fs::write(&tmp, bytes).map_err(Error::io("writing", &tmp))?;
            fs::rename(&tmp, &dest).map_err(Error::io("storing blob", &dest))?;
        }
        Ok(d)
    }

    fn read_verified(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BlobNotFound(d.clone()),
            _ => Error::io("reading blob", &p)(e),
        })?;
        check(d, &Digest::of(&bytes), None, bytes.len() as u64)?;
        Ok(bytes)
    }

    /// Unpacks verified layer blob `blob` (of `media_type`) as `diff_id`, unless that
    /// layer is already unpacked. The uncompressed stream must hash to `diff_id`.
    pub fn unpack_layer(
        &self,
        blob: &Digest,
        media_type: &MediaType,
        diff_id: &Digest,
    ) -> Result<()> {
        let dest = self.layer_path(diff_id);
        if dest.exists() {
            return Ok(());
        }
        let p = self.blob_path(blob);
        let mut f = fs::File::open(&p).map_err(Error::io("opening layer blob", &p))?;
        let labelled = layer_compression(media_type)?;
        // Sniff as well: some tools label compressed layers as plain tar.
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut f, &mut magic).map_err(Error::io("reading layer blob", &p))?;
        f.rewind().map_err(Error::io("rewinding", &p))?;
        let compression = match &magic[..n] {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
            _ => labelled,
        };
        let reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(BufReader::new(f)),
            Compression::Gzip => Box::new(GzDecoder::new(BufReader::new(f))),
            // libzstd's streaming decoder reads concatenated frames and skips
            // skippable ones, as zstd:chunked layers have.
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(f)
                    .map_err(Error::io("starting zstd decoder", &p))?,
            ),
        };
        let staging = self.tmp_path("layer");
        fs::create_dir(&staging).map_err(Error::io("creating", &staging))?;
        let r = (|| {
            let mut hr = HashingReader::new(reader);
            unpack::unpack(&mut hr, &staging)?;
            let (got, _) = hr.finish().map_err(Error::io("reading layer", &p))?;
            if &got != diff_id {
                return Err(Error::LayerDiffIdMismatch {
                    diff_id: diff_id.clone(),
                    actual: got,
                });
            }
            match fs::rename(&staging, &dest) {
                Ok(()) => Ok(()),
                // Another unpack of the same layer won the race: same content.
                Err(_) if dest.exists() => {
                    let _ = fs::remove_dir_all(&staging);
                    Ok(())
                }
                Err(e) => Err(Error::io("storing layer", &dest)(e)),
            }
        })();
        if r.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        r
    }

    /// Imports every image of an OCI image layout directory (index.json, blobs/),
    /// verifying each blob before use. Images are named by their
    /// `org.opencontainers.image.ref.name` annotation, else by manifest digest.
    #[tracing::instrument(skip_all, fields(layout = %layout.display()))]
    pub fn import_layout(&self, layout: &Path) -> Result<Vec<Image>> {
        let index_path = layout.join("index.json");
        let index = ImageIndex::from_file(&index_path)?;
        let mut out = Vec::new();
        for desc in index.manifests() {
            self.import_descriptor(layout, desc, None, &mut out)?;
        }
        Ok(out)
    }

    fn import_descriptor(
        &self,
        layout: &Path,
        desc: &Descriptor,
        name: Option<String>,
        out: &mut Vec<Image>,
    ) -> Result<()> {
        let digest = parse_digest(desc.digest())?;
        let name = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
            .or(name);
        let src = |d: &Digest| layout.join("blobs/sha256").join(d.hex());
        self.put_blob(&src(&digest), &digest, Some(desc.size()))?;
        let bytes = self.read_verified(&digest)?;
        if *desc.media_type() == MediaType::ImageIndex {
            let nested: ImageIndex =
                serde_json::from_slice(&bytes).map_err(json_err(&src(&digest)))?;
            for d in nested.manifests() {
                self.import_descriptor(layout, d, name.clone(), out)?;
            }
            return Ok(());
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(json_err(&src(&digest)))?;
        let config_d = parse_digest(manifest.config().digest())?;
        self.put_blob(&src(&config_d), &config_d, Some(manifest.config().size()))?;
        let config: ImageConfiguration = serde_json::from_slice(&self.read_verified(&config_d)?)
            .map_err(json_err(&src(&config_d)))?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<Digest>>>()?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(Error::invalid(
                "image config",
                format!(
                    "{} layers but {} diff_ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layer_blobs = Vec::new();
        for (l, diff_id) in manifest.layers().iter().zip(&diff_ids) {
            let ld = parse_digest(l.digest())?;
            self.put_blob(&src(&ld), &ld, Some(l.size()))?;
            self.unpack_layer(&ld, l.media_type(), diff_id)?;
            layer_blobs.push(ld);
        }
        let image = Image {
            name: name.unwrap_or_else(|| digest.to_string()),
            manifest: digest,
            config: config_d,
            layer_blobs,
            diff_ids,
        };
        self.save_image(&image)?;
        out.push(image);
        Ok(())
    }

    fn save_image(&self, image: &Image) -> Result<()> {
        let p = self.image_path(&image.name);
        let tmp = self.tmp_path("image");
        fs::write(&tmp, format::encode(image, true)).map_err(Error::io("writing", &tmp))?;
        fs::rename(&tmp, &p).map_err(Error::io("storing image", &p))
    }

    pub fn image(&self, name: &str) -> Result<Image> {
        let p = self.image_path(name);
        let bytes = fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ImageNotFound(name.into()),
            _ => Error::io("reading image", &p)(e),
        })?;
        Ok(format::decode(&p, &bytes, format::same_shape)?.0)
    }

    pub fn images(&self) -> Result<Vec<Image>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(Error::io("listing", &dir))? {
            let p = e.map_err(Error::io("listing", &dir))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                let bytes = fs::read(&p).map_err(Error::io("reading image", &p))?;
                out.push(format::decode(&p, &bytes, format::same_shape)?.0);
            }
        }
        out.sort_by(|a: &Image, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Forgets a named image; its layers go at the next [`ImageStore::gc`].
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let p = self.image_path(name);
        fs::remove_file(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ImageNotFound(name.into()),
            _ => Error::io("removing image", &p)(e),
        })
    }

    /// The process defaults of an image's config.
    pub fn defaults(&self, image: &Image) -> Result<ImageDefaults> {
        let config: ImageConfiguration =
            serde_json::from_slice(&self.read_verified(&image.config)?)
                .map_err(json_err(&self.blob_path(&image.config)))?;
        let c = config.config().clone().unwrap_or_default();
        Ok(ImageDefaults {
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone(),
            user: c.user().clone(),
        })
    }

    /// Builds image `name` with one layer per host directory (bottom first), for
    /// tests and examples. Each directory is packed as is: a regular file named
    /// `.wh.X` in it becomes a whiteout of X when the layer is unpacked.
    pub fn build_image(
        &self,
        name: &str,
        layer_dirs: &[&Path],
        defaults: &ImageDefaults,
    ) -> Result<Image> {
        let empty = HashSet::new();
        let mut layers = Vec::new();
        for dir in layer_dirs {
            let spec = PackSpec {
                dir,
                overlay_upper: false,
                exclude: &empty,
            };
            layers.push(self.add_layer(&spec)?);
        }
        self.assemble(name, None, layers, defaults)
    }

    /// Packs a tree as an uncompressed layer blob, then unpacks it through the same
    /// verified path as an imported layer. Returns (blob digest = diff_id).
    pub(crate) fn add_layer(&self, spec: &PackSpec<'_>) -> Result<Digest> {
        let tmp = self.tmp_path("tar");
        let r = (|| {
            let f = fs::File::create(&tmp).map_err(Error::io("creating", &tmp))?;
            let mut w = HashingWriter::new(std::io::BufWriter::new(f));
            pack::pack(spec, &mut w)?;
            let (bw, d, n) = w.finish();
            let f = bw
                .into_inner()
                .map_err(|e| Error::io("flushing", &tmp)(e.into_error()))?;
            f.sync_all().map_err(Error::io("syncing", &tmp))?;
            self.put_blob(&tmp, &d, Some(n))?;
            self.unpack_layer(&d, &MediaType::ImageLayer, &d)?;
            Ok(d)
        })();
        let _ = fs::remove_file(&tmp);
        r
    }

    /// Writes config and manifest for `layers` (uncompressed, blob = diff_id) on top
    /// of `base`'s layers and records the image as `name`.
    pub(crate) fn assemble(
        &self,
        name: &str,
        base: Option<&Image>,
        layers: Vec<Digest>,
        defaults: &ImageDefaults,
    ) -> Result<Image> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::invalid("image name", "must be 1-255 bytes"));
        }
        let mut diff_ids = base.map(|b| b.diff_ids.clone()).unwrap_or_default();
        let mut layer_blobs = base.map(|b| b.layer_blobs.clone()).unwrap_or_default();
        let mut layer_descs = Vec::new();
        if let Some(b) = base {
            let m: ImageManifest = serde_json::from_slice(&self.read_verified(&b.manifest)?)
                .map_err(json_err(&self.blob_path(&b.manifest)))?;
            layer_descs.extend(m.layers().iter().cloned());
        }
        for d in layers {
            let size = fs::metadata(self.blob_path(&d))
                .map_err(Error::io("inspecting blob", self.blob_path(&d)))?
                .len();
            layer_descs.push(descriptor(MediaType::ImageLayer, &d, size)?);
            diff_ids.push(d.clone());
            layer_blobs.push(d);
        }
        let mut cb = ConfigBuilder::default().env(defaults.env.clone());
        if !defaults.entrypoint.is_empty() {
            cb = cb.entrypoint(defaults.entrypoint.clone());
        }
        if !defaults.cmd.is_empty() {
            cb = cb.cmd(defaults.cmd.clone());
        }
        if let Some(w) = &defaults.working_dir {
            cb = cb.working_dir(w.clone());
        }
        if let Some(u) = &defaults.user {
            cb = cb.user(u.clone());
        }
        let config = ImageConfigurationBuilder::default()
            .architecture(oci_spec::image::Arch::Amd64)
            .os(oci_spec::image::Os::Linux)
            .config(cb.build()?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                    .build()?,
            )
            .build()?;
        let config_bytes = serde_json::to_vec(&config).expect("serializable");
        let config_d = self.put_bytes(&config_bytes)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                MediaType::ImageConfig,
                &config_d,
                config_bytes.len() as u64,
            )?)
            .layers(layer_descs)
            .build()?;
        let manifest_bytes = serde_json::to_vec(&manifest).expect("serializable");
        let manifest_d = self.put_bytes(&manifest_bytes)?;
        let image = Image {
            name: name.to_string(),
            manifest: manifest_d,
            config: config_d,
            layer_blobs,
            diff_ids,
        };
        self.save_image(&image)?;
        Ok(image)
    }

    /// Writes `image` as an OCI image layout at `dir` (created), for other tools
    /// or another store.
    pub fn export_layout(&self, image: &Image, dir: &Path) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(Error::io("creating", &blobs))?;
        for d in [&image.manifest, &image.config]
            .into_iter()
            .chain(&image.layer_blobs)
        {
            self.verify_blob(d, None)?;
            let to = blobs.join(d.hex());
            fs::copy(self.blob_path(d), &to).map_err(Error::io("copying blob", &to))?;
        }
        let size = fs::metadata(self.blob_path(&image.manifest))
            .map_err(Error::io(
                "inspecting blob",
                self.blob_path(&image.manifest),
            ))?
            .len();
        let mut desc = descriptor(MediaType::ImageManifest, &image.manifest, size)?;
        desc.set_annotations(Some(
            [(
                "org.opencontainers.image.ref.name".to_string(),
                image.name.clone(),
            )]
            .into(),
        ));
        let index = oci_spec::image::ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![desc])
            .build()?;
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.join(name);
            fs::write(&p, bytes).map_err(Error::io("writing", &p))
        };
        write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
        write(
            "index.json",
            serde_json::to_vec(&index).expect("serializable"),
        )
    }

    /// Removes layers and blobs that no image and no container rootfs refers to.
    /// Callers serialise it with container creation (the pod runner's store lock).
    #[tracing::instrument(skip_all)]
    pub fn gc(&self) -> Result<GcReport> {
        let mut keep_layers = HashSet::new();
        let mut keep_blobs = HashSet::new();
        for img in self.images()? {
            keep_blobs.insert(img.manifest.clone());
            keep_blobs.insert(img.config.clone());
            keep_blobs.extend(img.layer_blobs.iter().cloned());
            keep_layers.extend(img.diff_ids.iter().cloned());
        }
        keep_layers.extend(crate::rootfs::layers_in_use(self)?);
        let mut report = GcReport::default();
        // Staging names carry their writer's pid (`tmp_path`): a dead writer's
        // leftovers are garbage, a live one's are work in progress.
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(Error::io("listing", &tmp))? {
            let p = e.map_err(Error::io("listing", &tmp))?.path();
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let pid = name.split('-').nth(1).and_then(|s| s.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(Error::io("removing", &p))?;
                report.staging_removed.push(p);
            }
        }
        for (sub, keep, out) in [
            ("layers", &keep_layers, &mut report.layers_removed),
            ("blobs/sha256", &keep_blobs, &mut report.blobs_removed),
        ] {
            let dir = self.root.join(sub);
            for e in fs::read_dir(&dir).map_err(Error::io("listing", &dir))? {
                let e = e.map_err(Error::io("listing", &dir))?;
                let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>()
                else {
                    continue;
                };
                if keep.contains(&d) {
                    continue;
                }
                let p = e.path();
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(Error::io("removing", &p))?;
                out.push(d);
            }
        }
        Ok(report)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression a layer's media type declares (OCI and Docker names).
fn layer_compression(media_type: &MediaType) -> Result<Compression> {
    Ok(match media_type {
        MediaType::ImageLayer => Compression::None,
        MediaType::ImageLayerGzip => Compression::Gzip,
        MediaType::ImageLayerZstd => Compression::Zstd,
        MediaType::Other(s) if s == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Compression::Gzip
        }
        MediaType::Other(s) if s == "application/vnd.docker.image.rootfs.diff.tar" => {
            Compression::None
        }
        other => return Err(Error::UnsupportedMediaType(other.to_string())),
    })
}

/// Fills `buf` as far as the file allows (a short read is not the end of a file).
fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn descriptor(mt: MediaType, d: &Digest, size: u64) -> Result<Descriptor> {
    let od: oci_spec::image::Digest = d.to_string().parse()?;
    Ok(DescriptorBuilder::default()
        .media_type(mt)
        .digest(od)
        .size(size)
        .build()?)
}

fn check(want: &Digest, got: &Digest, size: Option<u64>, n: u64) -> Result<()> {
    if got != want {
        return Err(Error::BlobCorrupt {
            digest: want.clone(),
            actual: got.clone(),
        });
    }
    if let Some(s) = size
        && s != n
    {
        return Err(Error::BlobSize {
            digest: want.clone(),
            expected: s,
            actual: n,
        });
    }
    Ok(())
}
