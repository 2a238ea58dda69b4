"""Fixtures: a real peer with its HTTP face on real uvicorn, both on 127.0.0.1 port 0."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import webflows
from webtools import Peer

from peerflow.http import HttpServer
from peerflow.registry import Registry
from peerflow.testing import serve_in_process


async def _peer(registry: Registry | None = None, **options: Any) -> AsyncIterator[Peer]:
    token = options.pop("token", None)
    registry = registry or webflows.registry()
    async with serve_in_process(registry, node_id="web-node", token=token) as server:
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


@pytest.fixture
async def page_peer() -> AsyncIterator[Peer]:
    """A peer serving the test workflows plus ones whose names and events carry HTML."""
    async for p in _peer(webflows.registry(hostile=True)):
        yield p


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A real headless Chromium (Debian's chromium + chromium-driver) driven by selenium.

    Missing locally: skipped, saying how to install it. Missing under CI (CI=true): the
    run fails, so a CI without a browser cannot pass by skipping the page tests.
    """
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        message = "chromium and chromedriver are needed: run scripts/ensure-chromium"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1200",
        "--disable-gpu",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
