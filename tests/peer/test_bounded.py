from __future__ import annotations

from peerflow.peer._bounded import BoundedDict
from peerflow.peer.client import REMEMBERED_REFS
from peerflow.peer.pool import PeerPool


def test_bounded_dict_forgets_the_oldest_entries() -> None:
    d: BoundedDict[int, str] = BoundedDict(3)
    for i in range(5):
        d[i] = str(i)
    assert list(d) == [2, 3, 4]
    d[3] = "again"  # updating a key keeps the size
    assert len(d) == 3


def test_ref_bookkeeping_is_bounded() -> None:
    pool = PeerPool(["127.0.0.1:1"], client_node_id="p")
    assert isinstance(pool._ref_owner, BoundedDict)
    assert pool._ref_owner.limit == REMEMBERED_REFS


async def test_a_clients_remembered_ref_tags_are_bounded() -> None:
    from peerflow.testing import serve_in_process

    async with serve_in_process({}) as server:
        from peerflow.peer.client import PeerClient

        async with await PeerClient.connect(server.address or "", "c") as client:
            assert isinstance(client._descriptors, BoundedDict)
            assert client._descriptors.limit == REMEMBERED_REFS
