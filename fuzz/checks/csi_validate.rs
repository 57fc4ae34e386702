//! Shared by the `csi_validate` fuzz target and `csi/tests/fuzz_seeds.rs`.

use std::collections::HashMap;
use std::path::{Component, Path};

use strata_csi::validate;

/// The driver's request field checks on arbitrary input: the bytes split at NUL
/// into fields, each checked as a name, an id, a CO path and a volume path, pairs
/// of them as a parameter map, and the size context as a quantity. Never panics;
/// an accepted path is absolute, has no `.`/`..`/empty components and is not `/`.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let fields: Vec<&str> = text.split('\0').collect();
    let mut map = HashMap::new();
    for pair in fields.chunks(2) {
        map.insert(pair[0].to_string(), pair.get(1).unwrap_or(&"").to_string());
    }
    let _ = validate::map("parameters", &map);
    for f in &fields {
        let _ = validate::name("name", f);
        let _ = validate::id("volume_id", f);
        let _ = strata_csi::node_ops::parse_quantity(f);
        for p in [
            validate::co_path("target_path", f),
            validate::volume_path("v", f),
        ]
        .into_iter()
        .flatten()
        {
            assert!(p.is_absolute(), "{f:?} accepted as {p:?}");
            assert_ne!(p, Path::new("/"), "{f:?} accepted as the root");
            assert!(
                p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                "{f:?} accepted as {p:?}"
            );
        }
    }
}
