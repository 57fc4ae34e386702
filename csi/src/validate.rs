//! Checks on what the CO sends, before anything is touched: string and map sizes from the
//! spec (k8s-semantics §5.1), the name and id character sets, and the paths the CO hands us.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// CSI: a string field is at most 128 bytes unless the field says otherwise.
pub const STRING_MAX: usize = 128;
/// CSI: a map<string,string> is at most 4 KiB.
pub const MAP_MAX: usize = 4096;
/// Paths: the spec asks for at least 128 bytes and the OS maximum if possible.
pub const PATH_MAX: usize = 4095;

/// A required string: present and at most `STRING_MAX` bytes.
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        return Err(Error::invalid(field, "required field is missing"));
    }
    bounded(field, value)
}

/// An optional string: at most `STRING_MAX` bytes.
pub fn bounded<'a>(field: &'static str, value: &'a str) -> Result<&'a str> {
    if value.len() > STRING_MAX {
        return Err(Error::invalid(
            field,
            format!("{} bytes, at most {STRING_MAX} allowed", value.len()),
        ));
    }
    Ok(value)
}

/// A volume or snapshot name: any Unicode except the control characters the spec lists.
pub fn name(field: &'static str, value: &str) -> Result<()> {
    required(field, value)?;
    if value.chars().any(is_forbidden_control) {
        return Err(Error::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// U+0000-0008, U+000B, U+000C, U+000E-001F, U+007F-009F (CSI CreateVolume `name`).
fn is_forbidden_control(c: char) -> bool {
    matches!(c as u32, 0x00..=0x08 | 0x0B | 0x0C | 0x0E..=0x1F | 0x7F..=0x9F)
}

/// An id the CO gives back to us (volume_id, snapshot_id, ...): at most 128 bytes of
/// `[A-Za-z0-9._~-]`. Ours are stricter (see `ids`), but a well-formed id that is not ours
/// is "unknown" (NOT_FOUND, or OK for deletes), not INVALID_ARGUMENT.
pub fn id(field: &'static str, value: &str) -> Result<()> {
    required(field, value)?;
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~')))
    {
        return Err(Error::invalid(
            field,
            format!("character {c:?} is not allowed"),
        ));
    }
    Ok(())
}

/// A map: keys non-empty, total of keys and values at most 4 KiB.
pub fn map(field: &'static str, m: &HashMap<String, String>) -> Result<()> {
    let total: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAP_MAX {
        return Err(Error::invalid(
            field,
            format!("{total} bytes, at most {MAP_MAX} allowed"),
        ));
    }
    if m.keys().any(|k| k.is_empty()) {
        return Err(Error::invalid(field, "empty key"));
    }
    Ok(())
}

/// A path from the CO (staging or target path): absolute, normalised (no `.` or `..`
/// components, no empty ones), no NUL or newline, bounded. Returned as a PathBuf.
pub fn co_path(field: &'static str, value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::invalid(field, "required field is missing"));
    }
    if value.len() > PATH_MAX {
        return Err(Error::invalid(
            field,
            format!("{} bytes, at most {PATH_MAX} allowed", value.len()),
        ));
    }
    if value.bytes().any(|b| b == 0 || b == b'\n') {
        return Err(Error::invalid(field, "contains NUL or newline"));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(Error::invalid(field, "must be an absolute path"));
    }
    if value.contains("//") || value.split('/').any(|c| c == "." || c == "..") {
        return Err(Error::invalid(
            field,
            "must not contain '.', '..' or empty components",
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(Error::invalid(field, "must not contain '.' or '..'"));
    }
    if path == Path::new("/") {
        return Err(Error::invalid(field, "must not be the root directory"));
    }
    let trimmed = value.trim_end_matches('/');
    Ok(PathBuf::from(trimmed))
}

/// A `volume_path` that names where a volume should be (NodeGetVolumeStats,
/// NodeExpandVolume). Missing or malformed → INVALID_ARGUMENT; a relative or non-normalised
/// path is well-formed but no volume can be there (we only ever mount at normalised
/// absolute paths), so the spec's table answers NOT_FOUND, as csi-sanity expects.
pub fn volume_path(volume_id: &str, value: &str) -> Result<PathBuf> {
    const FIELD: &str = "volume_path";
    if value.is_empty() || value.len() > PATH_MAX || value.bytes().any(|b| b == 0 || b == b'\n') {
        return co_path(FIELD, value);
    }
    co_path(FIELD, value).map_err(|_| {
        Error::VolumeNotFound(format!(
            "{volume_id} at {value:?} (not an absolute normalised path, so no volume is there)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths() {
        assert!(co_path("target_path", "/var/lib/kubelet/pods/x/mount").is_ok());
        assert_eq!(co_path("t", "/a/b/").unwrap(), PathBuf::from("/a/b"));
        for bad in [
            "", "rel/path", "/a/../b", "/a/./b", "/a//b", "/", "/a\0b", "/..", "/a/..",
        ] {
            assert!(co_path("target_path", bad).is_err(), "{bad:?}");
        }
        let long = format!("/{}", "a".repeat(PATH_MAX));
        assert!(co_path("target_path", &long).is_err());
    }

    #[test]
    fn volume_paths_elsewhere_are_not_found() {
        assert!(volume_path("v", "/a/b").is_ok());
        for missing in ["some/path", "/a/../b", "/"] {
            assert!(
                matches!(volume_path("v", missing), Err(Error::VolumeNotFound(_))),
                "{missing}"
            );
        }
        for bad in ["", "/a\0b"] {
            assert!(
                matches!(volume_path("v", bad), Err(Error::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_and_ids() {
        assert!(name("name", "pvc-1 ünïcode").is_ok());
        assert!(name("name", "tab\tis ok").is_ok());
        assert!(name("name", "bell\u{7}").is_err());
        assert!(name("name", "c1\u{85}").is_err());
        assert!(name("name", &"x".repeat(129)).is_err());
        assert!(id("volume_id", "n_p_v01").is_ok());
        assert!(
            id("volume_id", "..etc").is_ok(),
            "dots are allowed, slashes are not"
        );
        assert!(id("volume_id", "../etc").is_err());
        assert!(id("volume_id", "a/b").is_err());
        assert!(id("volume_id", "").is_err());
        let e = id("volume_id", "").unwrap_err().to_string();
        assert!(e.contains("volume_id"), "{e}");
    }

    #[test]
    fn maps() {
        let mut m = HashMap::new();
        m.insert("k".to_string(), "v".repeat(4096));
        assert!(map("parameters", &m).is_err());
        m.insert("k".to_string(), "v".repeat(4000));
        assert!(map("parameters", &m).is_ok());
    }

    proptest! {
        #[test]
        fn accepted_paths_have_no_traversal(s in "(/[a-z.]{0,4}){0,6}/?") {
            if let Ok(p) = co_path("p", &s) {
                prop_assert!(p.is_absolute());
                prop_assert!(p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
                prop_assert!(!p.to_str().unwrap().split('/').any(|c| c == ".." || c == "."));
            }
        }

        #[test]
        fn accepted_ids_are_bounded_and_slash_free(s in "\\PC{0,200}") {
            if id("volume_id", &s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= STRING_MAX);
                prop_assert!(!s.contains('/') && !s.contains('\0'));
            }
        }

        #[test]
        fn any_length_string_over_limit_is_refused(n in 129usize..600) {
            let s = "a".repeat(n);
            prop_assert!(required("name", &s).is_err());
        }
    }
}
