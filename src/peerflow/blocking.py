"""The one private-loop portal behind every ``*_blocking`` method.

A single event loop runs on a daemon thread, created on first use. ``call_blocking(fn,
*args)`` runs the coroutine function ``fn`` on it and waits; Ctrl-C (``KeyboardInterrupt``)
cancels the coroutine before re-raising. Called from a thread that is running an event
loop, it raises :class:`~peerflow.errors.ValidationError` telling the caller to ``await``
the async method instead (blocking there would freeze that loop).

Objects that hold loop-bound resources (a ``PeerClient``'s channel) and were created by a
``*_blocking`` call live on the portal loop; their ``*_blocking`` methods use it too.

Classes declare their twins from the async methods, so no logic is written twice::

    class PeerClient:
        async def describe(self) -> PeerInfo: ...
        describe_blocking = blocking_twin(describe)

An object whose async methods only work on the loop it was created on defines
``_check_portal()``, which raises when that loop is not the portal's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

from peerflow.errors import ValidationError

__all__ = ["blocking_iter_twin", "blocking_twin", "call_blocking", "portal_loop"]

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def portal_loop() -> asyncio.AbstractEventLoop:
    """The portal's event loop, started on first use."""
    global _loop
    loop = _loop
    if loop is not None and not loop.is_closed():
        return loop  # the common path takes no lock (a Ctrl-C inside `with` can leak one)
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


def _refuse_inside_loop(name: str) -> None:
    # asyncio's None-returning probe rather than get_running_loop() and an except block: a
    # Ctrl-C landing inside that handler could leave its RuntimeError as the thread's
    # "exception being handled", the __context__ of every exception raised later.
    if asyncio._get_running_loop() is None:
        return
    raise ValidationError(
        f"{name}_blocking() was called inside a running event loop; "
        f"use `await {name}(...)` there instead"
    )


def call_blocking(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``await fn(*args, **kwargs)`` on the portal loop and return its result.

    Raises:
        ValidationError: called from a thread that is running an event loop.
        BaseException: whatever ``fn`` raises.
    """
    _refuse_inside_loop(getattr(fn, "__name__", "this method"))
    return _on_portal(fn, *args, **kwargs)


_WAKE = 0.05  # seconds between checks for a pending Ctrl-C while a blocking call waits


class _PortalCall:
    """One coroutine run on the portal for a waiting thread, safe against interrupts.

    The waiting thread may be interrupted (Ctrl-C raises ``KeyboardInterrupt`` at any
    bytecode) at every point: while scheduling the start, while waiting, or after the result
    arrived. So nothing here can be left half-done by the waiter:

    - the waiter waits on a bare lock used as a one-shot signal: the portal thread only ever
      *releases* it, so it can never block on a lock the interrupted waiter left held (a
      ``concurrent.futures.Future`` waits under a condition the portal also needs); it
      waits in short timed slices, so a Ctrl-C delivered to another thread still reaches it;
    - an abandoned call is marked first (a plain attribute store), then a cancel is
      scheduled; the portal starts no coroutine for a call marked abandoned, and cancels
      the one it started, so whichever of start and cancel runs first, the coroutine either
      never began or is cancelled and its cleanup runs.
    """

    __slots__ = (
        "_abandoned",
        "_args",
        "_context",
        "_error",
        "_fn",
        "_kwargs",
        "_loop",
        "_outcome_set",
        "_result",
        "_signal",
        "_task",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._loop = loop
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        # The coroutine runs in a copy of the caller's context variables, as if called
        # there: trace context, and the step whose remote calls roll into its run's usage.
        self._context = contextvars.copy_context()
        self._signal = threading.Lock()
        self._signal.acquire()  # released once, by the portal, when the call is over
        self._outcome_set = False
        self._abandoned = False
        self._task: asyncio.Task[None] | None = None
        self._result: Any = None
        self._error: BaseException | None = None

    # -- on the portal loop --------------------------------------------------------------

    def start(self) -> None:
        if self._abandoned:
            self._finish()  # interrupted before it began: nothing to clean up
            return
        self._task = self._loop.create_task(self._run(), context=self._context)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        else:
            self._finish()

    async def _run(self) -> None:
        try:
            self._result = await self._fn(*self._args, **self._kwargs)
        except BaseException as exc:  # delivered to the waiting thread, whatever it is
            self._error = exc
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._outcome_set:
            self._outcome_set = True
            self._signal.release()

    # -- on the waiting thread -----------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The coroutine ended (or will never start) and its outcome is set."""
        return self._outcome_set

    def wait(self) -> Any:
        # Timed waits in a loop, not one blocking acquire: a SIGINT the kernel hands to
        # another thread (any thread may receive a process signal) does not interrupt a
        # blocked acquire, and Python runs its handler only when this thread next executes
        # bytecode. Each timeout returns here, so Ctrl-C lands within _WAKE seconds.
        while not self._signal.acquire(timeout=_WAKE):
            pass
        self._signal.release()  # stays open, so a later abandon() does not wait
        if self._error is not None:
            raise self._error
        return self._result

    def abandon(self, cleanup_timeout: float) -> None:
        """Cancel the coroutine and give its cleanup up to ``cleanup_timeout`` seconds."""
        self._abandoned = True
        with contextlib.suppress(RuntimeError):  # the portal loop is closed: nothing runs
            self._loop.call_soon_threadsafe(self.cancel)
        if self._signal.acquire(timeout=cleanup_timeout):
            self._signal.release()


def _on_portal(fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    loop = portal_loop()
    call = _PortalCall(loop, fn, args, kwargs)
    try:
        loop.call_soon_threadsafe(call.start)
        result: T = call.wait()
    except BaseException:
        if not call.finished:
            # Ctrl-C (or any interrupt) wherever it landed: cancel the coroutine and give
            # its cleanup (a run's shutdown, a remote cancel) up to 5 s before it propagates.
            call.abandon(cleanup_timeout=5.0)
        raise
    return result


def _on_portal_thread() -> bool:
    return threading.current_thread().name == "peerflow-blocking"


def _check_owner(obj: object) -> None:
    check = getattr(obj, "_check_portal", None)
    if check is not None:
        check()


def _name_twin(twin: Callable[..., Any], method: Callable[..., Any]) -> None:
    functools.update_wrapper(twin, method)  # signature and annotations, for help()
    twin.__name__ = f"{method.__name__}_blocking"
    twin.__qualname__ = f"{method.__qualname__}_blocking"
    twin.__doc__ = (
        f"Blocking twin of :meth:`{method.__name__}`: the same arguments, result and "
        "errors, for code without an event loop.\n\n"
        "Raises:\n"
        f"    ValidationError: called inside a running event loop (``await "
        f"{method.__name__}()`` there), or on an object bound to another loop.\n"
    )


def blocking_twin(
    method: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], T]:
    """The ``*_blocking`` twin of an async method: it runs the method on the portal loop."""

    def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        _refuse_inside_loop(method.__name__)
        _check_owner(self)
        return _on_portal(method, self, *args, **kwargs)

    _name_twin(twin, method)
    return twin


def blocking_iter_twin(
    method: Callable[Concatenate[S, P], AsyncIterator[T]],
) -> Callable[Concatenate[S, P], Iterator[T]]:
    """The ``*_blocking`` twin of an async-generator method: a plain generator."""

    def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        _refuse_inside_loop(method.__name__)
        _check_owner(self)
        items = method(self, *args, **kwargs)

        async def step() -> T:
            return await anext(items)

        async def close() -> None:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                try:
                    yield _on_portal(step)
                except StopAsyncIteration:
                    return
        finally:
            if _on_portal_thread():
                # Collected on the portal thread itself (by the cyclic GC): waiting for the
                # portal here would deadlock it, so only schedule the close.
                portal_loop().create_task(close())
            else:
                with contextlib.suppress(Exception):  # never mask what ended the iteration
                    _on_portal(close)

    _name_twin(twin, method)
    return twin
