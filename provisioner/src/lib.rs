//! Control loops: PV/PVC binder, dynamic provisioner, expansion, StatefulSet claims.
