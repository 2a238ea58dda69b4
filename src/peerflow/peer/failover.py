"""The pool's one failover core: pick a member, try the call, move on only if it never ran.

Unary and streaming calls go through the same loop (:meth:`Failover.run`): a call is an
async iterator of items — a unary call yields its one result — and it may move to another
member only before its first item arrived, and only when :func:`~peerflow.peer.routing.
never_ran` says the failure provably left the work undone. Each such failure is kept as an
:class:`Attempt`; when no member is left, one error names every member and why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import TypeVar

from peerflow.errors import (
    PeerError,
    PeerErrorKind,
    PeerflowError,
    ResourceExhaustedError,
    UnknownStepError,
    UnknownWorkflowError,
)
from peerflow.peer.client import PeerClient
from peerflow.peer.pool_health import Member, Members
from peerflow.peer.routing import lacks, never_ran, short_reason

__all__ = ["Attempt", "Failover", "no_peer_error"]

log = logging.getLogger("peerflow.pool")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """A member that was tried for a call and failed in a way that provably never ran it.

    Attributes:
        address: the member's address.
        why: a few words for the final error (``"refused (connection refused)"``).
        stale: it rejected the workflow or a step (the pool's view of it was stale), so
            it cannot take the call.
        busy: it was at its concurrency limit (nothing ran; it could take it later).
    """

    address: str
    why: str
    stale: bool
    busy: bool

    @classmethod
    def of(cls, address: str, error: PeerflowError) -> Attempt:
        """The attempt a refusal means.

        Raises:
            Nothing.
        """
        stale = isinstance(error, UnknownStepError | UnknownWorkflowError)
        why = f"rejected it ({error})" if stale else f"refused ({short_reason(error)})"
        return cls(address, why, stale, isinstance(error, ResourceExhaustedError))


class Failover:
    """Routes calls over a pool's members: least busy capable member first, then the next."""

    def __init__(self, members: Members, node_id: str) -> None:
        self._members = members
        self._node_id = node_id
        self._rr = 0

    def pick(
        self, workflow_name: str, step_ids: Sequence[str], tried: Mapping[str, Attempt]
    ) -> Member | None:
        """The up, capable, untried member with the fewest calls in flight (ties in turn).

        Raises:
            Nothing.
        """
        best: list[Member] = []
        for member in self._members.all:
            if (
                not member.up
                or member.address in tried
                or lacks(member.info, workflow_name, step_ids)
            ):
                continue
            if best and member.in_flight > best[0].in_flight:
                continue
            if best and member.in_flight < best[0].in_flight:
                best.clear()
            best.append(member)
        if not best:
            return None
        chosen = best[self._rr % len(best)]
        self._rr += 1
        return chosen

    async def run(
        self,
        workflow_name: str,
        step_ids: Sequence[str],
        call: Callable[[PeerClient], AsyncIterator[T]],
    ) -> AsyncGenerator[tuple[Member, T], None]:
        """Yield ``call``'s items, each with the member that produced it.

        Args:
            workflow_name: the workflow the call names (for routing and errors).
            step_ids: the step ids it needs.
            call: opens the call on one member's client; an async iterator of its items.

        Raises:
            PeerError: no member can take the call (names each one and why).
            PeerflowError: the call failed in a way that may have run the work, or after
                its first item.
        """
        tried: dict[str, Attempt] = {}
        while True:
            member = self.pick(workflow_name, step_ids, tried)
            if member is None:
                raise no_peer_error(self._members.all, workflow_name, step_ids, tried)
            assert member.client is not None
            items = call(member.client)
            started = False
            member.in_flight += 1
            member.calls += 1
            try:
                async for item in items:
                    started = True
                    yield member, item
                return
            except PeerflowError as exc:
                if started or not never_ran(exc):
                    raise
                attempt = tried[member.address] = Attempt.of(member.address, exc)
                log.info(
                    "pool %s: %s %s; trying another peer",
                    self._node_id,
                    member.address,
                    attempt.why,
                )
                if attempt.stale:
                    self._members.refresh(member)
            finally:
                member.in_flight -= 1
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()


def no_peer_error(
    members: Sequence[Member],
    workflow_name: str | None,
    step_ids: Sequence[str],
    tried: Mapping[str, Attempt],
) -> PeerError:
    """The error of a call no member could take, naming each member and why.

    Returns:
        ``UnknownStepError`` / ``UnknownWorkflowError`` kinds when no member has what the
        call needs; RESOURCE_EXHAUSTED when every capable member is at its limit;
        TRANSPORT otherwise (also when ``workflow_name`` is None: no member is up).

    Raises:
        Nothing.
    """
    reasons: list[str] = []
    someone_could = False
    all_busy = bool(tried)
    for member in members:
        missing = None if workflow_name is None else lacks(member.info, workflow_name, step_ids)
        attempt = tried.get(member.address)
        if attempt is not None:
            why = attempt.why
            someone_could = someone_could or not attempt.stale
            all_busy = all_busy and attempt.busy
        elif missing is not None:
            why = missing
        else:
            why = f"down ({member.reason})" if not member.up else "up"
            someone_could = True
        reasons.append(f"{member.address}: {why}")
    listing = "; ".join(reasons)
    address = ", ".join(member.address for member in members)
    if workflow_name is None:
        return _error(f"no peer of the pool is up: {listing}", address)
    what = f"workflow `{workflow_name}`"
    if step_ids:
        what += " (steps " + ", ".join(f"`{s}`" for s in step_ids) + ")"
    if someone_could and all_busy:
        return _error(
            f"every capable peer of the pool is at its limit for {what}; retry later: {listing}",
            address,
            PeerErrorKind.RESOURCE_EXHAUSTED,
            "RESOURCE_EXHAUSTED",
        )
    if someone_could:
        return _error(f"no peer of the pool can take {what} now: {listing}", address)
    kind = PeerErrorKind.UNKNOWN_STEP if step_ids else PeerErrorKind.UNKNOWN_WORKFLOW
    return _error(f"no peer of the pool has {what}: {listing}", address, kind, "NOT_FOUND")


def _error(
    message: str,
    address: str,
    kind: PeerErrorKind = PeerErrorKind.TRANSPORT,
    code: str = "UNAVAILABLE",
) -> PeerError:
    return PeerError(message, kind=kind, address=address, code=code)
