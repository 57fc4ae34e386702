//! The store's crash points, through the shared `strata-failpoint` crate. With
//! `STRATA_STORE_FAILPOINT=<name>[,<name>...]` set when a store is opened, the process
//! aborts on the spot when it reaches a named point, with no destructor, rollback or flush
//! running: to the database file that is the same as a kill -9.

use strata_failpoint::Failpoints;

use crate::error::{Error, Result};

pub const ENV: &str = "STRATA_STORE_FAILPOINT";

/// Every point, in the order a write passes them.
pub const POINTS: &[&str] = &[
    "put:object-written",
    "put:logged",
    "remove:object-deleted",
    "batch:between-plans",
    "write:revision-advanced",
    "write:compacted",
    "write:before-commit",
    "write:after-commit",
    "write:before-sync",
];

pub static FAILPOINTS: Failpoints = Failpoints::new(ENV, POINTS);

/// Reads the variable; an unknown name is an error, so a typo cannot make a crash test
/// test nothing.
pub(crate) fn init() -> Result<()> {
    FAILPOINTS
        .init_from_env()
        .map(drop)
        .map_err(Error::Failpoints)
}

pub(crate) fn hit(point: &'static str) {
    FAILPOINTS.hit(point);
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_well_formed() {
        super::FAILPOINTS.check_names().unwrap();
    }
}
