"""A C-core gRPC client (Python grpcio) against strata-csi's unix socket.

Usage: client.py STUB_DIR SOCKET. Prints one line per check and exits non-zero on the
first failure. grpcio sends the socket path as :authority unless told otherwise, which
hyper's h2 refuses (hyperium/h2#487); "grpc.default_authority" = "localhost" is the
client setting that works, and the one the README documents.
"""
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402

socket = sys.argv[2]
channel = grpc.insecure_channel(
    "unix://" + socket, options=[("grpc.default_authority", "localhost")]
)
ident = csi_pb2_grpc.IdentityStub(channel)
ctl = csi_pb2_grpc.ControllerStub(channel)

info = ident.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
assert info.name == "local.csi.strata.io", info
print("GetPluginInfo", info.name, info.vendor_version)

probe = ident.Probe(csi_pb2.ProbeRequest(), timeout=10)
assert not probe.HasField("ready") or probe.ready.value, probe
print("Probe ready")

cap = csi_pb2.VolumeCapability(
    mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
    access_mode=csi_pb2.VolumeCapability.AccessMode(
        mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    ),
)
req = csi_pb2.CreateVolumeRequest(
    name="py-vol",
    capacity_range=csi_pb2.CapacityRange(required_bytes=32 << 20),
    volume_capabilities=[cap],
)
vol = ctl.CreateVolume(req, timeout=30).volume
assert vol.capacity_bytes == 32 << 20, vol
print("CreateVolume", vol.volume_id)

listed = ctl.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=10)
assert [e.volume.volume_id for e in listed.entries] == [vol.volume_id], listed
print("ListVolumes", len(listed.entries))

# An error status must reach the client as a status, not as a reset stream.
try:
    ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="a/b"), timeout=10)
    raise AssertionError("DeleteVolume with a bad id succeeded")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    print("DeleteVolume bad id", e.code().name)

ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=30)
print("DeleteVolume ok")
