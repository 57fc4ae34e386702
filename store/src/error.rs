//! The crate's one error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Renders `ns/name`, or `name` for cluster-scoped objects.
fn key(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{name:?}")
    } else {
        format!("\"{namespace}/{name}\"")
    }
}

fn field_reason(field: &str, reason: &str) -> String {
    if field.is_empty() {
        reason.to_string()
    } else {
        format!("{field}: {reason}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {} not found", key(namespace, name))]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    /// A namespaced object created in a namespace that does not exist (NamespaceLifecycle
    /// admission; upstream's message names the resource, not the kind).
    #[error("namespaces {namespace:?} not found")]
    NamespaceNotFound { namespace: String },
    /// Admission refused the request whatever its content: creating in a namespace being
    /// terminated, deleting one of the namespaces that always exist.
    #[error("{resource} {name:?} is forbidden: {reason}")]
    Forbidden {
        /// Lower-case plural, as upstream names resources ("persistentvolumeclaims").
        resource: String,
        name: String,
        reason: String,
    },
    #[error("{kind} {} already exists", key(namespace, name))]
    AlreadyExists {
        kind: String,
        namespace: String,
        name: String,
    },
    /// A stale resourceVersion or a failed precondition: re-read and retry.
    #[error("conflict on {kind} {}: {reason}", key(namespace, name))]
    Conflict {
        kind: String,
        namespace: String,
        name: String,
        reason: String,
    },
    /// The object (or request) breaks a validation rule; `field` is a JSON path like
    /// `spec.resources.requests.storage`.
    #[error("{}", field_reason(field, reason))]
    Invalid { field: String, reason: String },
    /// Watch history before this version was compacted: list again and watch from there.
    #[error("resource version {resource_version} is too old: history was compacted")]
    Gone { resource_version: u64 },
    #[error("unknown kind {0:?}; this store serves {served}", served = served_kinds())]
    UnknownKind(String),
    /// A manifest document failed to parse or validate; the cause is the source.
    #[error("document {index} ({what})")]
    Document {
        index: usize,
        what: String,
        #[source]
        source: Box<Error>,
    },
    #[error("parsing YAML: {0}")]
    Yaml(String),
    #[error("decoding a stored {kind}")]
    Decode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("sqlite: {context}")]
    Database {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{context} {path}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer build; opening it could corrupt it.
    #[error(
        "{path}: store database format version {found} is newer than this build supports (version {supported}); run a newer strata or restore a backup"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("bad STRATA_STORE_FAILPOINT: {0}")]
    Failpoints(String),
    #[error("a blocking store task failed")]
    Blocking(#[source] tokio::task::JoinError),
    /// A remote backend (the Kubernetes API server) failed in a way no variant above names:
    /// unreachable, unauthorized, a server error.
    #[error("{context}")]
    Backend {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// The object itself does not exist (a create into a missing namespace is
    /// `NamespaceNotFound`, which this does not match: the object was never there to go).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Forbidden { .. })
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Invalid { .. })
    }
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Gone { .. })
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn db(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        move |source| Error::Database { context, source }
    }
}

/// `apiVersion/Kind` of every kind the store serves, for the unknown-kind error (a user
/// who applied a Deployment learns what runs here).
fn served_kinds() -> String {
    crate::kinds::all()
        .iter()
        .map(|k| format!("{}/{}", k.api_version(), k.kind()))
        .collect::<Vec<_>>()
        .join(", ")
}
