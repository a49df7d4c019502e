"""Throwaway Redis Sentinel groups and Redis Clusters, on free loopback ports.

``SentinelGroup``: a master, a replica of it and one ``redis-sentinel``
watching them under the service name ``mymaster`` (quorum 1, 1 s
down-after, so a forced failover finishes in about a second).

    with SentinelGroup(tmp_path) as group:
        group.url()            # redis+sentinel://127.0.0.1:<port>/mymaster/0
        group.failover()       # SENTINEL FAILOVER, waits until the replica is master

``RedisClusterGroup``: three masters (no replicas) joined with
``redis-cli --cluster create``; every slot covered before it returns.

Both stop every process they started, whatever happened.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.helpers.net import free_port, wait_for_port
from tests.helpers.redis_server import RedisServer

__all__ = ["RedisClusterGroup", "SentinelGroup", "cluster_tools_available", "sentinel_available"]

SERVICE = "mymaster"


def sentinel_available() -> bool:
    """Are ``redis-server`` and ``redis-sentinel`` on PATH?"""
    return bool(shutil.which("redis-server") and shutil.which("redis-sentinel"))


def cluster_tools_available() -> bool:
    """Are ``redis-server`` and ``redis-cli`` on PATH?"""
    return bool(shutil.which("redis-server") and shutil.which("redis-cli"))


def redis_cli(port: int, *args: str, password: str | None = None, timeout: float = 10.0) -> str:
    """Run ``redis-cli -p port args...`` on 127.0.0.1 and return its output."""
    auth = ["-a", password, "--no-auth-warning"] if password else []
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *auth, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


def wait_until(check: object, what: str, timeout: float = 20.0) -> None:
    """Poll ``check()`` every 0.1 s until it is true; ``TimeoutError`` naming ``what``."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.1)


class SentinelGroup:
    """Master + replica + one Sentinel; see the module docstring."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.master = RedisServer(workdir)
        self.replica = RedisServer(workdir)
        self.replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel_port = free_port()
        self._sentinel: subprocess.Popen[bytes] | None = None
        self._conf = workdir / f"sentinel-{self.sentinel_port}.conf"
        self.log = workdir / f"sentinel-{self.sentinel_port}.log"

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/{db}"

    def master_port(self) -> int:
        """The master's port as the Sentinel reports it now."""
        out = redis_cli(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(out.split()[1])

    def _replica_linked(self, server: RedisServer) -> bool:
        info = redis_cli(server.port, "INFO", "replication")
        return "master_link_status:up" in info

    def start(self) -> None:
        if not sentinel_available():
            raise RuntimeError(
                "redis-sentinel is not installed: run scripts/ensure-services.sh tools "
                "(apt-get install redis-sentinel)"
            )
        self.master.start()
        self.replica.start()
        # Sentinel rewrites its config file: it must be a writable file of its own.
        self._conf.write_text(
            "\n".join(
                [
                    f"port {self.sentinel_port}",
                    "bind 127.0.0.1",
                    f"dir {self.workdir}",
                    f"logfile {self.log}",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1",
                    f"sentinel down-after-milliseconds {SERVICE} 1000",
                    f"sentinel failover-timeout {SERVICE} 5000",
                    "",
                ]
            )
        )
        self._sentinel = subprocess.Popen(
            ["redis-sentinel", str(self._conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.sentinel_port)
        wait_until(lambda: self._replica_linked(self.replica), "replica sync")
        wait_until(
            lambda: (
                str(self.replica.port)
                in redis_cli(self.sentinel_port, "SENTINEL", "REPLICAS", SERVICE)
            ),
            "Sentinel discovering the replica",
        )

    def failover(self, timeout: float = 20.0) -> int:
        """Force a failover; wait until Sentinel names the replica and it is master.

        Returns the new master's port.
        """
        old = self.master_port()
        new = self.replica.port if old == self.master.port else self.master.port
        redis_cli(self.sentinel_port, "SENTINEL", "FAILOVER", SERVICE)
        wait_until(lambda: self.master_port() == new, "Sentinel switching master", timeout)
        wait_until(lambda: redis_cli(new, "ROLE").split()[0] == "master", "promotion", timeout)
        return new

    def stop(self) -> None:
        proc, self._sentinel = self._sentinel, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.replica.stop()
        self.master.stop()

    def __enter__(self) -> SentinelGroup:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisClusterGroup:
    """Three cluster-enabled masters joined into one cluster covering every slot.

    ``password`` sets ``requirepass`` on every node.
    """

    def __init__(self, workdir: Path, masters: int = 3, *, password: str | None = None) -> None:
        self.password = password
        self.servers: list[RedisServer] = []
        for _ in range(masters):
            server = RedisServer(workdir, password=password)
            # The bus port defaults to port + 10000, which may be taken or
            # beyond 65535 for an ephemeral port: name one explicitly.
            server.extra_args = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{server.port}.conf",
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                "2000",
            )
            self.servers.append(server)

    def url(self, password: str | None = None) -> str:
        """A ``redis+cluster://`` URL naming two of the nodes (the rest are discovered)."""
        secret = self.password if password is None else password
        auth = f":{secret}@" if secret else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:2])
        return f"redis+cluster://{auth}{hosts}"

    def start(self) -> None:
        if not cluster_tools_available():
            raise RuntimeError(
                "redis-server and redis-cli are needed: run scripts/ensure-services.sh tools"
            )
        for server in self.servers:
            server.start()
        nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        create = ["--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(
            ["redis-cli", *auth, *create],
            capture_output=True,
            timeout=60,
            check=True,
        )
        for server in self.servers:
            wait_until(
                lambda port=server.port: (
                    "cluster_state:ok" in redis_cli(port, "CLUSTER", "INFO", password=self.password)
                ),
                f"cluster node {server.port} reporting ok",
            )
        wait_until(self._nodes_agree, "every node agreeing on the slots")

    def _nodes_agree(self) -> bool:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        done = subprocess.run(
            ["redis-cli", *auth, "--cluster", "check", f"127.0.0.1:{self.servers[0].port}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0 and "All nodes agree" in done.stdout

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> RedisClusterGroup:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
