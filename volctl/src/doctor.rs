//! `volctl doctor [--repair]`: finds what is out of step between the pools, the driver's
//! state database, the loop devices and the mount table, explains each finding, and with
//! `--repair` fixes what is safe (the driver must be stopped: the repair holds its state
//! lock). Exit code 0 when no problem is left, 1 while problems remain, 2 on bad input.

use std::io::Write as _;
use std::path::Path;

use strata_csi::inspect::{self, Finding, Inspection, RepairLock, Severity};

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

fn summary(found: &Inspection) -> String {
    let notes = found.findings.len() - found.problems();
    format!(
        "{} problem(s), {notes} note(s) on {} pool(s){}",
        found.problems(),
        found.pools.len(),
        match &found.driver.running_pid {
            Some(pid) => format!("; the driver runs (pid {pid})"),
            None => "; the driver is not running".into(),
        }
    )
}

pub fn run(state_dir: &Path, args: Args) -> anyhow::Result<()> {
    let target = args.at.target(state_dir)?;
    let mut out = std::io::stdout().lock();
    if !args.repair {
        let found = inspect::inspect(&target).map_err(exit)?;
        if let Some(how) = args.output {
            write_structured(&mut out, &found.findings, how)?;
        } else {
            print_findings(&mut out, &found.findings)?;
            let fixable = found
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Problem && f.repair.is_some())
                .count();
            writeln!(out, "{}", summary(&found))?;
            if fixable > 0 {
                writeln!(
                    out,
                    "volctl doctor --repair fixes {fixable} of them (stop the driver first)"
                )?;
            }
        }
        return remaining(&found);
    }
    // The lock first: nothing may change between what we find and what we repair.
    let lock = RepairLock::take(&target.state_dir).map_err(exit)?;
    let found = inspect::inspect(&target).map_err(exit)?;
    let repaired = inspect::repair(&found, &lock);
    let after = inspect::inspect(&target).map_err(exit)?;
    drop(lock);
    if let Some(how) = args.output {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            repaired: &'a [inspect::Repaired],
            remaining: &'a [Finding],
        }
        let report = Report {
            repaired: &repaired,
            remaining: &after.findings,
        };
        write_structured(&mut out, &report, how)?;
    } else {
        for r in &repaired {
            let tag = if r.done { "FIXED" } else { "FAILED" };
            writeln!(out, "{tag:<8} {}", r.finding.subject)?;
            writeln!(out, "         {}", r.outcome)?;
        }
        let left: Vec<Finding> = after.findings.clone();
        if !left.is_empty() {
            writeln!(out, "left:")?;
            print_findings(&mut out, &left)?;
        }
        writeln!(
            out,
            "repaired {} of {}; {}",
            repaired.iter().filter(|r| r.done).count(),
            repaired.len(),
            summary(&after)
        )?;
    }
    remaining(&after)
}

/// Exit 1 (with nothing more to print) while problems remain.
fn remaining(found: &Inspection) -> anyhow::Result<()> {
    if found.problems() > 0 {
        return Err(ExitWith(1).into());
    }
    Ok(())
}
