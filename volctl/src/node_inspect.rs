//! `volctl volumes`, `volctl snapshots` and `volctl pools`: what the node's pools hold, read
//! from the pools themselves, the driver's state database (read-only), the loop devices
//! and the mount table, whether or not the driver runs. `strata_csi::inspect` does the
//! looking; this file chooses what to look at and prints it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use strata_csi::config::PoolSpec;
use strata_csi::inspect::{self, Inspection, Target};

use crate::cluster::{ClusterArgs, ClusterFinding, ClusterFindingKind, Owner};
use crate::table;

/// Output formats of the inspection verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

/// Which driver and pools to inspect; by default those `volctl up` runs in --state-dir.
#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// The driver's state dir (its --state-dir); default <state-dir>/csi, as `volctl up`
    /// runs it.
    #[arg(long, value_name = "DIR")]
    pub driver_state: Option<PathBuf>,
    /// A pool as strata-csi takes it, `NAME=KIND:PATH[,OPTION...]` (repeatable). Default:
    /// the pools the driver recorded at its last start (<driver-state>/pools.json), else
    /// `volctl up`'s default pool <state-dir>/pools/default.
    #[arg(long = "pool", value_name = "NAME=KIND:PATH", value_parser = strata_csi::config::parse_pool)]
    pub pools: Vec<PoolSpec>,
}

impl Where {
    pub fn target(&self, state_dir: &Path) -> anyhow::Result<Target> {
        let driver_state = self
            .driver_state
            .clone()
            .unwrap_or_else(|| state_dir.join("csi"));
        let default_pool = state_dir.join("pools").join("default");
        Target::resolve(&driver_state, self.pools.clone(), Some(&default_pool)).map_err(exit)
    }
}

/// A request that cannot be served as given (unknown pool, malformed flag, missing path):
/// volctl says why and exits 2, having changed nothing.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Bad input becomes exit code 2, anything else an ordinary error (exit 1).
pub fn exit(e: inspect::Error) -> anyhow::Error {
    if e.is_bad_input() {
        anyhow::Error::new(BadInput(e.to_string()))
    } else {
        anyhow::Error::new(e)
    }
}

/// `volctl volumes` and `volctl snapshots`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only those of this pool.
    #[arg(long = "in", value_name = "POOL")]
    pool: Option<String>,
    /// Output format (default: a table).
    #[arg(short, long)]
    output: Option<Output>,
    #[command(flatten)]
    at: Where,
}

/// List the node's pools: backend, filesystem, size, use, provisioned capacity against
/// the overcommit limit, and condition.
#[derive(Debug, Clone, clap::Args)]
pub struct PoolsArgs {
    /// Only these pools.
    names: Vec<String>,
    /// Output format (default: a table).
    #[arg(short, long)]
    output: Option<Output>,
    #[command(flatten)]
    at: Where,
}

/// Sizes as kubectl shows quantities: binary units, at most one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn age(created_unix: i64) -> String {
    if created_unix <= 0 {
        return "<unknown>".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    table::human_duration(now - created_unix)
}

fn or_none(s: impl AsRef<str>) -> String {
    let s = s.as_ref();
    if s.is_empty() {
        "<none>".into()
    } else {
        s.into()
    }
}

fn paths(list: &[PathBuf]) -> String {
    or_none(
        list.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Writes `items` as JSON or YAML.
fn structured<T: serde::Serialize>(items: &T, output: Output) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(items)?)?,
        Output::Yaml => write!(out, "{}", yaml_serde::to_string(items)?)?,
        Output::Wide => unreachable!("tables are rendered by the caller"),
    }
    Ok(())
}

fn print_table(headers: &[&str], rows: &[Vec<String>], what: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(out, "No {what} found.")?;
    } else {
        write!(out, "{}", table::render(headers, rows))?;
    }
    Ok(())
}

/// Inspects the node, keeps the items `keep` selects, and prints them as `output` asks:
/// JSON or YAML as they are, else a table of `columns` (`wide` adds the wide ones; an
/// empty table says "No <what> found.").
fn list<T: serde::Serialize>(
    state_dir: &Path,
    at: &Where,
    pools: &[&String],
    output: Option<Output>,
    items: impl FnOnce(Inspection) -> Vec<T>,
    (what, columns, wide_columns): (&str, &[&str], &[&str]),
    row: impl Fn(&T, bool) -> Vec<String>,
) -> anyhow::Result<()> {
    let target = at.target(state_dir)?;
    for p in pools {
        target.check_pool(p).map_err(exit)?;
    }
    let list = items(inspect::inspect(&target).map_err(exit)?);
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        return structured(&list, o);
    }
    let wide = output == Some(Output::Wide);
    let mut headers = columns.to_vec();
    if wide {
        headers.extend_from_slice(wide_columns);
    }
    let rows: Vec<Vec<String>> = list.iter().map(|item| row(item, wide)).collect();
    print_table(&headers, &rows, what)
}

/// `volctl volumes`: the list arguments, and where the cluster is.
#[derive(Debug, Clone, clap::Args)]
pub struct VolumesArgs {
    #[command(flatten)]
    list: ListArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub async fn volumes(state_dir: &Path, args: VolumesArgs) -> anyhow::Result<()> {
    if args.cluster.wanted() {
        return volumes_in_cluster(state_dir, args).await;
    }
    let args = args.list;
    let only = args.pool.clone();
    list(
        state_dir,
        &args.at,
        &args.pool.iter().collect::<Vec<_>>(),
        args.output,
        |found| {
            found
                .volumes
                .into_iter()
                .filter(|v| only.as_ref().is_none_or(|p| &v.pool == p))
                .collect()
        },
        (
            "volumes",
            &[
                "ID",
                "NAME",
                "POOL",
                "SIZE",
                "USED",
                "PHASE",
                "STAGED",
                "PUBLISHED",
                "AGE",
                "CONDITION",
            ],
            &["BACKEND", "PATH", "DEVICE", "STAGING", "TARGETS"],
        ),
        |v, wide| {
            let mut r = vec![
                v.id.clone(),
                v.name.clone(),
                v.pool.clone(),
                bytes(v.capacity_bytes),
                v.used_bytes.map_or("<unknown>".into(), bytes),
                v.phase.clone(),
                if v.staging_mounted { "yes" } else { "no" }.into(),
                v.published.len().to_string(),
                age(v.created_unix),
                v.condition.clone(),
            ];
            if wide {
                r.extend([
                    v.backend.clone(),
                    v.path.display().to_string(),
                    or_none(v.loop_devices.join(",")),
                    v.staging_path
                        .as_ref()
                        .map_or("<none>".into(), |p| p.display().to_string()),
                    paths(&v.published),
                ]);
            }
            r
        },
    )
}

/// `volctl volumes --kubeconfig`: each volume with its PV, claim and pods, then the PVs of
/// this node whose volume is missing.
async fn volumes_in_cluster(state_dir: &Path, args: VolumesArgs) -> anyhow::Result<()> {
    let VolumesArgs { list, cluster } = args;
    let target = list.at.target(state_dir)?;
    if let Some(p) = &list.pool {
        target.check_pool(p).map_err(exit)?;
    }
    let found = inspect::inspect(&target).map_err(exit)?;
    let view = cluster.read(&found.volumes).await?;
    let volumes: Vec<_> = found
        .volumes
        .into_iter()
        .filter(|v| list.pool.as_ref().is_none_or(|p| &v.pool == p))
        .collect();
    let forgotten: std::collections::BTreeSet<&str> = view
        .findings
        .iter()
        .filter(|f| f.kind == ClusterFindingKind::NoPersistentVolume)
        .map(|f| f.subject.as_str())
        .collect();
    let missing: Vec<&ClusterFinding> = view
        .findings
        .iter()
        .filter(|f| f.kind == ClusterFindingKind::VolumeMissing)
        .collect();
    if let Some(o @ (Output::Json | Output::Yaml)) = list.output {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Row<'a> {
            #[serde(flatten)]
            volume: &'a inspect::VolumeInfo,
            cluster: Option<&'a Owner>,
            no_persistent_volume: bool,
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Report<'a> {
            node: &'a str,
            volumes: Vec<Row<'a>>,
            missing_volumes: Vec<&'a ClusterFinding>,
        }
        let report = Report {
            node: &view.node,
            volumes: volumes
                .iter()
                .map(|v| Row {
                    volume: v,
                    cluster: view.owners.get(&v.id),
                    no_persistent_volume: forgotten.contains(v.id.as_str()),
                })
                .collect(),
            missing_volumes: missing.clone(),
        };
        return structured(&report, o);
    }
    let wide = list.output == Some(Output::Wide);
    let mut headers = vec![
        "ID",
        "POOL",
        "SIZE",
        "PHASE",
        "PV",
        "CLAIM",
        "PODS",
        "AGE",
        "CONDITION",
    ];
    if wide {
        headers.extend_from_slice(&["NAME", "USED", "STAGED", "PUBLISHED", "PATH"]);
    }
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            let owner = view.owners.get(&v.id);
            let pv = match owner {
                Some(o) => o.persistent_volume.clone(),
                None if forgotten.contains(v.id.as_str()) => "<none: orphan>".into(),
                None => "<none>".into(),
            };
            let claim = owner
                .and_then(|o| {
                    o.claim.clone().map(|c| match &o.claim_phase {
                        Some(p) if p != "Bound" => format!("{c} ({p})"),
                        _ => c,
                    })
                })
                .unwrap_or_else(|| "<none>".into());
            let mut r = vec![
                v.id.clone(),
                v.pool.clone(),
                bytes(v.capacity_bytes),
                v.phase.clone(),
                pv,
                claim,
                or_none(owner.map(|o| o.pods.join(",")).unwrap_or_default()),
                age(v.created_unix),
                v.condition.clone(),
            ];
            if wide {
                r.extend([
                    v.name.clone(),
                    v.used_bytes.map_or("<unknown>".into(), bytes),
                    if v.staging_mounted { "yes" } else { "no" }.into(),
                    v.published.len().to_string(),
                    v.path.display().to_string(),
                ]);
            }
            r
        })
        .collect();
    print_table(&headers, &rows, "volumes")?;
    let mut out = std::io::stdout().lock();
    for f in forgotten
        .iter()
        .filter_map(|id| view.findings.iter().find(|f| f.subject == *id))
    {
        writeln!(out, "orphan: {}", f.explanation)?;
    }
    for f in missing {
        writeln!(out, "missing: {}", f.explanation)?;
    }
    Ok(())
}

pub fn snapshots(state_dir: &Path, args: ListArgs) -> anyhow::Result<()> {
    let only = args.pool.clone();
    list(
        state_dir,
        &args.at,
        &args.pool.iter().collect::<Vec<_>>(),
        args.output,
        |found| {
            found
                .snapshots
                .into_iter()
                .filter(|s| only.as_ref().is_none_or(|p| &s.pool == p))
                .collect()
        },
        (
            "snapshots",
            &[
                "ID",
                "NAME",
                "POOL",
                "SOURCE",
                "SIZE",
                "PHASE",
                "AGE",
                "CONDITION",
            ],
            &["BACKEND", "PATH", "GROUP"],
        ),
        |s, wide| {
            let mut r = vec![
                s.id.clone(),
                s.name.clone(),
                s.pool.clone(),
                s.source_volume_id.clone(),
                bytes(s.size_bytes),
                s.phase.clone(),
                age(s.created_unix),
                s.condition.clone(),
            ];
            if wide {
                r.extend([
                    s.backend.clone(),
                    s.path.display().to_string(),
                    or_none(s.group_id.clone().unwrap_or_default()),
                ]);
            }
            r
        },
    )
}

pub fn pools(state_dir: &Path, args: PoolsArgs) -> anyhow::Result<()> {
    let names = args.names.clone();
    list(
        state_dir,
        &args.at,
        &args.names.iter().collect::<Vec<_>>(),
        args.output,
        |found| {
            found
                .pools
                .into_iter()
                .filter(|p| names.is_empty() || names.contains(&p.name))
                .collect()
        },
        (
            "pools",
            &[
                "NAME",
                "BACKEND",
                "SIZE",
                "USED",
                "PROVISIONED",
                "LIMIT",
                "VOLUMES",
                "SNAPSHOTS",
                "CONDITION",
            ],
            &["PATH", "FILESYSTEM", "OVERCOMMIT", "FREE"],
        ),
        |p, wide| {
            let mut r = vec![
                p.name.clone(),
                p.backend.clone(),
                bytes(p.size_bytes),
                bytes(p.used_bytes),
                bytes(p.provisioned_bytes),
                bytes(p.limit_bytes),
                p.volumes.to_string(),
                p.snapshots.to_string(),
                p.condition.clone(),
            ];
            if wide {
                r.extend([
                    p.path.display().to_string(),
                    or_none(&p.filesystem),
                    p.overcommit.clone(),
                    bytes(p.free_bytes),
                ]);
            }
            r
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_quantities() {
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1023), "1023");
        assert_eq!(bytes(1 << 30), "1Gi");
        assert_eq!(bytes(1536 << 20), "1.5Gi");
        assert_eq!(bytes(300 << 20), "300Mi");
    }
}
