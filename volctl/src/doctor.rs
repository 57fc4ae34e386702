//! `volctl doctor [--repair]`: finds what is out of step between the pools, the driver's
//! state database, the loop devices and the mount table, explains each finding, and with
//! `--repair` fixes what is safe (the driver must be stopped: the repair holds its state
//! lock). Exit code 0 when no problem is left, 1 while problems remain, 2 on bad input.

use std::io::Write as _;
use std::path::Path;

use strata_csi::inspect::{self, Finding, Inspection, RepairLock, Severity};

use crate::cluster::{ClusterArgs, ClusterFinding, ClusterFindingKind};
use crate::exec::ExitWith;
use crate::node_inspect::{Where, exit};

/// Machine-readable output of `doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Structured {
    Json,
    Yaml,
}

fn write_structured(
    out: &mut impl std::io::Write,
    v: &impl serde::Serialize,
    how: Structured,
) -> anyhow::Result<()> {
    match how {
        Structured::Json => writeln!(out, "{}", serde_json::to_string_pretty(v)?)?,
        Structured::Yaml => write!(out, "{}", yaml_serde::to_string(v)?)?,
    }
    Ok(())
}

/// Find orphans and inconsistencies on this node: pool entries without records, records
/// without data, loop devices nobody owns, stale or duplicate mounts, leftover temporary
/// files of interrupted writes. Read-only unless --repair. Exits 1 while problems remain.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Fix what is safe to fix (unmount unrecorded or duplicate mounts, detach unowned
    /// loop devices, move unrecorded pool entries to <pool>/orphaned/, remove orphan
    /// records and temporary files) and say what was left. The driver must be stopped.
    #[arg(long)]
    repair: bool,
    /// Print the findings (and with --repair, what was done) as JSON or YAML.
    #[arg(short, long)]
    output: Option<Structured>,
    #[command(flatten)]
    at: Where,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn print_findings(out: &mut impl std::io::Write, findings: &[Finding]) -> std::io::Result<()> {
    for f in findings {
        let tag = match f.severity {
            Severity::Problem => "PROBLEM",
            Severity::Note => "NOTE",
        };
        let kind = serde_json::to_value(f.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        writeln!(out, "{tag:<8} {kind:<20} {}", f.subject)?;
        writeln!(out, "         {}", f.explanation)?;
        match &f.repair {
            Some(r) => writeln!(out, "         repair: {r}")?,
            None if f.severity == Severity::Problem => {
                writeln!(out, "         repair: none (see above)")?
            }
            None => {}
        }
    }
    Ok(())
}

/// The cluster's findings, as the node's are printed. Never repaired: a volume the cluster
/// forgot still holds data, and a missing volume cannot be made up.
fn print_cluster(
    out: &mut impl std::io::Write,
    findings: &[ClusterFinding],
    repairing: bool,
) -> std::io::Result<()> {
    for f in findings {
        let kind = match f.kind {
            ClusterFindingKind::NoPersistentVolume => "no-persistent-volume",
            ClusterFindingKind::VolumeMissing => "volume-missing",
        };
        writeln!(out, "{:<8} {kind:<20} {}", "PROBLEM", f.subject)?;
        writeln!(out, "         {}", f.explanation)?;
        let why = match f.kind {
            ClusterFindingKind::NoPersistentVolume if repairing => {
                "none: left as is, a volume is not deleted because its PV is gone (that is data)"
            }
            ClusterFindingKind::NoPersistentVolume => {
                "none: --repair never deletes a volume because its PV is gone (that is data)"
            }
            ClusterFindingKind::VolumeMissing => "none: only the PV's owner can decide (see above)",
        };
        writeln!(out, "         repair: {why}")?;
    }
    Ok(())
}

fn summary(found: &Inspection, cluster: &[ClusterFinding]) -> String {
    let notes = found.findings.len() - found.problems();
    format!(
        "{} problem(s), {notes} note(s) on {} pool(s){}",
        found.problems() + cluster.len(),
        found.pools.len(),
        match &found.driver.running_pid {
            Some(pid) => format!("; the driver runs (pid {pid})"),
            None => "; the driver is not running".into(),
        }
    )
}

/// The cluster's findings about `volumes` when --kubeconfig or --in-cluster asks for them.
async fn cluster_findings(
    args: &ClusterArgs,
    volumes: &[inspect::VolumeInfo],
) -> anyhow::Result<Vec<ClusterFinding>> {
    if !args.wanted() {
        return Ok(Vec::new());
    }
    Ok(args.read(volumes).await?.findings)
}

pub async fn run(state_dir: &Path, args: Args) -> anyhow::Result<()> {
    let target = args.at.target(state_dir)?;
    if !args.repair {
        let found = inspect::inspect(&target).map_err(exit)?;
        let cluster = cluster_findings(&args.cluster, &found.volumes).await?;
        let mut out = std::io::stdout().lock();
        if let Some(how) = args.output {
            if args.cluster.wanted() {
                #[derive(serde::Serialize)]
                struct Report<'a> {
                    findings: &'a [Finding],
                    cluster: &'a [ClusterFinding],
                }
                let report = Report {
                    findings: &found.findings,
                    cluster: &cluster,
                };
                write_structured(&mut out, &report, how)?;
            } else {
                write_structured(&mut out, &found.findings, how)?;
            }
        } else {
            print_findings(&mut out, &found.findings)?;
            print_cluster(&mut out, &cluster, false)?;
            let fixable = found
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Problem && f.repair.is_some())
                .count();
            writeln!(out, "{}", summary(&found, &cluster))?;
            if fixable > 0 {
                writeln!(
                    out,
                    "volctl doctor --repair fixes {fixable} of them (stop the driver first)"
                )?;
            }
        }
        return remaining(&found, &cluster);
    }
    // The lock first: nothing may change between what we find and what we repair.
    let lock = RepairLock::take(&target.state_dir).map_err(exit)?;
    let found = inspect::inspect(&target).map_err(exit)?;
    let repaired = inspect::repair(&found, &lock);
    let after = inspect::inspect(&target).map_err(exit)?;
    drop(lock);
    // Read after the repair: the cluster's findings are reported, never acted on.
    let cluster = cluster_findings(&args.cluster, &after.volumes).await?;
    let mut out = std::io::stdout().lock();
    if let Some(how) = args.output {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            repaired: &'a [inspect::Repaired],
            remaining: &'a [Finding],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            cluster: &'a [ClusterFinding],
        }
        let report = Report {
            repaired: &repaired,
            remaining: &after.findings,
            cluster: &cluster,
        };
        write_structured(&mut out, &report, how)?;
    } else {
        for r in &repaired {
            let tag = if r.done { "FIXED" } else { "FAILED" };
            writeln!(out, "{tag:<8} {}", r.finding.subject)?;
            writeln!(out, "         {}", r.outcome)?;
        }
        let left: Vec<Finding> = after.findings.clone();
        if !left.is_empty() || !cluster.is_empty() {
            writeln!(out, "left:")?;
            print_findings(&mut out, &left)?;
            print_cluster(&mut out, &cluster, true)?;
        }
        writeln!(
            out,
            "repaired {} of {}; {}",
            repaired.iter().filter(|r| r.done).count(),
            repaired.len(),
            summary(&after, &cluster)
        )?;
    }
    remaining(&after, &cluster)
}

/// Exit 1 (with nothing more to print) while problems remain.
fn remaining(found: &Inspection, cluster: &[ClusterFinding]) -> anyhow::Result<()> {
    if found.problems() + cluster.len() > 0 {
        return Err(ExitWith(1).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_findings_are_problems_that_repair_leaves_and_says_why() {
        let findings = [
            ClusterFinding {
                kind: ClusterFindingKind::NoPersistentVolume,
                subject: "n1_image_vabc".into(),
                explanation: "no PV".into(),
            },
            ClusterFinding {
                kind: ClusterFindingKind::VolumeMissing,
                subject: "pvc-gone".into(),
                explanation: "missing".into(),
            },
        ];
        let mut out = Vec::new();
        print_cluster(&mut out, &findings, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("PROBLEM  no-persistent-volume n1_image_vabc"),
            "{text}"
        );
        assert!(
            text.contains("a volume is not deleted because its PV is gone (that is data)"),
            "{text}"
        );
        assert!(
            text.contains("PROBLEM  volume-missing       pvc-gone"),
            "{text}"
        );
    }
}
