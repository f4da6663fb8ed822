"""The plan of a batch's script runs (billing/ledger/service.py batch_runs): one partition per run, one by one semantics."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from billing.ledger.scripts import BATCH_CHUNK
from billing.ledger.service import batch_runs


def one(p: int) -> frozenset[int]:
    return frozenset((p,))


def plan(touched: list[frozenset[int]], shared: list[frozenset[str]] | None = None) -> list[list[int]]:
    return batch_runs(touched, shared or [frozenset()] * len(touched))


def test_single_partition_items_are_gathered_per_partition_in_order() -> None:
    assert plan([one(3), one(5), one(3), one(5), one(1)]) == [[0, 2], [1, 3], [4]]


def test_a_transfer_between_partitions_runs_alone_between_what_came_before_and_after() -> None:
    touched = [one(3), one(5), frozenset((3, 5)), one(5), one(3)]
    assert plan(touched) == [[0], [1], [2], [3], [4]]


def test_long_partitions_are_chunked() -> None:
    runs = plan([one(0)] * (BATCH_CHUNK * 2 + 1))
    assert [len(run) for run in runs] == [BATCH_CHUNK, BATCH_CHUNK, 1]


def test_a_key_written_from_two_partitions_keeps_its_items_in_order() -> None:
    key = frozenset({"idem:k"})
    assert plan([one(3), one(5), one(3)], [key, frozenset(), key]) == [[0, 2], [1]]  # one partition: one run
    assert plan([one(3), one(5), one(5)], [key, frozenset(), key]) == [[0], [1], [2]]  # a new segment at item 2


@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=2), st.sets(st.sampled_from("ab"), max_size=1)),
        max_size=300,
    )
)
def test_every_item_runs_once_after_every_earlier_item_it_could_see(raw: list[tuple[list[int], set[str]]]) -> None:
    """Items sharing a partition or a key keep their order; an item of two partitions has every earlier item
    before it and every later item after it; every run is of one partition or one item."""
    touched = [frozenset(parts) for parts, _ in raw]
    shared = [frozenset(keys) for _, keys in raw]
    runs = batch_runs(touched, shared)
    position = {index: (number, place) for number, run in enumerate(runs) for place, index in enumerate(run)}
    assert sorted(position) == list(range(len(touched)))
    for run in runs:
        assert len(run) <= BATCH_CHUNK
        assert len(run) == 1 or len({p for index in run for p in touched[index]}) == 1
    for later in range(len(touched)):
        for earlier in range(later):
            related = touched[earlier] & touched[later] or shared[earlier] & shared[later]
            if related or len(touched[earlier]) > 1 or len(touched[later]) > 1:
                assert position[earlier] < position[later], (earlier, later, runs)


def test_a_deposit_batch_over_sixteen_partitions_is_sixteen_runs() -> None:
    rng = random.Random(7)
    runs = plan([one(rng.randrange(16)) for _ in range(1000)])
    assert len(runs) == 16
