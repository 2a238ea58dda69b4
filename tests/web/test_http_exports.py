"""The public surface of ``peerflow.http`` is pinned."""

from __future__ import annotations

import peerflow.http

PINNED = ["HttpServer", "PeerHttp", "create_app", "graph_of", "render_svg"]


def test_http_exports_are_pinned() -> None:
    assert peerflow.http.__all__ == PINNED
    assert all(hasattr(peerflow.http, name) for name in PINNED)
