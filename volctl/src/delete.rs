//! `volctl delete KIND NAME` or `volctl delete -f FILE`: finalizers are respected.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use strata_store::kinds::KindInfo;
use strata_store::{Deleted, EmbeddedStore, Preconditions, WatchEvent};

use crate::{in_flight, resource};

/// Delete objects by kind and name, or those a manifest names.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kind: name, plural or short name.
    #[arg(required_unless_present = "files")]
    kind: Option<String>,
    /// Object names.
    names: Vec<String>,
    /// Delete the objects named in these manifests instead.
    #[arg(short = 'f', long = "filename", conflicts_with = "kind")]
    files: Vec<PathBuf>,
    /// Namespace of namespaced kinds.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Wait until objects held by finalizers, and the dependents the garbage collector
    /// deletes, are really gone: at most this many seconds in all. Every object is
    /// deleted first, then waited for.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<u64>,
    /// A missing object is not an error.
    #[arg(long)]
    ignore_not_found: bool,
}

async fn wait_gone(
    store: &EmbeddedStore,
    kind: &'static KindInfo,
    ns: &str,
    name: &str,
    limit: Duration,
) -> anyhow::Result<bool> {
    let from = store.revision().await?;
    let check = async {
        // Watch first, then check: a removal between the two is still seen.
        let mut stream = store
            .watch_values(kind.kind_ref, Some(ns).filter(|n| !n.is_empty()), from)
            .await?;
        match store.get_value(kind.kind_ref, ns, name).await {
            Err(e) if e.is_not_found() => return Ok::<bool, anyhow::Error>(true),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        while let Some(ev) = stream.next().await {
            if let WatchEvent::Deleted(o) = ev?
                && o["metadata"]["name"].as_str() == Some(name)
            {
                return Ok(true);
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(limit, check).await {
        Ok(r) => r,
        Err(_) => Ok(false),
    }
}

pub async fn run(store: &EmbeddedStore, args: Args) -> anyhow::Result<()> {
    let mut targets: Vec<(&'static KindInfo, String, String)> = Vec::new();
    if !args.files.is_empty() {
        for m in resource::read_manifests(&args.files, &args.namespace)? {
            targets.push((m.kind, m.namespace, m.name));
        }
    } else {
        let kind = resource::kind(args.kind.as_deref().context("a kind is required")?)?;
        if args.names.is_empty() {
            bail!("resource(s) were provided, but no name was specified");
        }
        let ns = if kind.namespaced() {
            args.namespace.clone()
        } else {
            String::new()
        };
        for n in &args.names {
            targets.push((kind, ns.clone(), n.clone()));
        }
    }
    let mut failed = 0;
    // What was deleted, for --wait to follow to its dependents.
    let mut deleted: std::collections::HashSet<String> = Default::default();
    let mut note = |obj: &serde_json::Value| {
        if let Some(u) = obj["metadata"]["uid"].as_str() {
            deleted.insert(u.to_string());
        }
    };
    // Every object is deleted before any is waited for, as kubectl does: one object's
    // finalizer often waits for another's deletion (a claim's pvc-protection for the
    // pod using it, listed after it in the same file).
    let mut pending = Vec::new();
    for (kind, ns, name) in targets {
        let label = format!("{} {name:?}", resource::singular(kind));
        match store
            .delete_value(kind.kind_ref, &ns, &name, Preconditions::default())
            .await
        {
            Ok(Deleted::Gone(obj)) => {
                note(&obj);
                println!("{label} deleted");
            }
            Ok(Deleted::Pending(obj)) => {
                note(&obj);
                // A namespace also waits for its spec.finalizers (the namespace controller's).
                let finalizers: Vec<&str> =
                    [&obj["metadata"]["finalizers"], &obj["spec"]["finalizers"]]
                        .into_iter()
                        .filter_map(|l| l.as_array())
                        .flatten()
                        .filter_map(|f| f.as_str())
                        .collect();
                println!(
                    "{label} marked for deletion; pending until finalizers are removed: {}",
                    finalizers.join(", ")
                );
                pending.push((kind, ns, name, label));
            }
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    // Say so before waiting, so whoever watches the output knows where we are.
    std::io::Write::flush(&mut std::io::stdout())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait.unwrap_or(0));
    if let Some(secs) = args.wait {
        for (kind, ns, name, label) in pending {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if wait_gone(store, kind, &ns, &name, left).await? {
                println!("{label} deleted");
            } else {
                eprintln!("{label} still pending after {secs}s");
                failed += 1;
            }
        }
    }
    // The garbage collector deletes dependents after their owner (background cascade):
    // --wait waits for those too (a StatefulSet's pods, and its claims with whenDeleted:
    // Delete, and their PVs with reclaim policy Delete).
    if let Some(secs) = args.wait
        && !deleted.is_empty()
    {
        let deleted = std::sync::Mutex::new(deleted);
        let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
        let left = in_flight::settle(limit, || async {
            let mut d = deleted.lock().expect("not poisoned").clone();
            let r = in_flight::dependents(store, &mut d).await;
            *deleted.lock().expect("not poisoned") = d;
            r
        })
        .await?;
        if !left.is_empty() {
            eprintln!("still being deleted after {secs}s: {}", left.join(", "));
            failed += left.len();
        }
    }
    if failed > 0 {
        bail!("{failed} object(s) not deleted");
    }
    Ok(())
}
