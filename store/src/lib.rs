//! API objects (k8s-openapi types) and the narrow store interface the control loops use.
