"""Shared fixtures: Redis (fake, real and a real cluster), MongoDB (mongomock and a real wire server), a live app."""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from billing.api.handlers.base import MAX_BODY_BYTES
from billing.app import make_app
from billing.bootstrap import Context, bootstrap
from billing.core.config import Settings
from tests.support.api import TEST_TOKENS, Api
from tests.support.cluster_service import ClusterService, cluster_only_params
from tests.support.console import ConsoleClient
from tests.support.redis_cluster import LocalCluster
from tests.support.servers import MongoWireServer, RedisServer, served

REDIS_BACKENDS = ["fakeredis", "redis"]
MONGO_BACKENDS = ["mongomock", "secantus"]
# Modules marked cluster_server run their tests on these too: "cluster" is `billing serve --workers 2` on the
# session's Redis Cluster (tests/support/cluster_service.py).
CLUSTER_REDIS_BACKENDS = [*REDIS_BACKENDS, "cluster"]


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Before pytest reads the parametrize marks: one more, which takes precedence over the fixture's params."""
    if (
        metafunc.definition.get_closest_marker("cluster_server")
        and not metafunc.definition.get_closest_marker("in_process")
        and "api" in metafunc.fixturenames
        and "redis_backend" in metafunc.fixturenames
    ):
        metafunc.definition.add_marker(pytest.mark.parametrize("redis_backend", CLUSTER_REDIS_BACKENDS, indirect=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the cluster runs the one server cannot give (tests/support/cluster_service.py)."""
    dropped = [item for item in items if cluster_only_params(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not cluster_only_params(item)]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of the tests' own on a free port (required: no skip when missing)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A Redis Cluster of the tests' own (3 masters, 3 replicas on free ports), one for the whole run: tests leave
    it whole (a test that kills or moves nodes takes `own_cluster`)."""
    require_cluster_binaries()
    cluster = LocalCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A Redis Cluster of this test's own: it may kill and restart nodes."""
    require_cluster_binaries()
    cluster = LocalCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def collect_dropped_cluster_nodes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on a Redis Cluster: collect what it left to the garbage collector. redis-py's cluster client
    drops the nodes of its slot map when it reads the map again (after a timeout, a failover) without closing
    their connections; collected at some later moment, each complains ("Unclosed ClusterNode object", logged
    as an error by asyncio) inside whatever test runs then, one that may assert no error was logged."""
    yield
    if {"redis_cluster", "own_cluster"} & set(request.fixturenames):
        gc.collect()


def require_cluster_binaries() -> None:
    """As for the single redis-server: a missing binary fails the run, it never skips."""
    missing = [binary for binary in ("redis-server", "redis-cli") if shutil.which(binary) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: `make test` installs them (scripts/ensure-redis.sh)")


@pytest.fixture(scope="session")
def cluster_service(
    redis_cluster: LocalCluster, mongo_server: MongoWireServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterService]:
    """`billing serve --workers 2` in cluster mode, one for the whole run, shared by the cluster_server tests."""
    service = ClusterService(redis_cluster, mongo_server, tmp_path_factory.mktemp("cluster-reports")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoWireServer]:
    server = MongoWireServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own (it may be killed): AOF with fsync always, restartable on its port and dir."""
    server = RedisServer(aof=True).start()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[MongoWireServer]:
    """A SecantusDB of this test's own, on disk, so it can stop and come back with its data."""
    server = MongoWireServer(storage=str(tmp_path / "mongo")).start()
    yield server
    server.stop()


@pytest.fixture(params=REDIS_BACKENDS)
def redis_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def redis_client(redis_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Redis | None]:
    """The Redis of the in-process backends (None for "cluster": the context makes its own cluster client)."""
    if redis_backend == "cluster":
        yield None
        return
    if redis_backend == "fakeredis":
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        yield client
        await client.aclose()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = Redis.from_url(server.url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["mongomock"])
def mongo_backend(request: pytest.FixtureRequest) -> str:
    """Override with @pytest.mark.parametrize("mongo_backend", MONGO_BACKENDS, indirect=True)."""
    return request.param


@pytest.fixture
async def mongo_db(mongo_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    name = f"billing_test_{uuid.uuid4().hex[:12]}"
    if mongo_backend == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        client = AsyncMongoMockClient(tz_aware=True)
        yield client[name]
        return
    from motor.motor_asyncio import AsyncIOMotorClient

    server: MongoWireServer = request.getfixturevalue("mongo_server")
    client = AsyncIOMotorClient(server.url, tz_aware=True)
    yield client[name]
    await client.drop_database(name)
    client.close()


@pytest.fixture
def settings(prefix: str, tmp_path: Any) -> Settings:
    return Settings(
        tokens=TEST_TOKENS,
        secret="test-secret",
        redis_prefix=prefix,
        reports_dir=tmp_path / "reports",
        _env_file=None,
    )


@pytest.fixture
async def ctx(
    settings: Settings, redis_backend: str, redis_client: Redis | None, mongo_db: Any, request: pytest.FixtureRequest
) -> AsyncIterator[Context]:
    if redis_backend == "cluster":  # the test's own context on the server's stores, emptied first
        service: ClusterService = request.getfixturevalue("cluster_service")
        await asyncio.to_thread(service.empty)
        context = await bootstrap(service.settings(settings))
    else:
        context = await bootstrap(settings, redis=redis_client, mongo=mongo_db)
    await context.start()
    yield context
    await context.stop()


@pytest.fixture
async def api(ctx: Context, redis_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    if redis_backend == "cluster":
        client = Api(request.getfixturevalue("cluster_service").url)
        yield client
        client.close()
        return
    async with served(make_app(ctx), max_body_size=MAX_BODY_BYTES) as url:
        client = Api(url)
        yield client
        client.close()


@pytest.fixture
async def console(api: Api) -> AsyncIterator[ConsoleClient]:
    """The console over HTTP, as a browser without JavaScript drives it (tests/support/console.py)."""
    client = ConsoleClient(api.base_url)
    yield client
    client.close()


@pytest.fixture
async def https_console(ctx: Context, tmp_path: Path) -> AsyncIterator[ConsoleClient]:
    """The app served over HTTPS (a self-signed certificate for 127.0.0.1), and a console client of it."""
    cert, key = tls_files(tmp_path)
    async with served(make_app(ctx), ssl_options={"certfile": cert, "keyfile": key}) as url:
        client = ConsoleClient(url, validate_cert=False)
        try:
            yield client
        finally:
            client.close()


def tls_files(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate and key for 127.0.0.1 (for the HTTPS tests), made by openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)
