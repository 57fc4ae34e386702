//! Crash points for the crash-safety tests. With `STRATA_STORE_FAILPOINT=<name>` set, the
//! process exits on the spot when it reaches that point (code 86), with no destructor,
//! rollback or flush running: to the database file that is the same as a kill -9.

use std::sync::OnceLock;

pub const ENV: &str = "STRATA_STORE_FAILPOINT";
/// The exit code of a process stopped at a failpoint.
pub const EXIT_CODE: i32 = 86;

/// Every point, in the order a write passes them.
pub const POINTS: &[&str] = &[
    "put:object-written",
    "put:logged",
    "remove:object-deleted",
    "write:revision-advanced",
    "write:compacted",
    "write:before-commit",
    "write:after-commit",
];

static ARMED: OnceLock<Option<String>> = OnceLock::new();

pub(crate) fn hit(point: &str) {
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok());
    if armed.as_deref() == Some(point) {
        std::process::exit(EXIT_CODE);
    }
}
