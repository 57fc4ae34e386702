//! API answers as `strata_store::Error`, in one match, so a loop can tell "not found" from
//! "conflict" from "gone" exactly as it does with the embedded store.

use strata_store::Error;

use crate::What;

/// An error no `Error` variant names, with what was being done.
pub fn backend(
    context: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Backend {
        context: context.into(),
        source: source.into(),
    }
}

/// A request that could not even be built (a name the API would refuse).
pub(crate) fn request(e: kube::core::request::Error, what: &What<'_>) -> Error {
    Error::Invalid {
        field: format!("{} {:?}", what.kind, what.name),
        reason: e.to_string(),
    }
}

/// The answer of the API server to a request about `what`.
pub(crate) fn from_kube(e: kube::Error, what: &What<'_>) -> Error {
    let kube::Error::Api(status) = e else {
        return backend(
            format!(
                "{} {} {:?}",
                "talking to the API server about", what.kind, what.name
            ),
            e,
        );
    };
    let names = |s: &str| status.details.as_ref().is_some_and(|d| d.kind == s);
    match (status.code, status.reason.as_str()) {
        // A create into a missing namespace is refused naming the namespace.
        (404, _) if names("namespaces") && what.kind != "Namespace" => Error::NamespaceNotFound {
            namespace: what.namespace.to_string(),
        },
        (404, _) => Error::NotFound {
            kind: what.kind.to_string(),
            namespace: what.namespace.to_string(),
            name: what.name.to_string(),
        },
        (409, "AlreadyExists") => Error::AlreadyExists {
            kind: what.kind.to_string(),
            namespace: what.namespace.to_string(),
            name: what.name.to_string(),
        },
        (409, _) => Error::Conflict {
            kind: what.kind.to_string(),
            namespace: what.namespace.to_string(),
            name: what.name.to_string(),
            reason: status.message.clone(),
        },
        (410, _) => Error::Gone {
            resource_version: 0,
        },
        (400 | 422, _) => Error::Invalid {
            field: String::new(),
            reason: status.message.clone(),
        },
        (403, _) => Error::Forbidden {
            resource: what.plural.to_string(),
            name: what.name.to_string(),
            reason: status.message.clone(),
        },
        (code, reason) => {
            let context = format!(
                "the API server answered {code} {reason} about {} {:?}",
                what.kind, what.name
            );
            backend(context, kube::Error::Api(status))
        }
    }
}
