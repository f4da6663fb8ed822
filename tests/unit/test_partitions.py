"""Users spread over ledger partitions by a stable hash, and every partition key carries its hash tag."""

from __future__ import annotations

from collections import Counter

import pytest

from billing.core.config import MAX_PARTITIONS, ConfigError, Settings, check_settings
from billing.ledger.scripts import RedisKeys, partition_of, transaction_partition


def test_partition_of_is_stable() -> None:
    """Changing the hash moves users between partitions: a migration. These values hold forever."""
    assert [partition_of(user, 16) for user in (1, 2, 3, 4, 5)] == [15, 5, 3, 0, 6]
    assert [partition_of(user, 1024) for user in (1, 2, 3, 4, 5)] == [1023, 581, 723, 880, 998]
    assert partition_of(2**63 - 1, 16) == 6
    assert {partition_of(user, 1) for user in range(1, 100)} == {0}


def test_partition_of_spreads_users_evenly() -> None:
    counts = Counter(partition_of(user, 16) for user in range(1, 10_001))
    assert sorted(counts) == list(range(16))
    expected = 10_000 / 16
    assert all(0.8 * expected <= n <= 1.2 * expected for n in counts.values()), counts


def test_every_key_of_a_user_carries_its_partition_tag() -> None:
    keys = RedisKeys("billing:", 16)
    assert keys.account(5) == "billing:{p6}:acct:5"
    assert keys.reservation(5, 7, 42) == "billing:{p6}:resv:5:7:42"
    assert keys.user_reservation_pattern(5) == "billing:{p6}:resv:5:*"
    assert [keys.meta(6), keys.totals(6), keys.outbox(6), keys.projected(6)] == [
        "billing:{p6}:meta",
        "billing:{p6}:totals",
        "billing:{p6}:outbox",
        "billing:{p6}:projected",
    ]
    assert keys.outbox_dead(6) == "billing:{p6}:outbox:dead"
    assert keys.account_user_id(keys.account(5)) == 5
    with pytest.raises(ValueError):
        keys.account_user_id("billing:{p7}:acct:5")  # user 5 is not in partition 7
    assert transaction_partition(3 * MAX_PARTITIONS + 6) == 6


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"redis_prefix": "billing{x}:"}, "BILLING_REDIS_PREFIX"),
        ({"redis_prefix": "billing}:"}, "BILLING_REDIS_PREFIX"),
        ({"partitions": 0}, "BILLING_PARTITIONS"),
        ({"partitions": MAX_PARTITIONS + 1}, "BILLING_PARTITIONS"),
    ],
)
def test_the_settings_check_refuses_what_would_break_the_layout(changes: dict[str, object], variable: str) -> None:
    settings = Settings(_env_file=None).model_copy(update=changes)
    with pytest.raises(ConfigError, match=variable):
        check_settings(settings)
