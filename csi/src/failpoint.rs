//! The driver's crash failpoints (see `strata-failpoint`): the crash tests start
//! `strata-csi` with `STRATA_CSI_FAILPOINTS=name[,name...]` and it aborts at those steps.

use strata_failpoint::Failpoints;

/// Every failpoint, named `<rpc>:<step>`, in the order the steps run.
pub const ALL: &[&str] = &[
    "create_volume:after_intent",
    "create_volume:after_file",
    // Hit by every write of a ready volume's record (meta.rs), creates included.
    "create_volume:after_record",
    "create_volume:after_journal",
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

static POINTS: Failpoints = Failpoints::new(ENV, ALL);

/// Reads `STRATA_CSI_FAILPOINTS`; an unknown name is an error.
pub fn init_from_env() -> Result<(), String> {
    let armed = POINTS.init_from_env()?;
    if !armed.is_empty() {
        tracing::warn!(failpoints = ?armed, "failpoints armed: the driver will abort at them");
    }
    Ok(())
}

/// Aborts the process if failpoint `name` is armed.
#[inline]
pub fn hit(name: &'static str) {
    POINTS.hit(name);
}

/// A step that can fail: aborts when armed (crash tests); fails with an I/O error when a
/// unit test injected one for it on this thread (`strata_failpoint::inject_error`), so the
/// test sees what the operation undoes when that step goes wrong.
#[inline]
pub fn step(name: &'static str) -> crate::error::Result<()> {
    POINTS.step(name).map_err(|e| crate::error::Error::Io {
        op: "failpoint",
        path: name.into(),
        source: std::io::Error::other(e),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_well_formed() {
        super::POINTS.check_names().unwrap();
    }
}
