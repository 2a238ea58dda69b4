"""The checked-in gRPC stubs match a fresh generation from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from peerflow.peer._proto import blazen_peer_pb2, blazen_peer_pb2_grpc, peerflow_ext_pb2_grpc

ROOT = Path(__file__).parents[2]


def test_generated_stubs_do_not_drift() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_services_have_the_wire_names() -> None:
    service = blazen_peer_pb2.DESCRIPTOR.services_by_name["BlazenPeer"]
    assert service.full_name == "blazen.peer.v1.BlazenPeer"
    assert [m.name for m in service.methods] == [
        "InvokeSubWorkflow",
        "StreamSubWorkflowEvents",
        "DerefSessionRef",
        "ReleaseSessionRef",
    ]
    assert service.methods_by_name["StreamSubWorkflowEvents"].server_streaming
    assert hasattr(blazen_peer_pb2_grpc, "add_BlazenPeerServicer_to_server")
    assert hasattr(peerflow_ext_pb2_grpc, "PeerExtensionsStub")


def test_postcard_framing() -> None:
    msg = blazen_peer_pb2.PostcardResponse(postcard_payload=b"\x01\x00")
    assert msg.SerializeToString() == b"\x0a\x02\x01\x00"
