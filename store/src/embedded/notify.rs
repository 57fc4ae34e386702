//! Cross-process wake-ups. Every commit rewrites, for each kind it changed, a small file
//! `<state-dir>/store.notify.d/<Kind>`, and each store handle has a thread blocked in
//! inotify on that directory: the event names the file, so only the watches of that kind
//! wake. SQLite itself tells other processes nothing, and polling would put a period on
//! every control loop's reaction.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The file a handle touches when it closes, to end listener threads that outlived it.
const CLOSE_FILE: &str = "_close";

/// A kind's file name: kinds are CamelCase identifiers; anything else shares one file.
fn file_name(kind: &str) -> &str {
    if !kind.is_empty() && kind.len() <= 64 && kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
        kind
    } else {
        "_other"
    }
}

/// Per-kind wake-up channels of one handle.
#[derive(Default)]
pub(crate) struct Channels {
    by_kind: Mutex<HashMap<String, Arc<watch::Sender<u64>>>>,
}

impl Channels {
    fn sender(&self, kind: &str) -> Arc<watch::Sender<u64>> {
        let mut map = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(file_name(kind).to_string())
            .or_insert_with(|| Arc::new(watch::channel(0).0))
            .clone()
    }

    /// A receiver woken on every change of `kind`.
    pub(crate) fn subscribe(&self, kind: &str) -> watch::Receiver<u64> {
        self.sender(kind).subscribe()
    }

    /// Wakes the watches of `kind` (of every kind when None).
    pub(crate) fn wake(&self, kind: Option<&str>) {
        let bump = |s: &watch::Sender<u64>| s.send_modify(|n| *n = n.wrapping_add(1));
        match kind {
            Some(kind) => bump(&self.sender(kind)),
            None => {
                let map = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
                map.values().for_each(|s| bump(s));
            }
        }
    }
}

/// The writing side: one per store handle, with the kind files it has opened.
pub(crate) struct Notifier {
    dir: PathBuf,
    files: Mutex<HashMap<String, File>>,
}

fn open_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

impl Notifier {
    pub(crate) fn open(dir: &Path) -> Result<Notifier> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            context: "creating the notify dir",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Notifier {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tells every watcher of `kind`, in every process, that a commit changed it. The
    /// content (the revision) is informational; the IN_MODIFY event is the message.
    pub(crate) fn touch(&self, kind: &str, revision: u64) {
        let name = file_name(kind);
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let result = match files.get(name) {
            Some(f) => f.write_at(&revision.to_le_bytes(), 0),
            None => open_private(&self.dir.join(name)).and_then(|f| {
                let r = f.write_at(&revision.to_le_bytes(), 0);
                files.insert(name.to_string(), f);
                r
            }),
        };
        if let Err(err) = result {
            // Watchers still catch up at their slow safety re-check.
            tracing::warn!(path = %self.dir.join(name).display(), %err, "could not touch a notify file");
        }
    }

    /// Wakes every listener thread on this directory (used when a handle closes).
    pub(crate) fn touch_close(&self) {
        self.touch(CLOSE_FILE, 0);
    }
}

/// The wake-up channels for `dir`, shared by every handle of this process on it: one
/// inotify instance and one thread per store per process, however many handles tests or
/// daemons open (inotify instances are limited per user, 128 by default).
pub(crate) fn channels_for(dir: &Path) -> Result<Arc<Channels>> {
    static LISTENERS: Mutex<Vec<(PathBuf, Weak<Channels>)>> = Mutex::new(Vec::new());
    let key = std::fs::canonicalize(dir).map_err(|source| Error::Io {
        context: "resolving the notify dir",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut listeners = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
    listeners.retain(|(_, w)| w.strong_count() > 0);
    if let Some(ch) = listeners
        .iter()
        .find(|(d, _)| *d == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(ch);
    }
    let channels = Arc::new(Channels::default());
    spawn_listener(&key, Arc::downgrade(&channels))?;
    listeners.push((key, Arc::downgrade(&channels)));
    Ok(channels)
}

/// Starts the thread that turns inotify events in `dir` into wake-ups of `channels`. It
/// ends once the last handle (the strong owners of the channels) is gone and the
/// directory sees another event, which a handle's Drop provides.
fn spawn_listener(dir: &Path, channels: Weak<Channels>) -> Result<()> {
    let io = |source: Errno| Error::Io {
        context: "watching the notify dir",
        path: dir.to_path_buf(),
        source: source.into(),
    };
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(io)?;
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_CREATE,
        )
        .map_err(io)?;
    std::thread::Builder::new()
        .name("store-notify".into())
        .spawn(move || {
            loop {
                match inotify.read_events() {
                    Ok(events) => {
                        let Some(channels) = channels.upgrade() else {
                            return;
                        };
                        for e in &events {
                            let name = e.name.as_ref().and_then(|n| n.to_str());
                            match name {
                                Some(CLOSE_FILE) => {}
                                // An overflowed queue loses names: wake everyone.
                                Some(kind) if !e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) => {
                                    channels.wake(Some(kind))
                                }
                                _ => channels.wake(None),
                            }
                        }
                        // The directory is gone (state dir removed): no more events will come.
                        if events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)) {
                            tracing::warn!("store notify dir removed; watches fall back to re-checks");
                            return;
                        }
                    }
                    Err(Errno::EINTR) => continue,
                    Err(err) => {
                        tracing::warn!(%err, "store notify thread stopped; watches fall back to re-checks");
                        return;
                    }
                }
            }
        })
        .map_err(|source| Error::Io {
            context: "spawning the notify thread for",
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(())
}
