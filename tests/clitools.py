"""Run the real ``peerflow`` executable in subprocesses (shared by the CLI/README tests)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def peerflow_cmd() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m peerflow``."""
    found = shutil.which("peerflow", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "peerflow"]


def cli_env(extra: Mapping[str, str] | None = None, *, drop: Sequence[str] = ()) -> dict[str, str]:
    """The environment for a child: unbuffered, quiet gRPC, the venv's bin first on PATH."""
    env = dict(os.environ)
    env.pop("BLAZEN_PEER_TOKEN", None)
    env.pop("PEERFLOW_DEBUG", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    for name in drop:
        env.pop(name, None)
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``peerflow ARGS`` to completion."""
    return subprocess.run(
        [*peerflow_cmd(), *args],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else cli_env(),
        timeout=timeout,
        cwd=cwd,
        input=stdin,
    )


@contextlib.contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``host`` that refuses connections for as long as the block runs.

    The socket stays bound but never listens: a connect gets RST at once, and nothing else
    can take the port meanwhile (a port closed again could be bound by anyone).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])


def read_line(proc: subprocess.Popen[str], timeout: float = START_TIMEOUT) -> str:
    """The child's next stdout line, or "" after ``timeout`` or at EOF."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


class Served:
    """A ``peerflow serve`` child (or any command printing ``serving on HOST:PORT``)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        shell: bool = False,
    ) -> None:
        self.proc = subprocess.Popen(
            argv if not shell else ["bash", "-c", argv[0]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(env) if env is not None else cli_env(),
            cwd=cwd,
            start_new_session=True,
        )
        line = read_line(self.proc)
        if not line.startswith("serving on "):
            self.stop()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"server did not start: {line!r} {err[-2000:]}")
        self.address = line.split()[2]

    @classmethod
    def serve(
        cls, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Served:
        """``peerflow serve ARGS`` (add ``--listen 127.0.0.1:0`` yourself)."""
        return cls([*peerflow_cmd(), "serve", *args], env=env, cwd=cwd)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the whole process group, then SIGKILL; return the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.1)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
