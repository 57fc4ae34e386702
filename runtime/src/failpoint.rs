//! The runtime's crash failpoints (see `strata-failpoint`): the crash tests run
//! `strata-runtime` with `STRATA_RUNTIME_FAILPOINTS=name[,name...]` and it aborts at
//! those steps, leaving what a `kill -9` there would leave for `delete` to clean up.

use strata_failpoint::Failpoints;

/// Every failpoint, named `<command>:<step>`, in the order the steps run.
pub const ALL: &[&str] = &[
    "create:after_lock",
    "create:after_premount_record",
    "create:after_premount",
    "create:after_spec",
    "create:after_build",
    "delete:after_container",
    "delete:after_unmount",
    "delete:after_dir",
];

/// Name of the environment variable read at start-up.
pub const ENV: &str = "STRATA_RUNTIME_FAILPOINTS";

static POINTS: Failpoints = Failpoints::new(ENV, ALL);

/// Reads `STRATA_RUNTIME_FAILPOINTS`; an unknown name is an error.
pub fn init_from_env() -> Result<(), String> {
    POINTS.init_from_env().map(|_| ())
}

/// Aborts the process if failpoint `name` is armed.
#[inline]
pub(crate) fn hit(name: &'static str) {
    POINTS.hit(name);
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_well_formed() {
        super::POINTS.check_names().unwrap();
    }
}
