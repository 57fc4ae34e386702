//! CSI gRPC client (filled in when csi-proto lands).
