"""The checked-in gRPC stubs match the .proto files they were generated from.

The check compares protobuf descriptors (what the .proto files say), not generated text:
the text depends on the grpcio-tools version, the descriptors only on the .proto files.
``python scripts/gen_proto.py --check`` compares the text too, for the pinned toolchain.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from peerflow.peer._proto import (
    blazen_peer_pb2,
    blazen_peer_pb2_grpc,
    peerflow_ext_pb2,
    peerflow_ext_pb2_grpc,
)

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("proto", "module"),
    [("blazen_peer.proto", blazen_peer_pb2), ("peerflow_ext.proto", peerflow_ext_pb2)],
)
def test_generated_stubs_do_not_drift(proto: str, module: ModuleType, tmp_path: Path) -> None:
    import grpc_tools
    from google.protobuf import descriptor_pb2

    out = tmp_path / "descriptors.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'src'}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            f"peerflow/peer/_proto/{proto}",
        ],
        cwd=ROOT / "src",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _strip_json_names(fresh.message_type)  # protoc adds them to descriptor sets only
    checked_in = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    assert fresh == checked_in, "stale stubs: run python scripts/gen_proto.py"


def _strip_json_names(messages: Any) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _strip_json_names(message.nested_type)


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
