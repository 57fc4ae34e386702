//! The crate's one error type.

use std::path::PathBuf;

/// Everything the volume manager can fail with.
///
/// Messages never contain payload bytes or token text: Secret content must not reach logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("paths {first:?} and {second:?} conflict")]
    PathConflict { first: String, second: String },
    #[error("invalid mode {mode:#o} for {path:?}: must be within 0..=0o777")]
    InvalidMode { path: String, mode: i32 },
    #[error("volume directory {path} is corrupt: {reason}")]
    CorruptVolume { path: PathBuf, reason: String },
    #[error("{op} {path}")]
    Fs {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A test failpoint stopped the write at this step.
    #[error("failpoint at {0:?}")]
    Failpoint(crate::atomic_writer::Step),
    /// One or more sources of a volume could not be turned into files; all are listed.
    #[error("building volume {volume}: {}", .errors.join("; "))]
    Projection { volume: String, errors: Vec<String> },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("token {0}")]
    Token(String),
    #[error("csi {rpc} for volume {volume}: {message}")]
    Csi {
        rpc: &'static str,
        volume: String,
        code: i32,
        message: String,
    },
    #[error("store: {0}")]
    Store(String),
    /// A `vol_data.json` written by a newer build: acting on part of what it records could
    /// unstage or unpublish the wrong thing.
    #[error(
        "{path}: volume metadata format version {found} is newer than this build supports (version {supported}); run a newer strata"
    )]
    FormatTooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// The pod was deleted, finished or torn down: its volumes are not set up again.
    #[error("pod {uid} is gone; its volumes are not set up")]
    PodGone { uid: String },
    /// The node requires admission and has not admitted the pod (yet).
    #[error("pod {uid} is not admitted to this node; its volumes are not set up")]
    NotAdmitted { uid: String },
    #[error("a blocking task panicked")]
    BlockingTask(#[source] tokio::task::JoinError),
    /// A set-up or tear-down task of the volume manager panicked.
    #[error("{what} panicked")]
    TaskPanicked {
        what: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the operation and path to a failed syscall.
pub(crate) trait Context<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> Context<T> for nix::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|errno| Error::Fs {
            op,
            path: path.into(),
            source: std::io::Error::from(errno),
        })
    }
}

impl<T> Context<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Fs {
            op,
            path: path.into(),
            source,
        })
    }
}

/// Runs blocking filesystem work off the async runtime, keeping the caller's span.
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
