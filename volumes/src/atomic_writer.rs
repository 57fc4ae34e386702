//! The kubelet's atomic writer (k8s-semantics §1), with its crash leaks fixed.
//!
//! Layout of a volume directory, identical to the kubelet's:
//!
//! ```text
//! <target>/..2026_05_01_12_00_00.3184577812/   one complete version of the payload
//! <target>/..data -> ..2026_05_01_12_00_00.3184577812
//! <target>/<first component> -> ..data/<first component>
//! ```
//!
//! The only switch a reader can see is the `rename(..data_tmp, ..data)`, so every file is
//! old or new, and a reader that resolves `..data` once sees one whole version.
//!
//! Differences from upstream, all deliberate (k8s-semantics §1.6, §1.8, k8s#139474):
//! * a stale `..data_tmp` and leaked version directories left by a crash are removed at the
//!   start of the next write (only `..`-prefixed names, which belong to the writer);
//! * any failure before the swap removes what this write created and leaves the previous
//!   version untouched; the caller must not tear the volume down;
//! * links are pruned by what they are (`X -> ..data/X` whose `X` is no longer in the
//!   payload), so dangling links left by a crash are healed too;
//! * bad keys, duplicate keys after cleaning and file/directory clashes (`a` and `a/b`) are
//!   rejected before anything changes;
//! * every name is reached through a directory fd without following symlinks.
//!
//! The writer holds no lock: callers serialise writes per target directory.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode};
use nix::unistd::{Gid, Uid};

use crate::dirfd;
use crate::error::{Context, Error, Result};

/// The symlink that names the live version.
pub const DATA_LINK: &str = "..data";
/// The symlink that is renamed over [`DATA_LINK`].
pub const DATA_TMP_LINK: &str = "..data_tmp";

/// Limits from k8s-semantics §1.3 (Linux PATH_MAX and NAME_MAX).
const MAX_PATH_LEN: usize = 4096;
const MAX_NAME_LEN: usize = 255;

/// One file of a payload.
#[derive(Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits, `0..=0o777`.
    pub mode: u32,
    /// Owner to give the file and its top-level link (service account tokens, k8s-semantics §2.5).
    pub fs_user: Option<u32>,
}

impl std::fmt::Debug for FileProjection {
    // Payloads carry Secret bytes: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileProjection")
            .field("len", &self.data.len())
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("fs_user", &self.fs_user)
            .finish()
    }
}

/// Relative path → file. Keys are validated and cleaned by [`AtomicWriter::write`].
pub type Payload = BTreeMap<String, FileProjection>;

/// The points at which a [`WriteOptions::failpoint`] hook is called, in order. Hooks for
/// `CleanStale`, `WriteFile`, `CreateLink` and `Prune` run once per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CleanStale,
    CreateVersionDir,
    WriteFile,
    SetPerms,
    LinkDataTmp,
    SwapData,
    CreateLink,
    Prune,
    RemoveOld,
}

/// A hook called before each [`Step`]; crash tests abort the process in it, error tests
/// return an error from it.
pub type Failpoint<'a> = &'a (dyn Fn(Step) -> Result<()> + Sync);

#[derive(Clone, Copy, Default)]
pub struct WriteOptions<'a> {
    /// The pod's fsGroup: the permission pass of k8s-semantics §1.5 (chgrp, files |= 0440, dirs |= 02550).
    pub fs_group: Option<u32>,
    pub failpoint: Option<Failpoint<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The bytes were already live; only links were checked.
    Unchanged,
    /// A new version directory is live.
    Written { version: String },
}

/// One consistent version of a volume, read through a single resolution of `..data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub version: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Publishes payloads into one volume directory.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    target: PathBuf,
}

/// Checks one payload key against k8s-semantics §1.3 and returns its cleaned form.
///
/// Beyond upstream: NUL bytes are refused, a key that cleans to nothing (`.`, `./`) is
/// refused, and the `..` prefix rule is also applied after cleaning (`./..data` would
/// otherwise land in the writer's namespace).
pub fn validate_path(path: &str) -> Result<String> {
    let bad = |reason| {
        Err(Error::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("must not be empty");
    }
    if path.starts_with('/') {
        return bad("must be relative");
    }
    if path.len() > MAX_PATH_LEN {
        return bad("longer than 4096 bytes");
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.contains(&"..") {
        return bad("must not contain '..'");
    }
    if parts.iter().any(|p| p.len() > MAX_NAME_LEN) {
        return bad("has an element longer than 255 bytes");
    }
    if parts[0].starts_with("..") {
        return bad("must not start with '..'");
    }
    let clean: Vec<&str> = parts
        .into_iter()
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if clean.is_empty() {
        return bad("names the volume root");
    }
    if clean[0].starts_with("..") {
        return bad("must not start with '..'");
    }
    Ok(clean.join("/"))
}

/// Validates every key and mode; rejects duplicates after cleaning and file/dir clashes.
fn validate_payload(payload: &Payload) -> Result<BTreeMap<String, &FileProjection>> {
    let mut files = BTreeMap::new();
    for (key, file) in payload {
        let clean = validate_path(key)?;
        if file.mode > 0o777 {
            return Err(Error::InvalidMode {
                path: key.clone(),
                mode: file.mode as i32,
            });
        }
        if let Some(prev) = files.insert(clean.clone(), file) {
            let _ = prev;
            return Err(Error::PathConflict {
                first: clean.clone(),
                second: key.clone(),
            });
        }
    }
    for key in files.keys() {
        let mut at = 0;
        while let Some(i) = key[at..].find('/') {
            let prefix = &key[..at + i];
            if files.contains_key(prefix) {
                return Err(Error::PathConflict {
                    first: prefix.to_owned(),
                    second: key.clone(),
                });
            }
            at += i + 1;
        }
    }
    Ok(files)
}

fn first_component(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

fn is_version_name(name: &str) -> bool {
    name.starts_with("..")
        && name.len() > 2
        && !name.contains('/')
        && name != DATA_LINK
        && name != DATA_TMP_LINK
}

impl AtomicWriter {
    /// `target` is the volume directory; it must exist.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
        }
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Publishes `payload` as the volume's complete content (k8s-semantics §1.4, with the fixes above).
    ///
    /// On an error before the swap the previous version stays live and whole. An error
    /// after the swap (making links, pruning, removing the old version) leaves the new
    /// version live; the next write finishes the job.
    pub fn write(&self, payload: &Payload, opts: WriteOptions<'_>) -> Result<WriteOutcome> {
        let fail = |step| opts.failpoint.map_or(Ok(()), |f| f(step));
        let files = validate_payload(payload)?;
        let root = dirfd::open_dir(&self.target)?;
        let root = root.as_fd();

        let old = self.current_version(root)?;
        self.clean_stale(root, old.as_deref(), &fail)?;

        let needs_write = match &old {
            None => true,
            Some(old) => self.differs(root, old, &files)?,
        };
        let outcome = if needs_write {
            let version = self.write_version(root, &files, opts.fs_group, &fail)?;
            tracing::debug!(target_dir = %self.target.display(), %version, "published new version");
            WriteOutcome::Written { version }
        } else {
            WriteOutcome::Unchanged
        };

        // Runs on a no-op write too, so links lost to a crash after a swap come back
        // (k8s#121472).
        self.ensure_links(root, &files, opts.fs_group, &fail)?;
        self.prune_links(root, &files, &fail)?;

        if let (WriteOutcome::Written { .. }, Some(old)) = (&outcome, old) {
            fail(Step::RemoveOld)?;
            if let Err(err) = dirfd::remove_all_at(root, OsStr::new(&old), &self.target) {
                // The new version is live; the next write removes the leftover.
                tracing::warn!(target_dir = %self.target.display(), error = %err, "removing old version");
            }
        }
        Ok(outcome)
    }

    /// The live version's directory name, from `..data`.
    fn current_version(&self, root: BorrowedFd<'_>) -> Result<Option<String>> {
        let text = match dirfd::readlink_at(root, OsStr::new(DATA_LINK)) {
            Ok(t) => t,
            Err(Errno::EINVAL) => return Err(self.corrupt("..data is not a symlink")),
            Err(e) => return Err(e).at("read link", self.target.join(DATA_LINK)),
        };
        let Some(text) = text else { return Ok(None) };
        match text.to_str() {
            Some(name) if is_version_name(name) => {
                // A link to a version that no longer exists counts as no version.
                let exists = dirfd::lstat_at(root, &text)
                    .at("stat", self.target.join(&text))?
                    .is_some_and(|st| dirfd::is_dir(&st));
                Ok(exists.then(|| name.to_owned()))
            }
            _ => Err(self.corrupt(format!("..data points to {text:?}"))),
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::CorruptVolume {
            path: self.target.clone(),
            reason: reason.into(),
        }
    }

    /// Removes writer-owned leftovers of an interrupted write: `..data_tmp` and every
    /// version directory other than the live one.
    fn clean_stale(
        &self,
        root: BorrowedFd<'_>,
        live: Option<&str>,
        fail: &dyn Fn(Step) -> Result<()>,
    ) -> Result<()> {
        for name in dirfd::list(root, &self.target)? {
            let bytes = name.as_bytes();
            if !bytes.starts_with(b"..") || bytes == b".." || bytes == DATA_LINK.as_bytes() {
                continue;
            }
            if live.is_some_and(|l| l.as_bytes() == bytes) {
                continue;
            }
            fail(Step::CleanStale)?;
            tracing::info!(target_dir = %self.target.display(), entry = ?name, "removing leftover of an interrupted write");
            dirfd::remove_all_at(root, &name, &self.target)?;
        }
        Ok(())
    }

    /// True when the payload's bytes differ from the live version, or the live version
    /// holds paths the payload no longer has (k8s-semantics §1.4 steps 3-4; modes and owners are not
    /// compared, as upstream).
    fn differs(
        &self,
        root: BorrowedFd<'_>,
        old: &str,
        files: &BTreeMap<String, &FileProjection>,
    ) -> Result<bool> {
        let old_path = self.target.join(old);
        let dir = dirfd::open_dir_at(root, OsStr::new(old), &self.target)?;
        for (key, file) in files {
            match dirfd::read_beneath(dir.as_fd(), Path::new(key)).at("read", old_path.join(key))? {
                Some(bytes) if bytes == file.data => {}
                _ => return Ok(true),
            }
        }
        let mut keep: BTreeSet<&str> = BTreeSet::new();
        for key in files.keys() {
            let mut at = 0;
            while let Some(i) = key[at..].find('/') {
                keep.insert(&key[..at + i]);
                at += i + 1;
            }
            keep.insert(key);
        }
        let mut old_paths = Vec::new();
        walk(dir.as_fd(), "", &old_path, &mut old_paths)?;
        Ok(old_paths.iter().any(|p| !keep.contains(p.as_str())))
    }

    /// Steps 5-9: a new version directory, swapped in. On error everything this call made
    /// is removed again and the old version is untouched.
    fn write_version(
        &self,
        root: BorrowedFd<'_>,
        files: &BTreeMap<String, &FileProjection>,
        fs_group: Option<u32>,
        fail: &dyn Fn(Step) -> Result<()>,
    ) -> Result<String> {
        fail(Step::CreateVersionDir)?;
        let name = create_version_dir(root, &self.target)?;
        let result = (|| {
            let vpath = self.target.join(&name);
            let vdir = dirfd::open_dir_at(root, OsStr::new(&name), &self.target)?;
            for (key, file) in files {
                fail(Step::WriteFile)?;
                let rel = Path::new(key);
                let parent = rel.parent().unwrap_or(Path::new(""));
                let file_name = rel.file_name().unwrap_or(OsStr::new(key));
                let dir = dirfd::mkdir_all_at(vdir.as_fd(), parent, &vpath)?;
                let fd = dirfd::create_file_at(
                    dir.as_fd(),
                    file_name,
                    &file.data,
                    file.mode,
                    &vpath.join(parent),
                )?;
                if let Some(uid) = file.fs_user {
                    nix::unistd::fchown(fd.as_fd(), Some(Uid::from_raw(uid)), None)
                        .at("chown", vpath.join(key))?;
                }
            }
            if let Some(gid) = fs_group {
                fail(Step::SetPerms)?;
                apply_fs_group(vdir.as_fd(), gid, 0o440, &vpath)?;
            }
            fail(Step::LinkDataTmp)?;
            nix::unistd::symlinkat(name.as_str(), root, DATA_TMP_LINK)
                .at("create link", self.target.join(DATA_TMP_LINK))?;
            fail(Step::SwapData)?;
            // rename(2) replaces ..data atomically: readers see the old or the new link.
            nix::fcntl::renameat(root, DATA_TMP_LINK, root, DATA_LINK)
                .at("rename", self.target.join(DATA_TMP_LINK))?;
            Ok(())
        })();
        if let Err(err) = result {
            self.undo_version(root, &name);
            return Err(err);
        }
        Ok(name)
    }

    /// Best-effort removal of a version that never went live; what stays behind is
    /// removed by the next write's stale pass.
    fn undo_version(&self, root: BorrowedFd<'_>, name: &str) {
        if let Ok(Some(text)) = dirfd::readlink_at(root, OsStr::new(DATA_TMP_LINK))
            && text == name
        {
            let _ =
                nix::unistd::unlinkat(root, DATA_TMP_LINK, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        if let Err(err) = dirfd::remove_all_at(root, OsStr::new(name), &self.target) {
            tracing::warn!(target_dir = %self.target.display(), error = %err, "removing unfinished version");
        }
    }

    /// Step 10: one `F -> ..data/F` link per first component; existing entries are left
    /// alone. With fsGroup the links, `..data` and the root join the group too.
    fn ensure_links(
        &self,
        root: BorrowedFd<'_>,
        files: &BTreeMap<String, &FileProjection>,
        fs_group: Option<u32>,
        fail: &dyn Fn(Step) -> Result<()>,
    ) -> Result<()> {
        let mut seen = BTreeSet::new();
        for (key, file) in files {
            let first = first_component(key);
            if !seen.insert(first) {
                continue;
            }
            let path = self.target.join(first);
            if dirfd::lstat_at(root, OsStr::new(first))
                .at("stat", &path)?
                .is_some()
            {
                continue;
            }
            fail(Step::CreateLink)?;
            let text = format!("{DATA_LINK}/{first}");
            match nix::unistd::symlinkat(text.as_str(), root, first) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).at("create link", &path),
            }
            if let Some(uid) = file.fs_user {
                nix::unistd::fchownat(
                    root,
                    first,
                    Some(Uid::from_raw(uid)),
                    None,
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .at("chown", &path)?;
            }
        }
        if let Some(gid) = fs_group {
            let gid = Some(Gid::from_raw(gid));
            for name in seen.iter().copied().chain([DATA_LINK]) {
                let st =
                    dirfd::lstat_at(root, OsStr::new(name)).at("stat", self.target.join(name))?;
                if st.is_some_and(|st| dirfd::is_symlink(&st)) {
                    nix::unistd::fchownat(root, name, None, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .at("chown", self.target.join(name))?;
                }
            }
            nix::unistd::fchown(root, None, gid).at("chown", &self.target)?;
            let st = nix::sys::stat::fstat(root).at("stat", &self.target)?;
            let mode = (st.st_mode & 0o7777) | 0o2550;
            nix::sys::stat::fchmod(root, Mode::from_bits_truncate(mode))
                .at("chmod", &self.target)?;
        }
        Ok(())
    }

    /// Step 11: removes top-level links of the form `X -> ..data/X` whose `X` is no longer
    /// in the payload. Nothing else at the top level is touched (nested mount points).
    fn prune_links(
        &self,
        root: BorrowedFd<'_>,
        files: &BTreeMap<String, &FileProjection>,
        fail: &dyn Fn(Step) -> Result<()>,
    ) -> Result<()> {
        let wanted: BTreeSet<&str> = files.keys().map(|k| first_component(k)).collect();
        for name in dirfd::list(root, &self.target)? {
            if name.as_bytes().starts_with(b"..") {
                continue;
            }
            if name.to_str().is_some_and(|n| wanted.contains(n)) {
                continue;
            }
            let path = self.target.join(&name);
            let Some(st) = dirfd::lstat_at(root, &name).at("stat", &path)? else {
                continue;
            };
            if !dirfd::is_symlink(&st) {
                continue;
            }
            let Some(text) = dirfd::readlink_at(root, &name).at("read link", &path)? else {
                continue;
            };
            let mut expected = OsString::from(format!("{DATA_LINK}/"));
            expected.push(&name);
            if text != expected {
                continue;
            }
            fail(Step::Prune)?;
            match nix::unistd::unlinkat(
                root,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e).at("remove", &path),
            }
        }
        Ok(())
    }
}

/// Makes `..<UTC YYYY_MM_DD_HH_MM_SS>.<random u32>` with mode 0755 regardless of umask.
fn create_version_dir(root: BorrowedFd<'_>, shown: &Path) -> Result<String> {
    let stamp = utc_stamp(std::time::SystemTime::now());
    loop {
        let name = format!("..{stamp}.{}", random_u32());
        match nix::sys::stat::mkdirat(root, name.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) => {
                nix::sys::stat::fchmodat(
                    root,
                    name.as_str(),
                    Mode::from_bits_truncate(0o755),
                    FchmodatFlags::FollowSymlink,
                )
                .at("chmod", shown.join(&name))?;
                return Ok(name);
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e).at("create directory", shown.join(&name)),
        }
    }
}

fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom")
        && f.read_exact(&mut buf).is_ok()
    {
        return u32::from_ne_bytes(buf);
    }
    // Uniqueness, not secrecy, is what matters here; EEXIST retries cover collisions.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (std::process::id() << 7))
        .unwrap_or(0)
}

/// `YYYY_MM_DD_HH_MM_SS` in UTC (days-to-civil from H. Hinnant's date algorithms).
pub(crate) fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Collects every relative path (files and directories) below `dir`.
fn walk(dir: BorrowedFd<'_>, prefix: &str, shown: &Path, out: &mut Vec<String>) -> Result<()> {
    for name in dirfd::list(dir, shown)? {
        let name = name.to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let st = dirfd::lstat_at(dir, OsStr::new(&name)).at("stat", shown.join(&name))?;
        if st.is_some_and(|st| dirfd::is_dir(&st)) {
            let sub = dirfd::open_dir_at(dir, OsStr::new(&name), shown)?;
            walk(sub.as_fd(), &rel, &shown.join(&name), out)?;
        }
        out.push(rel);
    }
    Ok(())
}

/// The permission pass of k8s-semantics §1.5: chgrp everything to `gid`, files |= `file_mask` (0440 for
/// these read-only volumes, 0660 for writable ones), directories |= `file_mask` | 02110;
/// symlinks are chgrp'd only and never followed.
pub(crate) fn apply_fs_group(
    dir: BorrowedFd<'_>,
    gid: u32,
    file_mask: u32,
    shown: &Path,
) -> Result<()> {
    let g = Some(Gid::from_raw(gid));
    nix::unistd::fchown(dir, None, g).at("chown", shown)?;
    let st = nix::sys::stat::fstat(dir).at("stat", shown)?;
    nix::sys::stat::fchmod(
        dir,
        Mode::from_bits_truncate((st.st_mode & 0o7777) | 0o2550),
    )
    .at("chmod", shown)?;
    for name in dirfd::list(dir, shown)? {
        let path = shown.join(&name);
        let Some(st) = dirfd::lstat_at(dir, &name).at("stat", &path)? else {
            continue;
        };
        if dirfd::is_symlink(&st) {
            nix::unistd::fchownat(dir, name.as_os_str(), None, g, AtFlags::AT_SYMLINK_NOFOLLOW)
                .at("chown", &path)?;
        } else if dirfd::is_dir(&st) {
            let sub: OwnedFd = dirfd::open_dir_at(dir, &name, shown)?;
            apply_fs_group(sub.as_fd(), gid, file_mask, &path)?;
        } else {
            nix::unistd::fchownat(dir, name.as_os_str(), None, g, AtFlags::AT_SYMLINK_NOFOLLOW)
                .at("chown", &path)?;
            // This directory is not live yet and no container can reach it, so the name
            // cannot have been swapped for a link since the lstat above.
            let mode = (st.st_mode & 0o7777) | file_mask;
            nix::sys::stat::fchmodat(
                dir,
                name.as_os_str(),
                Mode::from_bits_truncate(mode),
                FchmodatFlags::FollowSymlink,
            )
            .at("chmod", &path)?;
        }
    }
    Ok(())
}

/// Reads one whole version: resolves `..data` once and reads every file below that
/// directory through fds (k8s-semantics §1.6: the way a consistent reader must read). If a write
/// swapped and removed that version mid-read, files can vanish under the reader, so the
/// read is retried until `..data` still names the version that was read.
pub fn read_snapshot(target: &Path) -> Result<Snapshot> {
    const ATTEMPTS: usize = 100;
    let root = dirfd::open_dir(target)?;
    let mut attempt = 0;
    loop {
        let version = live_version(root.as_fd(), target)?;
        let result = read_version(root.as_fd(), target, &version);
        let still = live_version(root.as_fd(), target)?;
        attempt += 1;
        if still == version {
            return result.map(|files| Snapshot { version, files });
        }
        if attempt >= ATTEMPTS {
            return Err(Error::CorruptVolume {
                path: target.to_owned(),
                reason: format!("..data changed during each of {ATTEMPTS} reads"),
            });
        }
    }
}

fn live_version(root: BorrowedFd<'_>, target: &Path) -> Result<String> {
    let version = dirfd::readlink_at(root, OsStr::new(DATA_LINK))
        .at("read link", target.join(DATA_LINK))?
        .ok_or_else(|| Error::CorruptVolume {
            path: target.to_owned(),
            reason: "no ..data link".into(),
        })?;
    let version = version.to_string_lossy().into_owned();
    if !is_version_name(&version) {
        return Err(Error::CorruptVolume {
            path: target.to_owned(),
            reason: format!("..data points to {version:?}"),
        });
    }
    Ok(version)
}

fn read_version(
    root: BorrowedFd<'_>,
    target: &Path,
    version: &str,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let vpath = target.join(version);
    let vdir = dirfd::open_dir_at(root, OsStr::new(version), target)?;
    let mut paths = Vec::new();
    walk(vdir.as_fd(), "", &vpath, &mut paths)?;
    let mut files = BTreeMap::new();
    for rel in paths {
        let fd = match dirfd::open_beneath(vdir.as_fd(), Path::new(&rel), OFlag::O_RDONLY) {
            Ok(fd) => fd,
            Err(e) => return Err(e).at("open", vpath.join(&rel)),
        };
        let st = nix::sys::stat::fstat(fd.as_fd()).at("stat", vpath.join(&rel))?;
        if dirfd::is_dir(&st) {
            continue;
        }
        let mut buf = Vec::new();
        std::fs::File::from(fd)
            .read_to_end(&mut buf)
            .at("read", vpath.join(&rel))?;
        files.insert(rel, buf);
    }
    Ok(files)
}

#[cfg(test)]
mod tests;
