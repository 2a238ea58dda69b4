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

**Health** is watched per peer (:mod:`peerflow.peer.pool_health`): the standard health
``Watch`` stream, re-learning a peer's workflows on every reconnect.

**Routing and failover** follow the pure rules of :mod:`peerflow.peer.routing`, applied by
one core for unary and streaming calls (:mod:`peerflow.peer.failover`): a call goes only to
peers that are up and have what it needs, the least busy first (ties round-robin), and
moves to another peer only when it provably never ran there.

**Options** are a :class:`~peerflow.peer.config.ClientConfig` (or its fields as keywords),
handed to every member's client.

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
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from typing import Any, Self, TypeVar

from peerflow._checks import check_seconds
from peerflow.blocking import blocking_iter_twin, blocking_twin, call_blocking, portal_loop
from peerflow.errors import (
    ValidationError,
)
from peerflow.events import Event
from peerflow.peer import protocol as wire
from peerflow.peer._caller import Caller
from peerflow.peer.calls import check_call
from peerflow.peer.client import PeerClient, PeerInfo, resolve_node_id
from peerflow.peer.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FLOW_CONTROL_WINDOW,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    ClientConfig,
    client_config,
)
from peerflow.peer.failover import Failover, no_peer_error
from peerflow.peer.pool_health import Member, Members, check_addresses
from peerflow.peer.pool_health import PeerState as PeerState
from peerflow.peer.pool_refs import RefOwners
from peerflow.peer.remote_handler import RemoteWorkflowHandler
from peerflow.peer.routing import lacks as lacks
from peerflow.peer.routing import never_ran as never_ran
from peerflow.peer.security import ClientTls
from peerflow.refs import RegistryKey
from peerflow.result import WorkflowResult

__all__ = ["PeerPool", "PeerState", "lacks", "never_ran"]  # rules re-exported from routing

T = TypeVar("T")

DEFAULT_HEALTH_INTERVAL = 5.0


async def _one(result: Awaitable[T]) -> AsyncIterator[T]:
    """A unary call as the one-item stream the failover core runs."""
    yield await result


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
        flow_control_window: each client's HTTP/2 window per call (see
            ``PeerClient.connect``).
        max_value_bytes: the largest session-ref value a deref accepts.
        session: carry each member's calls on a session with it (the default with
            peerflow peers; see ``PeerClient.connect``); False: unary calls.
        config: ``token`` to ``max_value_bytes`` as one
            :class:`~peerflow.peer.config.ClientConfig` (not with those keywords), handed
            to every member's client.

    Attributes:
        node_id: this caller's node id.
        config: the members' client options.

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
        flow_control_window: int | None = DEFAULT_FLOW_CONTROL_WINDOW,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        config: ClientConfig | None = None,
        session: bool = True,
    ) -> None:
        cleaned = check_addresses(addresses)
        self.node_id = resolve_node_id(client_node_id, node_id)
        self.config = client_config(
            config,
            token,
            tls,
            connect_timeout,
            max_message_bytes,
            flow_control_window,
            max_value_bytes,
            session,
        )
        if self.config.connect_timeout is None:
            raise ValidationError(
                "a PeerPool's connect_timeout must be a number > 0 (how long start() waits "
                "for the peers' first answers), got None"
            )
        self._members = Members(
            cleaned, self.node_id, check_seconds(health_interval, "health_interval")
        )
        self._failover = Failover(self._members, self.node_id)
        self._ref_owner = RefOwners()
        self._loop: asyncio.AbstractEventLoop | None = None
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
        flow_control_window: int | None = DEFAULT_FLOW_CONTROL_WINDOW,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        config: ClientConfig | None = None,
        session: bool = True,
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
            flow_control_window=flow_control_window,
            max_value_bytes=max_value_bytes,
            config=config,
            session=session,
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
        flow_control_window: int | None = DEFAULT_FLOW_CONTROL_WINDOW,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        config: ClientConfig | None = None,
        session: bool = True,
    ) -> PeerPool:
        """:meth:`connect` for code without an event loop (the pool lives on the portal).

        Raises:
            ValidationError: bad arguments, or called inside a running event loop.
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
            flow_control_window=flow_control_window,
            max_value_bytes=max_value_bytes,
            config=config,
            session=session,
        )
        call_blocking(pool.start)
        return pool

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
        members = self._members.all
        # Members connect lazily; a busy member's session refuses (not started) instead of
        # queueing, so the call fails over to a peer with room.
        lazily = dataclasses.replace(self.config, connect_timeout=None, session_queue=False)
        try:
            for member in members:
                member.client = await PeerClient.connect(
                    member.address, self.node_id, config=lazily
                )
            self._members.watch(self._loop)
            timeout = self.config.connect_timeout
            assert timeout is not None
            await self._members.wait(lambda: all(m.settled for m in members), timeout)
        except BaseException:
            await self.close()
            raise
        if not any(member.up for member in members):
            error = no_peer_error(members, None, (), {})
            await self.close()
            raise error

    start_blocking = blocking_twin(start)

    async def close(self) -> None:
        """Stop the health watchers and close every channel (idempotent).

        Calls in flight are cancelled.
        """
        if not self._closed:
            self._closed = True
            await self._members.close()

    close_blocking = blocking_twin(close)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    # -- state ---------------------------------------------------------------------------

    @property
    def addresses(self) -> tuple[str, ...]:
        """The members' addresses, in the order given."""
        return tuple(member.address for member in self._members.all)

    @property
    def peers(self) -> tuple[PeerState, ...]:
        """A snapshot of every member (no I/O)."""
        return tuple(member.snapshot() for member in self._members.all)

    def state(self, peer: str) -> PeerState:
        """The snapshot of one member, by address or node id.

        Raises:
            ValidationError: no such member.
        """
        return self._members.find(peer, self.addresses).snapshot()

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
        member = self._members.find(peer, self.addresses)
        if not self._started:
            raise ValidationError("start the PeerPool before waiting on its peers")
        return await self._members.wait_state(member, up, check_seconds(timeout, "timeout"))

    wait_for_state_blocking = blocking_twin(wait_for_state)

    def _check_ready(self) -> None:
        if self._closed:
            raise ValidationError("this PeerPool is closed")
        if not self._started:
            raise ValidationError("start the PeerPool first (await pool.start() or connect())")

    # -- workflows -----------------------------------------------------------------------

    async def _unary(
        self,
        workflow_name: str,
        step_ids: Sequence[str],
        call: Callable[[PeerClient], Awaitable[T]],
    ) -> tuple[Member, T]:
        """A unary call through the failover core: the member that answered, and its answer."""
        self._check_ready()
        attempts = self._failover.run(workflow_name, step_ids, lambda client: _one(call(client)))
        async with contextlib.aclosing(attempts):
            async for answered in attempts:
                return answered
        raise AssertionError("a unary call ends with its answer or an error")  # pragma: no cover

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

        The arguments are ``PeerClient.run_remote_workflow``'s.

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
        member, result = await self._unary(
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
        self._ref_owner.remember(member, result.remote_refs)
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
        attempts = self._failover.run(
            workflow_name,
            ids,
            lambda client: client.stream_remote_workflow(
                workflow_name,
                ids,
                input,
                input_json=input_json,
                timeout_secs=timeout_secs,
                run_id=run_id,
            ),
        )
        async with contextlib.aclosing(attempts):
            async for member, item in attempts:
                if isinstance(item, WorkflowResult):
                    self._ref_owner.remember(member, item.remote_refs)
                yield item

    stream_remote_workflow_blocking = blocking_iter_twin(stream_remote_workflow)

    async def start_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Mapping[str, Any] | None = None,
        *,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> RemoteWorkflowHandler:
        """Start a workflow on a capable, healthy peer; a handler drives the conversation.

        The arguments and the handler are ``PeerClient.start_remote_workflow``'s. Failover
        applies until the run has started on a peer; the run stays on that peer.

        Raises:
            UnsupportedError: the chosen peer holds no conversations (no session).
            UnknownStepError / UnknownWorkflowError: no peer of the pool has it.
            TransportError: no capable peer is up.
            ValidationError: bad arguments, or the pool is not started / closed.
        """
        ids = check_call(workflow_name, step_ids)
        member, handler = await self._unary(
            workflow_name,
            ids,
            lambda client: client.start_remote_workflow(
                workflow_name,
                ids,
                input,
                input_json=input_json,
                timeout_secs=timeout_secs,
                run_id=run_id,
            ),
        )
        handler.on_result(lambda result: self._ref_owner.remember(member, result.remote_refs))
        return handler

    start_remote_workflow_blocking = blocking_twin(start_remote_workflow)

    async def _invoke_raw(
        self, request: wire.SubWorkflowRequest, deadline: float | None, run_id: str | None = None
    ) -> wire.SubWorkflowResponse:
        ids = check_call(request.workflow_name, request.step_ids)
        member, response = await self._unary(
            request.workflow_name,
            ids,
            lambda client: client._invoke_raw(request, deadline, run_id),
        )
        self._ref_owner.remember(member, response.remote_refs)
        return response

    # -- session refs --------------------------------------------------------------------

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
        self._check_ready()
        return await self._ref_owner.on_owner(
            self._members.all, key, lambda client, k: client.deref_session_ref(k, timeout=timeout)
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
        self._check_ready()
        return await self._ref_owner.on_owner(
            self._members.all, key, lambda client, k: client.fetch_ref(k, timeout=timeout)
        )

    fetch_ref_blocking = blocking_twin(fetch_ref)

    async def release_session_ref(
        self, key: RegistryKey | uuid.UUID | str, *, timeout: float | None = None
    ) -> bool:
        """Release a ref on the peer holding it; False when it was already gone.

        Raises:
            RefPermissionError / TransportError / ValidationError: as
                :meth:`deref_session_ref`.
        """
        self._check_ready()
        return await self._ref_owner.release(self._members.all, key, timeout)

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
        return await self._members.describe_all()

    describe_blocking = blocking_twin(describe)

    async def health(self, *, timeout: float = 5.0) -> dict[str, bool]:
        """Ask every peer's health service now (concurrently).

        Returns:
            ``{address: serving}``; False for a peer that did not answer.

        Raises:
            ValidationError: the pool is not started or closed.
        """
        self._check_ready()
        return await self._members.health_all(timeout)

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
        up = sum(peer.up for peer in self._members.all)
        state = "closed" if self._closed else f"{up}/{len(self._members.all)} up"
        return f"<PeerPool {self.node_id} {state}>"
