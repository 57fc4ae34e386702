//! The format version of the runtime's own state records: `<root>/.strata/<id>/premounts.json`,
//! `<images>/containers/<id>/rootfs.json` and the image records under `<images>/images/`.
//!
//! Each record is a JSON object with `formatVersion` beside its fields. A record without
//! one was written before versions existed (version 1) and is read as such; a newer one is
//! refused naming both versions, since a field it added could be lost by a rewrite. New
//! fields take serde defaults, so an older record always decodes. libcontainer's own
//! `state.json` is its format, not ours, and is not versioned here.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// The version this build writes.
/// 1: no `formatVersion` field; `premounts.json` a bare list of paths.
/// 2: `formatVersion` in every record; `premounts.json` is `{"mounts": [...]}`.
pub const FORMAT_VERSION: u64 = 2;

const FIELD: &str = "formatVersion";

/// `body`'s JSON with the current `formatVersion` (`body` must serialize to an object).
pub fn encode<T: Serialize>(body: &T, pretty: bool) -> Vec<u8> {
    let mut v = serde_json::to_value(body).expect("records serialize");
    v.as_object_mut()
        .expect("records are JSON objects")
        .insert(FIELD.into(), Value::from(FORMAT_VERSION));
    if pretty {
        serde_json::to_vec_pretty(&v)
    } else {
        serde_json::to_vec(&v)
    }
    .expect("a JSON value serializes")
}

/// The record in `bytes` (read from `path`) and the version it was written in.
/// `upgrade` turns an older record's JSON into the current shape before decoding.
pub fn decode<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    upgrade: impl FnOnce(u64, Value) -> Value,
) -> Result<(T, u64)> {
    let json_err = |source| Error::Json {
        path: path.to_path_buf(),
        source,
    };
    let mut v: Value = serde_json::from_slice(bytes).map_err(json_err)?;
    let found = match v.as_object_mut().and_then(|o| o.remove(FIELD)) {
        None => 1,
        Some(n) => n.as_u64().ok_or_else(|| Error::Json {
            path: path.to_path_buf(),
            source: serde::de::Error::custom(format!("{FIELD} must be a whole number")),
        })?,
    };
    if found > FORMAT_VERSION {
        return Err(Error::FormatTooNew {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    let v = if found < FORMAT_VERSION {
        upgrade(found, v)
    } else {
        v
    };
    Ok((serde_json::from_value(v).map_err(json_err)?, found))
}

/// For records whose shape did not change between versions.
pub fn same_shape(_found: u64, v: Value) -> Value {
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        a: String,
        #[serde(default)]
        added_later: u32,
    }

    #[test]
    fn round_trip_and_version_checks() {
        let p = Path::new("/x/rec.json");
        let bytes = encode(
            &Rec {
                a: "1".into(),
                added_later: 7,
            },
            false,
        );
        let (r, v): (Rec, u64) = decode(p, &bytes, same_shape).unwrap();
        assert_eq!((r.a.as_str(), r.added_later, v), ("1", 7, FORMAT_VERSION));
        // Version 1 (no field) decodes, the new field defaulted.
        let (r, v): (Rec, u64) = decode(p, br#"{"a":"old"}"#, same_shape).unwrap();
        assert_eq!((r.a.as_str(), r.added_later, v), ("old", 0, 1));
        let newer = format!(r#"{{"a":"new","formatVersion":{}}}"#, FORMAT_VERSION + 1);
        let err = decode::<Rec>(p, newer.as_bytes(), same_shape).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("version {}", FORMAT_VERSION + 1))
                && msg.contains(&format!("version {FORMAT_VERSION}")),
            "{msg}"
        );
        assert!(decode::<Rec>(p, br#"{"a":"x","formatVersion":"2"}"#, same_shape).is_err());
    }
}
