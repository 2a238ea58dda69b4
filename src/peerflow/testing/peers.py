"""Start real peers for tests: in this process, or in a separate Python process.

In-process (same event loop as the test; nothing to reap)::

    async with serve_in_process([my_workflow], node_id="b") as server:
        async with await PeerClient.connect(server.address, "a") as client:
            result = await client.run_remote_workflow("my-workflow")

In a separate process (a real peer that can be killed; always reaped)::

    with start_peer_process("my_app.peer", node_id="b") as peer:
        client = await PeerClient.connect(peer.address, "a")

The child is ``python -m peerflow.testing.peer_main APP --node-id ID``: it imports ``APP``
(``module`` or ``module:attr``) so its steps and workflows register, serves on
``127.0.0.1`` port 0, prints one JSON line ``{"port": N, ...}`` on stdout once serving, and
stops gracefully (exit 0) on SIGTERM/SIGINT or when its stdin closes (so a crashed parent
never leaves it behind).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from peerflow._peer_process import DEFAULT_STARTUP_TIMEOUT, LOOPBACK, PeerProcess, host_port
from peerflow.errors import ValidationError
from peerflow.peer.server import PeerServer
from peerflow.registry import Registry
from peerflow.step import StepFn, StepSpec
from peerflow.workflow import Workflow

__all__ = ["PeerProcess", "serve_in_process", "start_peer_process"]

Servable = Registry | Workflow | Iterable[Workflow] | Mapping[str, StepSpec | StepFn]


def _as_registry(what: Servable | None) -> Registry | None:
    """A registry holding ``what`` (None: the server uses the process-wide one)."""
    if what is None or isinstance(what, Registry):
        return what
    registry = Registry()
    if isinstance(what, Workflow):
        registry.register_workflow(what)
    elif isinstance(what, Mapping):
        for step_id, fn in what.items():
            registry.register_step(step_id, fn)
    elif isinstance(what, Iterable) and not isinstance(what, str | bytes):
        for wf in what:
            if not isinstance(wf, Workflow):
                raise ValidationError(f"serve_in_process takes Workflows, got {wf!r}")
            registry.register_workflow(wf)
    else:
        raise ValidationError(
            "serve_in_process takes a Registry, a Workflow, a list of Workflows or a "
            f"{{step_id: step}} mapping, got {what!r}"
        )
    return registry


@contextlib.asynccontextmanager
async def serve_in_process(
    workflows_or_registry: Servable | None = None,
    *,
    node_id: str = "test-peer",
    grace: float | None = 1.0,
    **server_kwargs: Any,
) -> AsyncIterator[PeerServer]:
    """Serve workflows from this process on ``127.0.0.1`` (a free port) while in the block.

    Args:
        workflows_or_registry: a :class:`~peerflow.registry.Registry`, a workflow, a list
            of workflows or a ``{step_id: step}`` mapping (registered in a fresh registry);
            None serves the process-wide registry.
        node_id: the server's node id.
        grace: seconds runs in flight get to finish when the block exits.
        **server_kwargs: passed to :class:`~peerflow.peer.server.PeerServer`
            (``token=``, ``tls=``, ``session_refs=``, ``default_timeout_secs=``, ...).

    Yields:
        The started server; ``server.address`` is ``127.0.0.1:<port>``. It is always
        stopped when the block exits.

    Raises:
        ValidationError: bad arguments (including both a registry and ``registry=``).
        PeerError: the server could not start.
    """
    registry = _as_registry(workflows_or_registry)
    if registry is not None and "registry" in server_kwargs:
        raise ValidationError("pass workflows_or_registry or registry=, not both")
    if registry is not None:
        server_kwargs["registry"] = registry
    server = PeerServer(node_id, **server_kwargs)
    try:
        await server.start(f"{LOOPBACK}:0")
        yield server
    finally:
        await server.stop(grace)


def start_peer_process(
    app: str,
    *,
    node_id: str,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
) -> PeerProcess:
    """Start a peer in a separate Python process on ``127.0.0.1`` (a free port).

    Args:
        app: what the child imports so its steps and workflows register: ``module`` or
            ``module:attr`` (``attr`` a Registry, a Workflow or a list of Workflows). It must
            be importable by the child (put its directory in ``env["PYTHONPATH"]``).
        node_id: the peer's node id.
        token: the token the peer requires (passed in ``BLAZEN_PEER_TOKEN``, never on the
            command line); None keeps whatever the environment holds.
        env: variables set in the child, on top of this process's environment.
        extra_args: more ``peer_main`` options (``--default-timeout``, ``--ref-ttl``,
            ``--max-concurrent-runs``).
        startup_timeout: seconds to wait for the child to report its port.

    Returns:
        The running :class:`PeerProcess`.

    Raises:
        ValidationError: bad arguments.
        TransportError: the child exited or did not report a port in time (a
            ``PeerError`` of kind TRANSPORT); it has been killed and reaped.
    """
    if not isinstance(app, str) or not app:
        raise ValidationError(f"app must be `module` or `module:attr`, got {app!r}")
    if isinstance(extra_args, str):
        raise ValidationError("extra_args must be a list of strings, not one string")
    child_env: dict[str, str | None] = dict(env or {})
    if token is not None:
        child_env["BLAZEN_PEER_TOKEN"] = token
    listen = host_port(LOOPBACK, 0)
    args = ["-m", "peerflow.testing.peer_main", app, "--node-id", node_id, "--listen", listen]
    args += ["--exit-on-stdin-eof", *extra_args]
    peer = PeerProcess.spawn(args, node_id=node_id, env=child_env, what=app)
    return peer.ready(startup_timeout)
