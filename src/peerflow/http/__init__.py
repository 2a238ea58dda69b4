"""The HTTP face of a peer: Prometheus metrics, a live status page, runs over HTTP.

Needs the ``peerflow[http]`` extra (starlette, uvicorn, prometheus-client)::

    from peerflow.http import HttpServer, create_app

    app = create_app(peer_server)          # mount it in a Starlette/FastAPI application
    http = HttpServer(peer_server)         # or serve it on the peer's event loop
    port = await http.start("127.0.0.1:0")
"""

from __future__ import annotations

from peerflow.http.app import PeerHttp, create_app
from peerflow.http.graph import graph_of, render_svg
from peerflow.http.server import HttpServer

__all__ = ["HttpServer", "PeerHttp", "create_app", "graph_of", "render_svg"]
