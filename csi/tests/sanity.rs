//! The kubernetes-csi conformance suite, `csi-sanity` (csi-test v5.4.0), against the real
//! driver on each kind of pool: image with ext4, image with xfs, btrfs, and dir.
//!
//! csi-sanity is third-party code and is not part of the repository: build it from
//! kubernetes-csi/csi-test v5.4.0 (`go build ./cmd/csi-sanity`) and point `CSI_SANITY` at
//! the binary. Without it the test says SKIPPED and passes, also under CI. See
//! docs/conformance.md for the last results.
//!
//! It runs as a thorough user would: volume parameters that pick the filesystem, a mutable
//! parameters file (ControllerModifyVolume), and sizes every backend can make (xfs needs
//! 300 MiB at least) with an expansion size beyond them. `csi_sanity_on_every_backend`
//! runs the `dir` pool with `enforce=false` (this machine's kernel has no project quotas);
//! `csi_sanity_on_an_enforced_dir_pool` runs it on an xfs pool mounted `prjquota`, quotas
//! enforced, where the kernel has them: in the test VM (docs/conformance.md says how).

use std::path::Path;
use std::process::Command;

use testkit::{DriverConfig, DriverProcess, LoopPool, PoolFs};

const BIN: &str = env!("CARGO_BIN_EXE_strata-csi");

/// One backend's run: what to start and which parameters to give.
struct Case {
    name: &'static str,
    fs: PoolFs,
    /// Pool spec after `NAME=`, `{}` standing for the pool path.
    spec: &'static str,
    params: &'static str,
    mutable: &'static str,
}

/// Counts from csi-sanity's summary line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    passed: u32,
    failed: u32,
    pending: u32,
    skipped: u32,
}

/// Reads "... 81 Passed | 0 Failed | 1 Pending | 10 Skipped" (ginkgo's summary).
fn counts(out: &str) -> Option<Counts> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains(" Passed | ") && l.contains(" Failed"))?;
    let mut c = Counts::default();
    for part in line.split(['|', '-']) {
        let mut w = part.split_whitespace();
        let (Some(n), Some(what)) = (w.next(), w.next()) else {
            continue;
        };
        let Ok(n) = n.parse() else { continue };
        match what {
            "Passed" => c.passed = n,
            "Failed" => c.failed = n,
            "Pending" => c.pending = n,
            "Skipped" => c.skipped = n,
            _ => {}
        }
    }
    Some(c)
}

async fn run_case(sanity: &Path, case: &Case) -> (Counts, String) {
    let pool = LoopPool::new(case.fs).expect("make pool");
    run_case_on(sanity, case, &pool).await
}

async fn run_case_on(sanity: &Path, case: &Case, pool: &LoopPool) -> (Counts, String) {
    let spec = case.spec.replace("{}", &pool.path().display().to_string());
    let driver = DriverProcess::start(DriverConfig::new(BIN, "n1").pool_spec("p", &spec)).await;
    let params = driver.dir().join("params.yaml");
    let mutable = driver.dir().join("mutable.yaml");
    // csi-sanity makes its mount and staging dirs itself, beneath an existing parent.
    std::fs::create_dir_all(driver.path("")).unwrap();
    std::fs::write(&params, case.params).unwrap();
    std::fs::write(&mutable, case.mutable).unwrap();
    let out = Command::new(sanity)
        .arg(format!("-csi.endpoint={}", driver.endpoint()))
        .arg(format!("-csi.mountdir={}", driver.path("mnt").display()))
        .arg(format!(
            "-csi.stagingdir={}",
            driver.path("staging").display()
        ))
        .arg(format!("-csi.testvolumeparameters={}", params.display()))
        .arg(format!(
            "-csi.testvolumemutableparameters={}",
            mutable.display()
        ))
        .arg(format!("-csi.testvolumesize={}", 512u64 << 20))
        .arg(format!("-csi.testvolumeexpandsize={}", 1u64 << 30))
        .arg("-ginkgo.no-color")
        .output()
        .expect("run csi-sanity");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let c = counts(&text).unwrap_or_else(|| {
        panic!(
            "{}: no summary from csi-sanity:\n{text}\n--- driver log ---\n{}",
            case.name,
            driver.log_text()
        )
    });
    if c.failed > 0 || !out.status.success() {
        panic!(
            "{}: csi-sanity failed ({c:?}):\n{text}\n--- driver log ---\n{}",
            case.name,
            driver.log_text()
        );
    }
    (c, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_on_every_backend() {
    let Some(sanity) = std::env::var_os("CSI_SANITY") else {
        eprintln!(
            "SKIPPED csi_sanity_on_every_backend: set CSI_SANITY to a csi-sanity v5.4.0 binary \
             (kubernetes-csi/csi-test, go build ./cmd/csi-sanity)"
        );
        return;
    };
    if !testkit::require_root("csi_sanity_on_every_backend") {
        return;
    }
    let cases = [
        Case {
            name: "image ext4",
            fs: PoolFs::Dir,
            spec: "image:{}",
            params: "fsType: ext4\n",
            mutable: "directIO: \"true\"\n",
        },
        Case {
            name: "image xfs",
            fs: PoolFs::Dir,
            spec: "image:{}",
            params: "fsType: xfs\n",
            mutable: "directIO: \"true\"\n",
        },
        Case {
            name: "btrfs",
            fs: PoolFs::Btrfs(16 << 30),
            spec: "btrfs:{}",
            params: "{}\n",
            // Tree volumes have no loop device: directIO can only be (kept) off.
            mutable: "directIO: \"false\"\n",
        },
        Case {
            name: "dir (enforce=false)",
            fs: PoolFs::Dir,
            spec: "dir:{},enforce=false",
            params: "{}\n",
            mutable: "directIO: \"false\"\n",
        },
    ];
    for case in &cases {
        let (c, _) = run_case(Path::new(&sanity), case).await;
        eprintln!(
            "csi-sanity on {}: {} passed, {} failed, {} pending, {} skipped",
            case.name, c.passed, c.failed, c.pending, c.skipped
        );
    }
}

/// The `dir` backend with its quotas on: needs a kernel with xfs project quotas, so it
/// skips (saying so) elsewhere, and fails instead with STRATA_REQUIRE_PROJECT_QUOTA=1 as
/// the VM run sets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_on_an_enforced_dir_pool() {
    const TEST: &str = "csi_sanity_on_an_enforced_dir_pool";
    let Some(sanity) = std::env::var_os("CSI_SANITY") else {
        eprintln!("SKIPPED {TEST}: set CSI_SANITY to a csi-sanity v5.4.0 binary");
        return;
    };
    if !testkit::require_root(TEST) {
        return;
    }
    let pool = match LoopPool::new(PoolFs::XfsPrjquota(12 << 30)) {
        Ok(p) => p,
        Err(e) if std::env::var("STRATA_REQUIRE_PROJECT_QUOTA").as_deref() == Ok("1") => {
            panic!("{TEST}: STRATA_REQUIRE_PROJECT_QUOTA=1 but the prjquota mount failed: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED {TEST}: kernel has no xfs project quotas ({e})");
            return;
        }
    };
    let case = Case {
        name: "dir (xfs, project quotas enforced)",
        fs: PoolFs::XfsPrjquota(12 << 30),
        spec: "dir:{}",
        params: "{}\n",
        mutable: "directIO: \"false\"\n",
    };
    let (c, _) = run_case_on(Path::new(&sanity), &case, &pool).await;
    eprintln!(
        "csi-sanity on {}: {} passed, {} failed, {} pending, {} skipped",
        case.name, c.passed, c.failed, c.pending, c.skipped
    );
}

#[test]
fn reads_the_ginkgo_summary() {
    let out = "Ran 81 of 92 Specs in 1.351 seconds\nSUCCESS! -- 81 Passed | 0 Failed | 1 Pending | 10 Skipped\nPASS\n";
    assert_eq!(
        counts(out),
        Some(Counts {
            passed: 81,
            failed: 0,
            pending: 1,
            skipped: 10
        })
    );
    assert_eq!(
        counts("FAIL! -- 76 Passed | 5 Failed | 1 Pending | 10 Skipped").map(|c| c.failed),
        Some(5)
    );
    assert_eq!(counts("no summary"), None);
}
