//! The intent journal of a pool: what makes a metadata record (and an empty volume's
//! data) survive power loss for the price of one device flush, shared by concurrent
//! writers.
//!
//! `<pool>/meta/journal` is a preallocated file of fixed slots, written (zeros) and synced
//! once when made. An entry is one slot overwritten in place with `pwrite`, then
//! `fdatasync`: the file's size and blocks never change, so the flush writes the page and
//! flushes the device cache, without a filesystem journal commit (ext4, xfs). The
//! directory, quota and record file the entry describes are written before it, without a
//! flush of their own; after power loss start-up replays the entries (meta.rs) and makes
//! whatever of them is missing again.
//!
//! Group commit: a writer whose entry is not yet on disk either flushes (everything
//! written so far) or, when another writer is flushing, waits for the next flush.
//!
//! Checkpoint: a background thread `syncfs`es the pool's filesystem (every record and
//! directory the entries describe is then on disk) and writes the checkpoint sequence in
//! the header slot; entries up to it are obsolete and their slots are reused. Slots are a
//! ring (`seq % SLOTS`), so a writer waits only if the thread falls a whole ring behind.
//! An open intent (`Kind::Intent`: a create under way) stops checkpoints just before it,
//! and keeps one slot free for the entry that closes it, so that entry never waits.
//!
//! Layout (little endian). Slot 0, header: magic `STRJRNL1`, format u32, slot size u32,
//! slot count u64, checkpoint u64, checksum [8]. Slot 1 + seq % SLOTS, entry: magic u32,
//! kind u8, class u8, name length u16, seq u64, body length u32, checksum [8] (SHA-256 of
//! the fields before it and the payload), payload (name, body). A slot whose checksum
//! fails (a torn write of an entry never acknowledged) is ignored.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::sys;

pub const FILE: &str = "journal";
const FORMAT: u32 = 1;
const HEAD_MAGIC: &[u8; 8] = b"STRJRNL1";
const ENTRY_MAGIC: u32 = 0x3145_4a53; // "SJE1"
pub const SLOT: usize = 4096;
pub const SLOTS: u64 = 1024;
const ENTRY_HEAD: usize = 28;
/// Largest name + body an entry holds; a larger record is made durable on its own.
pub const MAX_PAYLOAD: usize = SLOT - ENTRY_HEAD;
/// The thread checkpoints once this many entries are pending...
const CHECKPOINT_AT: u64 = SLOTS / 2;
/// ... or when entries are pending and none was appended for this long.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);

/// What an entry says about the record `name` of its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The record is `body` (and, for a volume without a content source, so is its data).
    Put = 1,
    /// The record and its object were removed.
    Del = 2,
    /// The record was made durable by itself: replay leaves it as it is.
    Forget = 3,
    /// The volume was staged, so its data may hold what a user wrote: replay writes its
    /// record but never replaces missing data with an empty object (reconciliation
    /// reports it instead). Not flushed by itself.
    Used = 4,
    /// A volume without a content source is being made; `body` names its data object.
    /// Until a later entry of the same record closes it (its Put, or a Del when the create
    /// gave up), replay removes that data and the record file: the create was never
    /// acknowledged. Not flushed by itself (it stands for the intent the state database
    /// would hold, which is not flushed either). While open it holds checkpoints back,
    /// and it keeps a slot free for its closing entry (see `append`).
    Intent = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Put),
            2 => Some(Kind::Del),
            3 => Some(Kind::Forget),
            4 => Some(Kind::Used),
            5 => Some(Kind::Intent),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub kind: Kind,
    pub class: u8,
    pub name: String,
    pub body: Vec<u8>,
}

fn sum(parts: &[&[u8]]) -> [u8; 8] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn head_bytes(checkpoint: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(HEAD_MAGIC);
    b.extend_from_slice(&FORMAT.to_le_bytes());
    b.extend_from_slice(&(SLOT as u32).to_le_bytes());
    b.extend_from_slice(&SLOTS.to_le_bytes());
    b.extend_from_slice(&checkpoint.to_le_bytes());
    let s = sum(&[&b]);
    b.extend_from_slice(&s);
    b
}

/// The checkpoint a header holds; an error names what is wrong with it.
fn parse_head(b: &[u8]) -> std::result::Result<u64, String> {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    if &b[..8] != HEAD_MAGIC {
        return Err("not a strata journal (bad magic)".into());
    }
    if sum(&[&b[..32]]) != b[32..40] {
        return Err("header checksum mismatch".into());
    }
    let format = u32_at(8);
    if format > FORMAT {
        return Err(format!(
            "format {format}, newer than this driver's {FORMAT}"
        ));
    }
    if u32_at(12) as usize != SLOT || u64_at(16) != SLOTS {
        return Err(format!(
            "geometry {} x {} bytes, this driver uses {SLOTS} x {SLOT}",
            u64_at(16),
            u32_at(12)
        ));
    }
    Ok(u64_at(24))
}

fn offset(seq: u64) -> u64 {
    (1 + seq % SLOTS) * SLOT as u64
}

fn encode(e: &Entry) -> Vec<u8> {
    let mut b = vec![0u8; SLOT];
    b[0..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    b[4] = e.kind as u8;
    b[5] = e.class;
    b[6..8].copy_from_slice(&(e.name.len() as u16).to_le_bytes());
    b[8..16].copy_from_slice(&e.seq.to_le_bytes());
    b[16..20].copy_from_slice(&(e.body.len() as u32).to_le_bytes());
    let n = e.name.len();
    b[ENTRY_HEAD..ENTRY_HEAD + n].copy_from_slice(e.name.as_bytes());
    b[ENTRY_HEAD + n..ENTRY_HEAD + n + e.body.len()].copy_from_slice(&e.body);
    let s = sum(&[&b[..20], &b[ENTRY_HEAD..ENTRY_HEAD + n + e.body.len()]]);
    b[20..28].copy_from_slice(&s);
    b
}

fn decode(b: &[u8]) -> Option<Entry> {
    if u32::from_le_bytes(b[0..4].try_into().ok()?) != ENTRY_MAGIC {
        return None;
    }
    let kind = Kind::from_u8(b[4])?;
    let n = u16::from_le_bytes(b[6..8].try_into().ok()?) as usize;
    let seq = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(b[16..20].try_into().ok()?) as usize;
    if n + len > MAX_PAYLOAD {
        return None;
    }
    let payload = &b[ENTRY_HEAD..ENTRY_HEAD + n + len];
    if sum(&[&b[..20], payload]) != b[20..28] {
        return None;
    }
    Some(Entry {
        seq,
        kind,
        class: b[5],
        name: String::from_utf8(payload[..n].to_vec()).ok()?,
        body: payload[n..].to_vec(),
    })
}

#[derive(Debug, Default)]
struct St {
    /// Next sequence number; every entry below it is written (page cache at least).
    next: u64,
    /// Entries up to here are obsolete (their effects synced by a checkpoint).
    checkpoint: u64,
    /// Entries up to here are on disk.
    synced: u64,
    flushing: bool,
    /// A failed flush: the page cache can no longer be trusted to reach the disk, so
    /// every later write fails until the driver restarts (and replays).
    poisoned: Option<String>,
    /// Records with a Put entry after the checkpoint, by (class, name): deleting one must
    /// wait for its tombstone to reach the disk, or replay would make it again.
    live: HashMap<(u8, String), u64>,
    /// Open intents by record, with their sequence numbers: a checkpoint never passes the
    /// oldest (a create cut short after it must still be undone by replay), and each keeps
    /// one slot of the ring free for the entry that closes it.
    intents: HashMap<(u8, String), u64>,
    last_append: Option<Instant>,
    /// The ring is full: checkpoint now.
    urgent: bool,
    /// Tests: no checkpoint unless the ring is full.
    paused: bool,
    stop: bool,
    /// Flushes made, for tests and benchmarks.
    flushes: u64,
}

#[derive(Debug)]
struct Shared {
    /// Locked: one process writes a pool's journal (two would interleave sequences).
    file: nix::fcntl::Flock<File>,
    path: PathBuf,
    /// The pool's root: syncfs(2) of its filesystem.
    fs: File,
    st: Mutex<St>,
    /// Writers wait here: for a flush, or for a checkpoint to free the ring.
    cv: Condvar,
    /// The checkpoint thread waits here, apart from the writers: a flush, which every
    /// create makes, must not wake it for nothing (two context switches each).
    tick: Condvar,
}

/// One pool's journal and its checkpoint thread (stopped when this is dropped).
#[derive(Debug)]
pub struct Journal {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl St {
    /// The furthest a checkpoint may go now: the last entry written, but never up to an
    /// open intent.
    fn limit(&self) -> u64 {
        let last = self.next.saturating_sub(1);
        match self.intents.values().min() {
            Some(oldest) => last.min(oldest.saturating_sub(1)),
            None => last,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_head(&self, checkpoint: u64) -> std::io::Result<()> {
        self.file.write_all_at(&head_bytes(checkpoint), 0)?;
        self.file.sync_data()
    }

    /// syncfs of the pool, then the header: every entry up to the last one written
    /// before the oldest open intent is obsolete. Returns whether there was anything to do.
    fn checkpoint(&self) -> std::io::Result<bool> {
        let target = {
            let st = self.lock();
            let target = st.limit();
            if target <= st.checkpoint || st.poisoned.is_some() {
                return Ok(false);
            }
            target
        };
        // Every entry up to `target` was written after what it describes (meta.rs).
        sys::fs::syncfs(&self.fs)?;
        self.write_head(target)?;
        let mut st = self.lock();
        st.checkpoint = st.checkpoint.max(target);
        st.synced = st.synced.max(target);
        st.live.retain(|_, seq| *seq > target);
        self.cv.notify_all();
        Ok(true)
    }
}

fn checkpoint_loop(s: &Shared) {
    let mut st = s.lock();
    loop {
        if st.stop {
            return;
        }
        let written = st.next.saturating_sub(1).saturating_sub(st.checkpoint);
        // Entries behind an open intent wait for it to close (a create takes
        // milliseconds); its closing entry wakes this thread when the ring is filling.
        let pending = st.limit().saturating_sub(st.checkpoint);
        let idle = st
            .last_append
            .map(|t| t.elapsed() >= CHECKPOINT_IDLE)
            .unwrap_or(false);
        let due = st.urgent || (!st.paused && (pending >= CHECKPOINT_AT || idle));
        if pending == 0 || st.poisoned.is_some() || !due {
            let wait = if written > 0 {
                CHECKPOINT_IDLE
            } else {
                Duration::from_secs(3600)
            };
            st = s
                .tick
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        st.urgent = false;
        drop(st);
        if let Err(e) = s.checkpoint() {
            tracing::error!(path = %s.path.display(), error = %e, "checkpointing the pool's journal");
            let mut st = s.lock();
            st.poisoned
                .get_or_insert_with(|| format!("checkpoint failed: {e}"));
            s.cv.notify_all();
            drop(st);
        }
        st = s.lock();
    }
}

impl Journal {
    /// Opens `meta/journal` of the pool whose `meta` directory is `meta` (making it when
    /// missing) and returns it with the entries that need replay, in order. Nothing is
    /// appended until `resume` is called (after the replay).
    pub fn open(meta: &File, meta_path: &Path, pool_root: File) -> Result<(Journal, Vec<Entry>)> {
        let path = meta_path.join(FILE);
        let file = match sys::fs::open_beneath(meta, FILE, OFlag::O_RDWR, 0) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => make(meta, meta_path)?,
            Err(e) => return Err(Error::io("opening", &path)(e)),
        };
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| match errno {
                nix::errno::Errno::EWOULDBLOCK => Error::invalid(
                    "pool",
                    format!(
                        "{} is locked by another process: is another strata-csi using this pool? \
                         Two drivers must not share a pool",
                        path.display()
                    ),
                ),
                other => Error::io("locking", &path)(other.into()),
            })?;
        let len = file.metadata().map_err(Error::io("stat", &path))?.len();
        let want = (1 + SLOTS) * SLOT as u64;
        if len != want {
            return Err(Error::invalid(
                "pool",
                format!(
                    "{} is {len} bytes, not {want}: not a journal of this driver; a pool's journal \
                     is never resized (move it away only if the pool is otherwise consistent)",
                    path.display()
                ),
            ));
        }
        let mut all = vec![0u8; want as usize];
        file.read_exact_at(&mut all, 0)
            .map_err(Error::io("reading", &path))?;
        let checkpoint = parse_head(&all[..SLOT]).map_err(|why| {
            Error::invalid(
                "pool",
                format!(
                    "{}: {why}; the pool cannot be opened safely",
                    path.display()
                ),
            )
        })?;
        let mut entries: Vec<Entry> = all[SLOT..]
            .chunks_exact(SLOT)
            .filter_map(decode)
            .filter(|e| e.seq > checkpoint)
            .collect();
        entries.sort_by_key(|e| e.seq);
        let last = entries.last().map_or(checkpoint, |e| e.seq);
        let st = St {
            next: last + 1,
            checkpoint,
            synced: last,
            ..St::default()
        };
        let shared = Arc::new(Shared {
            file,
            path,
            fs: pool_root,
            st: Mutex::new(st),
            cv: Condvar::new(),
            tick: Condvar::new(),
        });
        Ok((
            Journal {
                shared,
                thread: None,
            },
            entries,
        ))
    }

    /// After the replay: makes the replayed entries obsolete (they are applied now; a
    /// checkpoint syncs that) and starts the checkpoint thread.
    pub fn resume(&mut self) -> Result<()> {
        self.shared
            .checkpoint()
            .map_err(Error::io("checkpointing", &self.shared.path))?;
        let s = self.shared.clone();
        let t = std::thread::Builder::new()
            .name("meta-journal".into())
            .spawn(move || checkpoint_loop(&s))
            .map_err(Error::io("spawning the journal thread", &self.shared.path))?;
        self.thread = Some(t);
        Ok(())
    }

    /// Writes an entry (page cache only) and returns its sequence number, for `wait`.
    /// Blocks only when the ring is full until the checkpoint frees it.
    pub fn append(&self, kind: Kind, class: u8, name: &str, body: &[u8]) -> Result<u64> {
        if name.len() + body.len() > MAX_PAYLOAD {
            return Err(Error::invalid(
                "journal",
                format!("entry of {} bytes exceeds a slot", name.len() + body.len()),
            ));
        }
        let s = &self.shared;
        let key = (class, name.to_string());
        let mut st = s.lock();
        loop {
            if let Some(p) = &st.poisoned {
                return Err(poisoned(&s.path, p));
            }
            // Slots in use after this entry, counting one for each open intent's closing
            // entry: the entry that closes an intent already has its slot, so it never
            // waits for a checkpoint that its own intent holds back.
            let closes =
                !matches!(kind, Kind::Intent | Kind::Used) && st.intents.contains_key(&key);
            let reserved = st.intents.len() as u64;
            let needed = match kind {
                _ if closes => st.next - st.checkpoint,
                Kind::Intent => st.next - st.checkpoint + reserved + 1,
                _ => st.next - st.checkpoint + reserved,
            };
            if needed <= SLOTS {
                break;
            }
            // A ring behind: wake the checkpoint thread and wait for it.
            st.urgent = true;
            s.tick.notify_one();
            st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let seq = st.next;
        let e = Entry {
            seq,
            kind,
            class,
            name: name.to_string(),
            body: body.to_vec(),
        };
        // Written under the lock, so every entry below `next` is written.
        if let Err(err) = s.file.write_all_at(&encode(&e), offset(seq)) {
            return Err(Error::io("writing", &s.path)(err));
        }
        st.next += 1;
        match kind {
            Kind::Put => {
                st.intents.remove(&key);
                st.live.insert(key, seq);
            }
            Kind::Del | Kind::Forget => {
                st.intents.remove(&key);
                st.live.remove(&key);
            }
            Kind::Used => {}
            Kind::Intent => {
                st.intents.entry(key).or_insert(seq);
            }
        }
        st.last_append = Some(Instant::now());
        if st.next - 1 - st.checkpoint >= CHECKPOINT_AT {
            s.tick.notify_one();
        }
        Ok(seq)
    }

    /// Whether the journal holds a Put for this record after the checkpoint.
    pub fn is_live(&self, class: u8, name: &str) -> bool {
        self.shared
            .lock()
            .live
            .contains_key(&(class, name.to_string()))
    }

    /// Returns once entry `seq` is on disk: flushes, or waits for the flush another
    /// writer has under way and then, if that did not cover `seq`, flushes.
    pub fn wait(&self, seq: u64) -> Result<()> {
        let s = &self.shared;
        let mut st = s.lock();
        loop {
            if st.synced >= seq {
                return Ok(());
            }
            if let Some(p) = &st.poisoned {
                return Err(poisoned(&s.path, p));
            }
            if st.flushing {
                st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.flushing = true;
            let target = st.next - 1;
            drop(st);
            let r = s.file.sync_data();
            st = s.lock();
            st.flushing = false;
            st.flushes += 1;
            match r {
                Ok(()) => st.synced = st.synced.max(target),
                Err(e) => {
                    tracing::error!(path = %s.path.display(), error = %e, "flushing the pool's journal");
                    st.poisoned
                        .get_or_insert_with(|| format!("flush failed: {e}"));
                }
            }
            s.cv.notify_all();
        }
    }

    /// Flushes made so far.
    pub fn flushes(&self) -> u64 {
        self.shared.lock().flushes
    }

    /// Intents not closed yet (tests).
    #[cfg(test)]
    pub fn open_intents(&self) -> usize {
        self.shared.lock().intents.len()
    }

    /// Tests: the thread checkpoints only when the ring is full, so that what a test
    /// journals stays in the journal.
    #[cfg(test)]
    pub fn pause_checkpoints(&self) {
        self.shared.lock().paused = true;
    }

    /// Checkpoints now (tests; the thread does it by itself).
    pub fn checkpoint_now(&self) -> Result<bool> {
        self.shared
            .checkpoint()
            .map_err(Error::io("checkpointing", &self.shared.path))
    }
}

fn poisoned(path: &Path, why: &str) -> Error {
    Error::Io {
        op: "writing to the pool's journal",
        path: path.to_path_buf(),
        source: std::io::Error::other(format!(
            "{why}; no metadata is written to this pool until the driver restarts"
        )),
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.tick.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes the journal: zeros and the header written and synced under a temporary name,
/// then renamed into place and the directory synced, so a crash leaves no partial one.
fn make(meta: &File, meta_path: &Path) -> Result<File> {
    let tmp = format!("{FILE}.tmp");
    let tmp_path = meta_path.join(&tmp);
    let f = sys::fs::open_beneath(
        meta,
        &tmp,
        OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_RDWR,
        0o600,
    )
    .map_err(Error::io("creating", &tmp_path))?;
    let zeros = vec![0u8; SLOT * 64];
    let total = (1 + SLOTS) * SLOT as u64;
    let mut off = 0;
    while off < total {
        let n = (total - off).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off)
            .map_err(Error::io("writing", &tmp_path))?;
        off += n as u64;
    }
    f.write_all_at(&head_bytes(0), 0)
        .map_err(Error::io("writing", &tmp_path))?;
    sys::fs::sync(&f).map_err(Error::io("fsync", &tmp_path))?;
    nix::fcntl::renameat(meta, tmp.as_str(), meta, FILE)
        .map_err(|e| Error::io("renaming into", meta_path.join(FILE))(e.into()))?;
    meta.sync_all().map_err(Error::io("fsync", meta_path))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Journal, Vec<Entry>) {
        let meta = sys::fs::open_dir(dir).unwrap();
        let root = sys::fs::open_dir(dir).unwrap();
        Journal::open(&meta, dir, root).unwrap()
    }

    #[test]
    fn entries_come_back_until_a_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, replay) = open(d.path());
        assert!(replay.is_empty());
        j.resume().unwrap();
        let a = j.append(Kind::Put, 1, "a.json", b"{\"a\":1}").unwrap();
        let b = j.append(Kind::Del, 1, "b.json", b"").unwrap();
        j.wait(b).unwrap();
        assert!(j.is_live(1, "a.json") && !j.is_live(1, "b.json"));
        drop(j);
        let (mut j, replay) = open(d.path());
        let got: Vec<_> = replay
            .iter()
            .map(|e| (e.seq, e.kind, e.name.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(a, Kind::Put, "a.json"), (b, Kind::Del, "b.json")]
        );
        assert_eq!(replay[0].body, b"{\"a\":1}");
        // Applied and checkpointed by resume: nothing to replay next time.
        j.resume().unwrap();
        let c = j.append(Kind::Put, 2, "c.json", b"x").unwrap();
        assert!(c > b, "sequence numbers continue after a restart");
        drop(j);
        let (_j, replay) = open(d.path());
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].name, "c.json");
    }

    #[test]
    fn one_process_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let (_j, _) = open(d.path());
        let meta = sys::fs::open_dir(d.path()).unwrap();
        let root = sys::fs::open_dir(d.path()).unwrap();
        let err = Journal::open(&meta, d.path(), root).unwrap_err();
        assert!(err.to_string().contains("another strata-csi"), "{err}");
        drop(_j);
        let (_j, _) = open(d.path());
    }

    #[test]
    fn torn_and_foreign_slots_are_ignored_and_a_bad_header_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = open(d.path());
        j.resume().unwrap();
        let a = j.append(Kind::Put, 1, "a.json", b"aaaa").unwrap();
        let b = j.append(Kind::Put, 1, "b.json", b"bbbb").unwrap();
        j.wait(b).unwrap();
        drop(j);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join(FILE))
            .unwrap();
        // A torn write of the second entry: its body half changed.
        f.write_all_at(b"XX", offset(b) + ENTRY_HEAD as u64 + 7)
            .unwrap();
        let (_j, replay) = open(d.path());
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![a]);
        drop(_j);
        f.write_all_at(b"garbage!", 0).unwrap();
        let meta = sys::fs::open_dir(d.path()).unwrap();
        let root = sys::fs::open_dir(d.path()).unwrap();
        let err = Journal::open(&meta, d.path(), root).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn the_ring_wraps_after_checkpoints() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = open(d.path());
        j.resume().unwrap();
        let mut last = 0;
        for i in 0..(SLOTS * 2 + 5) {
            last = j.append(Kind::Put, 1, &format!("{i}.json"), b"{}").unwrap();
        }
        j.wait(last).unwrap();
        drop(j);
        let head = std::fs::read(d.path().join(FILE)).unwrap();
        let checkpoint = parse_head(&head[..SLOT]).unwrap();
        assert!(
            checkpoint >= last - SLOTS,
            "the ring was reused only after checkpoints"
        );
        let (_j, replay) = open(d.path());
        // Everything after the last checkpoint, in order, and nothing older. (On a slow
        // machine the idle checkpoint may have taken everything: then nothing replays.)
        assert_eq!(replay.len() as u64, last - checkpoint);
        if let Some(e) = replay.last() {
            assert_eq!(e.seq, last);
        }
        assert!(replay.iter().all(|e| e.seq > checkpoint));
        assert!(replay.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    }

    #[test]
    fn concurrent_writers_share_flushes() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = open(d.path());
        j.resume().unwrap();
        let j = Arc::new(j);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let s = j
                            .append(Kind::Put, 1, &format!("{t}-{i}.json"), b"{}")
                            .unwrap();
                        j.wait(s).unwrap();
                        assert!(j.shared.lock().synced >= s);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Never more flushes than entries; each wait returned only once its entry was on disk.
        assert!(j.flushes() <= 400);
    }

    /// An open intent holds checkpoints back and keeps a slot for the entry that closes
    /// it: that entry is written at once with the ring otherwise full (a writer that is
    /// not closing an intent waits), and once it is, checkpoints pass the intent.
    #[test]
    fn an_open_intent_holds_checkpoints_and_its_closing_slot() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = open(d.path());
        j.resume().unwrap();
        j.pause_checkpoints();
        j.append(Kind::Put, 1, "before.json", b"{}").unwrap();
        let intent = j.append(Kind::Intent, 1, "v.json", b"v").unwrap();
        j.append(Kind::Put, 1, "after.json", b"{}").unwrap();
        assert!(j.checkpoint_now().unwrap());
        assert_eq!(
            j.shared.lock().checkpoint,
            intent - 1,
            "stopped before the intent"
        );
        assert!(
            !j.checkpoint_now().unwrap(),
            "nothing more while it is open"
        );
        let mut n = 0;
        loop {
            let full = {
                let st = j.shared.lock();
                st.next - st.checkpoint >= SLOTS
            };
            if full {
                break;
            }
            j.append(Kind::Put, 1, &format!("{n}.json"), b"{}").unwrap();
            n += 1;
        }
        let j = Arc::new(j);
        let waiter = {
            let j = j.clone();
            std::thread::spawn(move || j.append(Kind::Put, 1, "late.json", b"{}").unwrap())
        };
        let closed = j.append(Kind::Put, 1, "v.json", b"{}").unwrap();
        let late = waiter.join().unwrap();
        assert!(
            late > closed,
            "the other writer waited for the closing entry"
        );
        let st = j.shared.lock();
        assert!(st.intents.is_empty());
        assert!(
            st.checkpoint >= intent,
            "the checkpoint passed the closed intent"
        );
    }
}
