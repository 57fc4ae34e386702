//! `volctl apply -f FILE|DIR|-`: create or update every object of the manifests, all or
//! nothing.

use std::path::PathBuf;

use strata_store::EmbeddedStore;
use strata_store::apply::Manifest;

use crate::resource;

/// Create or update the objects in manifest files (all documents, or none if one is invalid).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, directory of .yaml/.yml/.json files, or - for stdin (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Namespace for namespaced objects that name none.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

pub async fn run(store: &EmbeddedStore, args: Args) -> anyhow::Result<()> {
    let manifests = resource::read_manifests(&args.files, &args.namespace)?;
    for line in apply(store, manifests).await? {
        println!("{line}");
    }
    Ok(())
}

/// Writes `manifests` in one transaction; one `kind/name outcome` line per object.
pub async fn apply(store: &EmbeddedStore, manifests: Vec<Manifest>) -> anyhow::Result<Vec<String>> {
    if manifests.is_empty() {
        anyhow::bail!("no objects passed to apply");
    }
    let applied = store.apply(manifests).await?;
    Ok(applied
        .into_iter()
        .map(|a| {
            format!(
                "{}/{} {}",
                resource::singular(a.kind),
                a.name,
                a.outcome.as_str()
            )
        })
        .collect())
}
