"""What the projector makes of one read of the outboxes (billing/projection/projector.py to_batch)."""

from __future__ import annotations

from billing.projection.projector import stream_seq, to_batch
from billing.projection.store import ServiceName


def test_a_read_of_several_streams_keeps_each_services_latest_change() -> None:
    """Streams come in a read one after another, not in time order: the change with the later position wins."""
    newer = ("1700000000500-0", {"services": '{"5": "X"}'})
    older = ("1700000000100-0", {"services": '{"5": "Y", "6": "Z"}'})
    batch = to_batch([("billing:{p1}:outbox", [newer]), ("billing:{p2}:outbox", [older])])
    assert batch.services == {
        5: ServiceName(5, "X", stream_seq(newer[0])),
        6: ServiceName(6, "Z", stream_seq(older[0])),
    }


def test_an_entry_carries_its_transactions_in_order() -> None:
    txns = (
        '[{"id": "2049", "type": "deposit", "user_id": "7", "amount": "100", "available_after": "100",'
        ' "reserved_after": "0", "created_at": "1700000000000"},'
        ' {"id": "3073", "type": "deposit", "user_id": "8", "amount": "5", "available_after": "5",'
        ' "reserved_after": "0", "created_at": "1700000000000"}]'
    )
    batch = to_batch([("billing:{p1}:outbox", [("1700000000000-0", {"txns": txns})])])
    assert [int(doc["_id"]) for doc in batch.docs] == [2049, 3073]
    assert batch.ids == ["1700000000000-0"] and not batch.poison
