"""Helpers of the HTTP tests: the peer fixture's type, polling, reading SSE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from clitools import ROOT, peerflow_cmd

from peerflow.http import HttpServer
from peerflow.peer.server import PeerServer


@dataclass
class Peer:
    server: PeerServer
    http: HttpServer
    url: str
    client: httpx.AsyncClient


async def poll(check: Callable[[], Awaitable[bool]], what: str, bound: float = 10.0) -> None:
    """Wait (at most ``bound`` s) until ``check()`` is true; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def sse(
    client: httpx.AsyncClient, path: str, **headers: str
) -> list[tuple[int, dict[str, Any]]]:
    """Read an SSE stream to its end: (id, data) of each event."""
    out: list[tuple[int, dict[str, Any]]] = []
    event_id = -1
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                out.append((event_id, json.loads(line[6:])))
    return out


def serve_http_argv(*extra: str) -> list[str]:
    """``peerflow serve tests/cli_app.py`` on 127.0.0.1 port 0 with ``--http`` (+ ``extra``)."""
    app = str(ROOT / "tests" / "cli_app.py")
    return [*peerflow_cmd(), "serve", app, "--node-id", "web", "--listen", "127.0.0.1:0", *extra]
