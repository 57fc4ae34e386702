//! Publication records in fixed slots of one file per pool, `meta/publishes/slots`,
//! overwritten in place (meta.rs). NodePublish writes its record with one pwrite and
//! NodeUnpublish clears it with another, where a file per record made and freed an inode
//! per publish/unpublish pair (two filesystem transactions, about a tenth of the pair's
//! driver CPU). No fsync, as for the record files: mounts do not outlive power loss.
//!
//! A slot is `MAGIC`, the body's length (u32, little endian) and the body, the JSON a
//! record file holds; a free slot starts with anything else (NodeUnpublish writes zeros
//! over the magic). A pwrite is whole or absent for a killed process; a slot torn by power
//! loss reads as undecodable and is reused. A record too large for a slot is a record
//! file, as all of them were before, and such files are read and removed as before.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// The slots file, in the publication records' directory (record files end in `.json`,
/// so older versions never read it).
pub const SLOTS_FILE: &str = "slots";
/// Bytes per slot: one page, so a pwrite touches one page.
pub const SLOT: usize = 4096;
const MAGIC: &[u8; 4] = b"SPB1";
const HEADER: usize = 8;

/// The bodies of the used slots in a slots file's content, with their slot numbers.
pub fn parse(raw: &[u8]) -> Vec<(u64, &[u8])> {
    raw.chunks(SLOT)
        .enumerate()
        .filter_map(|(i, s)| {
            if s.len() < HEADER || &s[..4] != MAGIC {
                return None;
            }
            let len = u32::from_le_bytes([s[4], s[5], s[6], s[7]]) as usize;
            s.get(HEADER..HEADER + len).map(|b| (i as u64, b))
        })
        .collect()
}

/// Whether a slots file's content holds a used slot (tests: "no record left").
pub fn any_used(raw: &[u8]) -> bool {
    !parse(raw).is_empty()
}

/// One pool's slots file and where each record is.
#[derive(Debug)]
pub struct Slots {
    file: File,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    /// Slot of each record, by record name.
    by_name: HashMap<String, u64>,
    free: Vec<u64>,
    /// Slots in the file.
    count: u64,
    /// Names of the record files beside the slots file.
    files: HashSet<String>,
}

impl Slots {
    /// Indexes `file` (the slots file, open read-write) and `files` (names of the record
    /// files in the same directory). `name_of` names a slot's body, None for one it cannot
    /// read: that slot is free. A name found twice keeps its first slot; the others are
    /// cleared.
    pub fn open(
        file: File,
        files: HashSet<String>,
        name_of: impl Fn(&[u8]) -> Option<String>,
    ) -> io::Result<Slots> {
        let len = file.metadata()?.len();
        let mut raw = vec![0; len as usize];
        file.read_exact_at(&mut raw, 0)?;
        let count = len.div_ceil(SLOT as u64);
        let mut ix = Index {
            count,
            files,
            ..Index::default()
        };
        let mut used = HashSet::new();
        for (slot, body) in parse(&raw) {
            let Some(name) = name_of(body) else { continue };
            if ix.by_name.contains_key(&name) {
                file.write_all_at(&[0; 4], slot * SLOT as u64)?;
                continue;
            }
            ix.by_name.insert(name, slot);
            used.insert(slot);
        }
        // Lowest slots first, so that the file stays as short as the most records held.
        ix.free = (0..count).rev().filter(|s| !used.contains(s)).collect();
        Ok(Slots {
            file,
            index: Mutex::new(ix),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("slots lock")
    }

    /// Writes record `name` into its slot (a free one if it has none). Ok(false) when the
    /// body does not fit a slot: the caller writes a record file (`file_written`).
    pub fn put(&self, name: &str, body: &[u8]) -> io::Result<bool> {
        if body.len() > SLOT - HEADER {
            return Ok(false);
        }
        let mut ix = self.index();
        let (slot, new) = match ix.by_name.get(name) {
            Some(&s) => (s, false),
            None => match ix.free.pop() {
                Some(s) => (s, true),
                None => {
                    ix.count += 1;
                    (ix.count - 1, true)
                }
            },
        };
        let mut buf = Vec::with_capacity(HEADER + body.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(body);
        if let Err(e) = self.file.write_all_at(&buf, slot * SLOT as u64) {
            if new {
                ix.free.push(slot);
            }
            return Err(e);
        }
        if new {
            ix.by_name.insert(name.to_string(), slot);
        }
        Ok(true)
    }

    /// Clears record `name`'s slot; Ok(false) when it has none.
    pub fn clear(&self, name: &str) -> io::Result<bool> {
        let mut ix = self.index();
        let Some(&slot) = ix.by_name.get(name) else {
            return Ok(false);
        };
        self.file.write_all_at(&[0; 4], slot * SLOT as u64)?;
        ix.by_name.remove(name);
        ix.free.push(slot);
        Ok(true)
    }

    /// Whether a record file `name` is there (as far as this index knows).
    pub fn has_file(&self, name: &str) -> bool {
        self.index().files.contains(name)
    }

    /// Record file `name` was written, or (`false`) removed.
    pub fn file_written(&self, name: &str, present: bool) {
        let mut ix = self.index();
        if present {
            ix.files.insert(name.to_string());
        } else {
            ix.files.remove(name);
        }
    }

    /// The bodies of every used slot, read from the file.
    pub fn bodies(&self) -> io::Result<Vec<Vec<u8>>> {
        let _ix = self.index();
        let len = self.file.metadata()?.len();
        let mut raw = vec![0; len as usize];
        self.file.read_exact_at(&mut raw, 0)?;
        Ok(parse(&raw).into_iter().map(|(_, b)| b.to_vec()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> Slots {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        Slots::open(f, HashSet::new(), |b| {
            std::str::from_utf8(b)
                .ok()
                .filter(|s| s.starts_with('r'))
                .map(|s| s.split(':').next().unwrap().to_string())
        })
        .unwrap()
    }

    #[test]
    fn records_are_rewritten_and_cleared_in_place() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(SLOTS_FILE);
        let s = open(&path);
        assert!(s.put("r1", b"r1:a").unwrap());
        assert!(s.put("r2", b"r2:b").unwrap());
        assert!(s.put("r1", b"r1:longer").unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (SLOT + 12) as u64);
        assert!(
            !s.put("big", &vec![b'x'; SLOT]).unwrap(),
            "too large for a slot"
        );
        assert!(s.clear("r1").unwrap());
        assert!(!s.clear("r1").unwrap());
        assert_eq!(s.bodies().unwrap(), vec![b"r2:b".to_vec()]);
        // The cleared slot is the next one used: the file does not grow.
        assert!(s.put("r3", b"r3:c").unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (SLOT + 12) as u64);
        drop(s);

        // Another run finds them; a duplicate and an unreadable slot are free again.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut dup = MAGIC.to_vec();
        dup.extend_from_slice(&4u32.to_le_bytes());
        dup.extend_from_slice(b"r2:x");
        f.write_all_at(&dup, 2 * SLOT as u64).unwrap();
        let mut junk = MAGIC.to_vec();
        junk.extend_from_slice(&3u32.to_le_bytes());
        junk.extend_from_slice(b"???");
        f.write_all_at(&junk, 3 * SLOT as u64).unwrap();
        // A length past the slot's end is no record.
        let mut torn = MAGIC.to_vec();
        torn.extend_from_slice(&u32::MAX.to_le_bytes());
        f.write_all_at(&torn, 4 * SLOT as u64).unwrap();
        let s = open(&path);
        let mut bodies = s.bodies().unwrap();
        bodies.sort();
        assert_eq!(
            bodies,
            vec![b"???".to_vec(), b"r2:b".to_vec(), b"r3:c".to_vec()]
        );
        assert!(s.put("r4", b"r4:d").unwrap());
        assert!(s.put("r5", b"r5:e").unwrap());
        let mut bodies = s.bodies().unwrap();
        bodies.sort();
        assert_eq!(
            bodies,
            vec![
                b"r2:b".to_vec(),
                b"r3:c".to_vec(),
                b"r4:d".to_vec(),
                b"r5:e".to_vec()
            ],
            "the duplicate's and the unreadable slot taken"
        );
        assert!(any_used(&std::fs::read(&path).unwrap()));
        for r in ["r2", "r3", "r4", "r5"] {
            assert!(s.clear(r).unwrap());
        }
        assert!(!any_used(&std::fs::read(&path).unwrap()));
    }
}
