"""start_peer_process copes with apps that print on stdout."""

from __future__ import annotations

import os
from pathlib import Path

from peerflow import PeerClient
from peerflow.testing import start_peer_process

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
