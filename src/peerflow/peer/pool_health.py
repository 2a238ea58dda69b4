"""A pool's members and their health: who is up, what each can run, and waiting on changes.

Each member is watched with the standard ``grpc.health.v1.Health/Watch`` stream: SERVING
marks it up (after a fresh ``DescribePeer``, so its workflows and step ids are re-learnt on
every reconnect), anything else or a broken stream marks it down. A down member is
re-watched with ``wait_for_ready``, so gRPC's own reconnect backoff decides when it is
back — there is no polling loop. Members without ``Watch`` are polled with ``Check`` every
``health_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2

from peerflow.errors import PeerflowError, TransportError, UnsupportedError, ValidationError
from peerflow.peer.client import PeerClient, PeerInfo
from peerflow.peer.routing import short_reason

__all__ = ["Member", "Members", "PeerState"]

log = logging.getLogger("peerflow.pool")

_SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclasses.dataclass(frozen=True, slots=True)
class PeerState:
    """A snapshot of one pool member.

    Attributes:
        address: the address as given to the pool.
        up: whether calls are routed to it.
        reason: why it is down (empty while up).
        info: what ``DescribePeer`` said at the last (re)connect; None before, or for a
            peer without ``DescribePeer`` (then it is assumed to have everything).
        in_flight: this pool's calls on it right now.
        calls: calls the pool has sent it so far.
    """

    address: str
    up: bool
    reason: str
    info: PeerInfo | None
    in_flight: int
    calls: int

    @property
    def node_id(self) -> str | None:
        """The peer's node id, once described."""
        return None if self.info is None else self.info.node_id


class Member:
    """One member's mutable state (loop thread only)."""

    __slots__ = (
        "address",
        "calls",
        "client",
        "in_flight",
        "info",
        "reason",
        "settled",
        "up",
        "watcher",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        self.client: PeerClient | None = None
        self.up = False
        self.reason = "not checked yet"
        self.info: PeerInfo | None = None
        self.in_flight = 0
        self.calls = 0
        self.settled = False
        self.watcher: asyncio.Task[None] | None = None

    def snapshot(self) -> PeerState:
        """Its state now, as a frozen :class:`PeerState`."""
        return PeerState(self.address, self.up, self.reason, self.info, self.in_flight, self.calls)

    async def describe(self) -> None:
        """Learn its workflows and steps afresh (a Blazen peer: unknown, assumed capable).

        Raises:
            PeerflowError: the peer did not answer.
        """
        assert self.client is not None
        try:
            self.info = await self.client.describe()
        except UnsupportedError:
            self.info = None


class Members:
    """The members of one pool, their health watchers, and a signal for every change.

    Attributes:
        all: the members, in the order given.
        by_address: the same, by address.
    """

    def __init__(self, addresses: Sequence[str], node_id: str, health_interval: float) -> None:
        self.all = tuple(Member(address) for address in addresses)
        self.by_address = {member.address: member for member in self.all}
        self._node_id = node_id
        self._health_interval = health_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self.closed = False

    def find(self, name: str, addresses: Sequence[str]) -> Member:
        """A member by address, or by node id once described.

        Raises:
            ValidationError: no such member.
        """
        found = self.by_address.get(name)
        if found is not None:
            return found
        for member in self.all:
            if member.info is not None and member.info.node_id == name:
                return member
        raise ValidationError(f"no peer {name!r} in this pool ({', '.join(addresses)})")

    async def describe_all(self) -> dict[str, PeerInfo]:
        """Describe every up member afresh, concurrently: ``{address: info}`` of answers."""
        live = [member for member in self.all if member.up and member.client is not None]

        async def one(member: Member) -> PeerInfo | None:
            assert member.client is not None
            try:
                member.info = await member.client.describe()
            except PeerflowError:
                return None
            return member.info

        infos = await asyncio.gather(*(one(member) for member in live))
        self.notify()
        return {m.address: info for m, info in zip(live, infos, strict=True) if info}

    async def health_all(self, timeout: float) -> dict[str, bool]:
        """Ask every member's health service now, concurrently: False when it did not answer."""

        async def one(member: Member) -> bool:
            assert member.client is not None
            try:
                return await member.client.health(timeout=timeout)
            except PeerflowError:
                return False

        answers = await asyncio.gather(*(one(member) for member in self.all))
        return {member.address: answer for member, answer in zip(self.all, answers, strict=True)}

    # -- watching ------------------------------------------------------------------------

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start one health watcher per member, on ``loop``."""
        self._loop = loop
        self._changed = asyncio.Event()
        for member in self.all:
            member.watcher = loop.create_task(
                self._watch(member), name=f"peerflow-pool-health {member.address}"
            )

    async def close(self) -> None:
        """Stop the watchers, mark every member down, close every client (idempotent)."""
        self.closed = True
        watchers = [m.watcher for m in self.all if m.watcher is not None]
        for task in watchers:
            task.cancel()
        if watchers:
            await asyncio.wait(watchers)
        for member in self.all:
            member.up = False
            member.reason = "pool closed"
            if member.client is not None:
                await member.client.close()
        self.notify()

    async def wait_state(self, member: Member, up: bool, timeout: float) -> PeerState:
        """Wait until ``member`` is up (or down); its snapshot then.

        Raises:
            TransportError: still not in that state after ``timeout`` (names its reason).
        """
        if not await self.wait(lambda: member.up is up, timeout):
            raise TransportError(
                f"peer {member.address} not {'up' if up else 'down'} after {timeout:g}s "
                f"({'up' if member.up else 'down: ' + member.reason})",
                address=member.address,
            )
        return member.snapshot()

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked on every change; False on timeout."""
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        while not predicate():
            changed = self._changed
            remaining = deadline - self._loop.time()
            if changed is None or remaining <= 0 or self.closed:
                return predicate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True

    def notify(self) -> None:
        """Wake everything waiting on a change."""
        changed = self._changed
        if changed is not None:
            self._changed = asyncio.Event()
            changed.set()

    def refresh(self, member: Member) -> None:
        """Describe a member again in the background (its capability view was stale)."""
        if member.client is not None and self._loop is not None:
            self._loop.create_task(self._refresh(member))

    async def _refresh(self, member: Member) -> None:
        with contextlib.suppress(PeerflowError):
            await member.describe()
            self.notify()

    def _mark(self, member: Member, *, up: bool, reason: str = "") -> None:
        if member.up is not up or not member.settled:
            if up:
                log.info("pool %s: peer %s up", self._node_id, member.address)
            else:
                log.warning("pool %s: peer %s down (%s)", self._node_id, member.address, reason)
        member.up = up
        member.reason = "" if up else reason
        member.settled = True
        self.notify()

    async def _watch(self, member: Member) -> None:
        """Follow one member's health for the pool's life; never raises but CancelledError."""
        assert member.client is not None
        stub = member.client._calls.channel.health  # the client's own stub, on its channel
        wait_for_ready = False  # the first look fails fast, so start() learns "down"
        while True:
            try:
                call = stub.Watch(
                    health_pb2.HealthCheckRequest(service=""), wait_for_ready=wait_for_ready
                )
                try:
                    async for reply in call:
                        if reply.status == _SERVING:
                            if not member.up:
                                await member.describe()
                                self._mark(member, up=True)
                        else:
                            name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                            self._mark(member, up=False, reason=f"health {name}")
                finally:
                    call.cancel()
                self._mark(member, up=False, reason="health stream ended")
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    await self._poll(member)
                    return
                self._mark(member, up=False, reason=short_reason(exc))
            except PeerflowError as exc:  # DescribePeer failed
                self._mark(member, up=False, reason=short_reason(exc))
            wait_for_ready = True  # from now on gRPC's reconnect backoff paces us
            await asyncio.sleep(self._health_interval)

    async def _poll(self, member: Member) -> None:
        """Health by ``Check`` every ``health_interval`` (members without ``Watch``)."""
        assert member.client is not None
        while True:
            try:
                serving = await member.client.health(timeout=self._health_interval)
            except UnsupportedError:
                serving = True  # no health service at all: calls' own errors tell
            except PeerflowError as exc:
                self._mark(member, up=False, reason=short_reason(exc))
            else:
                if serving and not member.up:
                    try:
                        await member.describe()
                    except PeerflowError as exc:
                        self._mark(member, up=False, reason=short_reason(exc))
                    else:
                        self._mark(member, up=True)
                elif not serving:
                    self._mark(member, up=False, reason="health NOT_SERVING")
            await asyncio.sleep(self._health_interval)


def check_addresses(addresses: Sequence[str]) -> list[str]:
    """A pool's member addresses, stripped; at least one, no duplicates.

    Raises:
        ValidationError: not a list of non-empty strings, empty, or with duplicates.
    """
    if isinstance(addresses, str) or not isinstance(addresses, Sequence):
        raise ValidationError(f"addresses must be a list of addresses, got {addresses!r}")
    if not addresses:
        raise ValidationError("a PeerPool needs at least one address")
    if not all(isinstance(a, str) and a.strip() for a in addresses):
        raise ValidationError(f"addresses must be non-empty strings, got {addresses!r}")
    cleaned = [a.strip() for a in addresses]
    if len(set(cleaned)) != len(cleaned):
        raise ValidationError(f"duplicate addresses in {cleaned!r}")
    return cleaned
