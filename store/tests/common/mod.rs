//! Helpers shared by the store's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use strata_store::EmbeddedStore;

/// A fresh embedded store in its own temporary directory (kept alive by the returned guard).
pub fn open() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    (dir, store)
}

/// A typed object from a `json!` literal.
pub fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}
