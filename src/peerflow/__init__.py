"""peerflow: event-driven workflows that run across machines.

The engine (events, steps, workflows, context, session refs) is imported eagerly; the peer
layer (``PeerServer``, ``PeerClient``, ``PeerPool``, ``remote_step``, TLS loaders) is
imported on first use so that ``import peerflow`` stays light for local workflows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peerflow._lazy import lazy_names
from peerflow._version import __version__
from peerflow.context import Context
from peerflow.errors import (
    AuthError,
    EncodeError,
    EnvelopeVersionError,
    PeerError,
    PeerErrorKind,
    PeerflowError,
    RefNotFoundError,
    RefPermissionError,
    RemoteRefNotFoundError,
    RemoteRefPermissionError,
    RemoteWorkflowCancelledError,
    RemoteWorkflowError,
    RemoteWorkflowTimeoutError,
    ResourceExhaustedError,
    RpcStatus,
    RunNotFoundError,
    StoreError,
    TlsError,
    TransportError,
    UnknownStepError,
    UnknownWorkflowError,
    UnsupportedError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowChangedError,
    WorkflowError,
    WorkflowErrorKind,
    WorkflowTimeoutError,
)
from peerflow.events import Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent
from peerflow.refs import RefLifetime, RegistryKey, SessionRefRegistry, register_serializer
from peerflow.registry import Registry, default_registry, register_step, register_workflow
from peerflow.result import WorkflowResult
from peerflow.runtime import WorkflowHandler
from peerflow.step import step
from peerflow.workflow import Workflow

if TYPE_CHECKING:
    from peerflow.peer.client import PeerClient, RemoteRef
    from peerflow.peer.compose import remote_step
    from peerflow.peer.pool import PeerPool
    from peerflow.peer.security import load_client_tls, load_server_tls
    from peerflow.peer.server import PeerServer
    from peerflow.store import open_store

__all__ = [
    "AuthError",
    "Context",
    "EncodeError",
    "EnvelopeVersionError",
    "Event",
    "HumanResponseEvent",
    "InputRequiredEvent",
    "PeerClient",
    "PeerError",
    "PeerErrorKind",
    "PeerPool",
    "PeerServer",
    "PeerflowError",
    "RefLifetime",
    "RefNotFoundError",
    "RefPermissionError",
    "Registry",
    "RegistryKey",
    "RemoteRef",
    "RemoteRefNotFoundError",
    "RemoteRefPermissionError",
    "RemoteWorkflowCancelledError",
    "RemoteWorkflowError",
    "RemoteWorkflowTimeoutError",
    "ResourceExhaustedError",
    "RpcStatus",
    "RunNotFoundError",
    "SessionRefRegistry",
    "StartEvent",
    "StopEvent",
    "StoreError",
    "TlsError",
    "TransportError",
    "UnknownStepError",
    "UnknownWorkflowError",
    "UnsupportedError",
    "ValidationError",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowChangedError",
    "WorkflowError",
    "WorkflowErrorKind",
    "WorkflowHandler",
    "WorkflowResult",
    "WorkflowTimeoutError",
    "__version__",
    "default_registry",
    "load_client_tls",
    "load_server_tls",
    "open_store",
    "register_serializer",
    "register_step",
    "register_workflow",
    "remote_step",
    "step",
]

_LAZY = {
    "PeerClient": "peerflow.peer.client",
    "RemoteRef": "peerflow.peer.client",
    "PeerServer": "peerflow.peer.server",
    "PeerPool": "peerflow.peer.pool",
    "remote_step": "peerflow.peer.compose",
    "load_client_tls": "peerflow.peer.security",
    "load_server_tls": "peerflow.peer.security",
    "open_store": "peerflow.store",
}


__getattr__, __dir__ = lazy_names("peerflow", globals(), _LAZY)
