"""Round trips per lease, counted on the wire: a PostgreSQL proxy that counts messages.

Rerun (about 20 s; PostgreSQL at ``RESYNC_TEST_PG_URL``, default 127.0.0.1:5432)::

    .venv/bin/python -m benchmarks.pg_roundtrips            # -> artifacts/roundtrips.{md,json}
    .venv/bin/python -m benchmarks.pg_roundtrips --leases 500 --out /tmp/rt

``make bench`` (:mod:`benchmarks.run_all`) runs the same measurement as its
``roundtrips`` part and puts the table in ``artifacts/benchmarks.md``.

:class:`CountingProxy` listens on a free 127.0.0.1 port and forwards every
connection to the server. It parses the protocol's framing in both
directions: after the untyped startup packet, every message is one type byte
and an int32 length (which counts itself). The server ends each completed
exchange with one ``ReadyForQuery`` (``Z``); the first ``Z`` of a connection
ends its start-up and authentication and is counted apart (``startups``).
Client ``SSLRequest`` / ``GSSENCRequest`` packets are answered ``N`` by the
proxy itself, so every connection through it is plaintext and parseable.

The measurement opens every pool of :class:`benchmarks.workloads_pg.Peers`
(the benchmark's own pools and workload functions, unchanged) through one
proxy, warms each implementation up (bursts of concurrent leases that touch
every pooled connection and fill the statement caches, then sequential
ones), and then counts ``leases`` sequential hot leases: round trips per
lease is the ``Z`` count of that window divided by ``leases``, nothing
subtracted. ``Q`` (simple Query) and ``S`` (Sync, one per extended-protocol
exchange) are the client's side of the same exchanges; ``turns`` counts the
times the client spoke again after the server had (a pipelined client makes
fewer turns than ``Z``). ``idle`` is the same window with no lease at all:
what the pools send by themselves (maintenance), shown, not subtracted.
Leases are hot (used within the last 0.5 s), as in the throughput rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.common import ARTIFACTS, environment
from benchmarks.harness import emit

__all__ = [
    "CountingProxy",
    "Counts",
    "WireParser",
    "measure_all",
    "proxied_url",
    "render",
    "tree_state",
    "write",
]

_CHUNK = 65536
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
#: (workload of benchmarks.workloads_pg.PLAN, the Peers method that builds its ops).
WORKLOADS = (
    ("pg SELECT 1", "select_one"),
    ("pg read-modify-write", "read_modify_write"),
    ("lease: pg", "lease_only"),
)
LEASES = 200
WARMUP_BURSTS = 3
WARMUP_SEQUENTIAL = 50


@dataclass
class Counts:
    """Messages seen by a proxy, totalled over its connections."""

    connections: int = 0
    #: ReadyForQuery messages that ended a connection's start-up (not exchanges).
    startups: int = 0
    #: Times a client sent again after the server had sent (after start-up).
    turns: int = 0
    #: Client -> server messages after start-up, by type byte (``Q``, ``P``, ``S``...).
    to_server: Counter[str] = field(default_factory=Counter)
    #: Server -> client messages after start-up, by type byte (``Z``, ``C``, ``T``...).
    to_client: Counter[str] = field(default_factory=Counter)

    def copy(self) -> Counts:
        """A snapshot that later traffic does not change."""
        return Counts(
            self.connections,
            self.startups,
            self.turns,
            Counter(self.to_server),
            Counter(self.to_client),
        )

    def since(self, before: Counts) -> Counts:
        """What was counted after ``before`` (a :meth:`copy`) was taken."""
        to_server = Counter(self.to_server)
        to_server.subtract(before.to_server)
        to_client = Counter(self.to_client)
        to_client.subtract(before.to_client)
        return Counts(
            self.connections - before.connections,
            self.startups - before.startups,
            self.turns - before.turns,
            +to_server,
            +to_client,
        )

    @property
    def ready(self) -> int:
        """ReadyForQuery messages after start-up: completed exchanges."""
        return self.to_client["Z"]


class WireParser:
    """The framing of one direction of one connection: whole messages out of a byte stream.

    ``typed=False`` for the client's side: its first packets (startup, SSL or
    GSSAPI negotiation, cancel) have no type byte.
    """

    def __init__(self, *, typed: bool) -> None:
        self.typed = typed
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Every message completed by ``data``: ``(type, body)``; ``""`` for an untyped packet.

        An untyped packet's body starts with its int32 request code. The
        parser turns typed after the first packet that is neither an SSL nor
        a GSSAPI request (the startup packet).
        """
        self._buffer += data
        found: list[tuple[str, bytes]] = []
        buf = self._buffer
        while True:
            head = 5 if self.typed else 4
            if len(buf) < head:
                break
            length = struct.unpack_from("!i", buf, head - 4)[0]
            end = head - 4 + length
            if length < 4 or len(buf) < end:
                break
            if self.typed:
                found.append((chr(buf[0]), bytes(buf[5:end])))
            else:
                body = bytes(buf[4:end])
                found.append(("", body))
                if _request_code(body) not in (_SSL_REQUEST, _GSSENC_REQUEST):
                    self.typed = True
            del buf[:end]
        return found

    def pending(self) -> bytes:
        """The bytes of a message not yet complete."""
        return bytes(self._buffer)

    def in_typed_phase(self) -> bool:
        """Whether the untyped packets are over (a call: :meth:`feed` changes it)."""
        return self.typed


def _request_code(body: bytes) -> int:
    """The request code that starts an untyped packet's body."""
    return int(struct.unpack_from("!i", body)[0]) if len(body) >= 4 else 0


def _frame(kind: str, body: bytes) -> bytes:
    """A message as it goes on the wire (``kind`` empty: an untyped packet)."""
    return kind.encode() + struct.pack("!i", len(body) + 4) + body


class _Link:
    """One proxied connection: its two parsers and where it is in its life."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.client = WireParser(typed=False)
        self.server = WireParser(typed=True)
        self.ready = False  # start-up over (its first ReadyForQuery seen)
        self.server_spoke = False

    def from_client(self, data: bytes) -> tuple[bytes, bytes]:
        """Count ``data`` from the client: ``(bytes to forward, reply for the client)``."""
        if self.client.typed:
            self._count_client(self.client.feed(data))
            return data, b""
        forward, reply = bytearray(), bytearray()
        messages = self.client.feed(data)
        for kind, body in messages:
            if not kind and _request_code(body) in (_SSL_REQUEST, _GSSENC_REQUEST):
                reply += b"N"  # plaintext: the proxy must read what flows
                continue
            forward += _frame(kind, body)
        if self.client.in_typed_phase():
            # The start of a message after the startup packet: forwarded now, and
            # still buffered in the parser, which counts it once it is complete.
            forward += self.client.pending()
        self._count_client(messages)
        return bytes(forward), bytes(reply)

    def _count_client(self, messages: list[tuple[str, bytes]]) -> None:
        if not self.ready:
            return
        if messages and self.server_spoke:
            self.counts.turns += 1
            self.server_spoke = False
        for kind, _ in messages:
            self.counts.to_server[kind] += 1

    def from_server(self, data: bytes) -> None:
        """Count ``data`` from the server."""
        for kind, _ in self.server.feed(data):
            if self.ready:
                self.counts.to_client[kind] += 1
            elif kind == "Z":
                self.ready = True
                self.counts.startups += 1
        if self.ready:
            self.server_spoke = True


class CountingProxy:
    """A TCP proxy to PostgreSQL that counts protocol messages; on the running loop.

    ``async with CountingProxy(("127.0.0.1", 5432)) as proxy:`` then connect to
    ``proxy.port``; ``proxy.counts`` is live, ``counts.copy()`` / ``since()``
    measure a window.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.counts = Counts()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
            self._writers.add(server_w)
            self.counts.connections += 1
            link = _Link(self.counts)
            upstream = asyncio.ensure_future(self._upstream(link, client_r, client_w, server_w))
            try:
                while data := await server_r.read(_CHUNK):
                    link.from_server(data)
                    client_w.write(data)
                    await client_w.drain()
            finally:
                upstream.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await upstream
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_w, server_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()
            self._tasks.discard(task)

    async def _upstream(
        self,
        link: _Link,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_w: asyncio.StreamWriter,
    ) -> None:
        while data := await client_r.read(_CHUNK):
            forward, reply = link.from_client(data)
            if reply:
                client_w.write(reply)
            if forward:
                server_w.write(forward)
                await server_w.drain()
        server_w.transport.abort()


def proxied_url(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def _record(workload: str, impl: str, leases: int, seen: Counts) -> dict[str, Any]:
    per = 1 / leases
    return {
        "workload": workload,
        "impl": impl,
        "leases": leases,
        "round_trips_per_lease": round(seen.ready * per, 3),
        "query_per_lease": round(seen.to_server["Q"] * per, 3),
        "sync_per_lease": round(seen.to_server["S"] * per, 3),
        "parse_per_lease": round(seen.to_server["P"] * per, 3),
        "turns_per_lease": round(seen.turns * per, 3),
        "new_connections": seen.connections,
        "to_server": dict(sorted(seen.to_server.items())),
        "to_client": dict(sorted(seen.to_client.items())),
    }


async def _warm(op: Any, pool_size: int) -> None:
    for _ in range(WARMUP_BURSTS):
        await asyncio.gather(*(op() for _ in range(pool_size * 2)))
    for _ in range(WARMUP_SEQUENTIAL):
        await op()


async def measure_all(leases: int = LEASES) -> list[dict[str, Any]]:
    """Round trips per lease for every implementation and workload of ``workloads_pg``."""
    from benchmarks import workloads_pg

    records: list[dict[str, Any]] = []
    async with CountingProxy(_target(workloads_pg.PG_URL)) as proxy:
        peers = workloads_pg.Peers(proxied_url(workloads_pg.PG_URL, proxy.port))
        await peers.open()
        try:
            for workload, method in WORKLOADS:
                ops = getattr(peers, method)()
                for impl, op in ops.items():
                    await _warm(op, workloads_pg.POOL_SIZE)
                    before = proxy.counts.copy()
                    began = time.perf_counter()
                    for _ in range(leases):
                        await op()
                    seconds = time.perf_counter() - began
                    records.append(_record(workload, impl, leases, proxy.counts.since(before)))
                    # The same window with nothing leased: what the pools send on their own.
                    before = proxy.counts.copy()
                    await asyncio.sleep(seconds)
                    records[-1]["idle_round_trips"] = proxy.counts.since(before).ready
                    emit("tick", workload=workload, impl=impl, part="roundtrips")
        finally:
            await peers.close()
    return records


ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return ""
    return done.stdout if done.returncode == 0 else ""


def tree_state() -> dict[str, Any]:
    """Now: the commit the working tree is at, and the files of ``resync/`` changed since.

    Take it when a measurement starts: that is the code the measurement imports.
    """
    dirty = [line[3:] for line in _git("status", "--porcelain", "--", "resync").splitlines()]
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "resync": "working tree",
        "commit": _git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_in_resync": dirty,
    }


def _measure_at(rev: str, leases: int) -> dict[str, Any]:
    """One run against ``resync/`` as committed at ``rev`` (this tree's benchmarks).

    ``git archive`` of ``resync/`` into a temporary directory, these
    benchmarks copied beside it, and this module run there in a child
    process: the child imports that ``resync`` (its working directory comes
    first on ``sys.path``), not the working tree's.
    """
    started = {"started": datetime.now(UTC).isoformat(timespec="seconds")}
    commit = _git("rev-parse", "--short", rev).strip()
    if not commit:
        raise SystemExit(f"unknown revision {rev!r}")
    with tempfile.TemporaryDirectory(prefix="resync-roundtrips-") as tmp:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "resync"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "benchmarks", Path(tmp) / "benchmarks", ignore=skip)
        out = Path(tmp) / "run.json"
        command = [sys.executable, "-m", "benchmarks.pg_roundtrips", "--leases", str(leases)]
        command += ["--child-json", str(out)]
        subprocess.run(command, cwd=tmp, check=True)
        records = json.loads(out.read_text())
    return {"resync": f"committed at {commit}", "commit": commit, "records": records, **started}


def _fmt(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.2f}"


def table(records: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of ``records`` (one line per workload and implementation)."""
    lines = [
        "| workload | impl | round trips (Z) / lease | Query / lease | Sync / lease "
        "| turns / lease | idle Z | new conns |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['workload']} | {r['impl']} | **{_fmt(r['round_trips_per_lease'])}** | "
            f"{_fmt(r['query_per_lease'])} | {_fmt(r['sync_per_lease'])} | "
            f"{_fmt(r['turns_per_lease'])} | {r.get('idle_round_trips', 0)} | "
            f"{r['new_connections']} |"
        )
    return lines


def _state(run: dict[str, Any]) -> str:
    if run["resync"] != "working tree":
        return f"`resync/` as committed at `{run['commit']}`"
    dirty = run.get("uncommitted_in_resync") or []
    text = f"the working tree at commit `{run['commit']}`"
    if dirty:
        text += " plus uncommitted changes to " + ", ".join(f"`{p}`" for p in dirty)
    return text


def render(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``artifacts/roundtrips.md``: how it was measured, then one table per run."""
    leases = runs[0]["records"][0]["leases"] if runs and runs[0]["records"] else LEASES
    lines = [
        "# Round trips per lease, counted on the wire",
        "",
        f"Measured {meta.get('when')}, Python {meta.get('python')}, {meta.get('platform')}; "
        f"{leases} sequential hot leases per row after a warm-up. Rerun with "
        "`.venv/bin/python -m benchmarks.pg_roundtrips` (the working tree; add "
        "`--at HEAD` or `--at <commit>` to also measure `resync/` as committed there); it "
        "writes this file and `roundtrips.json`. `make bench` runs it as its `roundtrips` "
        "part.",
        "",
        "A counting proxy (`benchmarks/pg_roundtrips.py`) sits between every pool of "
        "`benchmarks/workloads_pg.py` and PostgreSQL and parses the wire protocol's "
        "framing. *Round trips* are the server's ReadyForQuery (`Z`) messages after "
        "start-up, one per completed exchange, divided by the number of leases -- "
        "nothing subtracted. `Query` (simple protocol) and `Sync` (extended protocol) "
        "are the client's side of those exchanges; `turns` counts the times the client "
        "spoke again after the server had; `idle Z` is the same window with no lease "
        "taken (what the pools send on their own); `new conns` the connections opened "
        "during the window. The implementations are used exactly as in the throughput "
        "rows (`workloads_pg.py`).",
        "",
    ]
    for run in runs:
        state = _state(run)
        started = f" (measured from {run['started']})" if run.get("started") else ""
        lines += [f"## {state[0].upper()}{state[1:]}{started}", "", *table(run["records"]), ""]
    return "\n".join(lines)


def write(runs: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``roundtrips.json`` and ``roundtrips.md`` into ``out_dir``; the .md path."""
    meta = environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "roundtrips.json").write_text(
        json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n"
    )
    path = out_dir / "roundtrips.md"
    path.write_text(render(runs, meta))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--leases", type=int, default=LEASES)
    parser.add_argument("--out", type=Path, default=ARTIFACTS)
    parser.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="REV",
        help="also measure resync/ as committed at REV (repeatable)",
    )
    parser.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_json is not None:  # a run of _measure_at: records only
        args.child_json.write_text(json.dumps(asyncio.run(measure_all(args.leases))))
        return
    runs = [{**tree_state(), "records": asyncio.run(measure_all(args.leases))}]
    runs += [_measure_at(rev, args.leases) for rev in args.at]
    path = write(runs, args.out)
    for run in runs:
        print(f"{_state(run)}:")
        print("\n".join(table(run["records"])))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
