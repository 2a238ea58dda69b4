"""A remote run between two network namespaces joined by a veth pair.

Where the machine allows it (root, ``ip`` from iproute2, namespaces permitted), the test
creates two namespaces, links them with a veth pair carrying private 10.x addresses that
exist only inside them, serves ``apps.security_app:registry`` with ``peer_main`` in one and
runs a one-shot client in the other. The namespaces (and with them the veth pair) are
always deleted. Elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PEER_DIR = Path(__file__).resolve().parent
CLIENT_SCRIPT = PEER_DIR / "apps" / "security_app_client.py"
SERVER_ADDR = "10.213.7.1"
CLIENT_ADDR = "10.213.7.2"
TIMEOUT = 30.0


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=TIMEOUT)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two namespaces linked by a veth pair; skip with the reason where impossible."""
    if sys.platform != "linux":
        pytest.skip("network namespaces need Linux")
    if shutil.which("ip") is None:
        pytest.skip("cannot create network namespaces: `ip` (iproute2) is not installed")
    # Unique per fixture use, not per pid: two runs on one host (or a pid reused) never
    # share a name. Interface names stay under IFNAMSIZ (15 characters).
    tag = f"pf{secrets.token_hex(5)}"
    server_ns, client_ns = f"{tag}-srv", f"{tag}-cli"
    created: list[str] = []
    try:
        for ns in (server_ns, client_ns):
            done = _ip("netns", "add", ns)
            if done.returncode != 0:
                pytest.skip(f"cannot create network namespaces: {done.stderr.strip()}")
            created.append(ns)
        veth_s, veth_c = f"{tag}s", f"{tag}c"
        _must("link", "add", veth_s, "type", "veth", "peer", "name", veth_c)
        _must("link", "set", veth_s, "netns", server_ns)
        _must("link", "set", veth_c, "netns", client_ns)
        _must("-n", server_ns, "addr", "add", f"{SERVER_ADDR}/24", "dev", veth_s)
        _must("-n", client_ns, "addr", "add", f"{CLIENT_ADDR}/24", "dev", veth_c)
        for ns, dev in ((server_ns, veth_s), (client_ns, veth_c)):
            _must("-n", ns, "link", "set", "lo", "up")
            _must("-n", ns, "link", "set", dev, "up")
        yield server_ns, client_ns
    finally:
        for ns in created:  # deleting a namespace deletes its end of the veth pair too
            _ip("netns", "del", ns)
        leftover = _ip("netns", "list").stdout
        assert server_ns not in leftover and client_ns not in leftover


def test_remote_run_across_two_network_namespaces(namespaces: tuple[str, str]) -> None:
    server_ns, client_ns = namespaces
    env = dict(os.environ, PYTHONPATH=str(PEER_DIR), PYTHONUNBUFFERED="1", BLAZEN_PEER_TOKEN="")
    server = subprocess.Popen(
        [
            *("ip", "netns", "exec", server_ns),
            *(sys.executable, "-m", "peerflow.testing.peer_main", "apps.security_app:registry"),
            *("--node-id", "netns-server", "--listen", f"{SERVER_ADDR}:0", "--exit-on-stdin-eof"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line, f"server did not start: {server.stderr.read() if server.stderr else ''}"
        port = json.loads(line)["port"]
        url = f"http://{SERVER_ADDR}:{port}"
        client = subprocess.run(
            [
                *("ip", "netns", "exec", client_ns),
                *(sys.executable, str(CLIENT_SCRIPT), url, "echo", '{"across": "namespaces"}'),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        result_line = next(x for x in client.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(result_line.removeprefix("RESULT "))
        assert result == {"node": "security-app", "input": {"across": "namespaces"}}
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for pipe in (server.stdin, server.stdout, server.stderr):
            if pipe is not None:
                pipe.close()
    # A graceful stop: SIGTERM reached peer_main inside the namespace.
    assert server.returncode == 0
