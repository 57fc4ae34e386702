//! Project quota enforcement of the `dir` backend, on xfs (prjquota) and ext4 (project
//! feature, prjquota). Needs a kernel with xfs/ext4 quota support: where the prjquota
//! mount fails, each test prints "SKIPPED ..." and passes, unless
//! STRATA_REQUIRE_PROJECT_QUOTA=1, which makes it fail instead (scripts/vm-test runs
//! these in a VM with Debian's kernel that way, selecting them by the `project_quota_`
//! prefix).
//!
//! The tests drive the backend through its library API, so that this binary needs only
//! mkfs.xfs, mkfs.ext4, losetup and mount: no driver binary, no network. Writes that must
//! hit the limit run as an unprivileged user in a child (this binary again, running
//! `quota_writer_helper`): ext4 lets CAP_SYS_RESOURCE past project quotas.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use strata_csi::backend::dir::DirPool;
use strata_csi::backend::{Backend, DataRef, Source, TreeObjects};
use testkit::{LoopPool, PoolFs};

const MIB: u64 = 1 << 20;

/// The quota-mounted pool, or None (after saying why) when this kernel cannot have one.
fn quota_pool(test: &str, fs: PoolFs) -> Option<LoopPool> {
    if !testkit::require_root(test) {
        return None;
    }
    match LoopPool::new(fs) {
        Ok(p) => Some(p),
        Err(e) => {
            if std::env::var("STRATA_REQUIRE_PROJECT_QUOTA").as_deref() == Ok("1") {
                panic!("{test}: STRATA_REQUIRE_PROJECT_QUOTA=1 but the prjquota mount failed: {e}");
            }
            eprintln!(
                "SKIPPED {test}: kernel has no project quotas ({e}); scripts/vm-test runs this in a VM"
            );
            None
        }
    }
}

/// The unprivileged user the quota-bound writes run as.
const NOBODY: u32 = 65534;
const WRITE_PATH: &str = "STRATA_QUOTA_WRITE_PATH";
const WRITE_BYTES: &str = "STRATA_QUOTA_WRITE_BYTES";

/// Not a test of its own: the body of the child that `write_as_nobody` starts.
#[test]
fn quota_writer_helper() {
    let (Ok(path), Ok(bytes)) = (std::env::var(WRITE_PATH), std::env::var(WRITE_BYTES)) else {
        return;
    };
    let (n, err) = write(Path::new(&path), bytes.parse().unwrap());
    println!(
        "WROTE {n} ERRNO {}",
        err.and_then(|e| e.raw_os_error()).unwrap_or(0)
    );
}

/// Writes `bytes` into `path` as user nobody (owner of the file's directory for the
/// duration); returns (written, errno or 0).
fn write_as_nobody(path: &Path, bytes: u64) -> (u64, i32) {
    use std::os::unix::process::CommandExt;
    let dir = path.parent().unwrap();
    std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "quota_writer_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITE_PATH, path)
        .env(WRITE_BYTES, bytes.to_string())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    std::os::unix::fs::chown(dir, Some(0), Some(0)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The harness prints its own words around ours, on the same line.
    let line = text
        .split("WROTE ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| {
            panic!(
                "writer child said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (n, errno) = line.split_once(" ERRNO ").unwrap();
    let errno = errno.split_whitespace().next().unwrap_or_default();
    (n.parse().unwrap(), errno.parse().unwrap())
}

/// Writes `bytes` into `path` in 1 MiB chunks, fsyncing; returns (written, error).
fn write(path: &Path, bytes: u64) -> (u64, Option<std::io::Error>) {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0x5au8; MIB as usize];
    let mut n = 0;
    while n < bytes {
        if let Err(e) = f.write_all(&chunk) {
            return (n, Some(e));
        }
        n += MIB;
    }
    match f.sync_all() {
        Ok(()) => (n, None),
        Err(e) => (n, Some(e)),
    }
}

fn limits_writes_and_grows_online(pool: &LoopPool) {
    let p = DirPool::open("q", pool.path(), true).expect("a quota-mounted pool opens enforced");
    assert!(p.pool_condition().is_none(), "enforced pools are healthy");
    let v = DataRef::volume("vquota.img");
    let other = DataRef::volume("vother.img");
    p.create(v, 16 * MIB, None).unwrap();
    p.create(other, 16 * MIB, None).unwrap();
    let dir = p.path(v);
    // Let nobody reach the volume directories (the pool keeps volumes/ at 0700).
    let volumes = dir.parent().unwrap();
    std::fs::set_permissions(volumes, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();

    // Past the limit: EDQUOT (or ENOSPC), after at most the limit went in.
    let (n, errno) = write_as_nobody(&dir.join("big"), 32 * MIB);
    assert!(
        errno == libc::EDQUOT || errno == libc::ENOSPC,
        "wrote {n} bytes into a 16 MiB quota, then errno {errno}"
    );
    assert!(n <= 16 * MIB, "wrote {n}");

    // Usage is this project's, from the quota; the neighbour's bytes are not in it.
    assert!(write(&p.path(other).join("n"), 8 * MIB).1.is_none());
    let u = p.usage(v).unwrap();
    assert_eq!(u.bytes_limit, 16 * MIB);
    assert!(
        u.bytes_used >= n.saturating_sub(MIB) && u.bytes_used <= 16 * MIB,
        "{u:?}"
    );
    assert!(u.inodes_used >= 2, "the directory and the file: {u:?}");
    assert_eq!(p.size(v).unwrap(), Some(16 * MIB));

    // Online growth: the same directory takes more at once.
    std::fs::remove_file(dir.join("big")).unwrap();
    p.grow(v, 48 * MIB).unwrap();
    assert_eq!(p.usage(v).unwrap().bytes_limit, 48 * MIB);
    let (n, errno) = write_as_nobody(&dir.join("big"), 32 * MIB);
    assert_eq!((n, errno), (32 * MIB, 0), "after growth");

    // A restore gets a project and a limit of its own, and the content.
    let s = DataRef::snapshot("squota.img");
    p.create(s, 0, Some(Source { pool: &p, obj: v })).unwrap();
    let r = DataRef::volume("vrestored.img");
    p.create(r, 40 * MIB, Some(Source { pool: &p, obj: s }))
        .unwrap();
    let ru = p.usage(r).unwrap();
    assert_eq!(ru.bytes_limit, 40 * MIB);
    assert_eq!(
        std::fs::metadata(p.path(r).join("big")).unwrap().len(),
        32 * MIB
    );

    // Projects survive a reopen (the directories carry their ids): a new volume gets a
    // fresh project, not one in use.
    drop(p);
    let p = DirPool::open("q", pool.path(), true).unwrap();
    let fresh = DataRef::volume("vfresh.img");
    p.create(fresh, 8 * MIB, None).unwrap();
    assert!(write(&p.path(fresh).join("f"), 4 * MIB).1.is_none());
    assert_eq!(p.usage(v).unwrap().bytes_limit, 48 * MIB, "v's limit kept");
    let fu = p.usage(fresh).unwrap();
    assert!(
        fu.bytes_used >= 4 * MIB && fu.bytes_used < 5 * MIB,
        "{fu:?}"
    );

    for img in [v, other, r, fresh, s] {
        assert!(p.remove(img).unwrap());
    }
}

#[test]
fn project_quota_xfs_limits_writes_and_grows_online() {
    let test = "project_quota_xfs_limits_writes_and_grows_online";
    if let Some(pool) = quota_pool(test, PoolFs::XfsPrjquota(320 << 20)) {
        limits_writes_and_grows_online(&pool);
    }
}

#[test]
fn project_quota_ext4_limits_writes_and_grows_online() {
    let test = "project_quota_ext4_limits_writes_and_grows_online";
    if let Some(pool) = quota_pool(test, PoolFs::Ext4Prjquota(256 << 20)) {
        limits_writes_and_grows_online(&pool);
    }
}
