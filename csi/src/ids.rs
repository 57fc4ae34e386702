//! Volume, snapshot and group-snapshot ids.
//!
//! Format: `<node>_<pool>_<kind><hash>`, e.g. `node-1_fast_v3f2a…` where `kind` is `v`
//! (volume), `s` (snapshot) or `g` (group snapshot) and `hash` is 32 lower-case hex digits
//! of SHA-256 over the kind and the CO's name. The node is in the id so that a source that
//! lives on another node is recognised (RESOURCE_EXHAUSTED, the CO reschedules) instead of
//! being reported missing; the pool says where the file is; the hash makes the id
//! deterministic for a name and keeps arbitrary Unicode names out of file names.
//!
//! Node ids: 1-63 bytes of `[A-Za-z0-9.-]`, alphanumeric at both ends, no empty label (they are also the
//! value of the topology key, which CSI limits to 63 characters). Pool names: 1-24 bytes of
//! `[a-z0-9-]`, alphanumeric at both ends. So an id is at most 63+1+24+1+33 = 122 bytes.

use std::fmt;

use sha2::{Digest, Sha256};

pub const NODE_MAX: usize = 63;
pub const POOL_MAX: usize = 24;
pub(crate) const HASH_HEX: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Volume,
    Snapshot,
    Group,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Volume => 'v',
            Kind::Snapshot => 's',
            Kind::Group => 'g',
        }
    }

    fn from_letter(c: char) -> Option<Kind> {
        match c {
            'v' => Some(Kind::Volume),
            's' => Some(Kind::Snapshot),
            'g' => Some(Kind::Group),
            _ => None,
        }
    }
}

/// A parsed id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    pub node: String,
    pub pool: String,
    pub kind: Kind,
    pub hash: String,
}

fn alnum_ends(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Whether `s` may be used as a node id (see the module docs).
pub fn valid_node(s: &str) -> bool {
    s.len() <= NODE_MAX
        && alnum_ends(s)
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Whether `s` may be used as a pool name (see the module docs).
pub fn valid_pool(s: &str) -> bool {
    s.len() <= POOL_MAX
        && alnum_ends(s)
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ObjectId {
    /// The id for the object the CO calls `name`. Deterministic, so a retried create
    /// computes the same id.
    pub fn for_name(node: &str, pool: &str, kind: Kind, name: &str) -> ObjectId {
        let mut h = Sha256::new();
        h.update([kind.letter() as u8, 0]);
        h.update(name.as_bytes());
        let digest = h.finalize();
        let mut hash = String::with_capacity(HASH_HEX);
        for b in &digest[..HASH_HEX / 2] {
            hash.push_str(&format!("{b:02x}"));
        }
        ObjectId {
            node: node.to_string(),
            pool: pool.to_string(),
            kind,
            hash,
        }
    }

    /// Parses an id strictly; None when it is not one of ours.
    pub fn parse(s: &str) -> Option<ObjectId> {
        let mut parts = s.split('_');
        let node = parts.next()?;
        let pool = parts.next()?;
        let tail = parts.next()?;
        if parts.next().is_some() || !valid_node(node) || !valid_pool(pool) {
            return None;
        }
        let mut chars = tail.chars();
        let kind = Kind::from_letter(chars.next()?)?;
        let hash = chars.as_str();
        if hash.len() != HASH_HEX
            || !hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        Some(ObjectId {
            node: node.into(),
            pool: pool.into(),
            kind,
            hash: hash.into(),
        })
    }

    /// Name of the data object inside the pool: `<kind><hash>.img` for every backend
    /// (an image file, a directory or a subvolume); only `[a-z0-9.]`, so it can never
    /// name a path outside its directory.
    pub fn data_name(&self) -> String {
        format!("{}{}.img", self.kind.letter(), self.hash)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}_{}{}",
            self.node,
            self.pool,
            self.kind.letter(),
            self.hash
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_determinism() {
        let a = ObjectId::for_name("node-1.example", "fast", Kind::Volume, "pvc-1");
        let s = a.to_string();
        assert_eq!(ObjectId::parse(&s), Some(a.clone()));
        assert_eq!(
            ObjectId::for_name("node-1.example", "fast", Kind::Volume, "pvc-1"),
            a
        );
        assert_ne!(
            ObjectId::for_name("node-1.example", "fast", Kind::Snapshot, "pvc-1").hash,
            a.hash
        );
        assert!(a.data_name().starts_with('v') && a.data_name().ends_with(".img"));
    }

    #[test]
    fn rejects_foreign_and_malformed_ids() {
        for bad in [
            "",
            "some-vol-id",
            "n_p_v123",
            "n_p_x0123456789abcdef0123456789abcdef",
            "n_P_v0123456789abcdef0123456789abcdef",
            "n_p_v0123456789ABCDEF0123456789abcdef",
            "n_p_v0123456789abcdef0123456789abcdef_x",
            "-n_p_v0123456789abcdef0123456789abcdef",
            "../_p_v0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(ObjectId::parse(bad), None, "{bad}");
        }
        assert!(ObjectId::parse("n_p_v0123456789abcdef0123456789abcdef").is_some());
    }

    fn node_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?"
            .prop_filter("no empty label", |s| !s.contains(".."))
    }

    fn pool_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn any_name_gives_a_valid_short_id(node in node_strategy(), pool in pool_strategy(), name in ".{0,200}") {
            let id = ObjectId::for_name(&node, &pool, Kind::Volume, &name);
            let s = id.to_string();
            prop_assert!(s.len() <= 128, "{} bytes", s.len());
            prop_assert_eq!(ObjectId::parse(&s), Some(id.clone()));
            let file = id.data_name();
            prop_assert!(!file.contains('/') && !file.starts_with('.'));
        }

        #[test]
        fn parse_never_accepts_traversal(s in ".{0,140}") {
            if let Some(id) = ObjectId::parse(&s) {
                prop_assert!(!s.contains('/') && !s.contains(".."));
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
