//! Node agent: runs the volume manager (and later the pod runner) for the pods on one node.
