//! An image's `User` through the real flow: image config → mounted rootfs →
//! `ContainerConfig::apply_image_user` → bundle → `strata-runtime run`, checked with
//! busybox `id` inside the container.

mod common;

use std::path::Path;

use common::*;
use strata_runtime::{Image, ImageDefaults, InitLayer, Rootfs};

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
app:x:1234:1234:app user:/tmp:/bin/sh
";

const GROUP: &str = "\
root:x:0:
app:x:1234:
staff:x:2345:app
video:x:3456:other,app
other:x:4567:other
";

const ID_SCRIPT: &str = "echo u=$(id -u); echo g=$(id -g); echo G=$(id -G)";

/// A busybox image whose tree `fill` has amended, with config `User` = `user`.
fn image(env: &Env, name: &str, user: &str, fill: impl FnOnce(&Path)) -> Image {
    let dir = env.path(&format!("src-{name}"));
    testkit::busybox_tree(&dir);
    fill(&dir);
    let defaults = ImageDefaults {
        env: vec!["PATH=/bin".into()],
        user: Some(user.into()),
        ..Default::default()
    };
    env.store.build_image(name, &[&dir], &defaults).unwrap()
}

fn accounts(passwd: &str, group: &str) -> impl FnOnce(&Path) {
    let (passwd, group) = (passwd.to_string(), group.to_string());
    move |dir| {
        std::fs::write(dir.join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.join("etc/group"), group).unwrap();
    }
}

/// Mounts a rootfs for `image`, applies the image config's `User` to a config
/// running `script`, and runs it; `Err` is the resolution error (nothing ran).
fn run_as_image_user(env: &Env, image: &Image, script: &str) -> Result<Ran, String> {
    let id = testkit::unique_id("user");
    let rootfs =
        RootfsGuard(Rootfs::create(&env.store, &id, image, &InitLayer::for_hostname(&id)).unwrap());
    let user = env.store.defaults(image).unwrap().user.unwrap_or_default();
    let mut cfg = sh(script);
    cfg.apply_image_user(&rootfs.0.path(), &user)
        .map_err(|e| strata_runtime::error::chain(&e))?;
    Ok(run_on(env, &id, &rootfs.0.path(), &cfg))
}

/// `id` output of a container run as `image`'s user.
fn ids(env: &Env, image: &Image) -> String {
    let ran = run_as_image_user(env, image, ID_SCRIPT).unwrap();
    assert_eq!(ran.code, 0, "{}{}", ran.stderr, ran.output);
    ran.output
}

/// The resolution error for `image`, which must not get to run anything.
fn refused(env: &Env, image: &Image) -> String {
    match run_as_image_user(env, image, "echo ran") {
        Ok(ran) => panic!("ran as an unresolvable user: {}{}", ran.stderr, ran.output),
        Err(e) => e,
    }
}

#[test]
fn image_user_sets_uid_gid_and_supplementary_groups() {
    if !testkit::require_root("image_user_sets_uid_gid_and_supplementary_groups") {
        return;
    }
    let env = Env::new();
    let by_name = image(&env, "by-name", "app", accounts(PASSWD, GROUP));
    assert_eq!(
        ids(&env, &by_name),
        "u=1234\ng=1234\nG=1234 2345 3456\n",
        "`app`: passwd gid, member of staff and video"
    );
    let by_uid = image(&env, "by-uid", "1234", accounts(PASSWD, GROUP));
    assert_eq!(ids(&env, &by_uid), "u=1234\ng=1234\nG=1234 2345 3456\n");
    let with_group = image(&env, "with-group", "app:video", accounts(PASSWD, GROUP));
    assert_eq!(
        ids(&env, &with_group),
        "u=1234\ng=3456\nG=3456 2345\n",
        "`app:video`: the group given, staff kept; the passwd gid 1234 lists no members"
    );
    let unknown_uid = image(&env, "unknown-uid", "4321", accounts(PASSWD, GROUP));
    assert_eq!(
        ids(&env, &unknown_uid),
        "u=4321\ng=0\nG=0\n",
        "a uid without a passwd entry: gid 0, no groups"
    );
}

#[test]
fn unknown_image_user_is_refused_before_anything_runs() {
    if !testkit::require_root("unknown_image_user_is_refused_before_anything_runs") {
        return;
    }
    let env = Env::new();
    let img = image(&env, "ghost", "ghost", accounts(PASSWD, GROUP));
    let err = refused(&env, &img);
    assert!(
        err.contains("no user named \"ghost\"") && err.contains("/etc/passwd"),
        "{err}"
    );
    let img = image(&env, "no-group", "app:wheel", accounts(PASSWD, GROUP));
    let err = refused(&env, &img);
    assert!(
        err.contains("no group named \"wheel\"") && err.contains("/etc/group"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&env.state).map_or(true, |d| d.count() == 0),
        "a container was created"
    );
}

#[test]
fn passwd_symlink_to_a_host_path_resolves_inside_the_rootfs() {
    if !testkit::require_root("passwd_symlink_to_a_host_path_resolves_inside_the_rootfs") {
        return;
    }
    let env = Env::new();
    // A real host file at an absolute path: `app` is 7777 there, and `hostonly`
    // exists only there.
    let host = env.path("host-etc/passwd");
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    std::fs::write(
        &host,
        "app:x:7777:7777:host:/:/bin/sh\nhostonly:x:8888:8888:host:/:/bin/sh\n",
    )
    .unwrap();
    let fill = |host: std::path::PathBuf| {
        move |dir: &Path| {
            // The same path inside the image holds the image's own `app`.
            let inside = dir.join(host.strip_prefix("/").unwrap());
            std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
            std::fs::write(&inside, "app:x:4242:4343:image:/:/bin/sh\n").unwrap();
            std::os::unix::fs::symlink(&host, dir.join("etc/passwd")).unwrap();
            std::fs::write(dir.join("etc/group"), "extra:x:5151:app\n").unwrap();
        }
    };
    let img = image(&env, "symlinked", "app", fill(host.clone()));
    assert_eq!(
        ids(&env, &img),
        "u=4242\ng=4343\nG=4343 5151\n",
        "the image's entry, not the host file's 7777"
    );
    let img = image(&env, "host-only", "hostonly", fill(host.clone()));
    let err = refused(&env, &img);
    assert!(err.contains("no user named \"hostonly\""), "{err}");
}
