"""``remote_step``: a step that runs a sub-workflow on a peer.

The rest of a workflow treats it as any other step::

    analyze = remote_step(client, "analyze-pipeline", accepts=[StartEvent])
    wf = Workflow("orchestrate", [analyze])

It forwards its event's fields as the remote start input, re-emits the remote run's stream
events on the parent's stream as they arrive, rolls the remote token/cost usage into the
parent's totals, and returns the remote ``StopEvent`` (its ``result``).

Human in the loop: when the parent run can be answered (it was started with ``start()``, or
is itself a conversation with its caller) and the peer holds conversations (a session), a
remote ``InputRequiredEvent`` goes onto the parent's stream and the parent handler's
``HumanResponseEvent`` goes back to the remote step waiting for it: a person answering the
top-level run answers a step two machines away. Otherwise the remote run cannot be
answered, and one that asks fails as ``stalled``.

Remote refs when the parent run ends:

- a ref that reached the parent's result (``result.result["matrix"]``) stays alive: the
  caller fetches it after the run and releases it, or the peer's lease (``ref_ttl``)
  expires it;
- the remote run's other ``UNTIL_PARENT_FINISH`` refs are released (all of them when the
  parent failed or was cancelled), unless ``keep_remote_refs=True``;
- its ``UNTIL_EXPLICIT_DROP`` refs are never released here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from peerflow.context import Context
from peerflow.errors import PeerflowError, UnsupportedError, ValidationError
from peerflow.events import Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent
from peerflow.refs import RefDescriptor, RefLifetime, RegistryKey
from peerflow.result import WorkflowResult
from peerflow.step import StepSpec, step
from peerflow.store._journal import durable_call_id

__all__ = ["remote_step"]

log = logging.getLogger("peerflow")


class _Caller(Protocol):
    """What remote_step needs: a PeerClient or a PeerPool."""

    def stream_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Any = None,
        *,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> Any: ...


def remote_step(
    client: _Caller,
    workflow_name: str,
    step_ids: Sequence[str] = (),
    *,
    accepts: Sequence[type[Event] | str] | None = None,
    name: str | None = None,
    timeout_secs: float | None = None,
    retries: int = 0,
    keep_remote_refs: bool = False,
    emits: type[Event] | None = None,
    merge_state: bool = False,
) -> StepSpec:
    """A step that runs ``workflow_name`` on a peer (or a pool) and returns its StopEvent.

    Args:
        client: a :class:`~peerflow.peer.client.PeerClient` or
            :class:`~peerflow.peer.pool.PeerPool`.
        workflow_name: the workflow's name on the peer.
        step_ids: step ids to assemble there (empty: its registered workflow).
        accepts: what the step accepts (default ``StartEvent``).
        name: the step's id (default ``remote:<workflow_name>``).
        timeout_secs: bounds the remote run on the peer.
        retries: extra attempts after a failure (only safe for idempotent remote work).
        keep_remote_refs: keep all the remote run's refs after the parent run ends (they
            then live until released or their lease expires). Without it, the refs that
            reached the parent's result are kept and the others released.
        emits: the event the remote result becomes, so the parent goes on (a step in the
            middle of a graph): a dict result fills its fields, any other result its
            ``result`` field. Without it the step returns a ``StopEvent``: it ends the
            parent run with the remote result.
        merge_state: merge the remote run's exported state into the parent's ``ctx.state``.

    Returns:
        A :class:`~peerflow.step.StepSpec`.

    Raises:
        ValidationError: bad arguments.
    """
    if emits is not None and not (
        isinstance(emits, type) and issubclass(emits, Event) and emits is not Event
    ):
        raise ValidationError(f"emits must be an Event subclass, got {emits!r}")
    if not hasattr(client, "stream_remote_workflow"):
        raise ValidationError(f"remote_step needs a PeerClient or PeerPool, got {client!r}")
    if not isinstance(workflow_name, str) or not workflow_name:
        raise ValidationError(f"workflow_name must be a non-empty string, got {workflow_name!r}")
    ids = tuple(step_ids)

    async def run_remote(ctx: Context, ev: Event) -> Event:
        result: WorkflowResult | None = None
        # In a durable run the remote run is named after (run, step, event, attempt): a
        # parent resumed after a crash gets the same remote run back, not a second one.
        call_id = durable_call_id()
        starter = getattr(client, "start_remote_workflow", None)
        if call_id is None and starter is not None and ctx.can_answer:
            with contextlib.suppress(UnsupportedError):  # no session: no conversation
                handler = await starter(workflow_name, ids, _payload(ev), timeout_secs=timeout_secs)
                result = await _converse(ctx, handler)
        if result is None:
            named = {"run_id": call_id} if call_id is not None else {}
            stream = client.stream_remote_workflow(
                workflow_name, ids, _payload(ev), timeout_secs=timeout_secs, **named
            )
            try:
                async for item in stream:
                    if isinstance(item, WorkflowResult):
                        result = item
                    else:
                        ctx.write_event_to_stream(item)
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        if result is None:  # pragma: no cover - the client raises instead
            raise ValidationError(f"remote workflow `{workflow_name}` returned no result")
        # The remote run's usage is already in this run's totals: every PeerClient call
        # made inside a step rolls its usage into the step's run (peerflow.context).
        if result.remote_refs and not keep_remote_refs:
            ctx.on_run_end(_releaser(ctx, result))
        if merge_state:
            for key, value in result.state.items():
                ctx.state[key] = value  # as the remote run exported it (JSON, or a ref)
        if emits is None:  # the remote run's StopEvent ends this run (a custom one as is)
            if isinstance(result.event, StopEvent):
                return result.event
            return StopEvent(result=result.result)
        return _as_event(emits, result.result, workflow_name)

    run_remote.__qualname__ = f"remote_step[{workflow_name}]"
    if emits is not None:
        run_remote.__annotations__["return"] = emits  # checked when the Workflow is built
    return step(
        accepts=list(accepts) if accepts is not None else [StartEvent],
        name=name or f"remote:{workflow_name}",
        retries=retries,
    )(run_remote)


async def _converse(ctx: Context, handler: Any) -> WorkflowResult:
    """Relay a remote conversation: its events onto the parent's stream, answers back."""
    try:
        async for event in handler.stream_events():
            if isinstance(event, StopEvent):
                continue  # the result is the handler's
            if isinstance(event, InputRequiredEvent):
                # Written to the parent's stream once the wait is registered, so an answer
                # cannot come too early; the wait counts against the parent's timeout.
                answer = await ctx.wait_for_event(
                    HumanResponseEvent, waiter_event=event, timeout=None
                )
                handler.send_event(answer)
            else:
                ctx.write_event_to_stream(event)
        result: WorkflowResult = await handler
        return result
    except BaseException:
        if not handler.done():
            await handler.cancel()  # the parent failed or was cancelled: so is the remote run
        raise


def _as_event(cls: type[Event], value: Any, workflow_name: str) -> Event:
    """The remote result as ``cls``: a dict fills its fields, else its ``result`` field.

    Raises:
        ValidationError: the result does not fit ``cls`` (naming the fields).
    """
    try:
        if isinstance(value, dict) and "result" not in cls.model_fields:
            return cls(**value)
        return cls(result=value)
    except ValidationError as exc:
        raise ValidationError(
            f"remote workflow `{workflow_name}`'s result does not make a {cls.__name__}: {exc}"
        ) from None


def _payload(ev: Event) -> dict[str, Any]:
    data = ev.to_dict()
    if isinstance(ev, StopEvent):  # pragma: no cover - StopEvent is never accepted
        return {"result": data.get("result")}
    return data


def _releaser(ctx: Context, result: WorkflowResult) -> Any:
    async def release() -> None:
        handed_over = _reachable_keys(ctx.run_outcome)  # in the parent's result: the caller's
        for key, ref in result.remote_refs.items():
            releaser = getattr(ref, "release", None)
            if (
                releaser is None
                or key in handed_over
                or getattr(ref, "lifetime", None) is RefLifetime.UNTIL_EXPLICIT_DROP
            ):
                continue  # explicit-drop refs are released by whoever holds them, never here
            try:
                await releaser()
            except PeerflowError as exc:
                log.warning("could not release remote ref %s: %s", key, exc)

    return release


def _reachable_keys(value: object) -> set[RegistryKey]:
    """The keys of the session refs inside ``value`` (an event, a result, containers)."""
    keys: set[RegistryKey] = set()
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, RefDescriptor):
            keys.add(item.key)
        elif isinstance(item, Event):
            stack.extend(item.to_dict().values())
        elif isinstance(item, WorkflowResult):
            stack.append(item.result)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return keys
