"""The child side of :func:`peerflow.testing.start_peer_process`.

``python -m peerflow.testing.peer_main APP --node-id ID [--listen 127.0.0.1:0]`` imports
``APP`` (``module`` or ``module:attr``) so its steps and workflows register, serves them,
prints one JSON line ``{"port": N, "pid": P, "node_id": ID}`` on stdout once serving, and
stops gracefully on SIGTERM/SIGINT (exit 0). With ``--exit-on-stdin-eof`` it also stops
when its stdin closes (the parent died).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence

from peerflow.errors import PeerflowError, ValidationError
from peerflow.peer.server import PeerServer
from peerflow.registry import Registry
from peerflow.workflow import Workflow

__all__ = ["load_app", "main"]


def load_app(app: str) -> Registry | None:
    """Import ``app`` and return the registry to serve (None: the process-wide one).

    ``module`` serves whatever importing it registered; ``module:attr`` serves ``attr``: a
    Registry, a Workflow or an iterable of Workflows (registered in a fresh registry).

    Raises:
        ValidationError: the module or attribute is missing or of the wrong kind.
    """
    module_name, _, attr = app.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(f"cannot import {module_name!r}: {exc}") from exc
    if not attr:
        return None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ValidationError(f"{module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, Registry):
        return target
    if isinstance(target, Workflow):
        target = [target]
    if isinstance(target, Iterable) and not isinstance(target, str | bytes):
        registry = Registry()
        for wf in target:
            if not isinstance(wf, Workflow):
                raise ValidationError(f"{app} holds {wf!r}, not a Workflow")
            registry.register_workflow(wf)
        return registry
    raise ValidationError(f"{app} must be a Registry, a Workflow or a list of Workflows")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m peerflow.testing.peer_main")
    parser.add_argument("app", help="module or module:attr to serve")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--default-timeout", type=float, default=None)
    parser.add_argument("--ref-ttl", type=float, default=None)
    parser.add_argument("--max-concurrent-runs", type=int, default=None)
    parser.add_argument("--ref-budget-bytes", type=int, default=None)
    parser.add_argument("--max-stream-buffer-bytes", type=int, default=None)
    parser.add_argument("--stream-idle-timeout", type=float, default=None)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    kwargs: dict[str, object] = {}
    if args.default_timeout is not None:
        kwargs["default_timeout_secs"] = args.default_timeout
    if args.ref_ttl is not None:
        kwargs["ref_ttl"] = args.ref_ttl
    for name in (
        "max_concurrent_runs",
        "ref_budget_bytes",
        "max_stream_buffer_bytes",
        "stream_idle_timeout",
    ):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    server = PeerServer(args.node_id, registry=load_app(args.app), **kwargs)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_on_stdin_eof:
        fd = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(fd, 4096):
                loop.remove_reader(fd)
                stop.set()

        try:
            loop.add_reader(fd, on_stdin)
        except OSError:  # a regular file or /dev/null cannot be watched: read it in a thread

            def wait_eof() -> None:
                while os.read(fd, 4096):
                    pass
                loop.call_soon_threadsafe(stop.set)

            threading.Thread(target=wait_eof, name="stdin-eof", daemon=True).start()
    port = await server.start(args.listen)
    try:
        line = json.dumps({"port": port, "pid": os.getpid(), "node_id": args.node_id})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await server.stop(args.grace)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the peer until SIGTERM/SIGINT; return the exit code."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(_serve(args))
    except PeerflowError as exc:
        print(f"peer_main: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
