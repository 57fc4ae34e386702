//! Project quota enforcement of the `dir` backend, on xfs (prjquota) and ext4 (project
//! feature, prjquota). Needs a kernel with xfs/ext4 quota support: where the prjquota
//! mount fails, each test prints "SKIPPED ..." and passes, unless
//! STRATA_REQUIRE_PROJECT_QUOTA=1, which makes it fail instead (scripts/vm-test runs
//! these in a VM with Debian's kernel that way, selecting them by the `project_quota_`
//! prefix).
//!
//! The tests drive the backend through its library API, so that this binary needs only
//! mkfs.xfs, mkfs.ext4, losetup and mount: no driver binary, no network.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use strata_csi::backend::dir::DirPool;
use strata_csi::backend::{Backend, ImageRef, Source};
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
    let v = ImageRef::volume("vquota.img");
    let other = ImageRef::volume("vother.img");
    p.create(v, 16 * MIB, None).unwrap();
    p.create(other, 16 * MIB, None).unwrap();
    let dir = p.path(v);

    // Past the limit: EDQUOT (or ENOSPC), after at most the limit went in.
    let (n, err) = write(&dir.join("big"), 32 * MIB);
    let err = err.unwrap_or_else(|| panic!("wrote {n} bytes past a 16 MiB quota"));
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT) | Some(libc::ENOSPC)),
        "{err}"
    );
    assert!(n <= 16 * MIB, "wrote {n}");

    // Usage is this project's, from the quota; the neighbour's bytes are not in it.
    assert!(write(&p.path(other).join("n"), 8 * MIB).1.is_none());
    let u = p.usage(v).unwrap().unwrap();
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
    assert_eq!(p.usage(v).unwrap().unwrap().bytes_limit, 48 * MIB);
    let (n, err) = write(&dir.join("big"), 32 * MIB);
    assert!(err.is_none(), "after growth: {n} then {err:?}");

    // A restore gets a project and a limit of its own, and the content.
    let s = ImageRef::snapshot("squota.img");
    p.create(s, 0, Some(Source { pool: &p, obj: v })).unwrap();
    let r = ImageRef::volume("vrestored.img");
    p.create(r, 40 * MIB, Some(Source { pool: &p, obj: s }))
        .unwrap();
    let ru = p.usage(r).unwrap().unwrap();
    assert_eq!(ru.bytes_limit, 40 * MIB);
    assert_eq!(
        std::fs::metadata(p.path(r).join("big")).unwrap().len(),
        32 * MIB
    );
    // A restore smaller than its content cannot be made, and leaves nothing.
    let tiny = ImageRef::volume("vtiny.img");
    assert!(
        p.create(tiny, 4 * MIB, Some(Source { pool: &p, obj: s }))
            .is_err()
    );
    assert!(p.size(tiny).unwrap().is_none(), "failed restore removed");

    // Projects survive a reopen (the directories carry their ids): a new volume gets a
    // fresh project, not one in use.
    drop(p);
    let p = DirPool::open("q", pool.path(), true).unwrap();
    let fresh = ImageRef::volume("vfresh.img");
    p.create(fresh, 8 * MIB, None).unwrap();
    assert!(write(&p.path(fresh).join("f"), 4 * MIB).1.is_none());
    assert_eq!(
        p.usage(v).unwrap().unwrap().bytes_limit,
        48 * MIB,
        "v's limit kept"
    );
    let fu = p.usage(fresh).unwrap().unwrap();
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
