"""Run ``security_app.py`` peers (and a one-shot client) in subprocesses; always reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

APP = Path(__file__).with_name("security_app.py")
CLIENT = Path(__file__).with_name("security_app_client.py")


class SecurityPeer:
    """One ``security_app.py`` server in a subprocess; ``port`` is read from its stdout.

    Args:
        node_id: the peer's node id.
        args: extra command-line arguments (``--ref-ttl 1``, ``--grace 5``, ...).
        listen: the listen address (port 0 picks one).
        prefix: a command prefix (``["ip", "netns", "exec", "ns1"]``).
        env: extra environment variables.
    """

    def __init__(
        self,
        node_id: str,
        args: Sequence[str] = (),
        *,
        listen: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.host = listen.rsplit(":", 1)[0]
        cmd = [*prefix, sys.executable, str(APP), node_id, "--listen", listen, *args]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        full_env.pop("BLAZEN_PEER_TOKEN", None)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            text=True,
        )
        line = self.readline()
        if not line.startswith("PORT "):
            self.kill()
            assert self.proc.stderr is not None
            raise RuntimeError(
                f"peer {node_id} did not start (exit {self.proc.returncode}): "
                f"{self.proc.stderr.read()[-2000:]}"
            )
        self.port = int(line.split()[1])

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    @property
    def address(self) -> str:
        """``host:port`` to dial."""
        return f"{self.host}:{self.port}"

    def readline(self) -> str:
        """The next line the server printed (``""`` at EOF)."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def command(self, line: str) -> None:
        """Send one stdin command (``release``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL and reap (connections just drop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def terminate(self) -> None:
        """Send SIGTERM (graceful stop); reap with :meth:`wait`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit (SIGKILL after ``timeout``) and return the exit code."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reap()
        return self.proc.returncode

    def _reap(self) -> None:
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> SecurityPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def client_command(address: str, workflow: str, *, prefix: Sequence[str] = ()) -> list[str]:
    """The command line of a one-shot client that runs ``workflow`` and prints the result."""
    return [*prefix, sys.executable, str(CLIENT), address, workflow]
