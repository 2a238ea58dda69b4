"""A peer serving in a child Python process: started, its port read back, always reaped.

The one implementation behind :func:`peerflow.testing.start_peer_process` (``peer_main``),
``peerflow demo`` (``peerflow serve``) and the test suite's own peer scripts.

The child reports its port with one stdout line once serving: ``peer_main``'s JSON
``{"port": N, ...}`` or ``peerflow serve``'s ``serving on HOST:PORT``. What it prints
before that line, and everything after it, is passed on to our stdout (after it, by a
thread), so the child never blocks on a full pipe. Its stdin is a pipe we hold: a child
that watches it (``peer_main --exit-on-stdin-eof``) stops when we die.

Standard library only (and :mod:`peerflow.errors`): the demo uses it without the test
helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Self

from peerflow.errors import TransportError, ValidationError

__all__ = ["DEFAULT_STARTUP_TIMEOUT", "LOOPBACK", "PeerProcess", "host_port"]

LOOPBACK = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
# How long reaping waits for the reader threads to copy what the child wrote last.
_PIPE_DRAIN_TIMEOUT = 1.0


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:50051``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerProcess:
    """A peer serving in a separate Python process.

    Made by :func:`peerflow.testing.start_peer_process` (ready to call), or by
    :meth:`spawn` then :meth:`ready` (several spawned first start in parallel). Use it as
    a context manager (or call :meth:`terminate`) so the process is always stopped and
    reaped.

    Attributes:
        node_id: the peer's node id.
        port: the port it listens on (0 until :meth:`ready` has read it back).
        host: the host it listens on (``127.0.0.1`` unless spawned on another).
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        node_id: str,
        port: int = 0,
        host: str = LOOPBACK,
    ) -> None:
        self._proc = proc
        self.node_id = node_id
        self.port = port
        self.host = host
        self._what = ""  # how error messages name the child
        self._lock = threading.Lock()
        self._stdout_taken = port != 0  # by ready(), then the pass-on thread; or closed
        self._readers: list[threading.Thread] = []
        self._stderr: bytearray | None = None

    @classmethod
    def spawn(
        cls,
        python_args: Sequence[str],
        *,
        node_id: str,
        host: str = LOOPBACK,
        env: Mapping[str, str | None] | None = None,
        capture_stderr: bool = False,
        new_session: bool = False,
        what: str | None = None,
    ) -> Self:
        """Start ``python PYTHON_ARGS`` and return at once; :meth:`ready` reads its port.

        Args:
            python_args: the child's arguments after the interpreter (``-m module ...``
                or ``script.py ...``); it must print its port line once serving.
            node_id: the peer's node id.
            host: the host the child listens on (what :attr:`address` names).
            env: variables set in the child on top of this process's environment (None
                unsets one); ``PYTHONUNBUFFERED=1`` is always set.
            capture_stderr: keep the child's stderr (for :meth:`last_error` and failure
                messages) instead of letting it through to ours.
            new_session: start the child in its own session, so a Ctrl-C at the terminal
                reaches only this process (which then stops the child in order).
            what: how error messages name the child (default: its arguments).

        Returns:
            The started process, its port not read yet.

        Raises:
            ValidationError: bad arguments.
            OSError: the interpreter could not be started.
        """
        if not isinstance(node_id, str) or not node_id.strip():
            raise ValidationError(f"node_id must be a non-empty string, got {node_id!r}")
        if isinstance(python_args, str):
            raise ValidationError("python_args must be a list of strings, not one string")
        child_env = dict(os.environ)
        for name, value in (env or {}).items():
            if value is None:
                child_env.pop(name, None)
            else:
                child_env[name] = value
        child_env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(
            [sys.executable, *python_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stderr else None,
            env=child_env,
            start_new_session=new_session,
        )
        peer = cls(proc, node_id=node_id, host=host)
        peer._what = " ".join(python_args) if what is None else what
        if capture_stderr:
            assert proc.stderr is not None
            peer._stderr = bytearray()
            peer._read_in_thread("stderr", _keep, proc.stderr, peer._stderr)
        return peer

    def ready(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> Self:
        """Wait for the child's port line and record :attr:`port`; return ``self``.

        Idempotent. Blocking: from async code run it in a thread (``asyncio.to_thread``).

        Raises:
            TransportError: the child exited, or reported no port within ``timeout``
                seconds; it has been killed and reaped.
        """
        with self._lock:
            if self._stdout_taken:
                if self.port:
                    return self
                raise self._not_serving("was stopped before it reported its port")
            self._stdout_taken = True
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            port, rest = _read_port_line(stdout, timeout)
        except BaseException as exc:
            self.kill()
            stdout.close()
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, TimeoutError):
                why = f"did not report its port within {timeout:g}s"
            elif isinstance(exc, EOFError):
                why = f"exited with code {self._proc.returncode} before serving"
            else:
                why = f"printed a malformed port line ({exc!r})"
            raise self._not_serving(why) from None
        self.port = port
        self._read_in_thread("stdout", _pass_on, stdout, rest)
        return self

    def _not_serving(self, why: str) -> TransportError:
        self._join_readers()
        if self._stderr is None:
            detail = " (see its stderr)"
        else:
            detail = f": {self.last_error()}" if self.last_error() else ""
        return TransportError(
            f"peer process {self.node_id!r} ({self._what}) {why}{detail}",
            address=host_port(self.host, 0),
        )

    def _read_in_thread(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(
            target=target,
            args=args,
            name=f"peer-{self.node_id}-{name}",
            daemon=True,
        )
        thread.start()
        self._readers.append(thread)

    @property
    def address(self) -> str:
        """``host:port`` (``127.0.0.1:<port>``), to pass to ``PeerClient.connect``."""
        return host_port(self.host, self.port)

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited (negative: killed by that signal)."""
        return self._proc.poll()

    def running(self) -> bool:
        """True while the process has not exited."""
        return self._proc.poll() is None

    def last_error(self) -> str:
        """The last non-empty line the child wrote on stderr ("" unless captured)."""
        text = bytes(self._stderr or b"").decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit code.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        code = self._proc.wait(timeout)
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with self._lock:
            unread, self._stdout_taken = not self._stdout_taken, True
        if unread and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._join_readers()
        return code

    def _join_readers(self) -> None:
        for thread in self._readers:
            if thread is not threading.current_thread():
                thread.join(_PIPE_DRAIN_TIMEOUT)

    def terminate(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """Stop gracefully (SIGTERM); SIGKILL if it has not exited within ``timeout``.

        Idempotent; always reaps the process. Returns its exit code (0 after a graceful
        stop).
        """
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self.wait()

    def kill(self) -> int:
        """Kill the process at once (SIGKILL) and reap it; return its exit code."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        return self.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        state = "running" if self.running() else f"exited {self.returncode}"
        return f"<PeerProcess {self.node_id} pid={self.pid} {self.address} {state}>"


def _reported_port(line: bytes) -> int | None:
    """The port a port line reports (None: the line is the app's own output)."""
    if line.startswith(b'{"port":'):
        return int(json.loads(line)["port"])
    if line.startswith(b"serving on "):
        return int(line.split()[2].rpartition(b":")[2])
    return None


def _read_port_line(stdout: IO[bytes], timeout: float) -> tuple[int, bytes]:
    """The child's reported port, passing on whatever the app printed before it.

    Returns:
        The port and the bytes read after its line (the app's output, to pass on).

    Raises:
        TimeoutError: no port line within ``timeout`` seconds.
        EOFError: the child closed its stdout (exited) first.
        ValueError: a malformed port line.
    """
    fd = stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in data:
                line, _, data = data.partition(b"\n")
                port = _reported_port(line)
                if port is not None:
                    return port, data
                sys.stdout.buffer.write(line + b"\n")  # the app's own output
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            data += chunk


def _pass_on(stream: IO[bytes], first: bytes) -> None:
    """Copy a child's stdout to ours until it closes, so the child never blocks on it."""
    out = sys.stdout.buffer
    with stream, contextlib.suppress(OSError, ValueError):
        if first:
            out.write(first)
            out.flush()
        fd = stream.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            out.write(chunk)
            out.flush()


def _keep(stream: IO[bytes], into: bytearray) -> None:
    """Collect a child's stderr until it closes."""
    with stream, contextlib.suppress(OSError, ValueError):
        fd = stream.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            into += chunk
