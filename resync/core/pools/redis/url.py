"""Which Redis topology a ``REDIS_URL`` names: one server, a Sentinel group or a Cluster.

- ``redis://``, ``rediss://``, ``unix://``: one server; redis-py parses the URL.
- ``redis+sentinel://[[user]:password@]host1[:26379][,host2[:26379]...]/service[/db]``:
  the Sentinels to ask, the name of the monitored master and the database
  number (default 0). The password (and ACL user) authenticate at the Redis
  master, not at the Sentinels (those often have no password; when they do,
  pass ``sentinel_password``, setting ``REDIS_SENTINEL_PASSWORD``).
- ``redis+cluster://[[user]:password@]host1[:6379][,host2[:6379]...][/0]``: any
  nodes of a Redis Cluster to start from (the rest are discovered); a cluster
  has only database 0.

Host lists are comma separated; IPv6 addresses go in brackets
(``[::1]:26379``). A query string is refused rather than silently ignored.
Nothing here imports redis-py, so settings can validate a URL cheaply; this is
the one definition of the schemes (the pools and settings import them).
:func:`~resync.core.pools.redis.factory.create_redis_pool` builds the pool
class the URL calls for.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from resync.core.redact import mask_url

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "STANDALONE_SCHEMES",
    "TOPOLOGY_SCHEMES",
    "RedisTarget",
    "parse_redis_target",
]

STANDALONE_SCHEMES = frozenset({"redis", "rediss", "unix"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel"})
CLUSTER_SCHEMES = frozenset({"redis+cluster"})
#: Schemes that name a Sentinel group or a Cluster rather than one server.
TOPOLOGY_SCHEMES = SENTINEL_SCHEMES | CLUSTER_SCHEMES

_DEFAULT_PORT = {"sentinel": 26379, "cluster": 6379}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL; ``kind`` is ``standalone``, ``sentinel`` or ``cluster``.

    For ``standalone`` only ``kind`` and ``url`` are meaningful (redis-py
    parses the rest). ``repr`` never shows the password.
    """

    kind: str
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"RedisTarget({self.kind}, {mask_url(self.url)!r})"

    @property
    def display(self) -> str:
        """A short description without secrets, for stats and logs."""
        if self.kind == "standalone":
            return mask_url(self.url)
        hosts = ",".join(_format_host(h, p) for h, p in self.hosts)
        if self.kind == "sentinel":
            return f"sentinel {hosts} service {self.service_name!r} db {self.db}"
        return f"cluster {hosts}"


def _format_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_redis_target(url: str) -> RedisTarget:
    """Parse ``url``; raises ``ValueError`` saying what is wrong (password masked)."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"{mask_url(text)!r} is not a URL such as redis://host:6379/0")
    if scheme in STANDALONE_SCHEMES:
        return RedisTarget("standalone", text)
    if scheme in SENTINEL_SCHEMES:
        kind = "sentinel"
    elif scheme in CLUSTER_SCHEMES:
        kind = "cluster"
    else:
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
        )
    netloc, _, path_query = rest.partition("/")
    if "?" in netloc or "#" in netloc or "?" in path_query or "#" in path_query:
        raise ValueError(f"{scheme}:// URLs take no query string or fragment")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(_parse_host(item, _DEFAULT_PORT[kind]) for item in hostlist.split(","))
    parts = [unquote(p) for p in path_query.split("/")] if path_query else []
    while parts and parts[-1] == "":
        parts.pop()
    if kind == "sentinel":
        if not parts or not parts[0]:
            raise ValueError(
                "redis+sentinel:// needs the master's service name: "
                "redis+sentinel://host:26379/mymaster/0"
            )
        if len(parts) > 2:
            raise ValueError("redis+sentinel:// path is /service_name[/db]")
        db = _parse_db(parts[1]) if len(parts) == 2 else 0
        return RedisTarget(kind, text, hosts, parts[0], db, username, password)
    if len(parts) > 1 or (parts and _parse_db(parts[0]) != 0):
        raise ValueError("a Redis Cluster has only database 0: redis+cluster://host:6379")
    return RedisTarget(kind, text, hosts, "", 0, username, password)


def _parse_host(item: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):
        host, bracket, tail = item[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"bad IPv6 host {item!r}: write [address]:port")
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError("every host of the list needs a name, e.g. host1:26379,host2:26379")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"port of {host!r} must be a number, got {port_text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port of {host!r} must be between 1 and 65535, got {port}")
    return host, port


def _parse_db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the database must be a number, got {text!r}")
    return int(text)
