"""Generated gRPC stubs for the peer services; regenerate with ``scripts/gen_proto.py``.

``blazen_peer.proto`` is Blazen's ``blazen.peer.v1.BlazenPeer`` service as it is;
``peerflow_ext.proto`` is peerflow's ``peerflow.peer.v1.PeerExtensions`` service, reusing
the same ``PostcardRequest`` / ``PostcardResponse`` framing. The ``*_pb2*`` files are
generated and checked in; CI fails when they drift from the ``.proto`` files.
"""
