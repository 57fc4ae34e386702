//! `volctl image import|ls|rm|build`: the node's image store (`<state>/images`, the store
//! strata-node's pod runner reads), filled without a registry.
//!
//! `import` takes an OCI image layout (a directory or a tar of one) or a `docker save`
//! tarball. A `docker save` archive is turned into an OCI layout first (its manifest.json
//! names the config and layer files; the blobs are linked, not copied), so that every
//! import goes through the runtime's one verified path (`ImageStore::import_layout`).

use std::fs;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use strata_runtime::{Digest, ImageDefaults, ImageStore};

/// Where the images of a state dir live.
pub fn store_dir(state: &Path) -> PathBuf {
    state.join("images")
}

/// Manage the node's container images (no registry: import files or build from host files).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Import an OCI image layout (directory or tar) or a `docker save` tarball.
    Import {
        /// The layout directory or the tar file.
        path: PathBuf,
    },
    /// List images.
    #[command(alias = "list")]
    Ls,
    /// Remove images by name (their layers go once nothing else uses them).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Build an image of one layer per directory (bottom first), e.g. `--busybox` for a
    /// busybox userland from the host's busybox-static.
    Build(BuildArgs),
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Image name, e.g. busybox:latest.
    name: String,
    /// A directory packed as one layer, as it is (repeatable, bottom first).
    #[arg(long = "dir")]
    dirs: Vec<PathBuf>,
    /// First layer: BINARY (default /usr/bin/busybox, a static build) as /bin/busybox with a
    /// symlink per applet, and a minimal /etc.
    #[arg(long, value_name = "BINARY", num_args = 0..=1, default_missing_value = "/usr/bin/busybox")]
    busybox: Option<PathBuf>,
    /// The image's default command (repeat for each argument).
    #[arg(long = "cmd")]
    cmd: Vec<String>,
    /// The image's entrypoint (repeat for each argument).
    #[arg(long = "entrypoint")]
    entrypoint: Vec<String>,
    /// An environment variable KEY=VALUE (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// User (name or uid[:gid]).
    #[arg(long)]
    user: Option<String>,
}

pub async fn run(state: &Path, args: Args) -> anyhow::Result<()> {
    let state = state.to_path_buf();
    // Every store call is blocking file work: off the async runtime.
    tokio::task::spawn_blocking(move || run_blocking(&state, args)).await?
}

fn open(state: &Path) -> anyhow::Result<ImageStore> {
    let dir = store_dir(state);
    ImageStore::open(&dir).with_context(|| format!("opening the image store {}", dir.display()))
}

fn run_blocking(state: &Path, args: Args) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match args.command {
        Cmd::Import { path } => {
            let store = open(state)?;
            for name in import(&store, &path)? {
                writeln!(out, "imported {name}")?;
            }
        }
        Cmd::Ls => {
            let store = open(state)?;
            let mut rows = Vec::new();
            for img in store.images()? {
                let size: u64 = img
                    .layer_blobs
                    .iter()
                    .filter_map(|d| fs::metadata(store.blob_path(d)).ok())
                    .map(|m| m.len())
                    .sum();
                rows.push(vec![
                    img.name.clone(),
                    img.manifest.hex()[..12].to_string(),
                    img.diff_ids.len().to_string(),
                    human_size(size),
                ]);
            }
            if rows.is_empty() {
                eprintln!("No images in {}", store.root().display());
            } else {
                write!(
                    out,
                    "{}",
                    crate::table::render(&["NAME", "ID", "LAYERS", "SIZE"], &rows)
                )?;
            }
        }
        Cmd::Rm { names } => {
            let store = open(state)?;
            let mut failed = Vec::new();
            for name in &names {
                match store.remove_image(name) {
                    Ok(()) => writeln!(out, "removed {name}")?,
                    Err(e) => {
                        eprintln!("error: {name}: {e}");
                        failed.push(name.as_str());
                    }
                }
            }
            free_layers(state, &store, &mut out)?;
            if !failed.is_empty() {
                bail!("not removed: {}", failed.join(", "));
            }
        }
        Cmd::Build(b) => {
            let store = open(state)?;
            let img = build(&store, &b)?;
            writeln!(
                out,
                "built {} ({} layer(s), {})",
                img.name,
                img.diff_ids.len(),
                img.manifest
            )?;
        }
    }
    Ok(())
}

/// Frees unused layers and blobs, but only while no `volctl up` runs on this state dir:
/// the pod runner may be between resolving an image and creating its rootfs.
fn free_layers(
    state: &Path,
    store: &ImageStore,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    if crate::up::is_running(state) {
        writeln!(
            out,
            "unused layers are freed at the next `volctl image rm` while Strata is down"
        )?;
        return Ok(());
    }
    let report = store.gc()?;
    if !report.layers_removed.is_empty() {
        writeln!(out, "freed {} unused layer(s)", report.layers_removed.len())?;
    }
    Ok(())
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// A staging dir inside the store's tmp/, named as the store names its own
/// (`what-<pid>-<n>`), so `gc` removes it if we die.
struct Staging(PathBuf);

impl Staging {
    fn new(store: &ImageStore) -> anyhow::Result<Staging> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = store
            .root()
            .join("tmp")
            .join(format!("import-{}-{n}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Staging(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Imports `path`; returns the names of the images imported.
pub fn import(store: &ImageStore, path: &Path) -> anyhow::Result<Vec<String>> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let staging;
    let dir = if meta.is_dir() {
        path.to_path_buf()
    } else {
        staging = Staging::new(store)?;
        unpack_archive(path, meta.len(), &staging.0)?;
        staging.0.clone()
    };
    let layout_dir;
    let _converted;
    if dir.join("manifest.json").is_file() {
        // `docker save`: its manifest.json carries the names (RepoTags).
        let s = Staging::new(store)?;
        docker_to_layout(&dir, &s.0)?;
        layout_dir = s.0.clone();
        _converted = s;
    } else if dir.join("index.json").is_file() {
        layout_dir = dir.clone();
    } else {
        bail!(
            "{}: neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)",
            path.display()
        );
    }
    let spinner = ProgressBar::new_spinner().with_message("verifying and unpacking layers");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let r = store.import_layout(&layout_dir);
    spinner.finish_and_clear();
    let images = r.with_context(|| format!("importing {}", path.display()))?;
    if images.is_empty() {
        bail!("{}: the index lists no image", path.display());
    }
    Ok(images.into_iter().map(|i| i.name).collect())
}

/// Unpacks a tar (plain or gzip) into `dest`, with a progress bar over its bytes.
fn unpack_archive(path: &Path, len: u64, dest: &Path) -> anyhow::Result<()> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("reading {}", path.display()));
    let mut reader = std::io::BufReader::new(bar.wrap_read(f));
    let gz = {
        use std::io::BufRead as _;
        let head = reader.fill_buf()?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let input: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut ar = tar::Archive::new(input);
    ar.set_preserve_permissions(false);
    let what = || format!("{}: not a readable tar archive", path.display());
    for entry in ar.entries().with_context(what)? {
        let mut entry = entry.with_context(what)?;
        // Only files and dirs belong in a layout or a docker archive; unpack_in refuses
        // paths that leave `dest`.
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        entry
            .unpack_in(dest)
            .with_context(|| format!("unpacking {}", path.display()))?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Writes an OCI layout at `out` for the images of the `docker save` tree at `dir`: the
/// config and layer files are linked in as blobs, and a manifest is written per image.
fn docker_to_layout(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let manifest_path = dir.join("manifest.json");
    let list: Vec<Value> = serde_json::from_slice(
        &fs::read(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?,
    )
    .with_context(|| format!("parsing {}", manifest_path.display()))?;
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    // A file of the archive as a blob: its digest, size, and a link to it.
    let add = |rel: &str| -> anyhow::Result<(Digest, u64, bool)> {
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            bail!("manifest.json names {rel:?}, outside the archive");
        }
        let p = dir.join(rel);
        let mut f = fs::File::open(&p).with_context(|| format!("opening {rel} of the archive"))?;
        let mut magic = [0u8; 2];
        let gz = f.read(&mut magic).is_ok_and(|n| n == 2) && magic == [0x1f, 0x8b];
        let (d, n) = strata_runtime::digest::HashingReader::new(fs::File::open(&p)?)
            .finish()
            .with_context(|| format!("hashing {rel}"))?;
        let link = blobs.join(d.hex());
        if !link.exists() {
            std::os::unix::fs::symlink(&p, &link)?;
        }
        Ok((d, n, gz))
    };
    let mut manifests = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let config = entry["Config"]
            .as_str()
            .with_context(|| format!("manifest.json entry {i} has no Config"))?;
        let (cd, cn, _) = add(config)?;
        let mut layers = Vec::new();
        for l in entry["Layers"].as_array().into_iter().flatten() {
            let l = l.as_str().context("manifest.json: a layer is not a path")?;
            let (ld, ln, gz) = add(l)?;
            let mt = if gz {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            layers.push(json!({"mediaType": mt, "digest": ld.to_string(), "size": ln}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cd.to_string(),
                "size": cn,
            },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest)?;
        let md = Digest::of(&bytes);
        fs::write(blobs.join(md.hex()), &bytes)?;
        let tags: Vec<String> = entry["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(String::from))
            .collect();
        let names = if tags.is_empty() {
            vec![None]
        } else {
            tags.into_iter().map(Some).collect()
        };
        for name in names {
            let mut desc = json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md.to_string(),
                "size": bytes.len(),
            });
            if let Some(n) = name {
                desc["annotations"] = json!({"org.opencontainers.image.ref.name": n});
            }
            manifests.push(desc);
        }
    }
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    fs::write(
        out.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests}))?,
    )?;
    Ok(())
}

/// The busybox layer: the binary, a symlink per applet it lists, a minimal /etc.
fn busybox_layer(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new(binary)
        .arg("--list")
        .output()
        .with_context(|| {
            format!(
                "running {} --list (install busybox-static: apt-get install busybox-static)",
                binary.display()
            )
        })?;
    if !out.status.success() {
        bail!("{} --list failed ({})", binary.display(), out.status);
    }
    let bin = dir.join("bin");
    for d in [
        "bin", "etc", "tmp", "root", "var", "usr", "proc", "sys", "dev", "data",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(binary, bin.join("busybox"))
        .with_context(|| format!("copying {}", binary.display()))?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        // `--list` names busybox itself on some builds: a link would replace the binary.
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

fn build(store: &ImageStore, b: &BuildArgs) -> anyhow::Result<strata_runtime::Image> {
    if b.dirs.is_empty() && b.busybox.is_none() {
        bail!("nothing to build: give --busybox and/or --dir DIR");
    }
    for d in &b.dirs {
        if !d.is_dir() {
            bail!("--dir {}: not a directory", d.display());
        }
    }
    let staging = Staging::new(store)?;
    let mut layers: Vec<PathBuf> = Vec::new();
    if let Some(binary) = &b.busybox {
        let dir = staging.0.join("busybox");
        fs::create_dir(&dir)?;
        busybox_layer(binary, &dir)?;
        layers.push(dir);
    }
    layers.extend(b.dirs.iter().cloned());
    let mut env = b.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    for e in &env {
        if !e.contains('=') {
            bail!("--env {e:?}: expected KEY=VALUE");
        }
    }
    let defaults = ImageDefaults {
        env,
        entrypoint: b.entrypoint.clone(),
        cmd: if b.cmd.is_empty() && b.entrypoint.is_empty() && b.busybox.is_some() {
            vec!["sh".into()]
        } else {
            b.cmd.clone()
        },
        working_dir: b.workdir.clone(),
        user: b.user.clone(),
    };
    let refs: Vec<&Path> = layers.iter().map(|p| p.as_path()).collect();
    store
        .build_image(&b.name, &refs, &defaults)
        .with_context(|| format!("building {}", b.name))
}
