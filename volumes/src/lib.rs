//! The node's volume manager: atomic writer, projected volumes, emptyDir, PVC volumes via CSI.
