"""``RemoteRef``: a session ref that stays on a peer, and the client's memory of refs seen.

A result's refs come back as :class:`RemoteRef` handles bound to the client that reached
their peer: ``fetch()`` / ``deref()`` / ``release()`` go there. The client remembers the
type tag of each ref it saw (:class:`RefBook`), so ``fetch_ref(key)`` can rebuild a value
from a bare key later.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING

from peerflow.blocking import blocking_twin
from peerflow.errors import ValidationError
from peerflow.peer import protocol
from peerflow.peer._bounded import BoundedDict
from peerflow.refs import RefDescriptor, RefLifetime, RegistryKey

if TYPE_CHECKING:
    from peerflow.peer.client import PeerClient

__all__ = ["REMEMBERED_REFS", "RefBook", "RemoteRef"]

REMEMBERED_REFS = 65_536  # type tags of refs seen, kept for fetch_ref by key


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteRef(RefDescriptor):
    """A session ref that stays on a peer: fetch its value lazily, release it when done.

    Attributes:
        client: the client that reaches its peer.
        lifetime: its lifetime policy on the peer (``UNTIL_PARENT_FINISH`` or
            ``UNTIL_EXPLICIT_DROP``); None when the peer does not say (a Blazen peer).
    """

    client: PeerClient | None = dataclasses.field(default=None, repr=False, compare=False)
    lifetime: RefLifetime | None = None

    def _client(self) -> PeerClient:
        if self.client is None:
            raise ValidationError(f"remote ref {self.key} is not bound to a client")
        return self.client

    async def fetch(self, *, timeout: float | None = None) -> object:
        """The value, rebuilt from its bytes by the serializer of its type tag.

        Raises:
            RefNotFoundError: released or expired on the peer.
            RefPermissionError: it belongs to another principal.
            UnsupportedError: no serializer is registered here for its type tag.
            TransportError: the peer is unreachable.
        """
        return await self._client().fetch_ref(self.key, timeout=timeout)

    fetch_blocking = blocking_twin(fetch)

    def _check_portal(self) -> None:
        self._client()._check_portal()

    async def deref(self, *, timeout: float | None = None) -> bytes | bytearray:
        """The value's serialized bytes.

        Raises:
            RefNotFoundError: released or expired on the peer.
            TransportError: the peer is unreachable.
        """
        return await self._client().deref_session_ref(self.key, timeout=timeout)

    deref_blocking = blocking_twin(deref)

    async def release(self, *, timeout: float | None = None) -> bool:
        """Release it on the peer; False when it was already gone.

        Raises:
            RefPermissionError: it belongs to another principal.
            TransportError: the peer is unreachable.
        """
        return await self._client().release_session_ref(self.key, timeout=timeout)

    release_blocking = blocking_twin(release)


class RefBook(BoundedDict[RegistryKey, RefDescriptor]):
    """The descriptors of the latest refs a client saw, by key (bounded)."""

    def __init__(self) -> None:
        super().__init__(REMEMBERED_REFS)

    def type_tag(self, key: RegistryKey) -> str | None:
        """The type tag of a ref seen before, or None."""
        known = self.get(key)
        return known.type_tag if known else None

    def make_ref(
        self,
        client: PeerClient,
        ref_uuid: uuid.UUID,
        wire: protocol.RemoteRefDescriptor | None,
        lifetime: RefLifetime | None = None,
    ) -> RemoteRef:
        """A :class:`RemoteRef` bound to ``client``; remembered when its type is known.

        Without a wire descriptor (a Blazen peer sends only the key) the one seen before,
        if any, fills it in.

        Raises:
            Nothing.
        """
        key = RegistryKey(ref_uuid)
        if wire is None:
            known = self.get(key)
            origin, tag, created = (
                (known.origin_node_id, known.type_tag, known.created_at_epoch_ms)
                if known
                else ("", "", 0)
            )
        else:
            origin, tag, created = wire.origin_node_id, wire.type_tag, wire.created_at_epoch_ms
        ref = RemoteRef(key, origin, tag, created, client, lifetime)
        if tag:
            self[key] = ref
        return ref
