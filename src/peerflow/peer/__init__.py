"""The peer layer: serve workflows to other machines and call theirs.

``from peerflow.peer import PeerClient`` works as seed 001's planned Python API prints it
(``from blazen.peer import PeerClient``). Names are imported on first use, so importing a
submodule (``peerflow.peer.protocol``) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peerflow._lazy import lazy_names

if TYPE_CHECKING:
    from peerflow.peer.client import PeerClient, PeerInfo, RemoteRef, default_node_id
    from peerflow.peer.compose import remote_step
    from peerflow.peer.config import ClientConfig, ServerConfig
    from peerflow.peer.pool import PeerPool
    from peerflow.peer.protocol import (
        ENVELOPE_VERSION,
        RemoteRefDescriptor,
        SubWorkflowRequest,
        SubWorkflowResponse,
    )
    from peerflow.peer.security import (
        TOKEN_ENV_VAR,
        ClientTls,
        ServerTls,
        load_client_tls,
        load_server_tls,
        resolve_token,
    )
    from peerflow.peer.server import PeerServer

__all__ = [
    "ENVELOPE_VERSION",
    "TOKEN_ENV_VAR",
    "ClientConfig",
    "ClientTls",
    "PeerClient",
    "PeerInfo",
    "PeerPool",
    "PeerServer",
    "RemoteRef",
    "RemoteRefDescriptor",
    "ServerConfig",
    "ServerTls",
    "SubWorkflowRequest",
    "SubWorkflowResponse",
    "default_node_id",
    "load_client_tls",
    "load_server_tls",
    "remote_step",
    "resolve_token",
]

_LAZY = {
    "ENVELOPE_VERSION": "peerflow.peer.protocol",
    "TOKEN_ENV_VAR": "peerflow.peer.security",
    "ClientConfig": "peerflow.peer.config",
    "ClientTls": "peerflow.peer.security",
    "PeerClient": "peerflow.peer.client",
    "PeerInfo": "peerflow.peer.client",
    "PeerPool": "peerflow.peer.pool",
    "PeerServer": "peerflow.peer.server",
    "RemoteRef": "peerflow.peer.client",
    "RemoteRefDescriptor": "peerflow.peer.protocol",
    "ServerConfig": "peerflow.peer.config",
    "ServerTls": "peerflow.peer.security",
    "SubWorkflowRequest": "peerflow.peer.protocol",
    "SubWorkflowResponse": "peerflow.peer.protocol",
    "default_node_id": "peerflow.peer.client",
    "load_client_tls": "peerflow.peer.security",
    "load_server_tls": "peerflow.peer.security",
    "remote_step": "peerflow.peer.compose",
    "resolve_token": "peerflow.peer.security",
}


__getattr__, __dir__ = lazy_names("peerflow.peer", globals(), _LAZY)
