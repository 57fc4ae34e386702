//! Runtime benchmarks.
