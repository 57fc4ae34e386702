//! The crate's one error type.

use crate::provision::csi::CsiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store")]
    Store(#[from] strata_store::Error),
    #[error(transparent)]
    Csi(#[from] CsiError),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A stale resourceVersion: re-read and retry at once.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_conflict())
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_not_found())
    }
}

/// "err: cause: root cause", for events and logs that hold one string.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
