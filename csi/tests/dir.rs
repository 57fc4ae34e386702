//! The `dir` backend through the real binary, where this kernel allows: a pool run with
//! `enforce=false` (loud warning, abnormal condition, sizes recorded only), snapshots and
//! clones by reflink (xfs) or by copy (a plain directory), expansion, stats, and a pool
//! without project quotas refusing to start. Quota enforcement itself is tested in
//! tests/project_quota.rs, which needs a kernel with project quotas.

mod common;

use common::tree::*;
use common::*;

async fn unenforced_pool_works(fs: PoolFs) {
    let mut env = Env::with_spec(fs, "dir:{},enforce=false").await;
    let log = env.driver.log_text();
    assert!(
        log.contains("NOT enforced"),
        "a loud warning at start-up: {log}"
    );
    let size = 16 * MIB;
    let (v, st, t) = published(&mut env, "vol", size).await;
    assert_eq!(
        names(&env.pool.path().join("volumes")).len(),
        1,
        "one directory"
    );
    assert!(write_pattern(&t.join("own"), 3 << 20, 4).1.is_none());
    let r = stats(&mut env, &v, &t).await;
    let (total, used) = bytes(&r);
    assert_eq!(total, size);
    assert!((3 << 20..4 << 20).contains(&used), "used {used}");
    let cond = r.volume_condition.expect("volume_condition");
    assert!(cond.abnormal, "unenforced sizes are abnormal");
    assert!(cond.message.contains("enforce=false"), "{}", cond.message);
    std::fs::remove_file(t.join("own")).unwrap();

    assert_expands_while_published(&mut env, &v, &t).await;
    assert_snapshot_restore_clone(&mut env, &v, &t, 2 * size).await;
    assert_block_refused(&mut env, &v).await;

    env.unpublish(&v.volume_id, &t).await;
    env.unstage(&v.volume_id, &st).await;
    assert!(mount_at(&st).is_none());
    env.delete(&v.volume_id).await;
    assert!(names(&env.pool.path().join("volumes")).is_empty());
    assert!(names(&env.pool.path().join("snapshots")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_unenforced_on_xfs_reflinks() {
    if !testkit::require_root("dir_unenforced_on_xfs_reflinks") {
        return;
    }
    unenforced_pool_works(PoolFs::Xfs(320 << 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_unenforced_on_ext4_copies() {
    if !testkit::require_root("dir_unenforced_on_ext4_copies") {
        return;
    }
    unenforced_pool_works(PoolFs::Ext4(128 << 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_pool_without_project_quotas_refuses_to_start() {
    if !testkit::require_root("dir_pool_without_project_quotas_refuses_to_start") {
        return;
    }
    // xfs mounted without prjquota: quotas are off.
    let xfs = LoopPool::new(PoolFs::Xfs(320 << 20)).unwrap();
    let before = names(xfs.path());
    assert_pool_refused(
        &format!("p1=dir:{}", xfs.path().display()),
        "project quotas are not on",
    );
    assert_eq!(names(xfs.path()), before, "pool dir untouched");
    // btrfs has no project quotas at all.
    let btrfs = LoopPool::new(PoolFs::Btrfs(256 << 20)).unwrap();
    assert_pool_refused(
        &format!("p1=dir:{}", btrfs.path().display()),
        "which has no project quotas",
    );
    assert!(names(btrfs.path()).is_empty(), "pool dir untouched");
    // Malformed options are refused before anything is opened.
    assert_pool_refused(
        &format!("p1=dir:{},enforce=maybe", xfs.path().display()),
        "enforce=true|false",
    );
}
