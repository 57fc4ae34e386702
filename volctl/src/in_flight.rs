//! Deletions still under way in the store: what `delete --wait` waits for beyond the
//! object itself (its dependents: pods and claims the garbage collector deletes through
//! ownerReferences, and the PVs those claims release with reclaim policy Delete), and
//! what `volctl down` lets finish before it stops the daemons.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use strata_store::EmbeddedStore;
use strata_store::k8s_openapi::api::apps::v1::StatefulSet;
use strata_store::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use strata_store::kinds::KindRef;

/// The kinds deletions cascade through.
async fn objects(store: &EmbeddedStore) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let mut out = Vec::new();
    for (label, kind) in [
        ("statefulset", KindRef::of::<StatefulSet>()),
        ("pod", KindRef::of::<Pod>()),
        (
            "persistentvolumeclaim",
            KindRef::of::<PersistentVolumeClaim>(),
        ),
        ("persistentvolume", KindRef::of::<PersistentVolume>()),
    ] {
        for v in store.list_values(kind, None, None).await?.items {
            out.push((label, v));
        }
    }
    Ok(out)
}

fn uid(v: &Value) -> &str {
    v["metadata"]["uid"].as_str().unwrap_or_default()
}

fn label(kind: &str, v: &Value) -> String {
    let name = v["metadata"]["name"].as_str().unwrap_or_default();
    match v["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{kind}/{name} (namespace {ns})"),
        _ => format!("{kind}/{name}"),
    }
}

fn owner_uids(v: &Value) -> impl Iterator<Item = &str> {
    v["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

/// A PV that its claim's deletion sends to DeleteVolume.
fn released_for_deletion(v: &Value) -> bool {
    v["spec"]["persistentVolumeReclaimPolicy"] == "Delete" && v["status"]["phase"] == "Released"
}

/// The objects still there that depend on `deleted` (uids): owned by one of them, or a
/// PV with reclaim Delete bound to one; what they own in turn is added to `deleted`.
pub async fn dependents(
    store: &EmbeddedStore,
    deleted: &mut HashSet<String>,
) -> anyhow::Result<Vec<String>> {
    let all = objects(store).await?;
    let mut pending = Vec::new();
    // Two passes so that a dependent's own dependents are found in one call.
    for _ in 0..3 {
        pending.clear();
        let mut grew = false;
        for (kind, v) in &all {
            let owned = owner_uids(v).any(|u| deleted.contains(u));
            let pv_of_claim = *kind == "persistentvolume"
                && v["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
                && v["spec"]["claimRef"]["uid"]
                    .as_str()
                    .is_some_and(|u| deleted.contains(u));
            if owned || pv_of_claim {
                pending.push(label(kind, v));
                grew |= deleted.insert(uid(v).to_string());
            }
        }
        if !grew {
            break;
        }
    }
    Ok(pending)
}

/// Deletions under way anywhere: objects with a deletionTimestamp, dependents whose
/// owners are all gone (the garbage collector's queue) and Released PVs with reclaim
/// policy Delete.
pub async fn anywhere(store: &EmbeddedStore) -> anyhow::Result<Vec<String>> {
    let all = objects(store).await?;
    let uids: HashSet<&str> = all.iter().map(|(_, v)| uid(v)).collect();
    Ok(all
        .iter()
        .filter(|(kind, v)| {
            let deleting = v["metadata"]
                .get("deletionTimestamp")
                .is_some_and(|t| !t.is_null());
            let owners: Vec<&str> = owner_uids(v).collect();
            let orphaned = !owners.is_empty() && owners.iter().all(|u| !uids.contains(u));
            deleting || orphaned || (*kind == "persistentvolume" && released_for_deletion(v))
        })
        .map(|(kind, v)| label(kind, v))
        .collect())
}

/// Polls `check` until it finds nothing or `limit` passes; returns what is left. Says
/// once what it waits for.
pub async fn settle<F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<Vec<String>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<String>>>,
{
    let start = tokio::time::Instant::now();
    let mut said = false;
    loop {
        let left = check().await?;
        if left.is_empty() || start.elapsed() >= limit {
            return Ok(left);
        }
        if !said {
            println!(
                "waiting for {} deletion(s) in flight: {}",
                left.len(),
                brief(&left, ", ")
            );
            std::io::Write::flush(&mut std::io::stdout())?;
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A list for one line of output: all of it when short, else the first few and a count
/// of the rest by kind (the item's first word: `pod/x` -> pod, `mount /a` -> mount), so
/// a hundred pods do not make a line of tens of kilobytes.
pub fn brief(items: &[String], sep: &str) -> String {
    const ALL_UP_TO: usize = 10;
    const FIRST: usize = 5;
    if items.len() <= ALL_UP_TO {
        return items.join(sep);
    }
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for item in &items[FIRST..] {
        let kind = item.split(['/', ' ']).next().unwrap_or(item);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
    let rest: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "{}{sep}and {} more ({})",
        items[..FIRST].join(sep),
        items.len() - FIRST,
        rest.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::brief;

    #[test]
    fn a_long_list_is_cut_and_counted_by_kind() {
        let short: Vec<String> = (0..3).map(|i| format!("pod/p{i}")).collect();
        assert_eq!(brief(&short, ", "), "pod/p0, pod/p1, pod/p2");
        let mut long: Vec<String> = (0..8).map(|i| format!("pod/p{i}")).collect();
        long.extend((0..4).map(|i| format!("mount /m{i} (ext4)")));
        assert_eq!(
            brief(&long, "; "),
            "pod/p0; pod/p1; pod/p2; pod/p3; pod/p4; and 7 more (3 pod, 4 mount)"
        );
    }
}
