"""``RemoteWorkflowHandler``: a run on a peer, driven like a local ``WorkflowHandler``.

``client.start_remote_workflow(...)`` (and the same on ``PeerPool``) returns one. It
mirrors :class:`~peerflow.runtime.WorkflowHandler`: ``stream_events()``,
``send_event(event)``, ``cancel()``, ``run_id`` and ``await handler``. The conversation
travels on the client's session with the peer: an ``InputRequiredEvent`` raised on the
peer arrives on the stream with all its fields, and ``handler.send_event(
HumanResponseEvent(response=...))`` reaches the step waiting for it. Waiting for an
answer counts against the call's ``timeout_secs``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import orjson

from peerflow.blocking import blocking_iter_twin, blocking_twin, portal_loop
from peerflow.errors import ValidationError
from peerflow.events import Event
from peerflow.peer import protocol as wire
from peerflow.peer.results import item_event
from peerflow.peer.session import Session, SessionCall
from peerflow.peer.session_link import SessionLink, when_from
from peerflow.peer.session_wire import CallMode, InputRequest
from peerflow.result import WorkflowResult
from peerflow.runtime._handler import _SENT, _Sent  # send_event's awaitable nothing

__all__ = ["RemoteWorkflowHandler"]


class RemoteWorkflowHandler:
    """A run on a peer in progress: await it, stream its events, answer it, cancel it.

    ``await handler`` (or ``await handler.result()``) returns the
    :class:`~peerflow.result.WorkflowResult` or raises the remote run's error, exactly as
    ``run_remote_workflow`` would.
    """

    def __init__(
        self,
        *,
        session: Session,
        call: SessionCall,
        run_id: str,
        workflow: str,
        address: str,
        when: float | None,
        to_result: Callable[[wire.SubWorkflowResponse], WorkflowResult],
    ) -> None:
        self._session = session
        self._call = call
        self._run_id = run_id
        self._workflow = workflow
        self._address = address
        self._when = when
        self._to_result = to_result
        self._stream_taken = False
        self._on_result: list[Callable[[WorkflowResult], None]] = []
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._task: asyncio.Task[WorkflowResult] = asyncio.ensure_future(self._outcome())

    @classmethod
    async def open(
        cls,
        link: SessionLink,
        session: Session,
        request: wire.SubWorkflowRequest,
        *,
        run_id: str,
        deadline: float | None,
        to_result: Callable[[wire.SubWorkflowResponse], WorkflowResult],
    ) -> RemoteWorkflowHandler:
        """Start ``request`` as a conversation on ``session``; its handler.

        Raises:
            PeerflowError: the session failed, or no credit came within ``deadline``.
        """
        when = when_from(deadline)
        call = await link.start(
            session, request, mode=CallMode.CONVERSATION, when=when, run_id=run_id, named=False
        )
        return cls(
            session=session,
            call=call,
            run_id=run_id,
            workflow=request.workflow_name,
            address=session.address,
            when=when,
            to_result=to_result,
        )

    async def _outcome(self) -> WorkflowResult:
        result = self._to_result(await self._session.outcome(self._call, self._when))
        for hook in self._on_result:
            hook(result)
        return result

    def on_result(self, hook: Callable[[WorkflowResult], None]) -> None:
        """Call ``hook(result)`` when the run succeeds, before ``await handler`` returns."""
        self._on_result.append(hook)

    @property
    def run_id(self) -> str:
        """The remote run's id."""
        return self._run_id

    @property
    def workflow_name(self) -> str:
        """The workflow running on the peer."""
        return self._workflow

    def done(self) -> bool:
        """True once the remote run's outcome is known."""
        return self._task.done()

    def __await__(self) -> Generator[Any, None, WorkflowResult]:
        return self._task.__await__()

    async def result(self) -> WorkflowResult:
        """Wait for the remote run's result.

        Raises:
            WorkflowError: the remote run failed (``remote=True``; timeout and cancel map
                to their subclasses).
            TransportError: the session with the peer failed.
        """
        return await self._task

    result_blocking = blocking_twin(result)

    async def stream_events(self) -> AsyncIterator[Event]:
        """Yield the remote run's streamed events in order, ending with its ``StopEvent``.

        Input requests arrive as ``InputRequiredEvent``s (answer them with
        :meth:`send_event`). If the run fails, the iterator raises its error after the
        events streamed before.

        Raises:
            ValidationError: the stream was already taken (it has one consumer).
            WorkflowError: the remote run failed.
            TransportError: the session with the peer failed.
        """
        if self._stream_taken:
            raise ValidationError("this run's event stream has already been consumed")
        self._stream_taken = True
        async for item in self._call.items(self._when):
            yield item_event(
                item.event_type,
                item.data_json,
                self._address,
                input_request=isinstance(item, InputRequest),
            )
        result = await self._task
        yield result.event  # the remote run's StopEvent (a custom subclass with its fields)

    stream_events_blocking = blocking_iter_twin(stream_events)

    def send_event(self, event: Event) -> _Sent:
        """Send an event to the remote run (e.g. the ``HumanResponseEvent`` it asked for).

        A plain call, safe from any thread; ``await handler.send_event(...)`` works too.

        Raises:
            ValidationError: ``event`` is not an Event, or the run has ended.
        """
        if not isinstance(event, Event):
            raise ValidationError(f"send_event takes an Event, got {event!r}")
        if self._task.done() or self._call.ended:
            raise ValidationError(f"run {self._run_id} has ended; it accepts no more events")
        data = orjson.dumps(event.to_dict())
        if threading.get_ident() == self._thread:
            self._call.answer(event.event_type, data)
        else:
            self._loop.call_soon_threadsafe(self._call.answer, event.event_type, data)
        return _SENT

    async def cancel(self) -> None:
        """Cancel the remote run and wait until the peer confirmed it stopped (idempotent).

        Awaiting the handler afterwards raises ``WorkflowCancelledError`` (remote).
        """
        self._call.cancel()
        await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.exception()  # retrieved: the caller asked for this outcome

    cancel_blocking = blocking_twin(cancel)

    async def cancel_run(self) -> None:
        """Alias of :meth:`cancel` (llama-index's name)."""
        await self.cancel()

    cancel_run_blocking = blocking_twin(cancel_run)

    def _check_portal(self) -> None:
        """Refuse ``*_blocking`` calls on a handler bound to a loop other than the portal's."""
        if self._loop is not portal_loop():
            raise ValidationError(
                "this handler was started inside an event loop; use its async methods there "
                "(start it with start_remote_workflow_blocking() to use *_blocking methods)"
            )

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<RemoteWorkflowHandler {self._workflow} {self._run_id} on {self._address} {state}>"
