//! Resolving what the user typed into a registered kind, and reading manifests.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use strata_store::apply::{MAX_MANIFEST_BYTES, Manifest, parse_manifests};
use strata_store::kinds::{self, KindInfo};

pub fn kind(name: &str) -> anyhow::Result<&'static KindInfo> {
    kinds::lookup(name).with_context(|| {
        let known: Vec<String> = kinds::all()
            .iter()
            .map(|k| match k.short_names.first() {
                Some(s) => format!("{} ({s})", k.plural),
                None => k.plural.to_string(),
            })
            .collect();
        format!(
            "the server doesn't have a resource type {name:?}; known: {}",
            known.join(", ")
        )
    })
}

/// The lower-case singular name kubectl prints, e.g. `persistentvolumeclaim/data`.
pub fn singular(kind: &KindInfo) -> String {
    kind.kind().to_ascii_lowercase()
}

fn read_limited(mut r: impl std::io::Read, what: &str) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {what}"))?;
    if buf.len() > MAX_MANIFEST_BYTES {
        bail!("{what} is larger than {MAX_MANIFEST_BYTES} bytes");
    }
    String::from_utf8(buf).with_context(|| format!("{what} is not UTF-8"))
}

/// The manifest files `-f` names: a file, `-` for stdin, or a directory's .yaml/.yml/.json
/// files (not recursive, sorted by name, as kubectl does).
fn sources(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path == Path::new("-") {
        return Ok(vec![path.to_path_buf()]);
    }
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let p = entry?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "yaml" | "yml" | "json") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no .yaml, .yml or .json files in {}", path.display());
    }
    Ok(files)
}

/// Reads and validates every document of every file before anything is written.
pub fn read_manifests(paths: &[PathBuf], namespace: &str) -> anyhow::Result<Vec<Manifest>> {
    let mut all = Vec::new();
    for path in paths {
        for file in sources(path)? {
            let (text, what) = if file == Path::new("-") {
                (
                    read_limited(std::io::stdin().lock(), "stdin")?,
                    "stdin".to_string(),
                )
            } else {
                let what = file.display().to_string();
                let f = std::fs::File::open(&file).with_context(|| format!("opening {what}"))?;
                (read_limited(f, &what)?, what)
            };
            let docs = parse_manifests(&text, namespace).with_context(|| what.clone())?;
            all.extend(docs);
        }
    }
    Ok(all)
}
