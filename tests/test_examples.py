"""Every example runs as ``python examples/X.py``, exits 0 and prints what it promises."""

from __future__ import annotations

import subprocess
import sys

import pytest
from clitools import ROOT, cli_env

EXPECTED = {
    "basic.py": ["result: HELLO, ADA!", "steps:  greet -> shout"],
    "branching.py": ["7 is small: handled inline", "4096 is large: sent to the batch queue"],
    "streaming.py": ["progress 1/5", "progress 5/5", "result: crunched 5 chunks"],
    "human_in_the_loop.py": [
        "question: Send this reply? (yes/no)",
        "answer:   yes",
        "result:   {'sent': 'Dear Ada, your refund has been approved.'}",
    ],
    "stateful.py": [
        "result: {'words': 5, 'longest': 'workflows'}",
        "state:  {'expected': 5, 'letters': 34}",
        "usage:  5 in, 5 out, $0.0005",
    ],
    "distributed.py": [
        "peer-b is serving on 127.0.0.1:",
        "event from peer-b: summarizing 7 words",
        "result: {'summary': 'Run the step …', 'words': 7}",
        "usage rolled up from peer-b: 7 in, 3 out, $0.0002",
        "peer-b stopped (exit 0)",
    ],
    "session_refs.py": [
        "refs left on the peer: 1",
        "type=bytes origin=cache-node",
        "fetched 65,536 bytes lazily",
        "release -> True",
        "release again -> False",
        "fetch after release -> RefNotFoundError",
    ],
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        env=cli_env({"PYTHONIOENCODING": "utf-8"}),
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    for line in EXPECTED[name]:
        assert line in proc.stdout, f"{line!r} not in:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr
