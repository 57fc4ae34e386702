//! The crate's one error type.

use std::path::PathBuf;

use crate::digest::Digest;

/// Everything the runtime can fail with. Messages are lower case and never repeat
/// their source; binaries print the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("blob {digest} does not match its digest (content hashes to {actual})")]
    BlobCorrupt { digest: Digest, actual: Digest },
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    BlobSize {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} not found")]
    BlobNotFound(Digest),
    #[error("layer {diff_id} unpacks to content hashing to {actual}")]
    LayerDiffIdMismatch { diff_id: Digest, actual: Digest },
    #[error("layer {0} not found")]
    LayerNotFound(Digest),
    #[error("layer entry {path:?} is unsafe: {reason}")]
    UnsafeLayerEntry { path: String, reason: &'static str },
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("container {id} is {status}: cannot {action}")]
    BadState {
        id: String,
        status: String,
        action: &'static str,
    },
    #[error("volume target {target:?}: {reason}")]
    VolumeTarget { target: PathBuf, reason: String },
    #[error("{action} {path:?}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path:?}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A state record written by a newer build; reading it could lose what it added.
    #[error(
        "{path:?}: runtime state format version {found} is newer than this build supports (version {supported}); run a newer strata"
    )]
    FormatTooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("runtime spec")]
    Spec(#[source] oci_spec::OciSpecError),
    #[error("loading {path:?}")]
    LoadSpec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("libcontainer: {action}")]
    Container {
        action: &'static str,
        #[source]
        source: libcontainer::error::LibcontainerError,
    },
    #[error("helper {command} failed: {stderr}")]
    Helper { command: String, stderr: String },
}

impl Error {
    /// An `Io` error for `action` on `path`; `io::Error` alone does not carry the path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<oci_spec::OciSpecError> for Error {
    fn from(e: oci_spec::OciSpecError) -> Self {
        Error::Spec(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "err: cause: root cause", for places that hold one string.
pub use strata_report::chain;
