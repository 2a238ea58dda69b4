"""Watching a peer's served runs and calls from outside (metrics, a status page).

A :class:`RunObserver` set on :attr:`PeerServer.observer
<peerflow.peer.server.PeerServer.observer>` hears of every served run when it starts, each
event it streams to its caller, and when it ends, and of every RPC's final status code.
Each hook is called on the server's event loop, once per run or call (once per streamed
event for ``run_event``): it must be cheap and must not raise.

The run handed to the hooks is the live :class:`~peerflow.engine.HostedRun`: ``run.run_id``,
``run.workflow_name``, ``run.state`` and, once ended, ``run.outcome`` (``Completed``,
``Failed``, ``Cancelled`` or ``TimedOut``). While the run is in flight ``run.cancel()``
cancels it, as a caller's cancel would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import grpc

from peerflow.errors import PeerflowError, RpcStatus
from peerflow.peer.handlers import Scope, wrap_behavior
from peerflow.peer.status import status_for

if TYPE_CHECKING:
    from peerflow.engine import HostedRun
    from peerflow.events import Event

__all__ = ["RunObserver", "counted_stream", "counted_unary"]


class RunObserver(Protocol):
    """What a peer reports about its served runs and calls."""

    def run_started(self, run: HostedRun, caller: str) -> None:
        """A served run has started; ``caller`` is the calling node's id, or ``-``."""

    def run_event(self, run: HostedRun, event: Event) -> None:
        """A served run streamed ``event`` to its caller (streaming calls only)."""

    def run_ended(self, run: HostedRun, seconds: float) -> None:
        """A served run has ended after ``seconds``; ``run.outcome`` says how."""

    def rpc_done(self, method: str, code: str) -> None:
        """An RPC ``method`` (its short name) ended with status ``code``.

        ``code`` is an :class:`~peerflow.errors.RpcStatus` (equal to its name, e.g. ``"OK"``).
        """


class _HasObserver(Protocol):
    observer: RunObserver | None


def _code(failed: BaseException | None) -> RpcStatus:
    """The status a handler's outcome becomes, read from its error.

    Not from ``context.code()``, which costs a served call ~20 µs.
    """
    if failed is None:
        return RpcStatus.OK
    if isinstance(failed, PeerflowError):
        return RpcStatus[status_for(failed)[0].name]
    if isinstance(failed, asyncio.CancelledError | GeneratorExit):
        return RpcStatus.CANCELLED  # the caller left (or a stalled stream was ended)
    return RpcStatus.UNKNOWN


class _Counted:
    """Reports a call's final status to the observer when the call ends."""

    __slots__ = ("_method", "_observer")

    def __init__(self, observer: RunObserver, method: str) -> None:
        self._observer = observer
        self._method = method

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._observer.rpc_done(self._method, _code(exc))


_UNOBSERVED: Final = contextlib.nullcontext()


def _counting(owner: _HasObserver, method: str) -> Scope:
    short = method.rsplit("/", 1)[-1]

    def scope(context: object) -> AbstractContextManager[object]:
        observer = owner.observer
        return _UNOBSERVED if observer is None else _Counted(observer, short)

    return scope


Q = TypeVar("Q")
R = TypeVar("R")


def counted_unary(
    owner: _HasObserver,
    method: str,
    fn: Callable[[Q, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Q, grpc.aio.ServicerContext], Awaitable[R]]:
    """``fn``, reporting its final status to ``owner.observer`` when one is set.

    Wrap the handler inside the failure boundary (``peer._boundary.guard``): the status is
    read from the PeerflowError the boundary turns into it.

    Returns:
        The wrapped handler.

    Raises:
        Nothing itself; the handler raises what ``fn`` raises.
    """
    return wrap_behavior(fn, _counting(owner, method))


def counted_stream(
    owner: _HasObserver,
    method: str,
    fn: Callable[[bytes, grpc.aio.ServicerContext], AsyncGenerator[bytes, None]],
) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncGenerator[bytes, None]]:
    """``fn`` (a streaming handler), reporting its final status to ``owner.observer``.

    Returns:
        The wrapped handler.

    Raises:
        Nothing itself; the handler raises what ``fn`` raises.
    """
    return wrap_behavior(fn, _counting(owner, method))
