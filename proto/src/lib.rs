//! CSI v1.12 protobuf (package csi.v1), generated at build time. No logic.
