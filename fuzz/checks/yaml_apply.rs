//! Shared by the `yaml_apply` fuzz target and `store/tests/fuzz_seeds.rs`.

/// `volctl apply`'s parsing and validation of a manifest file never panics.
pub fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = strata_store::apply::parse_manifests(text, "default");
    }
}
