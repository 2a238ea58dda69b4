"""Session refs: values that stay on the node that made them, fetched lazily by key.

A step calls ``ctx.refs.insert(value)`` and gets a :class:`RegistryKey` (a UUID). The value
stays in this node's :class:`SessionRefRegistry`; a parent on another machine receives a
:class:`RefDescriptor` and later fetches the bytes (``dump``) or releases the ref.

**Lifetimes** (:class:`RefLifetime`) decide when a ref is dropped automatically:

- ``UNTIL_CONTEXT_DROP`` (default): dropped by :meth:`SessionRefRegistry.end_run` when the
  run that created it ends.
- ``UNTIL_PARENT_FINISH``: survives its run; ``end_run`` starts a lease of ``ref_ttl``
  seconds, renewed by each :meth:`~SessionRefRegistry.dump` (a deref). The parent releases
  it when done; a parent that crashed lets the lease run out.
- ``UNTIL_EXPLICIT_DROP``: never dropped automatically, only by ``release``.

Refs inserted without a ``run_id`` belong to no run and ``end_run`` never touches them.

**Leases.** An entry whose lease has passed is gone: it is purged lazily on the next
registry call and by :meth:`~SessionRefRegistry.purge_expired`. Leases use the injected
monotonic ``clock``; ``created_at_epoch_ms`` is wall-clock time.

**Ownership.** Every ref belongs to the principal that inserted it (``owner``, default
:data:`ANONYMOUS`). ``get``/``dump``/``release`` given another principal raise
:class:`~peerflow.errors.RefPermissionError`; ``owner=None`` skips the check (in-process
callers that are already trusted).

**Budget.** The registry refuses an insert that would push :attr:`~SessionRefRegistry.
used_bytes` past ``max_bytes`` (:class:`~peerflow.errors.ResourceExhaustedError`). A value's
size is measured once, at insert: ``len`` for ``bytes``/``bytearray``, ``nbytes`` for a
``memoryview`` or numpy array, the serialized size for JSON values (a list of strings counts
its strings), the serializer's ``sizeof`` when one was registered, else ``sys.getsizeof``
(shallow: an object's size does not include what it refers to).

**Serializers** (:mod:`peerflow.serializers`) turn values into bytes for the wire, by type
tag; nothing is ever pickled.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from peerflow.errors import (
    RefNotFoundError,
    RefPermissionError,
    ResourceExhaustedError,
    ValidationError,
)
from peerflow.serializers import (
    _TABLE,
    _sizeof,
    _type_name,
    dumps_value,
    loads_value,
    register_serializer,
    serializer_tag_for,
)

__all__ = [
    "ANONYMOUS",
    "RefDescriptor",
    "RefLifetime",
    "RegistryKey",
    "SessionRefRegistry",
    "dumps_value",
    "loads_value",
    "register_serializer",
    "serializer_tag_for",
]

ANONYMOUS: Final[str] = "anonymous"
"""The principal of unauthenticated callers (no mTLS subject, no token)."""


class RefLifetime(enum.Enum):
    """When a session ref is dropped without an explicit release."""

    UNTIL_CONTEXT_DROP = "until_context_drop"
    """Dropped when the run that inserted it ends (the default)."""

    UNTIL_PARENT_FINISH = "until_parent_finish"
    """Survives its run; when the run ends a ``ref_ttl`` lease starts, renewed by each
    deref (``dump``). Dropped by ``release`` or when the lease runs out."""

    UNTIL_EXPLICIT_DROP = "until_explicit_drop"
    """Never dropped automatically and holds no lease; only ``release`` drops it."""


_UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}"
)


class RegistryKey:
    """The key of a session ref: an immutable, hashable wrapper around a :class:`uuid.UUID`.

    ``str(key)`` is the canonical lower-case hyphenated form sent on the wire.

    Raises:
        ValidationError: from the constructor when not given a :class:`uuid.UUID`.

    """

    __slots__ = ("_uuid",)
    _uuid: uuid.UUID

    def __init__(self, value: uuid.UUID) -> None:
        if not isinstance(value, uuid.UUID):
            raise ValidationError(f"RegistryKey wraps a uuid.UUID, got {value!r}")
        object.__setattr__(self, "_uuid", value)

    @classmethod
    def new(cls) -> RegistryKey:
        """Return a fresh random key (UUID version 4)."""
        return cls(uuid.uuid4())

    @classmethod
    def parse(cls, value: RegistryKey | uuid.UUID | str) -> RegistryKey:
        """Return ``value`` as a key.

        Args:
            value: a key, a UUID, or a UUID string (hyphenated or 32 hex digits, any case).

        Raises:
            ValidationError: anything else, including a malformed string.

        """
        if type(value) is cls:
            return value
        if isinstance(value, uuid.UUID):
            return cls(value)
        if isinstance(value, str) and _UUID_RE.fullmatch(value):
            return cls(uuid.UUID(value))
        raise ValidationError(f"not a session ref key (expected a UUID): {value!r}")

    @property
    def uuid(self) -> uuid.UUID:
        """The wrapped UUID."""
        return self._uuid

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("RegistryKey is immutable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RegistryKey):
            return self._uuid == other._uuid
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._uuid)

    def __str__(self) -> str:
        return str(self._uuid)

    def __repr__(self) -> str:
        return f"RegistryKey('{self._uuid}')"

    def __reduce__(self) -> tuple[object, ...]:
        return (RegistryKey, (self._uuid,))


@dataclass(frozen=True, slots=True)
class RefDescriptor:
    """What a result lists for each session ref (Blazen's ``RemoteRefDescriptor`` + key).

    Attributes:
        key: the ref's key.
        origin_node_id: the node holding the value.
        type_tag: the serializer tag to load its bytes with (or the value's qualified type
            name when no serializer was known at insert).
        created_at_epoch_ms: wall-clock creation time on the origin node.

    """

    key: RegistryKey
    origin_node_id: str
    type_tag: str
    created_at_epoch_ms: int


# ----------------------------------------------------------------------------- registry


class _Entry:
    __slots__ = (
        "created_ms",
        "expiry",
        "key",
        "lifetime",
        "owner",
        "run_id",
        "size",
        "type_tag",
        "value",
    )

    def __init__(
        self,
        key: RegistryKey,
        value: object,
        lifetime: RefLifetime,
        type_tag: str,
        owner: str,
        run_id: str | None,
        size: int,
    ) -> None:
        self.key = key
        self.value = value
        self.lifetime = lifetime
        self.type_tag = type_tag
        self.owner = owner
        self.run_id = run_id
        self.size = size
        self.created_ms = time.time_ns() // 1_000_000
        self.expiry: float | None = None


KeyLike = RegistryKey | uuid.UUID | str


class SessionRefRegistry:
    """A node's session refs: values by key, with lifetimes, leases, owners and a budget.

    Thread-safe: every method may be called from any thread (sync steps run in threads).
    Shareable between in-process runs and a ``PeerServer``.

    Args:
        node_id: this node's id, written into descriptors as ``origin_node_id``.
        max_bytes: the byte budget over all live refs.
        ref_ttl: seconds a lease lasts (started by ``end_run``, renewed by ``dump``).
        clock: monotonic seconds; inject a fake in tests.

    Raises:
        ValidationError: a bad argument.

    """

    def __init__(
        self,
        *,
        node_id: str = "local",
        max_bytes: int = 1 << 30,
        ref_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ValidationError(f"node_id must be a non-empty string, got {node_id!r}")
        if type(max_bytes) is not int or max_bytes < 0:
            raise ValidationError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        if (
            isinstance(ref_ttl, bool)
            or not isinstance(ref_ttl, int | float)
            or not 0 < ref_ttl < float("inf")
        ):
            raise ValidationError(f"ref_ttl must be a positive number of seconds, got {ref_ttl!r}")
        if not callable(clock):
            raise ValidationError(f"clock must be callable, got {clock!r}")
        self._node_id = node_id
        self._max_bytes = max_bytes
        self._ttl = float(ref_ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[RegistryKey, _Entry] = {}
        self._runs: dict[str, dict[RegistryKey, None]] = {}
        self._used = 0
        self._leases: list[tuple[float, int, RegistryKey]] = []  # heap; stale rows skipped
        self._seq = itertools.count()

    @property
    def node_id(self) -> str:
        """The id of this node (``origin_node_id`` of every descriptor)."""
        return self._node_id

    @property
    def max_bytes(self) -> int:
        """The byte budget."""
        return self._max_bytes

    @property
    def ref_ttl(self) -> float:
        """Lease length in seconds."""
        return self._ttl

    @property
    def used_bytes(self) -> int:
        """Bytes charged by live refs."""
        with self._lock:
            self._purge_due()
            return self._used

    def __len__(self) -> int:
        with self._lock:
            self._purge_due()
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        try:
            k = RegistryKey.parse(key)  # type: ignore[arg-type]
        except ValidationError:
            return False
        with self._lock:
            self._purge_due()
            return k in self._entries

    def __iter__(self) -> Iterator[RegistryKey]:
        return iter(self.keys())

    def keys(self) -> list[RegistryKey]:
        """Return a snapshot of the live keys, oldest first."""
        with self._lock:
            self._purge_due()
            return list(self._entries)

    def insert(
        self,
        value: object,
        *,
        lifetime: RefLifetime = RefLifetime.UNTIL_CONTEXT_DROP,
        type_tag: str | None = None,
        owner: str = ANONYMOUS,
        run_id: str | None = None,
    ) -> RegistryKey:
        """Store ``value`` and return its new key.

        Any value may be stored; only :meth:`dump` needs a serializer for it.

        Args:
            value: the value (kept by reference, not copied).
            lifetime: when it is dropped automatically.
            type_tag: the serializer tag for ``dump``; default: the tag of the serializer
                for its type, else its qualified type name.
            owner: the principal it belongs to.
            run_id: the run that made it (``end_run(run_id)`` applies its lifetime).

        Raises:
            ValidationError: a bad argument.
            ResourceExhaustedError: the value would push ``used_bytes`` past ``max_bytes``;
                nothing is inserted.

        """
        if type(lifetime) is not RefLifetime:
            raise ValidationError(f"lifetime must be a RefLifetime, got {lifetime!r}")
        if not isinstance(owner, str):
            raise ValidationError(f"owner must be a principal string, got {owner!r}")
        if run_id is not None and not isinstance(run_id, str):
            raise ValidationError(f"run_id must be a string or None, got {run_id!r}")
        if type_tag is None:
            ser = _TABLE.for_type(type(value))
            tag = ser.tag if ser is not None else _type_name(type(value))
        elif isinstance(type_tag, str) and type_tag:
            ser = _TABLE.by_tag.get(type_tag) or _TABLE.for_type(type(value))
            tag = type_tag
        else:
            raise ValidationError(f"type_tag must be a non-empty string, got {type_tag!r}")
        size = _sizeof(value, ser)
        key = RegistryKey(uuid.uuid4())
        entry = _Entry(key, value, lifetime, tag, owner, run_id, size)
        with self._lock:
            self._purge_due()
            if self._used + size > self._max_bytes:
                raise ResourceExhaustedError(
                    f"session ref budget of node {self._node_id!r} exhausted: "
                    f"{self._used} of {self._max_bytes} bytes used, "
                    f"insert of a {_type_name(type(value))} needs {size}"
                )
            self._entries[key] = entry
            self._used += size
            if run_id is not None:
                self._runs.setdefault(run_id, {})[key] = None
        return key

    def get(self, key: KeyLike, *, owner: str | None = None) -> object:
        """Return the value stored under ``key``.

        Args:
            key: the ref's key (a key, UUID or UUID string).
            owner: the caller's principal; None skips the ownership check.

        Raises:
            ValidationError: ``key`` is not a key.
            RefNotFoundError: no live ref under ``key``.
            RefPermissionError: the ref belongs to another principal.

        """
        with self._lock:
            return self._lookup(RegistryKey.parse(key), owner).value

    def descriptor(self, key: KeyLike) -> RefDescriptor:
        """Return the descriptor of the ref under ``key``.

        Raises:
            ValidationError: ``key`` is not a key.
            RefNotFoundError: no live ref under ``key``.

        """
        with self._lock:
            return self._descriptor(self._lookup(RegistryKey.parse(key), None))

    def lifetime(self, key: KeyLike) -> RefLifetime:
        """The ref's lifetime policy.

        Raises:
            ValidationError: ``key`` is not a key.
            RefNotFoundError: no live ref under ``key``.

        """
        with self._lock:
            return self._lookup(RegistryKey.parse(key), None).lifetime

    def ttl_remaining(self, key: KeyLike) -> float | None:
        """Seconds left on the ref's lease, or None when it holds no lease.

        Raises:
            ValidationError: ``key`` is not a key.
            RefNotFoundError: no live ref under ``key``.

        """
        with self._lock:
            entry = self._lookup(RegistryKey.parse(key), None)
            return None if entry.expiry is None else entry.expiry - self._clock()

    def dump(self, key: KeyLike, *, owner: str | None = None) -> tuple[str, bytes | memoryview]:
        """Serialize the ref's value for the wire (a deref); renews its lease if it has one.

        Uses the ref's ``type_tag`` when a serializer is registered under it, else the
        serializer for the value's type.

        Args:
            key: the ref's key.
            owner: the caller's principal; None skips the ownership check.

        Returns:
            ``(type_tag, payload)``; bytes-like values come back as a zero-copy memoryview.

        Raises:
            ValidationError: ``key`` is not a key.
            RefNotFoundError: no live ref under ``key``.
            RefPermissionError: the ref belongs to another principal.
            UnsupportedError: no serializer for the value.
            EncodeError: the serializer failed.

        """
        with self._lock:
            entry = self._lookup(RegistryKey.parse(key), owner)
            if entry.expiry is not None:
                self._lease(entry, self._clock() + self._ttl)
            value, tag = entry.value, entry.type_tag
        return dumps_value(value, tag if tag in _TABLE.by_tag else None)

    def release(self, key: KeyLike, *, owner: str | None = None) -> bool:
        """Drop the ref under ``key``.

        Args:
            key: the ref's key.
            owner: the caller's principal; None skips the ownership check.

        Returns:
            True if a live ref was dropped, False if there was none.

        Raises:
            ValidationError: ``key`` is not a key.
            RefPermissionError: the ref belongs to another principal (it is kept).

        """
        k = RegistryKey.parse(key)
        with self._lock:
            try:
                entry = self._lookup(k, owner)
            except RefNotFoundError:
                return False
            self._drop(entry)
            return True

    def end_run(self, run_id: str) -> list[RefDescriptor]:
        """Apply lifetimes at the end of run ``run_id``.

        Drops its ``UNTIL_CONTEXT_DROP`` refs, starts a ``ref_ttl`` lease on its
        ``UNTIL_PARENT_FINISH`` refs (unless already leased), leaves its
        ``UNTIL_EXPLICIT_DROP`` refs alone.

        Returns:
            The descriptors of the run's surviving refs, in insertion order (what the run's
            response lists). Unknown runs give ``[]``.

        """
        with self._lock:
            self._purge_due()
            keys = self._runs.get(run_id)
            if not keys:
                return []
            now: float | None = None
            survivors: list[RefDescriptor] = []
            for key in list(keys):
                entry = self._entries[key]
                if entry.lifetime is RefLifetime.UNTIL_CONTEXT_DROP:
                    self._drop(entry)
                    continue
                if entry.lifetime is RefLifetime.UNTIL_PARENT_FINISH and entry.expiry is None:
                    if now is None:
                        now = self._clock()
                    self._lease(entry, now + self._ttl)
                survivors.append(self._descriptor(entry))
            return survivors

    def refs_of_run(self, run_id: str) -> list[RefDescriptor]:
        """Return the descriptors of the live refs run ``run_id`` inserted, oldest first."""
        with self._lock:
            self._purge_due()
            keys = self._runs.get(run_id, {})
            return [self._descriptor(self._entries[k]) for k in keys]

    def purge_expired(self) -> int:
        """Drop every ref whose lease has passed; return how many were dropped."""
        with self._lock:
            return self._purge_due()

    # -- internals (call with the lock held) --

    def _lookup(self, key: RegistryKey, owner: str | None) -> _Entry:
        self._purge_due()
        entry = self._entries.get(key)
        if entry is None:
            raise RefNotFoundError(
                f"no session ref {key} on node {self._node_id!r} (never existed, released or "
                "expired)"
            )
        if owner is not None and owner != entry.owner:
            raise RefPermissionError(f"session ref {key} belongs to another principal")
        return entry

    def _descriptor(self, entry: _Entry) -> RefDescriptor:
        return RefDescriptor(entry.key, self._node_id, entry.type_tag, entry.created_ms)

    def _drop(self, entry: _Entry) -> None:
        del self._entries[entry.key]
        self._used -= entry.size
        if entry.run_id is not None:
            run = self._runs[entry.run_id]
            del run[entry.key]
            if not run:
                del self._runs[entry.run_id]

    def _lease(self, entry: _Entry, expiry: float) -> None:
        entry.expiry = expiry
        heapq.heappush(self._leases, (expiry, next(self._seq), entry.key))
        if len(self._leases) > 2 * len(self._entries) + 64:  # compact stale renewals
            self._leases = [
                (e.expiry, next(self._seq), e.key)
                for e in self._entries.values()
                if e.expiry is not None
            ]
            heapq.heapify(self._leases)

    def _purge_due(self) -> int:
        leases = self._leases
        if not leases:
            return 0
        now = self._clock()
        dropped = 0
        while leases and leases[0][0] <= now:
            expiry, _, key = heapq.heappop(leases)
            entry = self._entries.get(key)
            if entry is not None and entry.expiry == expiry:
                self._drop(entry)
                dropped += 1
        return dropped
