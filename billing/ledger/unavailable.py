"""Which failures mean "a backing store cannot serve now; retry" (503 unavailable), not a bug (500)."""

from __future__ import annotations

from pymongo.errors import PyMongoError
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError  # BusyLoadingError (LOADING) among them
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.ledger.scripts import BatchOperationFailed

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    MasterDownError,
    TryAgainError,
    ClusterDownError,
    SlotNotCoveredError,  # a Redis Cluster client whose map lacks the slot: nothing was sent
    PyMongoError,
    ConnectionError,
    TimeoutError,
)
# Error replies of a Redis that cannot serve now: a replica (READONLY), loading its data (LOADING), running a
# long script (BUSY), unable to persist (MISCONF), out of memory (OOM: a script's first write refused, so
# the run changed nothing), or a cluster in change (TRYAGAIN, CLUSTERDOWN, MASTERDOWN,
# NOREPLICAS). redis-py raises some as the classes above and others (BUSY, MISCONF) as a plain ResponseError;
# inside a batch an operation's error is only its message. The code is the message's first word.
UNAVAILABLE_REPLIES = frozenset(
    ("READONLY", "LOADING", "BUSY", "MISCONF", "OOM", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS")
)


def store_unavailable(exc: BaseException | None) -> bool:
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return True
    if isinstance(exc, ResponseError | BatchOperationFailed):
        code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
        return code in UNAVAILABLE_REPLIES
    return False
