"""Start ``pool_app.py`` peers in subprocesses for tests and benchmarks (always reaped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peerflow._peer_process import host_port
from peerflow.testing import PeerProcess

APP = Path(__file__).with_name("pool_app.py")


def spawn_peer(
    node_id: str,
    workflows: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    trace_out: Path | None = None,
) -> PeerProcess:
    """Start one peer on ``host`` and return at once; call ``.ready()`` to read its port."""
    args = [str(APP), node_id, "--workflows", workflows, "--listen", host_port(host, port)]
    if trace_out is not None:
        args += ["--trace-out", str(trace_out)]
    return PeerProcess.spawn(args, node_id=node_id, host=host, env={"BLAZEN_PEER_TOKEN": None})


def start_peers(*specs: tuple[str, str], **options: Any) -> list[PeerProcess]:
    """Start several peers at once (``(node_id, workflows)`` each) and wait for all."""
    peers = [spawn_peer(node_id, workflows, **options) for node_id, workflows in specs]
    try:
        return [peer.ready() for peer in peers]
    except BaseException:
        for peer in peers:
            peer.kill()
        raise
