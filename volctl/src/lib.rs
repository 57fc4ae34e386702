//! volctl: kubectl-like CLI over the embedded store, plus node inspection.
