"""Fixtures: a real peer with its HTTP face on real uvicorn, both on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import webflows
from webtools import Peer

from peerflow.http import HttpServer
from peerflow.testing import serve_in_process


async def _peer(**options: Any) -> AsyncIterator[Peer]:
    token = options.pop("token", None)
    async with serve_in_process(webflows.registry(), node_id="web-node", token=token) as server:
        http = HttpServer(server, **options)
        port = await http.start("127.0.0.1:0")
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                yield Peer(server, http, url, client)
        finally:
            await http.stop()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    async for p in _peer():
        yield p


@pytest.fixture
async def secured_peer() -> AsyncIterator[Peer]:
    async for p in _peer(token="s3cret-token"):
        yield p
