//! The controller's read-only answers: paging of ListVolumes and ListSnapshots (the token
//! format is ours to decide), a volume's status, GetSnapshot, and whether a volume can
//! serve the capabilities a CO asks ValidateVolumeCapabilities about.

use crate::driver::{Driver, Lookup};
use crate::error::{Error, Result};
use crate::request::{ListSnapshots, Page, ValidateCaps};
use crate::state::{Phase, SnapshotRecord, VolumeRecord};
use crate::volumes;

/// A volume with what ListVolumes and ControllerGetVolume report about it.
#[derive(Debug, Clone)]
pub struct VolumeStatus {
    pub volume: VolumeRecord,
    pub abnormal: bool,
    pub message: String,
    /// Staged on this node (the only node it can be published to).
    pub published: bool,
}

/// Entries of one page and the token of the next ("" on the last page).
pub type Listing<T> = (Vec<T>, String);

const TOKEN_PREFIX: &str = "t1.";

/// Paging token: the last id of the previous page.
pub fn token_encode(last_id: &str) -> String {
    format!("{TOKEN_PREFIX}{last_id}")
}

/// The id after which to continue; a token we did not issue is ABORTED (spec).
pub fn token_decode(token: &str) -> Result<String> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let bad = || Error::BadToken(token.chars().take(64).collect());
    let rest = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    if crate::ids::ObjectId::parse(rest).is_none() {
        return Err(bad());
    }
    Ok(rest.to_string())
}

/// `max_entries`: 0 means the driver's default page size.
pub fn max_entries(n: i32) -> Result<u32> {
    if n < 0 {
        return Err(Error::invalid("max_entries", "must not be negative"));
    }
    Ok(if n == 0 { 1000 } else { n as u32 })
}

/// Fills one page from `fetch(cursor, n)` (records in id order after `cursor`), keeping
/// those `keep` accepts; the token names the last one kept when more follow.
fn paginate<R, T>(
    page: &Page,
    id: impl Fn(&R) -> &str,
    mut fetch: impl FnMut(&str, u32) -> Result<Vec<R>>,
    mut keep: impl FnMut(R) -> Result<Option<T>>,
) -> Result<Listing<T>> {
    let mut out = Vec::new();
    let mut last_kept = String::new();
    let mut cursor = page.after.clone();
    loop {
        let batch = fetch(&cursor, page.limit + 1)?;
        if batch.is_empty() {
            return Ok((out, String::new()));
        }
        for r in batch {
            cursor = id(&r).to_string();
            let rid = cursor.clone();
            let Some(t) = keep(r)? else { continue };
            if out.len() as u32 == page.limit {
                return Ok((out, token_encode(&last_kept)));
            }
            out.push(t);
            last_kept = rid;
        }
    }
}

impl Driver {
    /// A ready volume's condition and whether it is staged here.
    fn status_of(&self, v: VolumeRecord) -> Result<VolumeStatus> {
        let (abnormal, message) = self.condition(&v)?;
        let published = self.store.stage(&v.id)?.is_some();
        Ok(VolumeStatus {
            volume: v,
            abnormal,
            message,
            published,
        })
    }

    /// ControllerGetVolume.
    pub fn volume_status(&self, id: &str) -> Result<VolumeStatus> {
        let v = self.ready_volume(id)?;
        self.status_of(v)
    }

    /// ListVolumes: ready volumes the CO created (not ephemeral inline ones), by id.
    pub fn list_volumes(&self, page: &Page) -> Result<Listing<VolumeStatus>> {
        paginate(
            page,
            |v: &VolumeRecord| &v.id,
            |cursor, n| self.store.volumes_after(cursor, n),
            |v| {
                if v.phase != Phase::Ready || v.ephemeral.is_some() {
                    return Ok(None);
                }
                self.status_of(v).map(Some)
            },
        )
    }

    /// ListSnapshots: ready snapshots by id, filtered by id or source volume. Filtering by
    /// an unknown id is an empty list, not an error.
    pub fn list_snapshots(&self, q: &ListSnapshots) -> Result<Listing<SnapshotRecord>> {
        let visible = |s: &SnapshotRecord| {
            s.phase == Phase::Ready
                && (q.source_volume_id.is_empty() || s.source_volume_id == q.source_volume_id)
                && s.id > q.page.after
        };
        if !q.snapshot_id.is_empty() {
            let found = match self.lookup_snapshot(&q.snapshot_id)? {
                Lookup::Found(s) if visible(&s) => vec![s],
                _ => Vec::new(),
            };
            return Ok((found, String::new()));
        }
        paginate(
            &q.page,
            |s: &SnapshotRecord| &s.id,
            |cursor, n| {
                if q.source_volume_id.is_empty() {
                    self.store.snapshots_after(cursor, n)
                } else {
                    self.store.snapshots_of(&q.source_volume_id, cursor, n)
                }
            },
            |s| Ok(visible(&s).then_some(s)),
        )
    }

    /// Refuses an alpha RPC unless `--enable-alpha-capabilities` switched them on.
    pub fn require_alpha(&self, what: &'static str) -> Result<()> {
        if self.alpha_capabilities {
            Ok(())
        } else {
            Err(Error::Unimplemented(what))
        }
    }

    /// GetSnapshot: a snapshot that is not being deleted.
    pub fn get_snapshot(&self, id: &str) -> Result<SnapshotRecord> {
        match self.lookup_snapshot(id)? {
            Lookup::Found(s) if s.phase != Phase::Deleting => Ok(s),
            _ => Err(Error::SnapshotNotFound(id.to_string())),
        }
    }

    /// ValidateVolumeCapabilities: None when the volume serves every capability and its
    /// parameters match, else the reason it does not (an answer, not an error).
    pub fn check_capabilities(&self, a: &ValidateCaps) -> Result<Option<String>> {
        let v = self.ready_volume(&a.volume_id)?;
        let tree = self.is_tree(&v)?;
        for c in &a.caps {
            if let Err(m) = c.supported() {
                return Ok(Some(m));
            }
            if c.block && tree {
                return Ok(Some(format!(
                    "volume is a directory in pool {}; Block access needs an image pool",
                    v.pool
                )));
            }
            if !c.block && !c.fs_type.is_empty() && c.fs_type != v.fs_type {
                return Ok(Some(format!(
                    "volume holds {}, not {}",
                    v.fs_type, c.fs_type
                )));
            }
        }
        for (k, val) in &a.parameters {
            let known = v.parameters.get(k);
            if known.is_some_and(|x| x != val) || (known.is_none() && k != volumes::PARAM_DIRECT_IO)
            {
                return Ok(Some(format!("parameter {k:?} does not match the volume")));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let id = format!("n_p_v{}", "0a".repeat(crate::ids::HASH_HEX / 2));
        assert_eq!(token_decode(&token_encode(&id)).unwrap(), id);
        assert_eq!(token_decode("").unwrap(), "");
        assert!(matches!(token_decode("garbage"), Err(Error::BadToken(_))));
        assert!(matches!(token_decode("t1.x"), Err(Error::BadToken(_))));
    }

    #[test]
    fn pages_skip_hidden_records_and_resume_after_the_last_kept() {
        // Ids 1..=9; odd ones visible. Fetch returns records after the cursor.
        let id = |i: u32| format!("n_p_v{:0w$x}", i, w = crate::ids::HASH_HEX);
        let ids: Vec<String> = (1..=9).map(id).collect();
        let fetch = |cursor: &str, n: u32| {
            Ok(ids
                .iter()
                .filter(|i| i.as_str() > cursor)
                .take(n as usize)
                .cloned()
                .collect::<Vec<_>>())
        };
        let keep = |r: String| Ok(r.ends_with(['1', '3', '5', '7', '9']).then_some(r));
        let mut page = Page {
            limit: 2,
            after: String::new(),
        };
        let mut seen = Vec::new();
        loop {
            let (got, next) = paginate(&page, |r: &String| r, fetch, keep).unwrap();
            seen.extend(got);
            if next.is_empty() {
                break;
            }
            page.after = token_decode(&next).unwrap();
        }
        assert_eq!(seen, [id(1), id(3), id(5), id(7), id(9)]);
    }
}
