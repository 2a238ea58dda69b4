"""Which pool member holds which session ref: refs never move, so calls on them go there.

A ref the pool handed out (in a result) is remembered with the member that made it. A key
the pool did not hand out is asked for on each up member in turn; the one that has it is
remembered from then on.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from peerflow.errors import RefNotFoundError, RemoteRefNotFoundError
from peerflow.peer._bounded import BoundedDict
from peerflow.peer.client import PeerClient
from peerflow.peer.pool_health import Member
from peerflow.peer.remote_ref import REMEMBERED_REFS
from peerflow.refs import RegistryKey

__all__ = ["RefOwners"]

T = TypeVar("T")


class RefOwners(BoundedDict[RegistryKey, Member]):
    """The member holding each ref the pool saw (the latest ones; bounded)."""

    def __init__(self) -> None:
        super().__init__(REMEMBERED_REFS)

    def remember(self, member: Member, keys: Iterable[RegistryKey | uuid.UUID]) -> None:
        """Note that ``member`` holds ``keys``."""
        for key in keys:
            self[RegistryKey.parse(key)] = member

    async def on_owner(
        self,
        members: Sequence[Member],
        key: RegistryKey | uuid.UUID | str,
        fn: Callable[[PeerClient, RegistryKey], Awaitable[T]],
    ) -> T:
        """``fn(client, key)`` on the member holding ``key`` (asking each one if unknown).

        Raises:
            RefNotFoundError: no member holds it (names each member's answer).
            ValidationError: ``key`` is not a key.
            PeerflowError: what ``fn`` raised on the owner.
        """
        parsed = RegistryKey.parse(key)
        owner = self.get(parsed)
        if owner is not None:
            assert owner.client is not None
            return await fn(owner.client, parsed)
        answers: list[str] = []
        for member in members:
            if not member.up or member.client is None:
                answers.append(f"{member.address}: down ({member.reason})")
                continue
            try:
                value = await fn(member.client, parsed)
            except RefNotFoundError:
                answers.append(f"{member.address}: not found")
                continue
            self[parsed] = member
            return value
        raise RemoteRefNotFoundError(
            f"no peer of the pool holds session ref {parsed}: {'; '.join(answers)}",
            address=", ".join(member.address for member in members),
            code="NOT_FOUND",
        )

    async def release(
        self, members: Sequence[Member], key: RegistryKey | uuid.UUID | str, timeout: float | None
    ) -> bool:
        """Release ``key`` on the member holding it; False when no member had it.

        Raises:
            RefPermissionError: it belongs to another principal.
            TransportError: its member is unreachable.
            ValidationError: ``key`` is not a key.
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
            released = await self.on_owner(members, parsed, release)
        except RefNotFoundError:
            released = False
        self.pop(parsed, None)
        return released
