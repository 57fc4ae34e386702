//! Binder and provisioner benchmarks.
