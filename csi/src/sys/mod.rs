//! Every syscall and external tool the driver uses, and the only place that says `unsafe`.
//!
//! Functions here return `std::io::Result` and know nothing of CSI; callers add the path or
//! device that failed when they turn an `io::Error` into the crate's `Error`.

pub mod btrfs;
pub mod fs;
pub mod fsfreeze;
pub mod loopdev;
pub mod mkfs;
pub mod mount;
pub mod quota;
/// The mount table: the workspace's one mountinfo parser, shared with the volume manager.
pub use strata_mountinfo as mountinfo;
pub mod reflink;
pub mod tree;
