"""The ``resync`` command: serve the app, check and inspect the configured pools.

Every command reads the same settings as the service (environment and
``.env``); a bad value stops it with exit code 2 and a message naming the
variable. Secrets are masked in everything printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from resync import __version__
from resync.cli_admin import register_admin_commands
from resync.core.exceptions import ResyncError, SettingsError

app = typer.Typer(
    name="resync",
    help="Connection pools for PostgreSQL/SQLite, Redis and HTTP upstreams, as a service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)


def _settings() -> Any:
    try:
        from resync.settings import Settings

        return Settings()
    except SettingsError as exc:
        errors.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


# What _configure_logging chose: with "json", the serve notices are log records too.
_log_format = "text"


def _configure_logging(level: str, fmt: str) -> None:
    from resync.logs import configure_logging

    global _log_format
    _log_format = fmt
    configure_logging(level, fmt)


def _notice(message: str, event: str) -> None:
    """A line of ``resync serve`` on stderr: rich text, or a JSON log record."""
    if _log_format == "json":
        logging.getLogger("resync.cli").info(message, extra={"event": event})
    else:
        errors.print(message, highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"resync {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """resync: one layer for every outbound connection of a FastAPI service."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: HOST).")] = None,
    port: Annotated[
        int | None,
        # The same range as the PORT setting: refused before anything binds.
        typer.Option(min=0, max=65535, help="Port to bind, 0-65535 (default: PORT)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes, each with its own pools (default: WORKERS)."),
    ] = None,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    loop: Annotated[
        str,
        typer.Option(help="Event loop: auto (uvloop when installed), uvloop or asyncio."),
    ] = "auto",
) -> None:
    """Run the service with uvicorn (uvloop when installed, unless --loop says otherwise).

    SIGTERM stops accepting connections, lets requests in flight finish, then
    drains and closes the pools (POOL_DRAIN_TIMEOUT seconds at most).
    """
    import uvicorn

    from resync.logs import uvicorn_log_config

    settings = _settings()
    _configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    loop = _event_loop(loop)
    bind_host = host or settings.HOST
    workers = workers or settings.WORKERS
    bind_port = settings.PORT if port is None else port
    _notice(
        f"resync {__version__}: serving on http://{bind_host}:{bind_port} "
        f"(workers={workers}, loop={loop}, database={_masked(settings.DATABASE_URL)})",
        "serve.start",
    )
    # uvicorn drains on SIGTERM, then re-raises the signal for the previous
    # handler. A drained shutdown is a success (Kubernetes sends SIGTERM on
    # every rollout), so that handler just lets uvicorn.run return and exit 0.
    signal.signal(signal.SIGTERM, _note_sigterm)
    uvicorn.run(
        "resync.api.app:serve_app",
        factory=True,
        host=bind_host,
        port=bind_port,
        workers=workers if not reload else None,
        reload=reload,
        loop=loop,
        log_level=settings.LOG_LEVEL.lower(),
        log_config=uvicorn_log_config(settings.LOG_LEVEL, settings.LOG_FORMAT),
        timeout_graceful_shutdown=max(1, int(settings.POOL_DRAIN_TIMEOUT)),
        lifespan="on",
    )


def _event_loop(choice: str) -> str:
    """The uvicorn loop for ``--loop``: ``auto`` takes uvloop when it is installed."""
    if choice not in ("auto", "uvloop", "asyncio"):
        errors.print(f"[bold red]error:[/] --loop must be auto, uvloop or asyncio, not {choice!r}")
        raise typer.Exit(2)
    if choice == "asyncio":
        return choice
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            errors.print(
                "[bold red]error:[/] --loop uvloop needs uvloop: pip install 'resync[uvloop]'"
            )
            raise typer.Exit(2) from None
        return "asyncio"
    return "uvloop"


def _note_sigterm(signum: int, frame: object) -> None:
    _notice("resync: stopped by SIGTERM after draining", "serve.sigterm")


@app.command()
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Open the configured pools, check each with a real round trip, print the results.

    Exit code 0 when every required pool is healthy, 1 otherwise (including
    when a pool cannot even open).
    """
    settings = _settings()
    _configure_logging("WARNING", "text")
    rows, ok = asyncio.run(_check(settings))
    if as_json:
        console.print_json(json.dumps({"ok": ok, "pools": rows}))
    else:
        table = Table(title="resync check")
        for column in ("pool", "backend", "required", "healthy", "latency", "error"):
            table.add_column(column)
        for row in rows:
            latency = f"{row['latency_ms']:.1f} ms" if row["latency_ms"] is not None else "-"
            table.add_row(
                row["pool"],
                row["backend"],
                "yes" if row["required"] else "no",
                "[green]yes[/]" if row["healthy"] else "[red]no[/]",
                latency,
                row["error"] or "",
            )
        console.print(table)
        console.print("[green]all required pools healthy[/]" if ok else "[red]not ready[/]")
    raise typer.Exit(0 if ok else 1)


async def _check(settings: Any) -> tuple[list[dict[str, Any]], bool]:
    from resync.core.pools.manager.specs import build_pools

    rows: list[dict[str, Any]] = []
    ok = True
    for spec, pool in build_pools(settings):
        row: dict[str, Any] = {
            "pool": spec.name,
            "backend": spec.backend,
            "required": spec.required,
            "target": _masked(spec.url),
            "healthy": False,
            "latency_ms": None,
            "error": None,
        }
        try:
            await pool.initialize()
            result = await pool.check_health()
            row.update(healthy=result.healthy, latency_ms=result.latency * 1e3, error=result.error)
        except ResyncError as exc:
            row["error"] = _masked(str(exc))
        except Exception as exc:
            row["error"] = _masked(f"{type(exc).__name__}: {pool.scrub(exc)}")
        finally:
            await pool.close(drain_timeout=0)
        if spec.required and not row["healthy"]:
            ok = False
        rows.append(row)
    return rows, ok


@app.command()
def stats(
    url: Annotated[
        str | None,
        typer.Option(help="Base URL of a running service (default: http://HOST:PORT)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the live pool stats of a running service (its GET /pools)."""
    import httpx

    settings = _settings()
    host = "127.0.0.1" if settings.HOST in ("0.0.0.0", "::") else settings.HOST
    base = (url or f"http://{host}:{settings.PORT}").rstrip("/")
    try:
        response = httpx.get(f"{base}/pools", timeout=5.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        errors.print(
            f"[bold red]error:[/] no resync service answered at {base}/pools ({exc}); "
            "start one with 'resync serve' or pass --url",
            highlight=False,
        )
        raise typer.Exit(1) from None
    data = response.json()["pools"]
    if as_json:
        console.print_json(json.dumps(data))
        return
    keys = [
        "backend",
        "state",
        "active_connections",
        "idle_connections",
        "waiting_connections",
        "max_size",
        "pool_hits",
        "pool_exhaustions",
        "connection_errors",
        "average_wait_time",
    ]
    table = Table(title=f"resync pools at {base}")
    table.add_column("stat")
    for name in data:
        table.add_column(name)
    for key in keys:
        table.add_row(key, *(_cell(data[name].get(key)) for name in data))
    table.add_row("health", *(_cell((data[n].get("health") or {}).get("state")) for n in data))
    console.print(table)


@app.command("config")
def show_config(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the effective settings (environment + .env + defaults), secrets masked."""
    settings = _settings()
    values = settings.masked()
    if as_json:
        console.print_json(json.dumps(values, default=str))
        return
    table = Table(title="resync settings")
    table.add_column("variable")
    table.add_column("value")
    table.add_column("source")
    explicit = settings.model_fields_set
    for name, value in values.items():
        table.add_row(name, _cell(value), "set" if name in explicit else "default")
    console.print(table)


@app.command()
def bench(
    duration: Annotated[
        float, typer.Option(min=0.1, help="Seconds measured per pool, operation and concurrency.")
    ] = 1.0,
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated numbers of concurrent callers.")
    ] = "1,10,100",
    pool: Annotated[
        list[str] | None, typer.Option("--pool", help="Only this pool (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Benchmark the configured pools: a lease alone and a lease with a round trip.

    Opens each pool the settings enable (one at a time), runs closed-loop
    callers for --duration seconds at each concurrency, and prints ops/s,
    p50, p99, p99/mean and errors. For the comparison with the drivers' own
    pools, see `make bench` in the repository.
    """
    from rich.progress import Progress

    from resync.benchmark import PoolBenchResult, bench_settings
    from resync.core.pools.manager.specs import pool_specs

    settings = _settings()
    _configure_logging("WARNING", "text")
    try:
        levels = [int(part) for part in concurrency.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        errors.print("[bold red]error:[/] --concurrency takes positive integers, e.g. 1,10,100")
        raise typer.Exit(2)
    configured = [spec.name for spec in pool_specs(settings)]
    unknown = [name for name in (pool or []) if name not in configured]
    if unknown:
        errors.print(
            f"[bold red]error:[/] no pool named {', '.join(map(repr, unknown))}; "
            f"configured pools: {', '.join(configured) or 'none'}",
            highlight=False,
        )
        raise typer.Exit(2)
    names = [name for name in configured if not pool or name in pool]
    results: list[PoolBenchResult] = []
    with Progress(console=errors, transient=True, disable=as_json) as progress:
        task = progress.add_task("benchmarking pools", total=len(names) * 2 * len(levels))

        def advance(result: PoolBenchResult) -> None:
            progress.update(
                task,
                advance=1,
                description=f"{result.pool}: {result.operation} x{result.concurrency}",
            )

        try:
            results = asyncio.run(
                bench_settings(
                    settings,
                    pools=pool or (),
                    concurrency=levels,
                    duration=duration,
                    on_result=advance,
                )
            )
        except ResyncError as exc:
            errors.print(f"[bold red]error:[/] {_masked(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
    if as_json:
        rows = [
            {
                "pool": r.pool,
                "backend": r.backend,
                "operation": r.operation,
                "concurrency": r.concurrency,
                "ops_per_s": round(r.ops_per_s, 1),
                "p50_ms": round(r.p50 * 1e3, 4),
                "p99_ms": round(r.p99 * 1e3, 4),
                "p99_over_mean": round(r.p99_over_mean, 3),
                "errors": r.errors,
            }
            for r in results
        ]
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"resync bench ({duration:g} s per row)")
    for column in ("pool", "operation", "callers", "ops/s", "p50 ms", "p99 ms", "p99/mean"):
        table.add_column(column, justify="left" if column in ("pool", "operation") else "right")
    table.add_column("errors", justify="right")
    for r in results:
        table.add_row(
            r.pool,
            r.operation,
            str(r.concurrency),
            f"{r.ops_per_s:,.0f}",
            f"{r.p50 * 1e3:.3f}",
            f"{r.p99 * 1e3:.3f}",
            f"{r.p99_over_mean:.2f}",
            f"[red]{r.errors}[/]" if r.errors else "0",
        )
    console.print(table)


# drain, resize and plan (resync/cli_admin.py)
register_admin_commands(app, _settings)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _masked(url: Any) -> str:
    from resync.core.redact import mask_url

    return mask_url(url) if url is not None else "-"


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
