//! Bundled container runtime: OCI images, overlay rootfs, containers through libcontainer.
