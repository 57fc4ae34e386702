//! The crate's one `Error` and its one exhaustive mapping to a gRPC status.
//!
//! Codes follow the CSI spec's error tables (k8s-semantics §5.2-§5.6). A variant says what
//! went wrong; the mapping decides what the CO does next (retry, reschedule, give up).

use std::path::PathBuf;

use csi_proto::tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("group snapshot {0} not found")]
    GroupSnapshotNotFound(String),
    #[error("{what} {id} lives on node {node}, not on this node ({here}); it cannot be used here")]
    OtherNode {
        what: &'static str,
        id: String,
        node: String,
        here: String,
    },
    #[error("{what} {name:?} already exists and is incompatible: {reason}")]
    Incompatible {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("volume {id} is already staged at {path} with different arguments: {reason}")]
    StagedIncompatible {
        id: String,
        path: String,
        reason: String,
    },
    #[error("target {target} is already published with different arguments: {reason}")]
    PublishedIncompatible { target: String, reason: String },
    #[error("an operation on {0} is already in flight")]
    Busy(String),
    #[error("invalid starting_token {0:?}")]
    BadToken(String),
    #[error("pool {pool} has {free} bytes free, {want} requested")]
    PoolFull { pool: String, want: u64, free: u64 },
    #[error(
        "pool {pool} has {provisioned} of {limit} bytes provisioned (its size times its overcommit ratio), {want} more requested"
    )]
    PoolOvercommitted {
        pool: String,
        want: u64,
        provisioned: u64,
        limit: u64,
    },
    #[error("cannot provision within the requested topology: {0}")]
    Topology(String),
    #[error("{field} out of range: {reason}")]
    OutOfRange { field: &'static str, reason: String },
    #[error("volume {id} is in use: {reason}")]
    InUse { id: String, reason: String },
    #[error("{0}")]
    Precondition(String),
    #[error("capability not supported: {0}")]
    CapabilityUnsupported(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("{0} is not supported by this driver")]
    Unimplemented(&'static str),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state dir {0} is in use by another strata-csi process")]
    StateInUse(PathBuf),
    #[error("state store")]
    State(#[source] rusqlite::Error),
    #[error("state store: {0}")]
    StateCorrupt(String),
    #[error(
        "state database {path} has format version {found}; this strata-csi reads versions up to {supported} \
         (run a newer strata-csi, or restore the state dir it wrote)"
    )]
    StateFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("state store writer is gone")]
    StateClosed,
    #[error("blocking task failed")]
    BlockingTask(#[source] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::State(e)
    }
}

/// "error: cause: root cause", because a Status carries one string.
pub use strata_report::chain;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let msg = chain(&err);
        // No `_ =>` arm: a new variant must decide its code here.
        match err {
            Error::InvalidArgument { .. } => Status::invalid_argument(msg),
            Error::VolumeNotFound(_) => Status::not_found(msg),
            Error::SnapshotNotFound(_) => Status::not_found(msg),
            Error::GroupSnapshotNotFound(_) => Status::not_found(msg),
            // RESOURCE_EXHAUSTED makes the CO reschedule instead of giving up.
            Error::OtherNode { .. } => Status::resource_exhausted(msg),
            Error::Incompatible { .. } => Status::already_exists(msg),
            Error::StagedIncompatible { .. } => Status::already_exists(msg),
            Error::PublishedIncompatible { .. } => Status::already_exists(msg),
            Error::Busy(_) => Status::aborted(msg),
            Error::BadToken(_) => Status::aborted(msg),
            Error::PoolFull { .. } => Status::resource_exhausted(msg),
            // Another node's pool may have room: the CO reschedules.
            Error::PoolOvercommitted { .. } => Status::resource_exhausted(msg),
            Error::Topology(_) => Status::resource_exhausted(msg),
            Error::OutOfRange { .. } => Status::out_of_range(msg),
            Error::InUse { .. } => Status::failed_precondition(msg),
            Error::Precondition(_) => Status::failed_precondition(msg),
            Error::CapabilityUnsupported(_) => Status::failed_precondition(msg),
            Error::NotReady(_) => Status::failed_precondition(msg),
            Error::Unimplemented(_) => Status::unimplemented(msg),
            Error::Io { .. } => Status::internal(msg),
            Error::State(_) => Status::internal(msg),
            Error::StateCorrupt(_) => Status::internal(msg),
            Error::StateClosed => Status::unavailable(msg),
            Error::StateFormat { .. } => Status::failed_precondition(msg),
            Error::StateInUse(_) => Status::failed_precondition(msg),
            Error::BlockingTask(_) => Status::internal(msg),
        }
    }
}

/// Runs blocking work (syscalls, mkfs, SQLite reads) on tokio's blocking pool, keeping
/// the request's span on its events.
pub async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(Error::BlockingTask)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::tonic::Code;

    #[test]
    fn io_not_found_is_internal_not_not_found() {
        let e = Error::Io {
            op: "open",
            path: "/dev/loop3".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let s = Status::from(e);
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("/dev/loop3"), "{}", s.message());
        assert!(s.details().is_empty());
    }

    #[test]
    fn codes_follow_the_spec_tables() {
        let cases: Vec<(Error, Code)> = vec![
            (Error::invalid("name", "missing"), Code::InvalidArgument),
            (Error::VolumeNotFound("v".into()), Code::NotFound),
            (Error::Busy("v".into()), Code::Aborted),
            (Error::BadToken("x".into()), Code::Aborted),
            (
                Error::PoolFull {
                    pool: "p".into(),
                    want: 2,
                    free: 1,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::OtherNode {
                    what: "snapshot",
                    id: "a".into(),
                    node: "n2".into(),
                    here: "n1".into(),
                },
                Code::ResourceExhausted,
            ),
            (
                Error::Incompatible {
                    what: "volume",
                    name: "x".into(),
                    reason: "size".into(),
                },
                Code::AlreadyExists,
            ),
            (
                Error::OutOfRange {
                    field: "capacity_range",
                    reason: "x".into(),
                },
                Code::OutOfRange,
            ),
            (
                Error::InUse {
                    id: "v".into(),
                    reason: "staged".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::Unimplemented("ControllerPublishVolume"),
                Code::Unimplemented,
            ),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let s = Status::from(err);
            assert_eq!(s.code(), code, "{text}");
            assert_eq!(s.message(), text);
            assert!(s.details().is_empty());
        }
    }

    #[test]
    fn message_carries_the_cause_chain() {
        let e = Error::Io {
            op: "attach",
            path: "/p/v.img".into(),
            source: std::io::Error::other("EBUSY"),
        };
        assert_eq!(Status::from(e).message(), "attach /p/v.img: EBUSY");
    }
}
