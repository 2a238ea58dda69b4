"""The one private-loop portal behind every ``*_blocking`` method.

A single event loop runs on a daemon thread, created on first use. ``call_blocking(fn,
*args)`` runs the coroutine function ``fn`` on it and waits; Ctrl-C (``KeyboardInterrupt``)
cancels the coroutine before re-raising. Called from a thread that is running an event
loop, it raises :class:`~peerflow.errors.ValidationError` telling the caller to ``await``
the async method instead (blocking there would freeze that loop).

Objects that hold loop-bound resources (a ``PeerClient``'s channel) and were created by a
``*_blocking`` call live on the portal loop; their ``*_blocking`` methods use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from peerflow.errors import ValidationError

__all__ = ["call_blocking", "portal_loop"]

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def portal_loop() -> asyncio.AbstractEventLoop:
    """The portal's event loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="peerflow-blocking", daemon=True)
            thread.start()
            ready.wait()
            _loop = loop
        return _loop


def call_blocking(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``await fn(*args, **kwargs)`` on the portal loop and return its result.

    Raises:
        ValidationError: called from a thread that is running an event loop.
        BaseException: whatever ``fn`` raises.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        name = getattr(fn, "__name__", "this method")
        raise ValidationError(
            f"{name}_blocking() was called inside a running event loop; "
            f"use `await {name}(...)` there instead"
        )
    loop = portal_loop()
    if threading.current_thread().name == "peerflow-blocking":  # pragma: no cover - guarded above
        raise ValidationError("blocking call on the portal thread itself")

    async def runner() -> T:
        return await fn(*args, **kwargs)

    future = asyncio.run_coroutine_threadsafe(runner(), loop)
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        with contextlib.suppress(Exception):
            future.result(timeout=5)  # let the coroutine's cleanup run
        raise
