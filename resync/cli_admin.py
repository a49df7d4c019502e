"""``resync drain``, ``resync resize`` and ``resync plan``: operating a fleet.

``drain`` and ``resize`` call a running service's admin endpoints
(:mod:`resync.api.admin`) with the token of ``ADMIN_TOKEN`` -- read like
every setting from the environment or ``.env``, or from ``--token-file``.
There is no ``--token`` option on purpose: a token on the command line ends
up in shell history and in ``ps`` output. The token is never printed.

``plan`` computes the connection budget of a deployment before it exists
(:mod:`resync.core.pools.manager.budget`). Exit codes: 0 done / fits, 1 refused,
unreachable or over budget, 2 bad settings or options.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register_admin_commands"]

console = Console()
errors = Console(stderr=True)

_REFUSALS = {
    401: "the service wants an admin token: set ADMIN_TOKEN (or --token-file)",
    403: "the service refused the admin token: it is not the one the service was started with",
    404: "not found: the service has no admin endpoints (started without ADMIN_TOKEN) "
    "or no such pool",
}


def _base_url(settings: Any, url: str | None) -> str:
    host = "127.0.0.1" if settings.HOST in ("0.0.0.0", "::") else settings.HOST
    return (url or f"http://{host}:{settings.PORT}").rstrip("/")


def _token(settings: Any, token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            errors.print(f"[bold red]error:[/] cannot read --token-file: {exc.strerror}")
            raise typer.Exit(2) from None
    else:
        secret = getattr(settings, "ADMIN_TOKEN", None)
        token = secret.get_secret_value() if secret is not None else ""
    if not token:
        errors.print(
            "[bold red]error:[/] no admin token: set ADMIN_TOKEN (environment or .env) "
            "or pass --token-file",
            highlight=False,
        )
        raise typer.Exit(2)
    return token


def _call_admin(
    base: str, path: str, token: str, timeout: float, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.post(
            f"{base}{path}",
            headers={"Authorization": f"Bearer {token}"},
            json=body,
            timeout=timeout,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        errors.print(
            f"[bold red]error:[/] no resync service answered at {base} "
            f"({type(exc).__name__}); start one with 'resync serve' or pass --url",
            highlight=False,
        )
        raise typer.Exit(1) from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail") or response.json()
        except ValueError:
            detail = response.text[:200]
        reason = _REFUSALS.get(response.status_code, "")
        errors.print(
            f"[bold red]error:[/] POST {path} -> {response.status_code}: {detail}"
            + (f"\n  {reason}" if reason else ""),
            highlight=False,
        )
        raise typer.Exit(1)
    result: dict[str, Any] = response.json()
    return result


_URL = Annotated[
    str | None, typer.Option(help="Base URL of the running service (default: http://HOST:PORT).")
]
_TOKEN_FILE = Annotated[
    Path | None, typer.Option(help="File holding the admin token (default: ADMIN_TOKEN).")
]


def register_admin_commands(app: typer.Typer, load_settings: Callable[[], Any]) -> None:
    """Add ``drain``, ``resize`` and ``plan`` to ``app``."""

    @app.command()
    def drain(
        name: Annotated[str, typer.Argument(help="Pool to drain (database, redis, tws_http).")],
        interval: Annotated[
            float | None,
            typer.Option(min=0, help="Seconds to spread it over (default: 1 s per connection)."),
        ] = None,
        url: _URL = None,
        token_file: _TOKEN_FILE = None,
    ) -> None:
        """Replace every connection of pool NAME in a running service, no lease failing.

        Calls POST /pools/NAME/drain with the admin token and waits until the
        pool is done (its leased connections are replaced as they come back).
        """
        settings = load_settings()
        base = _base_url(settings, url)
        query = "" if interval is None else f"?interval={interval:g}"
        # The service answers when done: allow the interval plus a margin.
        timeout = (interval if interval is not None else 30.0) + 30.0
        result = _call_admin(
            base, f"/pools/{name}/drain{query}", _token(settings, token_file), timeout
        )
        console.print(
            f"pool '{result['pool']}': {result['replaced']} connection(s) replaced "
            f"in {result['seconds']:g}s",
            highlight=False,
        )

    @app.command()
    def resize(
        name: Annotated[str, typer.Argument(help="Pool to resize.")],
        min_size: Annotated[int, typer.Option("--min", min=0, help="New min_size.")],
        max_size: Annotated[int, typer.Option("--max", min=1, help="New max_size.")],
        url: _URL = None,
        token_file: _TOKEN_FILE = None,
    ) -> None:
        """Change min_size and max_size of pool NAME in a running service."""
        settings = load_settings()
        base = _base_url(settings, url)
        body = {"min_size": min_size, "max_size": max_size}
        result = _call_admin(
            base, f"/pools/{name}/resize", _token(settings, token_file), 10.0, body
        )
        console.print(
            f"pool '{result['pool']}': min_size {result['min_size']}, "
            f"max_size {result['max_size']}",
            highlight=False,
        )

    @app.command()
    def plan(
        replicas: Annotated[
            int | None,
            typer.Option(min=1, help="Peak pods: HPA maxReplicas + maxSurge + canary (REPLICAS)."),
        ] = None,
        workers: Annotated[
            int | None, typer.Option(min=1, help="Processes per pod (default: WORKERS).")
        ] = None,
        db_max_connections: Annotated[
            int | None,
            typer.Option(help="PostgreSQL max_connections (default: ask the server)."),
        ] = None,
        db_reserved: Annotated[
            int,
            typer.Option(min=0, help="superuser_reserved_connections with --db-max-connections."),
        ] = 3,
        redis_maxclients: Annotated[
            int | None, typer.Option(help="Redis maxclients (default: ask the server).")
        ] = None,
        db_cores: Annotated[
            int | None,
            typer.Option(min=1, help="CPU cores of the database server (default: this machine's)."),
        ] = None,
        db_spindles: Annotated[
            int, typer.Option(min=0, help="Effective spindle count (0 cached, ~1 SSD).")
        ] = 1,
        offline: Annotated[bool, typer.Option(help="Do not contact the servers.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Total connections per backend for REPLICAS x WORKERS, against the servers' limits.

        A limit given as an option wins; otherwise the configured server is
        asked (when reachable). Exit code 1 when a backend is over its limit.
        """
        from resync.core.pools.manager.budget import PoolSizing, plan_budget, read_server_limits
        from resync.core.pools.manager.specs import DATABASE_POOL, REDIS_POOL

        settings = load_settings()
        replicas = replicas or settings.REPLICAS
        workers = workers or settings.WORKERS
        limits: dict[str, tuple[int | None, str]] = {}
        if not offline:
            read = asyncio.run(read_server_limits(settings, timeout=5.0))
            limits = {name: (limit, "server") for name, limit in read.items()}
        if db_max_connections is not None:
            limits[DATABASE_POOL] = (db_max_connections - db_reserved, "flag")
        if redis_maxclients is not None:
            limits[REDIS_POOL] = (redis_maxclients, "flag")
        lines = plan_budget(settings, replicas, workers, limits)
        db_line = next(line for line in lines if line.pool == DATABASE_POOL)
        sizing = PoolSizing(db_cores or os.cpu_count() or 1, db_spindles, replicas * workers)
        over = [line.pool for line in lines if line.over]
        if as_json:
            data = {
                "replicas": replicas,
                "workers": workers,
                "processes": replicas * workers,
                "pools": [
                    {
                        "pool": line.pool,
                        "backend": line.backend,
                        "max_size": line.per_process,
                        "total": line.total,
                        "server_limit": line.server_limit,
                        "limit_source": line.source or None,
                        "headroom": line.headroom,
                        "fits": not line.over if line.server_limit is not None else None,
                        "max_replicas": line.max_replicas,
                    }
                    for line in lines
                ],
                "sizing": {
                    "core_count": sizing.core_count,
                    "spindles": sizing.spindles,
                    "connections": sizing.connections,
                    "db_pool_max_size": sizing.per_process,
                },
                "ok": not over,
            }
            console.print_json(json.dumps(data))
            raise typer.Exit(1 if over else 0)
        console.print(
            f"resync plan: {replicas} replica(s) x {workers} worker(s) = "
            f"{replicas * workers} process(es)",
            highlight=False,
        )
        table = Table()
        for column in ("pool", "max_size", "total", "limit", "headroom", "fits", "max replicas"):
            table.add_column(column)
        for line in lines:
            known = line.server_limit is not None
            table.add_row(
                line.pool,
                str(line.per_process),
                f"{line.processes} x {line.per_process} = {line.total}",
                f"{line.server_limit} ({line.source})" if known else "-",
                str(line.headroom) if known else "-",
                ("[red]NO[/]" if line.over else "[green]yes[/]") if known else "-",
                str(line.max_replicas) if known else "-",
            )
        console.print(table)
        console.print("sizing (HikariCP, 'About Pool Sizing'):", highlight=False)
        for text in sizing.explain(db_line.per_process):
            console.print(f"  {text}", highlight=False)
        if db_cores is None:
            console.print(
                "  (core_count is this machine's; pass --db-cores for the database server's)",
                highlight=False,
            )
        if over:
            errors.print(f"[bold red]over budget:[/] {', '.join(over)}", highlight=False)
        raise typer.Exit(1 if over else 0)
