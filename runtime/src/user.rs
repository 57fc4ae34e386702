//! An image config's `User` turned into the uid, gid and supplementary gids of the
//! container process, looked up in the container's own /etc/passwd and /etc/group.
//!
//! Accepted forms (OCI image-spec config.md `User`): `user`, `uid`, `user:group`,
//! `uid:gid`, `uid:group`, `user:gid`; empty means root. The outcome follows
//! containerd's `WithUser` plus `WithAdditionalGIDs` (pkg/oci/spec_opts.go):
//!
//! - without a group part, the gid is the passwd entry's primary gid, and 0 for a
//!   numeric uid that has no entry;
//! - a name that is in neither file is an error, never a silent root;
//! - the supplementary gids are the groups that list the user's passwd name as a
//!   member, whether or not a group part was given (containerd's behaviour; the
//!   image-spec text says to ignore them then, containerd and so Kubernetes do not).
//!
//! The files are opened beneath the rootfs with openat2(RESOLVE_IN_ROOT) (see
//! [`crate::resolve`]): an image whose /etc/passwd is a symlink to an absolute path
//! gets that path inside its rootfs, never the host's file.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};
use crate::resolve::open_in_root;

/// Larger account databases are refused: real ones are kilobytes, and the files come
/// from untrusted image layers.
pub const MAX_DATABASE_BYTES: u64 = 4 << 20;

const PASSWD: &str = "etc/passwd";
const GROUP: &str = "etc/group";

/// The identity a container process runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Sorted, without duplicates and without `gid`.
    pub additional_gids: Vec<u32>,
}

/// Resolves image config `user` against the account files of the rootfs at `rootfs`
/// (a directory: the mounted overlay, or any unpacked tree).
#[tracing::instrument(skip_all, fields(user = %user))]
pub fn resolve_image_user(rootfs: &Path, user: &str) -> Result<ResolvedUser> {
    let spec = parse_user_spec(user)?;
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening rootfs", rootfs)(e.into()))?;
    let passwd = read_database(&root, rootfs, PASSWD)?
        .map(|b| parse_passwd(&b))
        .unwrap_or_default();
    let groups = read_database(&root, rootfs, GROUP)?
        .map(|b| parse_group(&b))
        .unwrap_or_default();
    let resolved = resolve(&spec, &passwd, &groups).map_err(|missing| {
        let (what, name, file) = match missing {
            Missing::User(n) => ("user", n, PASSWD),
            Missing::Group(n) => ("group", n, GROUP),
        };
        Error::invalid(
            what,
            format!(
                "no {what} named {name:?} in /{file} of {}",
                rootfs.display()
            ),
        )
    })?;
    tracing::debug!(
        uid = resolved.uid,
        gid = resolved.gid,
        additional_gids = ?resolved.additional_gids,
        "resolved image user"
    );
    Ok(resolved)
}

/// The bytes of `rel` beneath `root`, or `None` when it does not exist (a dangling
/// symlink included: resolved in the root, its target is simply absent).
fn read_database(root: &rustix::fd::OwnedFd, rootfs: &Path, rel: &str) -> Result<Option<Vec<u8>>> {
    let shown = rootfs.join(rel);
    // NONBLOCK: a FIFO planted at /etc/passwd must not hang the open; it is refused
    // below as not a regular file. NOCTTY: a tty there must not become ours.
    let fd = match open_in_root(
        root,
        Path::new(rel),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
    ) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(None);
        }
        Err(e) => return Err(Error::io("opening", &shown)(e)),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(Error::io("inspecting", &shown))?;
    if !meta.file_type().is_file() {
        return Err(Error::invalid(
            "user database",
            format!("/{rel} of {} is not a regular file", rootfs.display()),
        ));
    }
    let too_big = |size: u64| {
        Error::invalid(
            "user database",
            format!(
                "/{rel} of {} is {size} bytes, over the {MAX_DATABASE_BYTES}-byte limit",
                rootfs.display()
            ),
        )
    };
    if meta.len() > MAX_DATABASE_BYTES {
        return Err(too_big(meta.len()));
    }
    // Bounded read as well: the file may grow between fstat and read.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_DATABASE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io("reading", &shown))?;
    if bytes.len() as u64 > MAX_DATABASE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// One part of a user spec: a number, or a name to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Id {
    Num(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct UserSpec {
    user: Id,
    group: Option<Id>,
}

/// A name the account files do not know.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Missing {
    User(String),
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// A decimal id. `None` unless every byte is a digit; u32::MAX is refused because
/// setresuid(2) and friends read (uid_t)-1 as "leave unchanged".
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&n| n != u32::MAX)
}

fn parse_part(part: &str, field: &'static str, whole: &str) -> Result<Id> {
    if part.is_empty() {
        return Err(Error::invalid(
            field,
            format!("{whole:?} has an empty {field}"),
        ));
    }
    if part.bytes().all(|b| b.is_ascii_digit()) {
        // All digits yet not an id: out of range, not a name to look up.
        return parse_id(part).map(Id::Num).ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "{whole:?}: {part} is not an id between 0 and {}",
                    u32::MAX - 1
                ),
            )
        });
    }
    Ok(Id::Name(part.to_string()))
}

fn parse_user_spec(s: &str) -> Result<UserSpec> {
    if s.is_empty() {
        return Ok(UserSpec {
            user: Id::Num(0),
            group: Some(Id::Num(0)),
        });
    }
    let mut parts = s.split(':');
    let user = parse_part(parts.next().unwrap_or_default(), "user", s)?;
    let group = parts
        .next()
        .map(|g| parse_part(g, "group", s))
        .transpose()?;
    if parts.next().is_some() {
        return Err(Error::invalid(
            "user",
            format!("{s:?} has more than one `:` (want user[:group])"),
        ));
    }
    Ok(UserSpec { user, group })
}

/// Lines that are neither blank nor `#` comments, and are valid UTF-8.
fn records(bytes: &[u8]) -> impl Iterator<Item = &str> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
}

/// passwd(5): `name:password:UID:GID:GECOS:directory:shell`. Lines with another
/// field count, an empty name or a non-numeric id are skipped.
fn parse_passwd(bytes: &[u8]) -> Vec<PasswdEntry> {
    records(bytes)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() != 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: parse_id(f[2])?,
                gid: parse_id(f[3])?,
            })
        })
        .collect()
}

/// group(5): `group_name:password:GID:user_list`, the list comma separated.
fn parse_group(bytes: &[u8]) -> Vec<GroupEntry> {
    records(bytes)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() != 4 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: parse_id(f[2])?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The lookup itself; the first entry wins, as with getpwnam(3).
fn resolve(
    spec: &UserSpec,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ResolvedUser, Missing> {
    let (uid, entry) = match &spec.user {
        Id::Name(n) => {
            let e = passwd
                .iter()
                .find(|e| &e.name == n)
                .ok_or_else(|| Missing::User(n.clone()))?;
            (e.uid, Some(e))
        }
        Id::Num(uid) => (*uid, passwd.iter().find(|e| e.uid == *uid)),
    };
    let gid = match &spec.group {
        None => entry.map_or(0, |e| e.gid),
        Some(Id::Num(gid)) => *gid,
        Some(Id::Name(n)) => {
            groups
                .iter()
                .find(|g| &g.name == n)
                .ok_or_else(|| Missing::Group(n.clone()))?
                .gid
        }
    };
    // Membership is by name, so only a user with a passwd entry has supplementary groups.
    let additional_gids: BTreeSet<u32> = entry
        .map(|e| {
            groups
                .iter()
                .filter(|g| g.gid != gid && g.members.contains(&e.name))
                .map(|g| g.gid)
                .collect()
        })
        .unwrap_or_default();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional_gids.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment:x:9:9:c:/:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
app:x:1000:1000:App,,,:/home/app:/bin/sh
broken:x:1001:1001:too:few
alsobroken:x:abc:1002:gecos:/:/bin/sh
negative:x:-5:1003:gecos:/:/bin/sh
:x:1004:1004:no name:/:/bin/sh
app:x:1999:1999:a duplicate, ignored:/:/bin/sh
nogid:x:1005::gecos:/:/bin/sh
";

    const GROUP_TEXT: &str = "\
root:x:0:
daemon:x:1:app
www-data:x:33:
app:x:1000:app
video:x:44:www-data, app ,
audio:x:29:app,app
broken:x:45
badgid:x:x46:app
staff:x:50:other
";

    fn db() -> (Vec<PasswdEntry>, Vec<GroupEntry>) {
        (
            parse_passwd(PASSWD_TEXT.as_bytes()),
            parse_group(GROUP_TEXT.as_bytes()),
        )
    }

    fn ok(user: &str) -> ResolvedUser {
        let (p, g) = db();
        resolve(&parse_user_spec(user).unwrap(), &p, &g).unwrap()
    }

    fn ru(uid: u32, gid: u32, additional_gids: &[u32]) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
        }
    }

    #[test]
    fn passwd_skips_comments_blank_and_malformed_lines() {
        let names: Vec<(String, u32, u32)> = parse_passwd(PASSWD_TEXT.as_bytes())
            .into_iter()
            .map(|e| (e.name, e.uid, e.gid))
            .collect();
        assert_eq!(
            names,
            vec![
                ("root".into(), 0, 0),
                ("daemon".into(), 1, 1),
                ("www-data".into(), 33, 33),
                ("app".into(), 1000, 1000),
                ("app".into(), 1999, 1999),
            ]
        );
    }

    #[test]
    fn group_parses_member_lists() {
        let groups = parse_group(GROUP_TEXT.as_bytes());
        let video = groups.iter().find(|g| g.name == "video").unwrap();
        assert_eq!(video.gid, 44);
        assert_eq!(video.members, vec!["www-data", "app"]);
        assert!(
            groups
                .iter()
                .find(|g| g.name == "root")
                .unwrap()
                .members
                .is_empty()
        );
        assert!(
            !groups
                .iter()
                .any(|g| g.name == "broken" || g.name == "badgid")
        );
        assert_eq!(groups.len(), 7);
    }

    #[test]
    fn non_utf8_lines_are_skipped_not_fatal() {
        let mut bytes = b"bad\xff:x:5:5:g:/:/bin/sh\n".to_vec();
        bytes.extend_from_slice(b"good:x:6:7:g:/:/bin/sh");
        let p = parse_passwd(&bytes);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].name.as_str(), p[0].uid, p[0].gid), ("good", 6, 7));
    }

    #[test]
    fn empty_means_root_with_roots_groups() {
        assert_eq!(ok(""), ru(0, 0, &[]));
        let p = parse_passwd(b"root:x:0:0:r:/root:/bin/sh\n");
        let g = parse_group(b"root:x:0:root\nwheel:x:10:root\n");
        assert_eq!(
            resolve(&parse_user_spec("").unwrap(), &p, &g).unwrap(),
            ru(0, 0, &[10])
        );
    }

    #[test]
    fn name_alone_takes_primary_gid_and_member_groups() {
        // daemon(1), audio(29, listed twice), video(44) and app(1000, the primary gid).
        assert_eq!(ok("app"), ru(1000, 1000, &[1, 29, 44]));
        assert_eq!(ok("www-data"), ru(33, 33, &[44]));
        assert_eq!(ok("root"), ru(0, 0, &[]));
    }

    #[test]
    fn uid_alone_uses_its_passwd_entry_or_gid_zero() {
        assert_eq!(ok("1000"), ru(1000, 1000, &[1, 29, 44]));
        assert_eq!(ok("33"), ru(33, 33, &[44]));
        // No entry: gid 0 and no supplementary groups.
        assert_eq!(ok("4242"), ru(4242, 0, &[]));
        // Leading zeros are still decimal.
        assert_eq!(ok("0033"), ru(33, 33, &[44]));
    }

    #[test]
    fn explicit_group_keeps_supplementary_groups() {
        assert_eq!(ok("app:video"), ru(1000, 44, &[1, 29, 1000]));
        assert_eq!(ok("app:7"), ru(1000, 7, &[1, 29, 44, 1000]));
        assert_eq!(ok("1000:www-data"), ru(1000, 33, &[1, 29, 44, 1000]));
        assert_eq!(ok("1000:1000"), ru(1000, 1000, &[1, 29, 44]));
        // Unknown uid with a group name: the group still resolves.
        assert_eq!(ok("4242:video"), ru(4242, 44, &[]));
        assert_eq!(ok("4242:4343"), ru(4242, 4343, &[]));
    }

    #[test]
    fn unknown_names_are_errors() {
        let (p, g) = db();
        let missing = |s: &str| resolve(&parse_user_spec(s).unwrap(), &p, &g).unwrap_err();
        assert_eq!(missing("nobody"), Missing::User("nobody".into()));
        assert_eq!(missing("nobody:0"), Missing::User("nobody".into()));
        assert_eq!(missing("app:nogroup"), Missing::Group("nogroup".into()));
        assert_eq!(missing("0:nogroup"), Missing::Group("nogroup".into()));
        // Names in malformed lines or comments were never entries.
        assert_eq!(missing("broken"), Missing::User("broken".into()));
        assert_eq!(missing("# a comment"), Missing::User("# a comment".into()));
        assert_eq!(missing("app:badgid"), Missing::Group("badgid".into()));
        // No files at all: names are unknown, numbers still work.
        let none = |s: &str| resolve(&parse_user_spec(s).unwrap(), &[], &[]);
        assert_eq!(none("app").unwrap_err(), Missing::User("app".into()));
        assert_eq!(none("5:6").unwrap(), ru(5, 6, &[]));
        assert_eq!(none("5").unwrap(), ru(5, 0, &[]));
    }

    #[test]
    fn malformed_specs_are_refused() {
        for bad in [
            ":",
            "app:",
            ":app",
            "a:b:c",
            "1:2:3",
            "4294967295",
            "0:4294967295",
            "4294967296",
            "99999999999999999999",
        ] {
            let err = parse_user_spec(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument { .. }),
                "{bad:?}: {err}"
            );
        }
        // Signs and spaces are not numbers; such parts are names (and then unknown).
        assert_eq!(parse_user_spec("+5").unwrap().user, Id::Name("+5".into()));
        assert_eq!(parse_user_spec(" 5").unwrap().user, Id::Name(" 5".into()));
        assert_eq!(
            parse_user_spec("4294967294:0").unwrap(),
            UserSpec {
                user: Id::Num(u32::MAX - 1),
                group: Some(Id::Num(0))
            }
        );
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        t
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn reads_the_rootfs_files() {
        let t = tree();
        write(t.path(), PASSWD, PASSWD_TEXT);
        write(t.path(), GROUP, GROUP_TEXT);
        assert_eq!(
            resolve_image_user(t.path(), "app").unwrap(),
            ru(1000, 1000, &[1, 29, 44])
        );
        let err = resolve_image_user(t.path(), "nobody")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nobody\"") && err.contains("/etc/passwd"),
            "{err}"
        );
        let err = resolve_image_user(t.path(), "app:nogroup")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nogroup\"") && err.contains("/etc/group"),
            "{err}"
        );
    }

    #[test]
    fn missing_files_mean_no_names() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(resolve_image_user(t.path(), "").unwrap(), ru(0, 0, &[]));
        assert_eq!(resolve_image_user(t.path(), "7").unwrap(), ru(7, 0, &[]));
        assert!(resolve_image_user(t.path(), "app").is_err());
        // /etc being a file is the same as no account files.
        write(t.path(), "etc", "not a dir");
        assert_eq!(resolve_image_user(t.path(), "7:8").unwrap(), ru(7, 8, &[]));
        // A missing rootfs is an error, not "no names".
        assert!(resolve_image_user(&t.path().join("absent"), "0").is_err());
    }

    #[test]
    fn absolute_symlink_resolves_inside_the_rootfs() {
        let host = tempfile::tempdir().unwrap();
        let host_passwd = host.path().join("passwd");
        std::fs::write(&host_passwd, "app:x:7777:7777:host:/:/bin/sh\n").unwrap();
        let t = tree();
        // The same absolute path, inside the rootfs, holds the image's own entry.
        let inside = host_passwd.strip_prefix("/").unwrap();
        write(
            t.path(),
            inside.to_str().unwrap(),
            "app:x:4242:4343:img:/:/bin/sh\n",
        );
        std::os::unix::fs::symlink(&host_passwd, t.path().join(PASSWD)).unwrap();
        // `..` past the root stays at the root too.
        std::os::unix::fs::symlink("../../../../../../../etc/grp", t.path().join(GROUP)).unwrap();
        write(t.path(), "etc/grp", "extra:x:5000:app\n");
        assert_eq!(
            resolve_image_user(t.path(), "app").unwrap(),
            ru(4242, 4343, &[5000])
        );
        // Without the inside copy the symlink dangles: no names, not the host's file.
        std::fs::remove_file(t.path().join(inside)).unwrap();
        let err = resolve_image_user(t.path(), "app").unwrap_err().to_string();
        assert!(err.contains("no user named \"app\""), "{err}");
    }

    #[test]
    fn oversized_database_is_refused() {
        let t = tree();
        write(t.path(), GROUP, "");
        let f = File::create(t.path().join(PASSWD)).unwrap();
        f.set_len(MAX_DATABASE_BYTES + 1).unwrap();
        let err = resolve_image_user(t.path(), "0").unwrap_err().to_string();
        assert!(
            err.contains("/etc/passwd") && err.contains("limit"),
            "{err}"
        );
        // Exactly at the limit is read (a sparse file of NULs: no valid lines).
        f.set_len(MAX_DATABASE_BYTES).unwrap();
        assert_eq!(resolve_image_user(t.path(), "0").unwrap(), ru(0, 0, &[]));
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let t = tree();
        nix::unistd::mkfifo(
            &t.path().join(PASSWD),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = resolve_image_user(t.path(), "0").unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_file(t.path().join(PASSWD)).unwrap();
        std::fs::create_dir(t.path().join(GROUP)).unwrap();
        let err = resolve_image_user(t.path(), "0").unwrap_err().to_string();
        assert!(
            err.contains("/etc/group") && err.contains("not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn proc_symlink_stays_in_the_rootfs() {
        let t = tree();
        std::os::unix::fs::symlink("/proc/self/fd/0", t.path().join(PASSWD)).unwrap();
        // Resolved in the root, /proc does not exist there: no names.
        assert_eq!(resolve_image_user(t.path(), "3").unwrap(), ru(3, 0, &[]));
    }

    #[test]
    fn apply_image_user_sets_ids_or_changes_nothing() {
        let t = tree();
        write(t.path(), PASSWD, PASSWD_TEXT);
        write(t.path(), GROUP, GROUP_TEXT);
        let mut cfg = crate::ContainerConfig {
            additional_gids: vec![9],
            ..Default::default()
        };
        cfg.apply_image_user(t.path(), "www-data").unwrap();
        assert_eq!(
            (cfg.uid, cfg.gid, cfg.additional_gids.clone()),
            (33, 33, vec![44])
        );
        let before = cfg.clone();
        assert!(cfg.apply_image_user(t.path(), "nobody").is_err());
        assert!(cfg.apply_image_user(t.path(), "a:b:c").is_err());
        assert_eq!(cfg, before);
    }

    /// Every string over a small alphabet up to five characters: parsing never panics,
    /// what parses renders back to the same string, and what fails has a reason.
    #[test]
    fn user_spec_parsing_over_all_short_strings() {
        const ALPHABET: [char; 7] = [':', '0', '9', 'a', '-', '+', ' '];
        fn render(id: &Id) -> String {
            match id {
                Id::Num(n) => n.to_string(),
                Id::Name(n) => n.clone(),
            }
        }
        let mut inputs = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            frontier = frontier
                .iter()
                .flat_map(|p| ALPHABET.iter().map(move |c| format!("{p}{c}")))
                .collect();
            inputs.extend(frontier.iter().cloned());
        }
        let (mut parsed, mut refused) = (0, 0);
        for s in &inputs[1..] {
            match parse_user_spec(s) {
                Ok(spec) => {
                    parsed += 1;
                    let mut back = render(&spec.user);
                    if let Some(g) = &spec.group {
                        back = format!("{back}:{}", render(g));
                    }
                    // Leading zeros are the only digits that do not survive rendering.
                    let canon = |t: &str| {
                        t.split(':')
                            .map(|p| match parse_id(p) {
                                Some(n) => n.to_string(),
                                None => p.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(":")
                    };
                    assert_eq!(back, canon(s), "{s:?}");
                    assert!(s.matches(':').count() <= 1, "{s:?}");
                }
                Err(_) => {
                    refused += 1;
                    assert!(
                        s.matches(':').count() > 1 || s.split(':').any(str::is_empty),
                        "{s:?} refused for no reason"
                    );
                }
            }
        }
        assert!(parsed > 1000 && refused > 1000, "{parsed} {refused}");
    }

    /// Supplementary gids are sorted, unique, never the primary gid, and only groups
    /// listing the user, whatever the tables hold.
    #[test]
    fn additional_gids_invariants_over_generated_tables() {
        let names = ["a", "b", "c"];
        let mut seed = 0x2545_f491_u32;
        let mut next = move |m: u32| {
            // xorshift: a fixed sequence, so a failure reproduces.
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % m
        };
        for _ in 0..500 {
            let mut group_text = String::new();
            for g in 0..next(6) {
                let members: Vec<&str> = names.iter().copied().filter(|_| next(2) == 0).collect();
                group_text += &format!("g{g}:x:{}:{}\n", next(5), members.join(","));
            }
            let passwd_text: String = names
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{n}:x:{i}:{}:g:/:/bin/sh\n", next(5)))
                .collect();
            let (p, g) = (
                parse_passwd(passwd_text.as_bytes()),
                parse_group(group_text.as_bytes()),
            );
            for user in ["a", "b:3", "2", "2:g0", "9", "c:1"] {
                let Ok(r) = resolve(&parse_user_spec(user).unwrap(), &p, &g) else {
                    continue; // g0 absent from this table
                };
                assert!(r.additional_gids.windows(2).all(|w| w[0] < w[1]), "{r:?}");
                assert!(!r.additional_gids.contains(&r.gid), "{r:?}");
                let name = p.iter().find(|e| e.uid == r.uid).map(|e| e.name.clone());
                for gr in &g {
                    if gr.gid != r.gid && name.as_ref().is_some_and(|n| gr.members.contains(n)) {
                        assert!(
                            r.additional_gids.contains(&gr.gid),
                            "{user}: {gr:?} missing"
                        );
                    }
                }
                for extra in &r.additional_gids {
                    assert!(
                        g.iter().any(|gr| gr.gid == *extra
                            && name.as_ref().is_some_and(|n| gr.members.contains(n))),
                        "{user}: {extra} is not a group of the user\n{group_text}"
                    );
                }
            }
        }
    }
}
