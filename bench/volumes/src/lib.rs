//! Volume manager benchmarks.
