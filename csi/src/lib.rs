//! CSI driver: Identity, Controller, Node and GroupController services on a unix socket.
