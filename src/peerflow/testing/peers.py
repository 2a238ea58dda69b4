"""Start real peers for tests: in this process, or in a separate Python process.

In-process (same event loop as the test; nothing to reap)::

    async with serve_in_process([my_workflow], node_id="b") as server:
        async with await PeerClient.connect(server.address, "a") as client:
            result = await client.run_remote_workflow("my-workflow")

In a separate process (a real peer that can be killed; always reaped)::

    with start_peer_process("my_app.peer", node_id="b") as peer:
        client = await PeerClient.connect(peer.address, "a")

The child is ``python -m peerflow.testing.peer_main APP --node-id ID``: it imports ``APP``
(``module`` or ``module:attr``) so its steps and workflows register, serves on
``127.0.0.1`` port 0, prints one JSON line ``{"port": N, ...}`` on stdout once serving, and
stops gracefully (exit 0) on SIGTERM/SIGINT or when its stdin closes (so a crashed parent
never leaves it behind).
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
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import IO, Any, Self

from peerflow.errors import PeerError, PeerErrorKind, ValidationError
from peerflow.peer.server import PeerServer
from peerflow.registry import Registry
from peerflow.step import StepFn, StepSpec
from peerflow.workflow import Workflow

__all__ = ["PeerProcess", "serve_in_process", "start_peer_process"]

LOOPBACK = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0

Servable = Registry | Workflow | Iterable[Workflow] | Mapping[str, StepSpec | StepFn]


def _as_registry(what: Servable | None) -> Registry | None:
    """A registry holding ``what`` (None: the server uses the process-wide one)."""
    if what is None or isinstance(what, Registry):
        return what
    registry = Registry()
    if isinstance(what, Workflow):
        registry.register_workflow(what)
    elif isinstance(what, Mapping):
        for step_id, fn in what.items():
            registry.register_step(step_id, fn)
    elif isinstance(what, Iterable) and not isinstance(what, str | bytes):
        for wf in what:
            if not isinstance(wf, Workflow):
                raise ValidationError(f"serve_in_process takes Workflows, got {wf!r}")
            registry.register_workflow(wf)
    else:
        raise ValidationError(
            "serve_in_process takes a Registry, a Workflow, a list of Workflows or a "
            f"{{step_id: step}} mapping, got {what!r}"
        )
    return registry


@contextlib.asynccontextmanager
async def serve_in_process(
    workflows_or_registry: Servable | None = None,
    *,
    node_id: str = "test-peer",
    grace: float | None = 1.0,
    **server_kwargs: Any,
) -> AsyncIterator[PeerServer]:
    """Serve workflows from this process on ``127.0.0.1`` (a free port) while in the block.

    Args:
        workflows_or_registry: a :class:`~peerflow.registry.Registry`, a workflow, a list
            of workflows or a ``{step_id: step}`` mapping (registered in a fresh registry);
            None serves the process-wide registry.
        node_id: the server's node id.
        grace: seconds runs in flight get to finish when the block exits.
        **server_kwargs: passed to :class:`~peerflow.peer.server.PeerServer`
            (``token=``, ``tls=``, ``session_refs=``, ``default_timeout_secs=``, ...).

    Yields:
        The started server; ``server.address`` is ``127.0.0.1:<port>``. It is always
        stopped when the block exits.

    Raises:
        ValidationError: bad arguments (including both a registry and ``registry=``).
        PeerError: the server could not start.
    """
    registry = _as_registry(workflows_or_registry)
    if registry is not None and "registry" in server_kwargs:
        raise ValidationError("pass workflows_or_registry or registry=, not both")
    if registry is not None:
        server_kwargs["registry"] = registry
    server = PeerServer(node_id, **server_kwargs)
    try:
        await server.start(f"{LOOPBACK}:0")
        yield server
    finally:
        await server.stop(grace)


class PeerProcess:
    """A peer serving in a separate Python process (see :func:`start_peer_process`).

    Use it as a context manager (or call :meth:`terminate`) so the process is always
    stopped and reaped.

    Attributes:
        node_id: the peer's node id.
        port: the port it listens on (on ``127.0.0.1``).
    """

    def __init__(self, proc: subprocess.Popen[bytes], *, node_id: str, port: int) -> None:
        self._proc = proc
        self.node_id = node_id
        self.port = port

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, to pass to ``PeerClient.connect``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
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

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit code.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        code = self._proc.wait(timeout)
        self._close_pipes()
        return code

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

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        state = "running" if self.running() else f"exited {self.returncode}"
        return f"<PeerProcess {self.node_id} pid={self.pid} {self.address} {state}>"


_PORT_LINE = b'{"port":'


def _read_port_line(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes]:
    """The child's port line (``{"port": ...}``), skipping whatever the app printed before.

    Returns:
        The port line and the bytes read after it (the app's output, to pass on).

    Raises:
        TimeoutError: no port line within ``timeout`` seconds.
        EOFError: the child closed its stdout (exited) first.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in data:
                line, _, rest = bytes(data).partition(b"\n")
                if line.startswith(_PORT_LINE):
                    return line, rest
                sys.stdout.buffer.write(line + b"\n")  # the app's own output
                data = bytearray(rest)
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
    with contextlib.suppress(OSError, ValueError):
        if first:
            out.write(first)
        fd = stream.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            out.write(chunk)
            out.flush()


def start_peer_process(
    app: str,
    *,
    node_id: str,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
) -> PeerProcess:
    """Start a peer in a separate Python process on ``127.0.0.1`` (a free port).

    Args:
        app: what the child imports so its steps and workflows register: ``module`` or
            ``module:attr`` (``attr`` a Registry, a Workflow or a list of Workflows). It must
            be importable by the child (put its directory in ``env["PYTHONPATH"]``).
        node_id: the peer's node id.
        token: the token the peer requires (passed in ``BLAZEN_PEER_TOKEN``, never on the
            command line); None keeps whatever the environment holds.
        env: variables set in the child, on top of this process's environment.
        extra_args: more ``peer_main`` options (``--default-timeout``, ``--ref-ttl``,
            ``--max-concurrent-runs``).
        startup_timeout: seconds to wait for the child to report its port.

    Returns:
        The running :class:`PeerProcess`.

    Raises:
        ValidationError: bad arguments.
        PeerError: the child exited or did not report a port in time (kind TRANSPORT);
            it has been killed and reaped.
    """
    if not isinstance(app, str) or not app:
        raise ValidationError(f"app must be `module` or `module:attr`, got {app!r}")
    if not isinstance(node_id, str) or not node_id.strip():
        raise ValidationError(f"node_id must be a non-empty string, got {node_id!r}")
    if isinstance(extra_args, str):
        raise ValidationError("extra_args must be a list of strings, not one string")
    child_env = dict(os.environ)
    if env is not None:
        child_env.update(env)
    if token is not None:
        child_env["BLAZEN_PEER_TOKEN"] = token
    child_env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "peerflow.testing.peer_main",
        app,
        "--node-id",
        node_id,
        "--listen",
        f"{LOOPBACK}:0",
        "--exit-on-stdin-eof",
        *extra_args,
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env)
    try:
        line, rest = _read_port_line(proc, startup_timeout)
        port = int(json.loads(line)["port"])
    except BaseException as exc:
        proc.kill()
        code = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        if not isinstance(exc, Exception):
            raise
        why = (
            f"did not report its port within {startup_timeout:g}s"
            if isinstance(exc, TimeoutError)
            else f"exited with code {code} before serving (see its stderr)"
        )
        raise PeerError(
            f"peer process {node_id!r} ({app}) {why}",
            kind=PeerErrorKind.TRANSPORT,
            address=f"{LOOPBACK}:0",
        ) from None
    assert proc.stdout is not None
    threading.Thread(
        target=_pass_on, args=(proc.stdout, rest), name=f"peer-{node_id}-stdout", daemon=True
    ).start()
    return PeerProcess(proc, node_id=node_id, port=port)
