"""A local Redis Cluster for tests: six redis-server processes (3 masters, 3 replicas) on free ports, joined by
`redis-cli --cluster create`, with the node operations the cluster tests need (kill a master, wait for its
replica to take over, restart a node)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from billing.core.config import Settings
from tests.support.api import TEST_TOKENS
from tests.support.servers import RedisServer, free_port

SLOTS = 16384
BUS_PORT_OFFSET = 10000  # Redis Cluster's bus listens on port + 10000, which must exist
HIGHEST_PORT = 65535 - BUS_PORT_OFFSET

NODE_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    # A dead node is suspected after 1 s, so a failover takes a few seconds instead of the default 15 s+.
    "--cluster-node-timeout",
    "1000",
    # A replica may take over however long ago it last heard from its master: after a SIGKILL the failover
    # never waits for a human (the default factor 10 can leave the slots uncovered).
    "--cluster-replica-validity-factor",
    "0",
    # A replica is left out of CLUSTER SLOTS (so out of clients' maps) until its replication offset is above 0:
    # the master's pings to its replicas move it within a second even when nothing is written.
    "--repl-ping-replica-period",
    "1",
    # Replicas sync over the socket, with no RDB file written on the way.
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
)


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A free port <= 55535 whose bus port (+10000) is free too, neither of them in `taken`."""
    for _ in range(1000):
        port = free_port()
        bus = port + BUS_PORT_OFFSET
        if port <= HIGHEST_PORT and not {port, bus} & taken and _port_is_free(bus):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) below 65536")


@dataclass(eq=False)
class LocalNode:
    """One redis-server of the cluster; its role is whatever the cluster says now (see LocalCluster)."""

    server: RedisServer
    node_id: str = ""

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def name(self) -> str:
        """host:port, as redis-py's ClusterNode.name and CLUSTER NODES spell it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.server.proc is not None and self.server.proc.poll() is None

    def client(self) -> redis.Redis:
        """A plain (non-cluster) client of this node alone, answers decoded."""
        # No retries of its own: the callers poll, and a dead node must answer "refused" at once.
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def __repr__(self) -> str:
        return f"LocalNode({self.name}, {self.node_id[:8]})"


@dataclass
class _Entry:
    """One line of CLUSTER NODES as a node sees it."""

    node_id: str
    flags: set[str]
    master_id: str
    slots: list[tuple[int, int]]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and not self.flags & {"fail", "fail?", "handshake", "noaddr"}

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags and not self.flags & {"fail", "fail?", "handshake", "noaddr"}

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


class LocalCluster:
    """Redis Cluster of `masters` masters with one replica each, every node a child process in its own directory
    under one temp dir. `start()` returns once every node says `cluster_state:ok`, all 16384 slots are served
    and every replica is in sync with its master."""

    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                raise RuntimeError(f"{binary} not found (scripts/ensure-redis.sh installs it)")
        self.replicas_per_master = replicas_per_master
        self.size = masters * (1 + replicas_per_master)
        self.dir = tempfile.mkdtemp(prefix="billing-cluster-")
        self.nodes: list[LocalNode] = []
        taken: set[int] = set()
        for _ in range(self.size):
            port = cluster_port(taken)
            taken |= {port, port + BUS_PORT_OFFSET}
            directory = Path(self.dir) / str(port)
            directory.mkdir()
            self.nodes.append(LocalNode(RedisServer(port=port, directory=str(directory), extra_args=NODE_ARGS)))
        # What a killed master owned and who replicated it, for wait_failover.
        self._killed: dict[int, tuple[list[tuple[int, int]], set[str]]] = {}

    def start(self, timeout: float = 30.0) -> LocalCluster:
        try:
            for node in self.nodes:
                node.server.start()
                with node.client() as client:
                    node.node_id = client.execute_command("CLUSTER", "MYID")
            created = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(node.name for node in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas_per_master),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        """A redis:// URL of a live node (a master when one answers): enough for a cluster client to find all."""
        for node in self.masters() + self.live_nodes():
            return node.url
        raise RuntimeError("no node of the cluster is alive")

    def live_nodes(self) -> list[LocalNode]:
        return [node for node in self.nodes if node.alive]

    def node(self, node_id: str) -> LocalNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def masters(self) -> list[LocalNode]:
        """The nodes that serve slots as masters now, in a live node's view (it changes on failover)."""
        return [self.node(entry.node_id) for entry in self._view().values() if entry.is_master and entry.slots]

    def replicas(self) -> list[LocalNode]:
        """The nodes that replicate a master now, in a live node's view."""
        return [self.node(entry.node_id) for entry in self._view().values() if entry.is_replica]

    def replicas_of(self, master: LocalNode) -> list[LocalNode]:
        view = self._view()
        return [self.node(e.node_id) for e in view.values() if e.is_replica and e.master_id == master.node_id]

    def master_of_slot(self, slot: int) -> LocalNode:
        for entry in self._view().values():
            if entry.is_master and entry.owns(slot):
                return self.node(entry.node_id)
        raise LookupError(f"slot {slot} has no live master")

    def kill(self, node: LocalNode) -> None:
        """SIGKILL the node's process (its replica, if it was a master, takes over: see wait_failover)."""
        entry = self._view()[node.node_id]
        replicas = {node.node_id for node in self.replicas_of(node)}
        self._killed[node.port] = (entry.slots, replicas)
        node.server.kill()

    def wait_failover(self, old_master: LocalNode, timeout: float = 15.0) -> LocalNode:
        """Wait until a former replica of `old_master` (killed with `kill`) is master of every slot it served
        and the cluster is ok again; returns the new master."""
        slots, replicas = self._killed[old_master.port]
        deadline = time.monotonic() + timeout
        while True:
            view = self._view()
            owners = {e.node_id for e in view.values() for first, _ in slots if e.is_master and e.owns(first)}
            if len(owners) == 1 and owners <= replicas:
                new_master = self.node(owners.pop())
                if all(
                    view[new_master.node_id].owns(first) and view[new_master.node_id].owns(last)
                    for first, last in slots
                ):
                    self.wait_ok(max(0.1, deadline - time.monotonic()), expect_failed=True)
                    return new_master
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica of {old_master} took over within {timeout} s: {self.problem(True)}")
            time.sleep(0.05)

    def restart(self, node: LocalNode, timeout: float = 30.0) -> None:
        """Start a killed node again on its port and directory: it rejoins with its node id (a former master as a
        replica of whoever took over its slots). Returns once the cluster is ok with every node in it."""
        node.server.start()
        self._killed.pop(node.port, None)
        self.wait_ok(timeout)

    def pause(self, node: LocalNode) -> None:
        """SIGSTOP: the node keeps its connections but answers nothing (resume() continues it)."""
        assert node.server.proc is not None
        os.kill(node.server.proc.pid, signal.SIGSTOP)

    def resume(self, node: LocalNode) -> None:
        assert node.server.proc is not None
        os.kill(node.server.proc.pid, signal.SIGCONT)

    def wait_ok(self, timeout: float = 30.0, expect_failed: bool = False) -> None:
        """Wait until the cluster is whole: see problem()."""
        deadline = time.monotonic() + timeout
        while (problem := self.problem(expect_failed)) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok after {timeout} s: {problem}")
            time.sleep(0.05)

    def problem(self, expect_failed: bool = False) -> str | None:
        """What keeps the cluster from being whole, or None when it is: every live node says cluster_state:ok
        with all slots served, sees every other live node as a master with slots or a replica, online (a replica
        with data: in CLUSTER SLOTS), and sees the same masters serving the same slots; every live replica is linked
        to its master. Unless `expect_failed`, every
        node must be alive and seen by every other as such."""
        if not expect_failed and len(self.live_nodes()) != self.size:
            return f"{self.size - len(self.live_nodes())} node(s) not running"
        masters: set[frozenset[tuple[str, tuple[tuple[int, int], ...]]]] = set()
        for node in self.live_nodes():
            try:
                with node.client() as client:
                    info = client.cluster("INFO")
                    replication = client.info("replication")
                    view = _parse_nodes(client.cluster("NODES"))
                    health = _health(client.execute_command("CLUSTER", "SHARDS"))
            except redis.RedisError as error:
                return f"{node}: {error}"
            if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
                return f"{node}: cluster_state {info['cluster_state']}, slots ok {info['cluster_slots_ok']}"
            if not expect_failed and (
                len(view) != self.size or any(e.flags & {"fail", "fail?"} for e in view.values())
            ):
                return f"{node} sees {len(view)} nodes: {[(e.node_id[:8], sorted(e.flags)) for e in view.values()]}"
            live = [e for e in view.values() if not e.flags & {"fail", "fail?"}]
            if any(not (e.is_replica or (e.is_master and e.slots)) for e in live):
                return f"{node} sees nodes neither a master with slots nor a replica: {[sorted(e.flags) for e in live]}"
            alive = {other.node_id for other in self.live_nodes()}
            if unwell := {
                node_id[:8]: state for node_id, state in health.items() if node_id in alive and state != "online"
            }:
                return f"{node} sees {unwell}"
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return f"{node}: replica link {replication.get('master_link_status')}"
            masters.add(frozenset((e.node_id, tuple(e.slots)) for e in view.values() if e.is_master and e.slots))
        if len(masters) != 1:
            return f"the nodes disagree on which master serves which slots: {masters}"
        return None

    def stop(self) -> None:
        """Kill every node and remove the cluster's directory."""
        for node in self.nodes:
            node.server.kill()  # a paused (SIGSTOP) process dies on SIGKILL too
        shutil.rmtree(self.dir, ignore_errors=True)

    def _view(self) -> dict[str, _Entry]:
        """CLUSTER NODES as the first live node that answers sees it."""
        error: Exception | None = None
        for node in self.live_nodes():
            try:
                with node.client() as client:
                    return _parse_nodes(client.cluster("NODES"))
            except redis.RedisError as exc:
                error = exc
        raise RuntimeError(f"no node of the cluster answers: {error}")


def _parse_nodes(nodes: Any) -> dict[str, _Entry]:
    """redis-py's parsed CLUSTER NODES (address -> fields) by node id."""
    entries = {}
    for fields in nodes.values():
        slots = [(int(r[0]), int(r[-1])) for r in fields["slots"]]
        entry = _Entry(fields["node_id"], set(fields["flags"].split(",")), fields["master_id"], slots)
        entries[entry.node_id] = entry
    return entries


def _health(shards: Any) -> dict[str, str]:
    """CLUSTER SHARDS (RESP2: flat key, value lists) as node id -> health (online, loading, failed)."""
    health = {}
    for shard in shards:
        for node in dict(zip(shard[::2], shard[1::2], strict=True))["nodes"]:
            fields = dict(zip(node[::2], node[1::2], strict=True))
            health[fields["id"]] = fields["health"]
    return health


PARTITIONS = 16  # the ledger partitions of the tests' apps on the cluster


def cluster_settings(cluster: LocalCluster, prefix: str, tmp_path: Path, **changes: Any) -> Settings:
    """The settings of an app of the test's own process on the cluster: 16 partitions, the test tokens."""
    settings = Settings(
        redis_url=cluster.url,
        redis_mode="cluster",
        partitions=PARTITIONS,
        tokens=TEST_TOKENS,
        secret="test-secret",
        redis_prefix=prefix,
        reports_dir=tmp_path / "reports",
        _env_file=None,
    )
    return settings.model_copy(update=changes)
