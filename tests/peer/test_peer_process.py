"""start_peer_process copes with apps that print on stdout; PeerProcess.spawn then ready."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from peerflow import PeerClient, TransportError, ValidationError
from peerflow._peer_process import host_port
from peerflow.testing import PeerProcess, start_peer_process

TESTS_PEER = str(Path(__file__).resolve().parent)


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": TESTS_PEER + (os.pathsep + path if path else "")}


async def test_an_app_that_prints_at_import_and_per_run_keeps_serving() -> None:
    with start_peer_process("apps.chatty_app", node_id="chatty", env=_env()) as peer:
        async with await PeerClient.connect(peer.url, "c") as client:
            # 200 runs print 200 KiB: more than a pipe holds if nobody read it.
            for _ in range(200):
                assert (await client.run_remote_workflow("talk")).result == "said"
        assert peer.terminate() == 0


# -- PeerProcess.spawn, then ready: what the demo and the pool tests start peers with ----------


def _reports(expression: str) -> list[str]:
    """A child that reports ``{"port": <expression>}`` and then waits for its stdin to close."""
    code = f'import json, os, sys; print(json.dumps({{"port": {expression}}})); sys.stdin.read()'
    return ["-c", code]


async def test_a_peerflow_serve_peer_is_read_back_from_its_serving_line(
    capfd: pytest.CaptureFixture[str],
) -> None:
    args = ["-m", "peerflow", "serve", "apps.chatty_app", "--node-id", "served"]
    peer = PeerProcess.spawn([*args, "--listen", "127.0.0.1:0"], node_id="served", env=_env())
    with peer:
        assert peer.port == 0 and "127.0.0.1:0" in repr(peer)
        assert peer.ready() is peer and peer.ready() is peer  # idempotent
        assert peer.address == f"127.0.0.1:{peer.port}" and peer.port > 0
        async with await PeerClient.connect(peer.url, "c") as client:
            assert (await client.run_remote_workflow("talk")).result == "said"
        assert peer.terminate() == 0
    out = capfd.readouterr().out
    assert "loading the chatty app..." in out  # printed before the serving line: passed on
    assert "x" * 1024 in out  # printed after it, by the run: passed on too


def test_a_captured_stderr_names_why_the_child_did_not_serve() -> None:
    args = ["-m", "peerflow", "serve", "apps.no_such_module", "--node-id", "bad"]
    peer = PeerProcess.spawn(args, node_id="bad", env=_env(), capture_stderr=True, what="bad app")
    with pytest.raises(TransportError) as info:
        peer.ready()
    message = str(info.value)
    assert message.startswith("peer process 'bad' (bad app) exited with code 2 before serving: ")
    assert "no module named 'apps.no_such_module'" in message
    assert peer.last_error() in message and not peer.running()


def test_env_overrides_and_unsets_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERFLOW_TEST_GONE", "1")
    present = '1000 * ("PEERFLOW_TEST_GONE" in os.environ) + int(os.environ["PEERFLOW_TEST_SET"])'
    env = {"PEERFLOW_TEST_GONE": None, "PEERFLOW_TEST_SET": "7"}
    with PeerProcess.spawn(_reports(present), node_id="env", env=env).ready() as peer:
        assert peer.port == 7


def test_a_host_other_than_loopback_is_named_in_the_address() -> None:
    with PeerProcess.spawn(_reports("9"), node_id="v6", host="::1").ready() as peer:
        assert peer.address == "[::1]:9" and peer.url == "http://[::1]:9"
    assert host_port("::1", 0) == "[::1]:0" and host_port("127.0.0.1", 1) == "127.0.0.1:1"


def test_no_port_line_in_time_kills_and_reaps_the_child() -> None:
    peer = PeerProcess.spawn(["-c", "import sys; sys.stdin.read()"], node_id="mute")
    with pytest.raises(TransportError, match=r"did not report its port within 0\.2s"):
        peer.ready(timeout=0.2)
    assert peer.returncode == -signal.SIGKILL


def test_a_peer_stopped_before_ready_is_reaped_and_ready_then_refuses() -> None:
    peer = PeerProcess.spawn(_reports("1"), node_id="early")
    assert peer.kill() in (0, -signal.SIGKILL)  # it may have exited on its own already
    assert "exited" in repr(peer)
    with pytest.raises(TransportError, match="was stopped before it reported its port"):
        peer.ready()


def test_spawn_checks_its_arguments() -> None:
    with pytest.raises(ValidationError, match="non-empty"):
        PeerProcess.spawn(["-c", "pass"], node_id=" ")
    with pytest.raises(ValidationError, match="not one string"):
        PeerProcess.spawn("-c pass", node_id="x")
