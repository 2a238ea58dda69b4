"""A dict that forgets its oldest entries past a size: bookkeeping that must not grow forever."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

__all__ = ["BoundedDict"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """Keeps at most ``limit`` entries; setting a new key past it drops the oldest.

    Used for what a client or pool remembers about refs (type tags, owning peers): a ref
    that expired on its peer by lease is never released through us, so nothing else would
    ever remove its entry. Forgetting only costs a fallback (asking the peers, reading the
    tag from the deref's metadata), never correctness.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        if len(self) > self.limit:
            self.popitem(last=False)
