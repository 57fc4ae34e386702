//! Command-line and library configuration of the driver.

use std::path::PathBuf;

use crate::ids;

/// `--version`: the crate version and the git commit it was built from (csi/build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STRATA_GIT_COMMIT"),
    ")"
);

/// A CSI driver for local storage: volumes are sparse image files in pool directories,
/// attached through loop devices with ext4 or xfs inside (`image` pools), btrfs
/// subvolumes with qgroup limits (`btrfs` pools) or directories with project quotas
/// (`dir` pools). One unix socket serves the Identity, Controller, Node and
/// GroupController services.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "strata-csi", version = VERSION)]
pub struct Config {
    /// CSI endpoint to listen on, `unix:///path/to/csi.sock` (also read from CSI_ENDPOINT).
    /// The socket is created 0600; a stale socket left by a crash is replaced, a live one
    /// is not. Clients of the gRPC C-core family (Python grpcio, C++, Ruby) and grpc-java
    /// send the socket path as :authority, which the HTTP/2 server refuses (hyperium/h2#487):
    /// set their default authority to "localhost" (grpcio: the channel option
    /// `grpc.default_authority`). Go clients (kubelet, the sidecars) need nothing.
    #[arg(long, env = "CSI_ENDPOINT")]
    pub endpoint: String,

    /// This node's id: 1-63 characters of [A-Za-z0-9.-], alphanumeric at both ends. It is
    /// the value of the topology key `topology.strata.io/node` and part of every id.
    #[arg(long)]
    pub node_id: String,

    /// Directory for the driver's state database (created if missing).
    #[arg(long)]
    pub state_dir: PathBuf,

    /// A storage pool, `NAME=KIND:PATH[,OPTION...]`, e.g. `fast=image:/var/lib/strata/fast`.
    /// NAME is 1-24 characters of [a-z0-9-]; PATH is an existing directory (without
    /// commas). KIND is `image` (a sparse file per volume, attached as a loop device and
    /// formatted ext4/xfs), `btrfs` (a subvolume per volume with a qgroup limit; PATH on
    /// btrfs, quotas are turned on if off) or `dir` (a directory per volume with an
    /// xfs/ext4 project quota; PATH on xfs mounted with prjquota, or ext4 with the project
    /// feature mounted with prjquota). Options: `overcommit=RATIO` (default 1) lets the
    /// volumes of the pool add up to RATIO times the size of its filesystem, e.g.
    /// `overcommit=2.5`; a create beyond that is refused with RESOURCE_EXHAUSTED.
    /// `enforce=false` (dir pools only) runs without project quotas: sizes are not
    /// enforced, which is logged and reported as an abnormal volume condition. Repeat for
    /// several pools; the first one is the default.
    #[arg(long = "pool", required = true, value_parser = parse_pool)]
    pub pools: Vec<PoolSpec>,

    /// Name reported by GetPluginInfo.
    #[arg(long, default_value = "local.csi.strata.io")]
    pub driver_name: String,

    /// Most volumes this node accepts (NodeGetInfo.max_volumes_per_node); 0 lets the CO
    /// decide.
    #[arg(long, default_value_t = 0)]
    pub max_volumes_per_node: i64,

    /// Also advertise and serve the capabilities the CSI spec marks alpha (today
    /// GET_SNAPSHOT, CSI 1.12). Off by default, as the Kubernetes CSI sidecars gate their
    /// alpha features: a CO or conformance suite that does not know an alpha capability
    /// may refuse a driver that advertises it.
    #[arg(long)]
    pub enable_alpha_capabilities: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /healthz
    /// (e.g. `0.0.0.0:9808`; port 0 picks a free one, logged). Off when not given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// One `--pool NAME=KIND:PATH[,OPTION...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub kind: PoolKind,
    pub path: PathBuf,
    /// How far the capacities of the pool's volumes may add up beyond its size.
    pub overcommit: Ratio,
    /// `dir` pools: whether sizes must be enforced by project quotas (`enforce=false`
    /// turns that off). Always true for the other kinds.
    pub enforce: bool,
}

/// A non-negative ratio with three decimals (`1`, `1.5`, `2.125`), kept in thousandths so
/// that it compares exactly and multiplies sizes without floating-point rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ratio {
    milli: u64,
}

impl Ratio {
    pub const ONE: Ratio = Ratio { milli: 1000 };
    /// Upper bound: beyond this a ratio is a typo rather than a policy.
    pub const MAX: Ratio = Ratio { milli: 100_000 };

    /// Parses `N`, `N.D`, `N.DD` or `N.DDD`, greater than 0 and at most 100.
    pub fn parse(s: &str) -> Result<Ratio, String> {
        let bad = || format!("{s:?} is not a ratio like 1, 1.5 or 2.25 (at most 3 decimals)");
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || int.len() > 3 || !digits(int) || frac.len() > 3 || !digits(frac) {
            return Err(bad());
        }
        if s.ends_with('.') {
            return Err(bad());
        }
        let int: u64 = int.parse().map_err(|_| bad())?;
        let frac_milli: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
        let r = Ratio {
            milli: int * 1000 + frac_milli,
        };
        if r.milli == 0 || r > Ratio::MAX {
            return Err(format!("{s:?} must be greater than 0 and at most 100"));
        }
        Ok(r)
    }

    /// `bytes` times the ratio, rounded down.
    pub fn of(self, bytes: u64) -> u64 {
        let v = bytes as u128 * self.milli as u128 / 1000;
        u64::try_from(v).unwrap_or(u64::MAX)
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (int, frac) = (self.milli / 1000, self.milli % 1000);
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let frac = format!("{frac:03}");
            write!(f, "{int}.{}", frac.trim_end_matches('0'))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Image,
    Btrfs,
    Dir,
}

impl PoolKind {
    /// The backend's name, as `--pool NAME=KIND:PATH` and `Backend::kind` spell it.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Image => "image",
            PoolKind::Btrfs => "btrfs",
            PoolKind::Dir => "dir",
        }
    }

    /// What the pools of this kind hold (their backend's `Backend::layout`), for readers
    /// that look at pools without opening their backends.
    pub fn layout(self) -> crate::backend::Layout {
        match self {
            PoolKind::Image => crate::backend::Layout::Image,
            PoolKind::Btrfs | PoolKind::Dir => crate::backend::Layout::Tree,
        }
    }
}

/// Parses `NAME=KIND:PATH[,OPTION...]`.
pub fn parse_pool(s: &str) -> Result<PoolSpec, String> {
    let (name, rest) = s.split_once('=').ok_or("expected NAME=KIND:PATH")?;
    let (kind, rest) = rest.split_once(':').ok_or("expected NAME=KIND:PATH")?;
    let mut parts = rest.split(',');
    let path = parts.next().unwrap_or_default();
    if !ids::valid_pool(name) {
        return Err(format!(
            "pool name {name:?}: 1-{} characters of [a-z0-9-], alphanumeric at both ends",
            ids::POOL_MAX
        ));
    }
    let kind = match kind {
        "image" => PoolKind::Image,
        "btrfs" => PoolKind::Btrfs,
        "dir" => PoolKind::Dir,
        other => {
            return Err(format!(
                "unknown pool kind {other:?}; use image, btrfs or dir"
            ));
        }
    };
    let mut overcommit = Ratio::ONE;
    let mut enforce = true;
    for opt in parts {
        match (kind, opt.split_once('=')) {
            (_, Some(("overcommit", v))) => {
                overcommit = Ratio::parse(v).map_err(|e| format!("pool option overcommit: {e}"))?
            }
            (PoolKind::Dir, Some(("enforce", "false"))) => enforce = false,
            (PoolKind::Dir, Some(("enforce", "true"))) => enforce = true,
            (PoolKind::Dir, Some(("enforce", _))) => {
                return Err(format!(
                    "pool option {opt:?}: a dir pool knows enforce=true|false"
                ));
            }
            (PoolKind::Dir, _) => {
                return Err(format!(
                    "unknown pool option {opt:?}; known: overcommit=RATIO, enforce=true|false"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown pool option {opt:?}; known: overcommit=RATIO (and enforce=false for dir pools)"
                ));
            }
        }
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!("pool path {path:?} must be absolute"));
    }
    Ok(PoolSpec {
        name: name.to_string(),
        kind,
        path,
        overcommit,
        enforce,
    })
}

impl Config {
    /// Checks what clap cannot; returns the socket path.
    pub fn validate(&self) -> Result<PathBuf, String> {
        if !ids::valid_node(&self.node_id) {
            return Err(format!(
                "--node-id {:?}: 1-{} characters of [A-Za-z0-9.-], alphanumeric at both ends",
                self.node_id,
                ids::NODE_MAX
            ));
        }
        let name = &self.driver_name;
        let dns_like = name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !dns_like {
            return Err(format!(
                "--driver-name {name:?}: at most 63 characters, DNS-like"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.pools {
            if !seen.insert(&p.name) {
                return Err(format!("pool {} given twice", p.name));
            }
        }
        if self.max_volumes_per_node < 0 {
            return Err("--max-volumes-per-node must not be negative".into());
        }
        let path = self.endpoint.strip_prefix("unix://").ok_or_else(|| {
            format!(
                "--endpoint {:?}: only unix:// endpoints are supported",
                self.endpoint
            )
        })?;
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!(
                "--endpoint {:?}: the socket path must be absolute",
                self.endpoint
            ));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[test]
    fn parses_the_binary_contract() {
        let c = Config::try_parse_from([
            "strata-csi",
            "--endpoint",
            "unix:///run/strata/csi.sock",
            "--node-id",
            "node-1",
            "--state-dir",
            "/var/lib/strata/csi",
            "--pool",
            "fast=image:/srv/fast",
            "--pool",
            "slow=image:/srv/slow",
        ])
        .unwrap();
        assert_eq!(c.driver_name, "local.csi.strata.io");
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.pools[1].path, PathBuf::from("/srv/slow"));
        assert_eq!(c.validate().unwrap(), PathBuf::from("/run/strata/csi.sock"));
        let d = parse_pool("d=dir:/srv/d,enforce=false").unwrap();
        assert_eq!(
            (d.kind, d.path, d.enforce),
            (PoolKind::Dir, PathBuf::from("/srv/d"), false)
        );
        let b = parse_pool("b=btrfs:/srv/b").unwrap();
        assert_eq!((b.kind, b.enforce), (PoolKind::Btrfs, true));
    }

    #[test]
    fn pool_overcommit_option() {
        let p = parse_pool("a=image:/a,overcommit=2.5").unwrap();
        assert_eq!(
            (p.path.as_path(), p.overcommit),
            (Path::new("/a"), Ratio::parse("2.5").unwrap())
        );
        assert_eq!(parse_pool("a=image:/a").unwrap().overcommit, Ratio::ONE);
        assert_eq!(Ratio::parse("1.5").unwrap().of(1000), 1500);
        assert_eq!(Ratio::parse("0.125").unwrap().of(8000), 1000);
        assert_eq!(Ratio::ONE.of(u64::MAX), u64::MAX);
        assert_eq!(
            Ratio::parse("100").unwrap().of(u64::MAX),
            u64::MAX,
            "saturates"
        );
        for (text, shown) in [("1", "1"), ("2.50", "2.5"), ("0.125", "0.125")] {
            assert_eq!(Ratio::parse(text).unwrap().to_string(), shown);
        }
        for bad in [
            "a=image:/a,overcommit=0",
            "a=image:/a,overcommit=-1",
            "a=image:/a,overcommit=1.2345",
            "a=image:/a,overcommit=abc",
            "a=image:/a,overcommit=",
            "a=image:/a,overcommit=1.",
            "a=image:/a,overcommit=.5",
            "a=image:/a,overcommit=101",
            "a=image:/a,overcommit=nan",
            "a=image:/a,overcommit=inf",
            "a=image:/a,colour=red",
            "a=image:/a,overcommit",
        ] {
            let e = parse_pool(bad).expect_err(bad);
            assert!(
                e.contains("overcommit") || e.contains("option"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn version_names_the_commit() {
        let e = Config::try_parse_from(["strata-csi", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        let text = e.to_string();
        let prefix = format!("strata-csi {} (commit ", env!("CARGO_PKG_VERSION"));
        let commit = text
            .strip_prefix(&prefix)
            .and_then(|rest| rest.trim_end().strip_suffix(')'))
            .unwrap_or_else(|| panic!("{text:?}"));
        let hex = commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(commit == "unknown" || hex, "{commit:?}");
    }

    #[test]
    fn refuses_bad_pools_and_nodes() {
        for bad in [
            "x",
            "Fast=image:/a",
            "a=zfs:/a",
            "a=image:rel",
            "a=image:/a,enforce=false",
            "a=dir:/a,enforce=no",
            "a=dir:/a,quota=1",
            "a=btrfs:rel",
        ] {
            assert!(parse_pool(bad).is_err(), "{bad}");
        }
        let mut c = Config::try_parse_from([
            "strata-csi",
            "--endpoint",
            "tcp://x",
            "--node-id",
            "n_1",
            "--state-dir",
            "/s",
            "--pool",
            "a=image:/a",
        ])
        .unwrap();
        assert!(c.validate().is_err());
        c.node_id = "n1".into();
        assert!(c.validate().is_err(), "tcp endpoint");
    }
}
