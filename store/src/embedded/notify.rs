//! Cross-process wake-ups: every commit rewrites a small file next to the database, and
//! each store handle has a thread blocked in inotify on it. SQLite itself tells other
//! processes nothing, and polling would put a period on every control loop's reaction.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Weak;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The writing side: one per store handle.
pub(crate) struct NotifyFile {
    file: File,
    path: PathBuf,
}

impl NotifyFile {
    pub(crate) fn open(path: &Path) -> Result<NotifyFile> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(|source| Error::Io {
                context: "opening the notify file",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(NotifyFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Tells every watcher, in every process, that a commit happened. The content (the
    /// revision) is informational; the IN_MODIFY event is the message.
    pub(crate) fn touch(&self, revision: u64) {
        if let Err(err) = self.file.write_at(&revision.to_le_bytes(), 0) {
            // Watchers still catch up at their slow safety re-check.
            tracing::warn!(path = %self.path.display(), %err, "could not touch the notify file");
        }
    }
}

/// Starts the thread that turns inotify events on `path` into bumps of `sender`. It ends
/// once the store handle (the only strong owner of the sender) is gone and the file is
/// touched again, which the handle's Drop does.
pub(crate) fn spawn_listener(path: &Path, sender: Weak<watch::Sender<u64>>) -> Result<()> {
    let io = |source: Errno| Error::Io {
        context: "watching the notify file",
        path: path.to_path_buf(),
        source: source.into(),
    };
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(io)?;
    inotify
        .add_watch(
            path,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE,
        )
        .map_err(io)?;
    std::thread::Builder::new()
        .name("store-notify".into())
        .spawn(move || {
            loop {
                match inotify.read_events() {
                    Ok(events) => {
                        match sender.upgrade() {
                            Some(s) => s.send_modify(|n| *n = n.wrapping_add(1)),
                            None => return,
                        }
                        // The file is gone (state dir removed): no more events will come.
                        if events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)) {
                            tracing::warn!("store notify file removed; watches fall back to re-checks");
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
            path: path.to_path_buf(),
            source,
        })?;
    Ok(())
}
