"""Which node calls: its id in the gRPC user agent, written by the client, read by the peer.

The node id rides in the user agent (``peerflow/V (node ID)``), which gRPC's core sends
with every call at no per-call cost; Blazen callers send ``blazen-node-id`` metadata.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from peerflow._version import __version__

if TYPE_CHECKING:
    import grpc

__all__ = ["caller_node", "node_user_agent"]

_NODE_IN_AGENT = re.compile(r"\(node ([^)\s]+)\)")


def node_user_agent(node_id: str) -> str:
    """The gRPC user agent naming this client's node: ``peerflow/V (node ID)``."""
    safe = "".join(c if c.isalnum() or c in "-_.:@" else "_" for c in node_id)
    return f"peerflow/{__version__} (node {safe})"


def caller_node(context: grpc.aio.ServicerContext) -> str:
    """The calling node's id, from its metadata (``blazen-node-id`` or the user agent).

    ``-`` when the caller names no node.
    """
    agent = ""
    for key, value in context.invocation_metadata() or ():
        if key == "blazen-node-id":
            return str(value)
        if key == "user-agent":
            agent = str(value)
    match = _NODE_IN_AGENT.search(agent)
    return match.group(1) if match else "-"
