//! CSI driver benchmarks.
