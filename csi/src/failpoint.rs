//! Crash failpoints: named steps where the driver can be made to die on purpose.
//!
//! The crash tests start `strata-csi` with `STRATA_CSI_FAILPOINTS=name[,name...]`; when a
//! listed step is reached the process aborts at once (no destructors, no cleanup), which is
//! what a `kill -9` at that instant would leave behind. The list is read once at start-up;
//! when the variable is unset `hit` is one relaxed atomic load.

use std::collections::HashSet;
use std::sync::OnceLock;

/// Every failpoint, named `<rpc>:<step>`, in the order the steps run.
pub const ALL: &[&str] = &[
    "create_volume:after_intent",
    "create_volume:after_file",
    "create_volume:after_commit",
    "delete_volume:after_intent",
    "delete_volume:after_unlink",
    "controller_expand:after_truncate",
    "create_snapshot:after_intent",
    "create_snapshot:after_copy",
    "delete_snapshot:after_intent",
    "group_snapshot:after_intent",
    "group_snapshot:after_freeze",
    "group_snapshot:after_cut",
    "node_stage:after_intent",
    "node_stage:after_attach",
    "node_stage:after_mkfs",
    "node_stage:after_mount",
    "node_stage:after_commit",
    "node_unstage:after_umount",
    "node_unstage:after_detach",
    "node_publish:after_mkdir",
    "node_publish:after_mount",
    "node_publish:after_commit",
    "node_unpublish:after_umount",
    "node_unpublish:after_remove",
];

/// Name of the environment variable read at start-up.
pub const ENV: &str = "STRATA_CSI_FAILPOINTS";

static ACTIVE: OnceLock<HashSet<&'static str>> = OnceLock::new();

/// Reads `STRATA_CSI_FAILPOINTS`. Unknown names are an error so that a typo in a crash
/// test cannot silently turn it into a test of nothing.
pub fn init_from_env() -> Result<(), String> {
    let Some(raw) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let raw = raw.to_string_lossy().into_owned();
    let mut set = HashSet::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match ALL.iter().find(|known| **known == name) {
            Some(known) => {
                set.insert(*known);
            }
            None => return Err(format!("unknown failpoint {name:?} in {ENV}")),
        }
    }
    if !set.is_empty() {
        tracing::warn!(failpoints = %raw, "failpoints armed: the driver will abort at them");
    }
    let _ = ACTIVE.set(set);
    Ok(())
}

/// Aborts the process if failpoint `name` is armed.
#[inline]
pub fn hit(name: &'static str) {
    debug_assert!(ALL.contains(&name), "failpoint {name} missing from ALL");
    if let Some(set) = ACTIVE.get()
        && !set.is_empty()
        && set.contains(name)
    {
        eprintln!("strata-csi: failpoint {name} reached, aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for name in ALL {
            assert!(seen.insert(name), "duplicate failpoint {name}");
            let (rpc, step) = name.split_once(':').expect("rpc:step");
            assert!(!rpc.is_empty() && !step.is_empty(), "{name}");
        }
    }
}
