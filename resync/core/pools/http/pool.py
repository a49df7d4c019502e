"""HTTP pool: ``async with pool.get_connection() as client`` over one httpx.AsyncClient.

httpx already pools connections inside one ``AsyncClient``, so a lease yields
that shared client; what the pool adds is admission in front of it (at most
``max_size`` leases, FIFO, bounded by ``connection_timeout`` -- httpx's own
queue is O(n) per request and unfair under load), typed errors, a health
check, warm connections, safe retries and a circuit breaker:

- ``httpx.Limits(max_connections=max_size, max_keepalive_connections=max_size,
  keepalive_expiry=idle_timeout)`` and ``httpx.Timeout(connection_timeout)``
  unless ``limits=`` / ``timeout=`` are passed;
- ``initialize()`` opens ``min_size`` connections with concurrent requests to
  ``health_path`` (any answer will do; no answer fails the setup);
- retries and breaker outcomes live in the transport
  (:mod:`resync.core.pools.http.transport`), one outcome per request; the
  retries of the whole pool are limited by a retry budget (Finagle's: 20 %
  of the requests of the last 10 s plus 10 per second);
- inside ``resync.deadline()`` every request (retries, backoff and body
  included) ends by the deadline with ``HTTPDeadlineExceededError``
  (:mod:`resync.core.pools.http.deadline`);
- the breaker is on by default (the HTTP defaults of
  :data:`~resync.core.resilience.BACKEND_BREAKER_DEFAULTS`: open after 5
  failed requests in a row -- a connect error, a timeout, a dropped
  connection, a 5xx answer --, probe after 30 s): while it is open a lease
  fails at once with :class:`~resync.core.exceptions.HTTPUnavailableError`,
  sending nothing; a cancelled request is no outcome, and ``close()``
  refuses leases with the "is shutdown" error whatever its state.

httpx errors that leave a lease come out in the ``TWSConnectionError`` family:
connect → ``HTTPConnectError``, any timeout → ``HTTPTimeoutError``, a dropped
connection or broken protocol → ``HTTPProtocolError``, and
``response.raise_for_status()`` on a status >= 500 → ``HTTPStatusError`` (a
4xx comes out as plain ``TWSConnectionError``). ``__cause__`` keeps the httpx
error, and with it the request and response.

Environment proxies are not read (``trust_env=False`` on the client): they
would route requests past the transport wrapper. Pass ``proxy=`` instead.
``max_lifetime`` does not apply: httpx has no connection lifetime; ``drain()``
replaces the connections instead, and ``resize()`` applies to httpx's own
limits too (:class:`~resync.core.pools.http.live.ConnectionTurnover`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import httpx

from resync.core.exceptions import (
    HTTP_ERRORS,
    HTTPConnectError,
    HTTPProtocolError,
    HTTPStatusError,
    HTTPTimeoutError,
    PoolConfigError,
    ResyncError,
    TWSConnectionError,
)
from resync.core.pools.http.httpcore_state import connection_pool_of
from resync.core.pools.http.live import ConnectionTurnover
from resync.core.pools.http.transport import HTTPCounters, ResilientTransport
from resync.core.pools.kernel.pool import ConnectionPool, ConnectionPoolConfig
from resync.core.redact import mask_url, url_secrets
from resync.core.resilience import (
    BACKEND_BREAKER_DEFAULTS,
    BreakerSpec,
    RetryPolicy,
    build_circuit_breaker,
)
from resync.core.retry_budget import RetryBudget

__all__ = ["HTTPConnectionPool"]

logger = logging.getLogger("resync.pool.http")

#: Request headers whose value is a credential (httpx errors carry the request).
_SECRET_HEADER = re.compile(r"(?i)auth|cookie|token|secret|key|session|signature")

# Options that configure the transport rather than the client.
_TRANSPORT_OPTIONS = (
    "verify",
    "cert",
    "http1",
    "proxy",
    "local_address",
    "uds",
    "socket_options",
)


def _h2_installed() -> bool:
    return importlib.util.find_spec("h2") is not None


def _validate_base_url(base_url: object) -> str:
    if not isinstance(base_url, str) or not base_url.strip():
        raise PoolConfigError("base_url cannot be empty: pass http(s)://host[:port][/prefix]")
    url = base_url.strip()
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here, not at the first request
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        # from None: a parser's message may quote part of the URL.
        raise PoolConfigError(
            f"base_url {mask_url(url)!r} is not a valid URL: check the host (brackets "
            "around an IPv6 address), the port and for characters that need %-encoding"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PoolConfigError(
            f"base_url must be an http:// or https:// URL with a host, got {mask_url(url)!r}"
        )
    return url


class HTTPConnectionPool(ConnectionPool[httpx.AsyncClient]):
    """Leases of one shared ``httpx.AsyncClient`` for an upstream API.

    ``base_url``: http(s) URL, validated here (``PoolConfigError``, a
    ``ValueError``). ``enable_http2`` needs the ``h2`` package (a clear
    ``PoolConfigError`` if missing). ``health_path``: requested by
    ``health_check()``; healthy when the status is < 500. ``circuit_breaker``:
    ``True`` (the HTTP defaults), ``False``, a ``CircuitBreakerConfig`` or a
    ``CircuitBreaker``. ``retry``: the :class:`RetryPolicy` for safe retries
    (default: 3 attempts, 50 ms initial backoff, at most ``connection_timeout``
    of retrying). ``retry_budget``: a :class:`~resync.core.retry_budget.RetryBudget`
    shared by every request of the pool, ``True`` (the default: 20 % of the
    requests of the last 10 s plus 10 retries per second; settings
    ``HTTP_RETRY_BUDGET_PERCENT`` / ``HTTP_RETRY_BUDGET_MIN_PER_SECOND``) or
    ``False`` for none (the retry policy alone). ``client_options`` go to
    ``httpx.AsyncClient`` (headers, auth, ...) or, for
    ``verify``/``cert``/``proxy``/..., to its transport.
    """

    backend = "http"
    errors = HTTP_ERRORS
    breaker_outcome_per_lease = False

    def __init__(
        self,
        config: ConnectionPoolConfig,
        base_url: str,
        enable_http2: bool = False,
        *,
        health_path: str = "/",
        circuit_breaker: BreakerSpec = True,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | bool = True,
        **client_options: Any,
    ) -> None:
        url = _validate_base_url(base_url)
        if not isinstance(retry_budget, RetryBudget | bool):
            raise PoolConfigError(
                f"retry_budget of pool '{config.pool_name}' must be a RetryBudget, True "
                f"(the default budget) or False (none), got {type(retry_budget).__name__}",
                pool_name=config.pool_name,
            )
        if enable_http2 and not _h2_installed():
            raise PoolConfigError(
                "enable_http2=True needs the 'h2' package: pip install 'resync[http2]' "
                "(or 'httpx[http2]'), or leave HTTP/2 off"
            )
        for reserved in ("base_url", "http2"):
            if reserved in client_options:
                raise PoolConfigError(
                    f"{reserved} cannot be passed as a client option of HTTPConnectionPool"
                )
        super().__init__(config)
        self.base_url = url
        self.enable_http2 = enable_http2
        self.health_path = health_path
        self.client_kwargs = client_options
        self.retry_policy = retry or RetryPolicy(
            max_attempts=3,
            initial_backoff=0.05,
            max_backoff=1.0,
            max_elapsed=config.connection_timeout,
        )
        self.circuit_breaker = build_circuit_breaker(
            config.pool_name, circuit_breaker, BACKEND_BREAKER_DEFAULTS["http"]
        )
        self.http_counters = HTTPCounters()
        #: Limits the retries of every request of the pool (None: no budget).
        self.retry_budget: RetryBudget | None = (
            RetryBudget() if retry_budget is True else retry_budget or None
        )
        self._client: httpx.AsyncClient | None = None
        self._transport: ResilientTransport | None = None
        self._secret_values = url_secrets(url)
        self._turnover = ConnectionTurnover(
            self.name,
            self.stats,
            core_pool=self._core_pool,
            is_ready=lambda: self.is_ready,
            scrub=self.scrub,
        )

    @property
    def display_target(self) -> str | None:
        """The base URL, credentials and query secrets masked."""
        return mask_url(self.base_url)

    # --- lifecycle ------------------------------------------------------------------

    def _build_client(self) -> httpx.AsyncClient:
        cfg = self.config
        options = dict(self.client_kwargs)
        limits = options.pop("limits", None) or httpx.Limits(
            max_connections=cfg.max_size,
            max_keepalive_connections=cfg.max_size,
            keepalive_expiry=cfg.idle_timeout or None,
        )
        transport_options = {k: options.pop(k) for k in _TRANSPORT_OPTIONS if k in options}
        inner = options.pop("transport", None) or httpx.AsyncHTTPTransport(
            limits=limits, http2=self.enable_http2, retries=0, **transport_options
        )
        self._transport = ResilientTransport(
            inner,
            retry=self.retry_policy,
            breaker=self.circuit_breaker,
            counters=self.http_counters,
            label=f"pool '{self.name}'",
            on_failure=self._count_failure,
            on_server_error=self._count_server_error,
            budget=self.retry_budget,
            deadline_error=self._deadline_error,
        )
        options.setdefault("timeout", httpx.Timeout(cfg.connection_timeout))
        options.setdefault("follow_redirects", True)
        options.setdefault("max_redirects", 5)
        options.setdefault("trust_env", False)
        base_url = httpx.URL(self.base_url)
        if base_url.username or base_url.password:
            # Credentials go in auth, not in the URL: httpx logs every request
            # URL at INFO, and it must not log the password.
            options.setdefault("auth", httpx.BasicAuth(base_url.username, base_url.password))
            base_url = base_url.copy_with(username=None, password=None)
        return httpx.AsyncClient(base_url=base_url, transport=self._transport, **options)

    async def _setup_pool(self) -> None:
        self._client = client = self._build_client()
        if self.config.min_size:
            # Concurrent requests each need their own connection: this opens
            # min_size of them (one, multiplexed, with HTTP/2).
            results = await asyncio.gather(
                *(client.get(self.health_path) for _ in range(self.config.min_size)),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            self.stats.connection_creations += self._open_connections()

    async def _close_pool(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- leasing ----------------------------------------------------------------------

    async def _acquire_connection(self, timeout: float) -> httpx.AsyncClient:
        client = self._client
        if client is None:  # pragma: no cover - the lease checks the state first
            raise self._closed_error()
        return client

    async def _ping(self, connection: httpx.AsyncClient) -> None:
        response = await connection.get(self.health_path)
        if response.status_code >= 500:
            raise HTTPStatusError(
                f"health check of pool '{self.name}': {self.health_path} answered "
                f"{response.status_code}",
                pool_name=self.name,
            )

    def _count_failure(self) -> None:
        self.stats.connection_errors += 1

    def _count_server_error(self) -> None:
        self.stats.server_errors += 1

    def _core_pool(self) -> Any:
        """httpcore's pool under the client, or None (closed, or a custom transport)."""
        return connection_pool_of(getattr(self._transport, "inner", None))

    # --- live operations (resync.core.pools.http.live) -------------------------------------

    async def _replace_connections(self, interval: float | None) -> int:
        return await self._turnover.drain(interval, grace=self.config.connection_timeout)

    async def _apply_resize(self) -> None:
        limits = self.client_kwargs.get("limits")
        keepalive = None if limits is None else limits.max_keepalive_connections
        await self._turnover.resize(self.config.max_size, keepalive)

    # --- errors ------------------------------------------------------------------------

    def _map_error(self, error: BaseException) -> BaseException:
        if isinstance(error, ResyncError) or not isinstance(error, httpx.HTTPError):
            return error
        mapped = self._mapped_http_error(error)
        # httpx's error carries the request: its URL (a password, a token in
        # the query) and its headers (Authorization, API keys, cookies). When
        # any of those is about, the mapped error -- which says what happened
        # without them -- is raised with nothing of httpx's in its chain
        # (kernel lease: hides_cause); otherwise the httpx error is its cause.
        mapped.hides_cause = self._carries_secrets(error)
        return mapped

    def _carries_secrets(self, error: httpx.HTTPError) -> bool:
        if self._secret_values:
            return True
        try:
            request = error.request
        except RuntimeError:  # httpx raises when the error has no request
            return False
        if url_secrets(str(request.url)):
            return True
        return any(_SECRET_HEADER.search(name) for name in request.headers)

    def _mapped_http_error(self, error: httpx.HTTPError) -> ResyncError:
        where = self._describe_request(error)
        detail = self.scrub(error)
        name = self.name
        if isinstance(error, httpx.HTTPStatusError):
            status = error.response.status_code
            kind = HTTPStatusError if status >= 500 else TWSConnectionError
            return kind(f"Upstream of pool '{name}' answered {status}{where}", pool_name=name)
        if isinstance(error, httpx.TimeoutException):
            return HTTPTimeoutError(
                f"Upstream of pool '{name}' timed out{where}: {type(error).__name__} {detail}",
                pool_name=name,
            )
        if isinstance(error, httpx.ConnectError):
            return HTTPConnectError(
                f"Could not connect to the upstream of pool '{name}'{where}: {detail}",
                pool_name=name,
            )
        if isinstance(error, httpx.ProtocolError | httpx.NetworkError):
            return HTTPProtocolError(
                f"Upstream of pool '{name}' dropped the connection or broke the protocol"
                f"{where}: {type(error).__name__} {detail}",
                pool_name=name,
            )
        return TWSConnectionError(
            f"HTTP request of pool '{name}' failed{where}: {type(error).__name__} {detail}",
            pool_name=name,
        )

    def _describe_request(self, error: httpx.HTTPError) -> str:
        try:
            request = error.request
        except RuntimeError:  # httpx raises when the error has no request
            return ""
        return f" ({request.method} {mask_url(str(request.url))})"

    def _is_backend_failure(self, error: BaseException) -> bool:
        # Outcomes are recorded per request by the transport, not per lease.
        return False

    def _secrets(self) -> list[str]:
        return self._secret_values

    # --- stats ---------------------------------------------------------------------------

    def _open_connections(self) -> int:
        core = self._core_pool()
        return 0 if core is None else len(core.connections)

    def _idle_connections(self) -> int:
        core = self._core_pool()
        return 0 if core is None else sum(1 for conn in core.connections if conn.is_idle())

    def get_stats_snapshot(self) -> dict[str, Any]:
        """The common stats plus an ``http`` section (requests, retries, retries
        the budget refused, the budget's balance, failures)."""
        data = super().get_stats_snapshot()
        counters = self.http_counters
        data["http"] = {
            "base_url": mask_url(self.base_url),
            "http2": self.enable_http2,
            "open_connections": self._open_connections(),
            "requests": counters.requests,
            "retries": counters.retries,
            "retries_refused": counters.retries_refused,
            "retry_budget": None
            if self.retry_budget is None
            else {
                "percent": self.retry_budget.percent,
                "min_per_second": self.retry_budget.min_per_second,
                "window": self.retry_budget.window,
                "balance": self.retry_budget.balance,
            },
            "upstream_failures": counters.upstream_failures,
            "server_errors": counters.server_errors,
        }
        return data

    async def get_pool_stats(self) -> dict[str, Any]:
        """Seed API: the stats snapshot plus ``http2_enabled`` and the (masked) base URL."""
        data = self.get_stats_snapshot()
        data["http2_enabled"] = self.enable_http2
        data["base_url"] = mask_url(self.base_url)
        return data
