//! Multi-document YAML manifests: parse and validate every document, then apply all of
//! them in one transaction, or nothing.
