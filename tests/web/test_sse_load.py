"""1,000 idle SSE readers against a real ``peerflow serve --http`` child: memory and release."""

from __future__ import annotations

import asyncio
import resource
import signal

import httpx
import psutil
from clitools import Served, read_line
from webtools import serve_http_argv

READERS = 1000
BUDGET = 50 * (1 << 20)


async def _open_reader(port: int, run_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"retry: 2000\n\n")  # headers, then the first message
    assert b" 200 " in head.split(b"\r\n", 1)[0]
    return reader, writer


async def test_a_thousand_idle_sse_readers_fit_in_50_mib_and_are_freed() -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft >= READERS + 200, f"needs {READERS + 200} open files (ulimit -n is {soft})"
    argv = serve_http_argv("--http", "127.0.0.1:0")
    with Served(argv) as served:
        port = int(read_line(served.proc).split(":")[-1])
        child = psutil.Process(served.proc.pid)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            started = await client.post("/api/workflows/slow/runs", json={"secs": 600})
            run_id = started.json()["run_id"]
            warm = [await _open_reader(port, run_id) for _ in range(20)]  # allocator warm-up
            for _, writer in warm:
                writer.close()
            await _wait_streams(client, 0)
            before = child.memory_info().rss
            readers = await asyncio.gather(*(_open_reader(port, run_id) for _ in range(READERS)))
            await _wait_streams(client, READERS)
            grown = child.memory_info().rss - before
            assert grown <= BUDGET, f"{READERS} idle readers grew the server by {grown} bytes"
            for _, writer in readers:
                writer.close()
            await _wait_streams(client, 0)  # every disconnected reader's stream was freed
            await client.post(f"/api/runs/{run_id}/cancel")
        served.signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0
    print(f"{READERS} idle SSE readers: +{grown / (1 << 20):.1f} MiB RSS")


async def _wait_streams(client: httpx.AsyncClient, expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        text = (await client.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("peerflow_http_streams_open "))
        if float(line.split()[1]) == expected:
            return
        assert loop.time() < deadline, f"streams open: {line}, expected {expected}"
        await asyncio.sleep(0.05)
