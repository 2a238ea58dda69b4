"""Start ``pool_app.py`` peers in subprocesses for tests and benchmarks (always reaped)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).with_name("pool_app.py")


class PeerProcess:
    """One peer in a subprocess on ``host``; call :meth:`ready` to read its port back."""

    def __init__(
        self,
        node_id: str,
        workflows: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        trace_out: Path | None = None,
    ) -> None:
        self.node_id = node_id
        self.host = host
        cmd = [sys.executable, str(APP), node_id, "--workflows", workflows]
        bracketed = f"[{host}]" if ":" in host else host
        cmd += ["--listen", f"{bracketed}:{port}"]
        if trace_out is not None:
            cmd += ["--trace-out", str(trace_out)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("BLAZEN_PEER_TOKEN", None)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        self.port = port

    def ready(self) -> PeerProcess:
        """Wait for the child's ``PORT n`` line (it prints it once serving)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.kill()
            raise RuntimeError(f"peer {self.node_id} did not start (exit {self.proc.returncode})")
        self.port = int(line.split()[1])
        return self

    @property
    def address(self) -> str:
        """``host:port`` to dial."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def kill(self) -> None:
        """SIGKILL and reap (no goodbye: connections just drop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM (graceful stop), reap, and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()
        return self.proc.returncode

    def _reap(self) -> None:
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def start_peers(*specs: tuple[str, str], **options: object) -> list[PeerProcess]:
    """Start several peers at once (``(node_id, workflows)`` each) and wait for all."""
    peers = [PeerProcess(node_id, workflows, **options) for node_id, workflows in specs]  # type: ignore[arg-type]
    try:
        return [peer.ready() for peer in peers]
    except BaseException:
        for peer in peers:
            peer.kill()
        raise
