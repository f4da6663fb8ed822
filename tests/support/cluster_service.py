"""The api behaviour tests on a Redis Cluster: `billing serve --workers 2` with BILLING_REDIS_MODE=cluster over the
session's 6-node cluster and the session's SecantusDB, one server for the whole run.

A test module opts in with `pytestmark = pytest.mark.cluster_server`: its tests that use the `api` fixture then
run a third time, with redis_backend "cluster" (tests/conftest.py). The test itself is unchanged: `api` talks to
the 2-worker server, `ctx` is a context of the test's own process on the same stores and settings (for what a test
reads straight from Redis or MongoDB, and for `ctx.projector.drain()`). The server's workers run no projector
(BILLING_PROJECTOR_ENABLED=false): the test's context projects when its settings say so, as in the in-process
runs, so a module that turns the projector off sees every outbox entry stay. Before each test the server's
ledger is emptied (MongoDB first, then every key under its prefix but the partition count), so every test starts
from the empty ledger it expects: the same user ids and Idempotency-Keys in every test.

A test that replaces a part of the in-process app (monkeypatch of ctx.operations, ctx.ledger or redis_raw) cannot
reach into the server: it is marked `in_process` and runs on the in-process backends only.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import redis

from billing.core.config import Settings
from tests.support.api import TEST_TOKENS
from tests.support.redis_cluster import PARTITIONS, LocalCluster
from tests.support.servers import MongoWireServer
from tests.support.service import BillingProcess

SECRET = "test-secret"  # the `settings` fixture's: cursors signed by the server verify in the test's context


class ClusterService:
    """The 2-worker server on the cluster, and what a test's context needs to share its stores."""

    def __init__(self, cluster: LocalCluster, mongo: MongoWireServer, reports_dir: Path) -> None:
        self.cluster = cluster
        self.mongo = mongo
        run = uuid.uuid4().hex[:12]
        self.prefix = f"cluster-api:{run}:"
        self.mongo_db = f"billing_cluster_{run}"
        self.process = BillingProcess(
            cluster.url,
            mongo.url,
            TEST_TOKENS,
            workers=2,
            mongo_db=self.mongo_db,
            extra_env={
                "BILLING_REDIS_MODE": "cluster",
                "BILLING_PARTITIONS": str(PARTITIONS),
                "BILLING_REDIS_PREFIX": self.prefix,
                "BILLING_SECRET": SECRET,
                "BILLING_PROJECTOR_ENABLED": "false",
                "BILLING_REPORTS_DIR": str(reports_dir),
            },
        )

    @property
    def url(self) -> str:
        return self.process.url

    def start(self) -> ClusterService:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def settings(self, test_settings: Settings) -> Settings:
        """A test's settings pointed at the server's stores and layout (its projector switch and the rest kept)."""
        return test_settings.model_copy(
            update={
                "redis_url": self.cluster.url,
                "redis_mode": "cluster",
                "partitions": PARTITIONS,
                "redis_prefix": self.prefix,
                "mongo_url": self.mongo.url,
                "mongo_db": self.mongo_db,
                "secret": SECRET,
            }
        )

    def empty(self) -> None:
        """Delete the ledger: every document of the server's database, then every key under its prefix on every
        master but the partition count. MongoDB first: the workers' sequence check, seeing a partition's sequence
        go back, asks MongoDB and must find no id above it."""
        import pymongo

        with pymongo.MongoClient(self.mongo.url) as client:
            database = client[self.mongo_db]
            for name in database.list_collection_names():
                database[name].delete_many({})
        keep = f"{self.prefix}partitions".encode()
        for node in self.cluster.masters():
            with redis.Redis(port=node.port) as client:
                doomed = [key for key in client.scan_iter(match=f"{self.prefix}*", count=1000) if key != keep]
                pipe = client.pipeline(transaction=False)
                for key in doomed:  # one key per command: a cluster node refuses keys of several slots in one
                    pipe.unlink(key)
                pipe.execute()


def cluster_only_params(item: Any) -> bool:
    """Whether a collected test is a cluster-backend run the server cannot give: another partition count, or the
    MongoDB of the in-process runs (the server always uses SecantusDB: one run per test is enough)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if params.get("redis_backend") != "cluster":
        return False
    if isinstance(params.get("settings"), int) and params["settings"] != PARTITIONS:
        return True
    mongo_parametrized = any(
        "mongo_backend" in str(mark.args[0]) for mark in item.iter_markers("parametrize") if mark.args
    )
    return mongo_parametrized and params.get("mongo_backend") == "mongomock"
