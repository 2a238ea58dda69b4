"""How long the first-hour command takes: ``peerflow demo`` beside the CLI's own start-up.

    python benchmarks/demo.py [--runs N]

Runs ``peerflow demo`` N times (default 3) and, alternating with it, ``peerflow --help``
(the cost of starting Python and importing the CLI: the floor of any ``peerflow`` command)
in the same run. Prints the wall time of each (median) and the ratio. The demo starts two
peer subprocesses, so its time is dominated by process start-up; the ratio says how many
bare CLI start-ups it costs. The figure the first-hour users saw: about 3 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def _peerflow() -> list[str]:
    exe = shutil.which("peerflow")
    return [exe] if exe else [sys.executable, "-m", "peerflow.cli"]


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    demo, bare = [], []
    for _ in range(args.runs):
        bare.append(_timed([*_peerflow(), "--help"]))
        demo.append(_timed([*_peerflow(), "demo"]))
    d, b = statistics.median(demo), statistics.median(bare)
    print("| command | median wall time |")
    print("|---|---|")
    print(f"| `peerflow --help` (baseline) | {b:.2f} s |")
    print(f"| `peerflow demo` | {d:.2f} s ({d / b:.1f}x the baseline) |")


if __name__ == "__main__":
    main()
