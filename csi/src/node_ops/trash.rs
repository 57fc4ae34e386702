//! Publish targets removed off the request path. Removing a directory frees its block,
//! and on a filesystem mounted with `discard` and without a journal (this project's
//! build hosts) that is a synchronous discard: about 3 ms, ten times a whole publish.
//! NodeUnpublishVolume therefore renames the empty target into `<state>/trash/` when
//! that is on the same filesystem (the path is gone when the call returns, as the spec
//! asks, and a rename frees nothing) and a background thread removes it from there.
//! A crash leaves entries behind, which the next start removes.
//!
//! Pristine empty directories are kept (up to `MAX_SPARES`) and renamed into place by the
//! next publish instead of made anew: on such a filesystem making an inode scans past
//! every recently deleted one, which was a fifth of a publish's CPU time. A steady
//! publish/unpublish cycle then creates and deletes nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use super::remove_target;

/// Beyond this many entries waiting, targets are removed in the request again, so that
/// a disk slower than the publish rate bounds the backlog instead of growing it.
const MAX_PENDING: usize = 4096;
/// Empty directories kept for reuse as publish targets.
const MAX_SPARES: usize = 64;
/// The mode publish gives a target directory; only such directories are reused.
pub(super) const TARGET_DIR_MODE: u32 = 0o750;

#[derive(Debug)]
pub struct Trash {
    dir: PathBuf,
    dev: u64,
    seq: AtomicU64,
    /// This process's id and effective uid, read once (each is a syscall).
    pid: u32,
    euid: u32,
    pending: Arc<AtomicUsize>,
    tx: Mutex<mpsc::Sender<PathBuf>>,
    /// Empty directories in `dir` as publish made them, ready to become a target again.
    spares: Mutex<Vec<PathBuf>>,
}

impl Trash {
    /// Opens `<state_dir>/trash` and starts the remover, which first empties what a
    /// previous run left.
    pub fn open(state_dir: &Path) -> std::io::Result<Trash> {
        let dir = state_dir.join("trash");
        match std::fs::DirBuilder::new().mode_0700().create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let pending = Arc::new(AtomicUsize::new(0));
        for e in std::fs::read_dir(&dir)?.flatten() {
            pending.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(e.path());
        }
        let left = pending.clone();
        std::thread::Builder::new()
            .name("trash".into())
            .spawn(move || {
                for p in rx {
                    remove_target(&p);
                    left.fetch_sub(1, Ordering::Relaxed);
                }
            })?;
        Ok(Trash {
            dir,
            dev: meta.dev(),
            seq: AtomicU64::new(0),
            pid: std::process::id(),
            euid: nix::unistd::geteuid().as_raw(),
            pending,
            tx: Mutex::new(tx),
            spares: Mutex::new(Vec::new()),
        })
    }

    /// Puts a spare directory at `target` if one is kept and `target` is free on the
    /// same filesystem: Some(true) when it is there now, Some(false) when `target` already
    /// exists, None when the caller must make it.
    pub fn reuse_dir(&self, target: &Path) -> Option<bool> {
        let spare = self.spares.lock().expect("trash spares lock").pop()?;
        let moved = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &spare,
            nix::fcntl::AT_FDCWD,
            target,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        );
        match moved {
            Ok(()) => Some(true),
            Err(e) => {
                self.spares.lock().expect("trash spares lock").push(spare);
                (e == nix::errno::Errno::EEXIST).then_some(false)
            }
        }
    }

    /// Removes the target publish created (an empty directory or file), now or soon; the
    /// path is gone when this returns. Anything else is left to `remove_target`.
    pub fn remove(&self, target: &Path) {
        let seen = std::fs::symlink_metadata(target)
            .ok()
            .map(|m| Seen::from(&m));
        self.remove_seen(target, seen);
    }

    /// `remove` with the target's lstat already taken (None: it is gone).
    pub fn remove_seen(&self, target: &Path, seen: Option<Seen>) {
        if !seen.is_some_and(|m| self.moved(target, m)) {
            remove_target(target);
        }
    }

    fn moved(&self, target: &Path, m: Seen) -> bool {
        if self.pending.load(Ordering::Relaxed) >= MAX_PENDING {
            return false;
        }
        let empty = if m.is_dir() {
            crate::sys::fs::dir_is_empty(target).unwrap_or(false)
        } else {
            m.is_file() && m.size == 0
        };
        if !empty || m.dev != self.dev {
            return false;
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let to = self.dir.join(format!("{}.{n}", self.pid));
        if std::fs::rename(target, &to).is_err() {
            return false;
        }
        let pristine = m.is_dir() && m.mode & 0o7777 == TARGET_DIR_MODE && m.uid == self.euid;
        if pristine {
            let mut spares = self.spares.lock().expect("trash spares lock");
            if spares.len() < MAX_SPARES {
                spares.push(to);
                return true;
            }
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self
            .tx
            .lock()
            .expect("trash sender lock")
            .send(to.clone())
            .is_err()
        {
            // The remover is gone (never, short of a panic): do it here.
            self.pending.fetch_sub(1, Ordering::Relaxed);
            remove_target(&to);
        }
        true
    }
}

/// What the trash needs of a target's lstat, from `std::fs` or from `sys::mount::stat`.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Type and permission bits, as st_mode.
    pub mode: u32,
    pub uid: u32,
    pub size: u64,
    pub dev: u64,
}

impl Seen {
    fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

impl From<&std::fs::Metadata> for Seen {
    fn from(m: &std::fs::Metadata) -> Seen {
        Seen {
            mode: m.mode(),
            uid: m.uid(),
            size: m.len(),
            dev: m.dev(),
        }
    }
}

impl From<&crate::sys::mount::PathStat> for Seen {
    fn from(s: &crate::sys::mount::PathStat) -> Seen {
        Seen {
            mode: s.mode,
            uid: s.uid,
            size: s.size,
            dev: nix::sys::stat::makedev(s.dev.0.into(), s.dev.1.into()),
        }
    }
}

trait DirModeExt {
    fn mode_0700(&mut self) -> &mut Self;
}
impl DirModeExt for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_targets_go_at_once_and_others_are_left_alone() {
        let state = tempfile::tempdir().unwrap();
        let t = Trash::open(state.path()).unwrap();
        let d = state.path().join("target");
        std::fs::create_dir(&d).unwrap();
        t.remove(&d);
        assert!(!d.exists());
        let f = state.path().join("block-target");
        std::fs::write(&f, b"").unwrap();
        t.remove(&f);
        assert!(!f.exists());
        // Not empty: not ours to throw away; remove_target leaves it (and logs).
        let full = state.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), b"data").unwrap();
        t.remove(&full);
        assert!(full.join("x").exists());
        // A pristine directory comes back as the next target instead of a new one.
        let d2 = state.path().join("target2");
        std::fs::create_dir(&d2).unwrap();
        std::fs::set_permissions(&d2, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
        let ino = std::fs::metadata(&d2).unwrap().ino();
        t.remove(&d2);
        let again = state.path().join("target3");
        assert_eq!(t.reuse_dir(&again), Some(true));
        assert_eq!(std::fs::metadata(&again).unwrap().ino(), ino);
        // An existing target is not replaced; with no spare left the caller makes one.
        t.remove(&again);
        std::fs::create_dir(&d2).unwrap();
        assert_eq!(t.reuse_dir(&d2), Some(false));
        assert_eq!(t.reuse_dir(&state.path().join("x")), Some(true));
        assert_eq!(t.reuse_dir(&state.path().join("y")), None);
        // The remover empties the trash of everything else.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_dir(state.path().join("trash"))
            .unwrap()
            .next()
            .is_some()
        {
            assert!(std::time::Instant::now() < deadline, "trash not emptied");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn leftovers_of_a_previous_run_are_removed() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state.path().join("trash/1.1")).unwrap();
        let _t = Trash::open(state.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while state.path().join("trash/1.1").exists() {
            assert!(std::time::Instant::now() < deadline, "leftover not removed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
