"""``PeerPool``: many peers behind one client — capability routing, health, failover.

The pool has :class:`~peerflow.peer.client.PeerClient`'s call surface, so it can stand in
for a client anywhere (``remote_step(pool, ...)`` included)::

    async with await PeerPool.connect(
        ["gpu-1:50051", "gpu-2:50051", "gpu-3:50051"], client_node_id="laptop"
    ) as pool:
        result = await pool.run_remote_workflow("analyze", input={"doc": "..."})
        tensor = await pool.fetch_ref(next(iter(result.remote_refs)))

**Lifecycle.** ``PeerPool(...)`` only validates. ``await pool.start()`` opens one channel
per peer (lazily: a peer that is down does not block the others), starts one health-watch
task per peer and waits until every peer has answered once or ``connect_timeout`` has
passed; it raises :class:`~peerflow.errors.TransportError` when no peer is up by then.
``PeerPool.connect(...)`` is ``PeerPool(...)`` + ``start()``; ``async with PeerPool(...)``
starts too. ``close()`` stops the watchers and closes every channel (idempotent).

**Health.** Each peer is watched with the standard ``grpc.health.v1.Health/Watch`` stream:
SERVING marks it up (after a fresh ``DescribePeer``, so its workflows and step ids are
re-learnt on every reconnect), anything else or a broken stream marks it down. A down
peer is re-watched with ``wait_for_ready``, so gRPC's own reconnect backoff decides when it
is back — there is no polling loop. Peers without ``Watch`` are polled with ``Check``
every ``health_interval`` seconds.

**Routing and failover** follow the pure rules of :mod:`peerflow.peer.routing`: a call
goes only to peers that are up and have what it needs, the least busy first (ties
round-robin), and moves to another peer only when it provably never ran there.

**Refs** returned through the pool stay bound to the peer that made them
(``result.remote_refs[key].fetch()`` goes there); the pool's own ``deref_session_ref`` /
``fetch_ref`` / ``release_session_ref`` route by the key to the peer that returned it,
and ask each up peer in turn for a key they did not see.

A ``dns:///name:port`` address is one pool member whose backends gRPC resolves and
balances itself (round-robin); see ``docs/scaling.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from peerflow.blocking import blocking_iter_twin, blocking_twin, call_blocking, portal_loop
from peerflow.errors import (
    PeerError,
    PeerErrorKind,
    PeerflowError,
    RefNotFoundError,
    ResourceExhaustedError,
    UnknownStepError,
    UnknownWorkflowError,
    UnsupportedError,
    ValidationError,
)
from peerflow.events import Event
from peerflow.peer import protocol as pb
from peerflow.peer._bounded import BoundedDict
from peerflow.peer._caller import Caller
from peerflow.peer.client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    REMEMBERED_REFS,
    PeerClient,
    PeerInfo,
    check_call,
    resolve_node_id,
)
from peerflow.peer.routing import lacks, never_ran, short_reason
from peerflow.peer.security import ClientTls
from peerflow.refs import RegistryKey
from peerflow.result import WorkflowResult

__all__ = ["PeerPool", "PeerState", "lacks", "never_ran"]  # rules re-exported from routing

log = logging.getLogger("peerflow.pool")

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_HEALTH_INTERVAL = 5.0
DEFAULT_CONNECT_TIMEOUT = 10.0

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


class _Peer:
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
        return PeerState(self.address, self.up, self.reason, self.info, self.in_flight, self.calls)


def _check_seconds(value: float, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValidationError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


# -- the pool ------------------------------------------------------------------------------


class PeerPool(Caller):
    """Several peers used as one: routing by capability, least in-flight, health, failover.

    Args:
        addresses: the peers (any :class:`~peerflow.peer.client.PeerClient` address; a
            ``dns:///`` one is a single member that gRPC balances over its backends).
        client_node_id: this caller's node id (sent with every call); default
            ``peerflow@<hostname>``.
        node_id: the same, by the keyword seed 001 uses.
        token: the peers' shared secret (default: ``BLAZEN_PEER_TOKEN`` when set).
        tls: a :func:`~peerflow.peer.security.load_client_tls` config for every peer.
        health_interval: seconds between ``Check`` polls for peers without ``Watch``, and
            the pause before re-watching a peer whose health stream failed.
        connect_timeout: how long :meth:`start` waits for every peer's first answer.
        max_message_bytes: the largest message received or sent.

    Raises:
        ValidationError: bad arguments (no addresses, duplicates, bad durations).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        client_node_id: str | None = None,
        node_id: str | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if isinstance(addresses, str) or not isinstance(addresses, Sequence):
            raise ValidationError(f"addresses must be a list of addresses, got {addresses!r}")
        if not addresses:
            raise ValidationError("a PeerPool needs at least one address")
        if not all(isinstance(a, str) and a.strip() for a in addresses):
            raise ValidationError(f"addresses must be non-empty strings, got {addresses!r}")
        cleaned = [a.strip() for a in addresses]
        if len(set(cleaned)) != len(cleaned):
            raise ValidationError(f"duplicate addresses in {cleaned!r}")
        self.node_id = resolve_node_id(client_node_id, node_id)
        self._token = token
        self._tls = tls
        self._health_interval = _check_seconds(health_interval, "health_interval")
        self._connect_timeout = _check_seconds(connect_timeout, "connect_timeout")
        self._max_message_bytes = max_message_bytes
        self._peers = [_Peer(address) for address in cleaned]
        self._by_address = {peer.address: peer for peer in self._peers}
        self._ref_owner: BoundedDict[RegistryKey, _Peer] = BoundedDict(REMEMBERED_REFS)
        self._rr = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        addresses: Sequence[str],
        *,
        client_node_id: str | None = None,
        node_id: str | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> PeerPool:
        """Build a pool and :meth:`start` it.

        Raises:
            ValidationError: bad arguments or addresses.
            TransportError: no peer was up within ``connect_timeout``.
        """
        pool = cls(
            addresses,
            client_node_id=client_node_id,
            node_id=node_id,
            token=token,
            tls=tls,
            health_interval=health_interval,
            connect_timeout=connect_timeout,
            max_message_bytes=max_message_bytes,
        )
        await pool.start()
        return pool

    @classmethod
    def connect_blocking(
        cls,
        addresses: Sequence[str],
        *,
        client_node_id: str | None = None,
        node_id: str | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> PeerPool:
        """:meth:`connect` for code without an event loop (the pool lives on the portal).

        Raises:
            ValidationError: bad arguments, or called inside a running event loop.
            TransportError: no peer was up within ``connect_timeout``.
        """
        return call_blocking(
            cls.connect,
            addresses,
            client_node_id=client_node_id,
            node_id=node_id,
            token=token,
            tls=tls,
            health_interval=health_interval,
            connect_timeout=connect_timeout,
            max_message_bytes=max_message_bytes,
        )

    async def start(self) -> None:
        """Open the channels, start the health watchers, wait for the peers' first answers.

        Idempotent. Returns once every peer has answered (up or down) or after
        ``connect_timeout``; peers still silent then count as down until they answer.

        Raises:
            ValidationError: the pool is closed, or a bad address.
            TransportError: no peer is up after the wait (the message names each peer).
        """
        if self._closed:
            raise ValidationError("this PeerPool is closed")
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        try:
            for peer in self._peers:
                peer.client = await PeerClient.connect(
                    peer.address,
                    self.node_id,
                    token=self._token,
                    tls=self._tls,
                    connect_timeout=None,
                    max_message_bytes=self._max_message_bytes,
                )
            for peer in self._peers:
                peer.watcher = self._loop.create_task(
                    self._watch(peer), name=f"peerflow-pool-health {peer.address}"
                )
            await self._wait(lambda: all(p.settled for p in self._peers), self._connect_timeout)
        except BaseException:
            await self.close()
            raise
        if not any(peer.up for peer in self._peers):
            error = self._no_peer_error(None, (), {})
            await self.close()
            raise error

    start_blocking = blocking_twin(start)

    async def close(self) -> None:
        """Stop the health watchers and close every channel (idempotent).

        Calls in flight are cancelled.
        """
        if self._closed:
            return
        self._closed = True
        watchers = [p.watcher for p in self._peers if p.watcher is not None]
        for task in watchers:
            task.cancel()
        if watchers:
            await asyncio.wait(watchers)
        for peer in self._peers:
            peer.up = False
            peer.reason = "pool closed"
            if peer.client is not None:
                await peer.client.close()
        self._notify()

    close_blocking = blocking_twin(close)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- state ---------------------------------------------------------------------------

    @property
    def addresses(self) -> tuple[str, ...]:
        """The members' addresses, in the order given."""
        return tuple(peer.address for peer in self._peers)

    @property
    def peers(self) -> tuple[PeerState, ...]:
        """A snapshot of every member (no I/O)."""
        return tuple(peer.snapshot() for peer in self._peers)

    def state(self, peer: str) -> PeerState:
        """The snapshot of one member, by address or node id.

        Raises:
            ValidationError: no such member.
        """
        return self._find(peer).snapshot()

    async def wait_for_state(
        self,
        peer: str,
        *,
        up: bool = True,
        timeout: float = 10.0,
    ) -> PeerState:
        """Wait until a member is up (or down), driven by the pool's own state changes.

        Args:
            peer: the member's address (or node id, once described).
            up: the state to wait for.
            timeout: seconds to wait at most.

        Returns:
            The member's snapshot once it is in that state.

        Raises:
            ValidationError: no such member, or the pool is not started.
            TransportError: still not in that state after ``timeout`` (names its reason).
        """
        member = self._find(peer)
        if not self._started:
            raise ValidationError("start the PeerPool before waiting on its peers")
        timeout = _check_seconds(timeout, "timeout")
        if not await self._wait(lambda: member.up is up, timeout):
            state = "up" if up else "down"
            raise PeerError(
                f"peer {member.address} not {state} after {timeout:g}s "
                f"({'up' if member.up else 'down: ' + member.reason})",
                kind=PeerErrorKind.TRANSPORT,
                address=member.address,
            )
        return member.snapshot()

    wait_for_state_blocking = blocking_twin(wait_for_state)

    def _find(self, name: str) -> _Peer:
        found = self._by_address.get(name)
        if found is not None:
            return found
        for peer in self._peers:
            if peer.info is not None and peer.info.node_id == name:
                return peer
        raise ValidationError(f"no peer {name!r} in this pool ({', '.join(self.addresses)})")

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        while not predicate():
            changed = self._changed
            remaining = deadline - self._loop.time()
            if changed is None or remaining <= 0 or self._closed:
                return predicate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = asyncio.Event()
            changed.set()

    def _mark(self, peer: _Peer, *, up: bool, reason: str = "") -> None:
        if peer.up is not up or not peer.settled:
            if up:
                log.info("pool %s: peer %s up", self.node_id, peer.address)
            else:
                log.warning("pool %s: peer %s down (%s)", self.node_id, peer.address, reason)
        peer.up = up
        peer.reason = "" if up else reason
        peer.settled = True
        self._notify()

    # -- health --------------------------------------------------------------------------

    async def _watch(self, peer: _Peer) -> None:
        """Follow one peer's health for the pool's life; never raises but CancelledError."""
        assert peer.client is not None
        stub = peer.client._health  # the client's own HealthStub, on its channel
        wait_for_ready = False  # the first look fails fast, so start() learns "down"
        while True:
            try:
                call = stub.Watch(
                    health_pb2.HealthCheckRequest(service=""), wait_for_ready=wait_for_ready
                )
                try:
                    async for reply in call:
                        if reply.status == _SERVING:
                            if not peer.up:
                                await self._describe(peer)
                                self._mark(peer, up=True)
                        else:
                            name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                            self._mark(peer, up=False, reason=f"health {name}")
                finally:
                    call.cancel()
                self._mark(peer, up=False, reason="health stream ended")
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    await self._poll(peer)
                    return
                self._mark(peer, up=False, reason=short_reason(exc))
            except PeerflowError as exc:  # DescribePeer failed
                self._mark(peer, up=False, reason=short_reason(exc))
            wait_for_ready = True  # from now on gRPC's reconnect backoff paces us
            await asyncio.sleep(self._health_interval)

    async def _poll(self, peer: _Peer) -> None:
        """Health by ``Check`` every ``health_interval`` (peers without ``Watch``)."""
        assert peer.client is not None
        while True:
            try:
                serving = await peer.client.health(timeout=self._health_interval)
            except UnsupportedError:
                serving = True  # no health service at all: calls' own errors tell
            except PeerflowError as exc:
                self._mark(peer, up=False, reason=short_reason(exc))
            else:
                if serving and not peer.up:
                    try:
                        await self._describe(peer)
                    except PeerflowError as exc:
                        self._mark(peer, up=False, reason=short_reason(exc))
                    else:
                        self._mark(peer, up=True)
                elif not serving:
                    self._mark(peer, up=False, reason="health NOT_SERVING")
            await asyncio.sleep(self._health_interval)

    async def _describe(self, peer: _Peer) -> None:
        assert peer.client is not None
        try:
            peer.info = await peer.client.describe()
        except UnsupportedError:
            peer.info = None  # a Blazen peer: capabilities unknown, assumed capable

    # -- routing -------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if self._closed:
            raise ValidationError("this PeerPool is closed")
        if not self._started:
            raise ValidationError("start the PeerPool first (await pool.start() or connect())")

    def _pick(
        self, workflow_name: str, step_ids: Sequence[str], tried: Mapping[str, Any]
    ) -> _Peer | None:
        best: list[_Peer] = []
        for peer in self._peers:
            if not peer.up or peer.address in tried or lacks(peer.info, workflow_name, step_ids):
                continue
            if best and peer.in_flight > best[0].in_flight:
                continue
            if best and peer.in_flight < best[0].in_flight:
                best.clear()
            best.append(peer)
        if not best:
            return None
        chosen = best[self._rr % len(best)]
        self._rr += 1
        return chosen

    def _no_peer_error(
        self,
        workflow_name: str | None,
        step_ids: Sequence[str],
        tried: Mapping[str, tuple[str, bool, bool]],
    ) -> PeerError:
        reasons: list[str] = []
        someone_could = False
        all_busy = bool(tried)
        for peer in self._peers:
            missing = None if workflow_name is None else lacks(peer.info, workflow_name, step_ids)
            if peer.address in tried:
                why, lacking, busy = tried[peer.address]
                someone_could = someone_could or not lacking
                all_busy = all_busy and busy
            elif missing is not None:
                why = missing
            else:
                why = f"down ({peer.reason})" if not peer.up else "up"
                someone_could = True
            reasons.append(f"{peer.address}: {why}")
        listing = "; ".join(reasons)
        address = ", ".join(self.addresses)
        if workflow_name is None:
            return PeerError(
                f"no peer of the pool is up: {listing}",
                kind=PeerErrorKind.TRANSPORT,
                address=address,
                code="UNAVAILABLE",
            )
        what = f"workflow `{workflow_name}`"
        if step_ids:
            what += " (steps " + ", ".join(f"`{s}`" for s in step_ids) + ")"
        if someone_could and all_busy:
            return PeerError(
                f"every capable peer of the pool is at its limit for {what}; retry later: "
                f"{listing}",
                kind=PeerErrorKind.RESOURCE_EXHAUSTED,
                address=address,
                code="RESOURCE_EXHAUSTED",
            )
        if someone_could:
            return PeerError(
                f"no peer of the pool can take {what} now: {listing}",
                kind=PeerErrorKind.TRANSPORT,
                address=address,
                code="UNAVAILABLE",
            )
        kind = PeerErrorKind.UNKNOWN_STEP if step_ids else PeerErrorKind.UNKNOWN_WORKFLOW
        return PeerError(
            f"no peer of the pool has {what}: {listing}",
            kind=kind,
            address=address,
            code="NOT_FOUND",
        )

    def _failed_over(
        self, peer: _Peer, error: PeerflowError, tried: dict[str, tuple[str, bool, bool]]
    ) -> None:
        stale = isinstance(error, UnknownStepError | UnknownWorkflowError)
        why = f"rejected it ({error})" if stale else f"refused ({short_reason(error)})"
        busy = isinstance(error, ResourceExhaustedError)  # at its limit: nothing ran
        tried[peer.address] = (why, stale, busy)
        log.info("pool %s: %s %s; trying another peer", self.node_id, peer.address, why)
        if stale and peer.client is not None and self._loop is not None:
            self._loop.create_task(self._refresh(peer))

    async def _refresh(self, peer: _Peer) -> None:
        with contextlib.suppress(PeerflowError):
            await self._describe(peer)
            self._notify()

    async def _call(
        self,
        workflow_name: str,
        step_ids: Sequence[str],
        fn: Callable[[PeerClient], Awaitable[T]],
    ) -> tuple[_Peer, T]:
        self._check_ready()
        tried: dict[str, tuple[str, bool, bool]] = {}
        while True:
            peer = self._pick(workflow_name, step_ids, tried)
            if peer is None:
                raise self._no_peer_error(workflow_name, step_ids, tried)
            assert peer.client is not None
            peer.in_flight += 1
            peer.calls += 1
            try:
                return peer, await fn(peer.client)
            except PeerflowError as exc:
                if not never_ran(exc):
                    raise
                self._failed_over(peer, exc, tried)
            finally:
                peer.in_flight -= 1

    def _remember(self, peer: _Peer, keys: Iterator[RegistryKey | uuid.UUID]) -> None:
        for key in keys:
            self._ref_owner[RegistryKey.parse(key)] = peer

    # -- workflows -----------------------------------------------------------------------

    async def run_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Mapping[str, Any] | None = None,
        *,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> WorkflowResult:
        """Run a workflow on a capable, healthy peer and return its result.

        Args:
            workflow_name: the workflow's name on the peers.
            step_ids: step ids to assemble; empty means the peer's registered workflow.
            input: the start event's fields (JSON-serializable).
            input_json: the same, already encoded as a JSON object.
            timeout_secs: bounds the run on the peer (see ``PeerClient``).
            run_id: an idempotency key (see ``PeerClient.run_remote_workflow``).

        Returns:
            The remote run's result; its ``remote_refs`` stay bound to the peer that ran it.

        Raises:
            WorkflowError: the remote run failed (``remote=True``).
            UnknownStepError / UnknownWorkflowError: no peer of the pool has it.
            TransportError: no capable peer is up, or the chosen peer failed in a way
                that may have run the work (never retried).
            ValidationError: bad arguments, or the pool is not started / closed.
        """
        ids = check_call(workflow_name, step_ids)
        peer, result = await self._call(
            workflow_name,
            ids,
            lambda client: client.run_remote_workflow(
                workflow_name,
                ids,
                input,
                input_json=input_json,
                timeout_secs=timeout_secs,
                run_id=run_id,
            ),
        )
        self._remember(peer, iter(result.remote_refs))
        return result

    run_remote_workflow_blocking = blocking_twin(run_remote_workflow)

    async def stream_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Mapping[str, Any] | None = None,
        *,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> AsyncGenerator[Event | WorkflowResult, None]:
        """Run a workflow on a capable peer, yielding its stream events, then its result.

        Fails over only before the first item arrived, under the rules of the module
        docstring; a failure after that reaches the caller.

        Raises:
            WorkflowError / UnknownStepError / UnknownWorkflowError / TransportError /
                ValidationError: as :meth:`run_remote_workflow`.
        """
        ids = check_call(workflow_name, step_ids)
        self._check_ready()
        tried: dict[str, tuple[str, bool, bool]] = {}
        while True:
            peer = self._pick(workflow_name, ids, tried)
            if peer is None:
                raise self._no_peer_error(workflow_name, ids, tried)
            assert peer.client is not None
            stream = peer.client.stream_remote_workflow(
                workflow_name,
                ids,
                input,
                input_json=input_json,
                timeout_secs=timeout_secs,
                run_id=run_id,
            )
            started = False
            peer.in_flight += 1
            peer.calls += 1
            try:
                async for item in stream:
                    started = True
                    if isinstance(item, WorkflowResult):
                        self._remember(peer, iter(item.remote_refs))
                    yield item
                return
            except PeerflowError as exc:
                if started or not never_ran(exc):
                    raise
                self._failed_over(peer, exc, tried)
            finally:
                peer.in_flight -= 1
                await stream.aclose()

    stream_remote_workflow_blocking = blocking_iter_twin(stream_remote_workflow)

    async def _invoke_raw(
        self, request: pb.SubWorkflowRequest, deadline: float | None, run_id: str | None = None
    ) -> pb.SubWorkflowResponse:
        ids = check_call(request.workflow_name, request.step_ids)
        peer, response = await self._call(
            request.workflow_name,
            ids,
            lambda client: client._invoke_raw(request, deadline, run_id),
        )
        self._remember(peer, iter(response.remote_refs))
        return response

    # -- session refs --------------------------------------------------------------------

    async def _on_owner(
        self,
        key: RegistryKey | uuid.UUID | str,
        fn: Callable[[PeerClient, RegistryKey], Awaitable[T]],
    ) -> T:
        self._check_ready()
        parsed = RegistryKey.parse(key)
        owner = self._ref_owner.get(parsed)
        if owner is not None:
            assert owner.client is not None
            return await fn(owner.client, parsed)
        # A key this pool did not hand out: ask each up peer in turn.
        answers: list[str] = []
        for peer in self._peers:
            if not peer.up or peer.client is None:
                answers.append(f"{peer.address}: down ({peer.reason})")
                continue
            try:
                value = await fn(peer.client, parsed)
            except RefNotFoundError:
                answers.append(f"{peer.address}: not found")
                continue
            self._ref_owner[parsed] = peer
            return value
        raise RefNotFoundError(
            f"no peer of the pool holds session ref {parsed}: {'; '.join(answers)}",
            address=", ".join(self.addresses),
            code="NOT_FOUND",
        )

    async def deref_session_ref(
        self, key: RegistryKey | uuid.UUID | str, *, timeout: float | None = None
    ) -> bytes | bytearray:
        """The serialized bytes of a ref, from the peer that returned it.

        Raises:
            RefNotFoundError: no peer holds it (released or expired).
            RefPermissionError: it belongs to another principal.
            TransportError: its peer is unreachable (refs never move between peers).
            ValidationError: ``key`` is not a key.
        """
        return await self._on_owner(
            key, lambda client, k: client.deref_session_ref(k, timeout=timeout)
        )

    deref_session_ref_blocking = blocking_twin(deref_session_ref)

    async def fetch_ref(
        self, key: RegistryKey | uuid.UUID | str, *, timeout: float | None = None
    ) -> object:
        """A ref's value, rebuilt by its type tag's serializer, from the peer holding it.

        Raises:
            RefNotFoundError / RefPermissionError / TransportError / ValidationError: as
                :meth:`deref_session_ref`.
            UnsupportedError: no serializer here for its type tag.
        """
        return await self._on_owner(key, lambda client, k: client.fetch_ref(k, timeout=timeout))

    fetch_ref_blocking = blocking_twin(fetch_ref)

    async def release_session_ref(
        self, key: RegistryKey | uuid.UUID | str, *, timeout: float | None = None
    ) -> bool:
        """Release a ref on the peer holding it; False when it was already gone.

        Raises:
            RefPermissionError / TransportError / ValidationError: as
                :meth:`deref_session_ref`.
        """

        async def release(client: PeerClient, k: RegistryKey) -> bool:
            # Release answers False, not NOT_FOUND, for a ref a peer does not hold: turn
            # that into "not here" so a key this pool did not hand out is asked for on
            # every peer, not only the first.
            if await client.release_session_ref(k, timeout=timeout):
                return True
            raise RefNotFoundError(f"{client.address} does not hold {k}")

        parsed = RegistryKey.parse(key)
        try:
            released = await self._on_owner(parsed, release)
        except RefNotFoundError:
            released = False
        self._ref_owner.pop(parsed, None)
        return released

    release_session_ref_blocking = blocking_twin(release_session_ref)

    # -- peer info -----------------------------------------------------------------------

    async def describe(self) -> dict[str, PeerInfo]:
        """Describe every up peer afresh (concurrently); also refreshes routing.

        Returns:
            ``{address: PeerInfo}`` for the peers that answered (down peers and peers
            without ``DescribePeer`` are absent; :attr:`peers` says why).

        Raises:
            ValidationError: the pool is not started or closed.
        """
        self._check_ready()
        live = [peer for peer in self._peers if peer.up and peer.client is not None]

        async def one(peer: _Peer) -> PeerInfo | None:
            assert peer.client is not None
            try:
                peer.info = await peer.client.describe()
            except PeerflowError:
                return None
            return peer.info

        infos = await asyncio.gather(*(one(peer) for peer in live))
        self._notify()
        return {p.address: info for p, info in zip(live, infos, strict=True) if info}

    describe_blocking = blocking_twin(describe)

    async def health(self, *, timeout: float = 5.0) -> dict[str, bool]:
        """Ask every peer's health service now (concurrently).

        Returns:
            ``{address: serving}``; False for a peer that did not answer.

        Raises:
            ValidationError: the pool is not started or closed.
        """
        self._check_ready()

        async def one(peer: _Peer) -> bool:
            assert peer.client is not None
            try:
                return await peer.client.health(timeout=timeout)
            except PeerflowError:
                return False

        answers = await asyncio.gather(*(one(peer) for peer in self._peers))
        return dict(zip(self.addresses, answers, strict=True))

    health_blocking = blocking_twin(health)

    # -- plumbing ------------------------------------------------------------------------

    def _check_portal(self) -> None:
        """Refuse ``*_blocking`` calls on a pool bound to a loop other than the portal's."""
        if self._loop is not None and self._loop is not portal_loop():
            raise ValidationError(
                "this pool was started inside an event loop; use its async methods there "
                "(build it with PeerPool.connect_blocking() to use *_blocking methods)"
            )

    def __repr__(self) -> str:
        up = sum(peer.up for peer in self._peers)
        state = "closed" if self._closed else f"{up}/{len(self._peers)} up"
        return f"<PeerPool {self.node_id} {state}>"
