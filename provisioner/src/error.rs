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
    #[error("the CSI driver has not answered yet")]
    DriverUnknown,
    /// A write of several plans made as one transaction, which failed as a whole: nothing
    /// of it was written.
    #[error("store: the batch of writes failed")]
    Batch(#[source] std::sync::Arc<strata_store::Error>),
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
pub use strata_report::chain;

pub type Result<T, E = Error> = std::result::Result<T, E>;
