"""HTTPConnectionPool against a real HTTP upstream (tests/helpers/upstream.py).

The upstream runs on its own loop in a background thread and counts every
request it receives, so "no network traffic" and "retried N times" are
asserted at the server, not inferred from the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from resync.core.exceptions import (
    HTTPConnectError,
    HTTPPoolClosedError,
    HTTPPoolNotInitializedError,
    HTTPPoolTimeoutError,
    HTTPProtocolError,
    HTTPSetupError,
    HTTPStatusError,
    HTTPTimeoutError,
    HTTPUnavailableError,
    PoolConfigError,
    TWSConnectionError,
)
from resync.core.pools.base_pool import ConnectionPoolConfig
from resync.core.pools.http import pool as http_pool_module
from resync.core.pools.http_pool import HTTPConnectionPool
from resync.core.resilience import CircuitBreakerConfig, RetryPolicy
from tests.helpers.net import free_port
from tests.helpers.upstream import Upstream


def make_config(**overrides: Any) -> ConnectionPoolConfig:
    values: dict[str, Any] = {
        "pool_name": "http-test",
        "min_size": 0,
        "max_size": 5,
        "connection_timeout": 2.0,
        "idle_timeout": 30.0,
    }
    values.update(overrides)
    return ConnectionPoolConfig(**values)


FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@contextlib.asynccontextmanager
async def opened(pool: HTTPConnectionPool) -> AsyncIterator[HTTPConnectionPool]:
    await pool.initialize()
    try:
        yield pool
    finally:
        await pool.close()


# --- construction --------------------------------------------------------------------


@pytest.mark.parametrize("url", ["", "  "])
def test_empty_base_url_is_rejected_as_value_error(url: str) -> None:
    with pytest.raises(PoolConfigError, match="base_url cannot be empty") as info:
        HTTPConnectionPool(make_config(), url)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("url", ["ftp://u:hunter2@example.com", "http://", "example.com/api"])
def test_base_url_must_be_http_or_https_with_a_host(url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://") as info:
        HTTPConnectionPool(make_config(), url)
    assert "hunter2" not in str(info.value)


def test_http2_without_h2_installed_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_pool_module, "_h2_installed", lambda: False)
    with pytest.raises(PoolConfigError, match="'h2' package"):
        HTTPConnectionPool(make_config(), "http://127.0.0.1:1", enable_http2=True)
    HTTPConnectionPool(make_config(), "http://127.0.0.1:1")  # HTTP/1.1 needs nothing


async def test_lease_before_initialize_is_refused(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(), upstream.url)
    with pytest.raises(HTTPPoolNotInitializedError):
        async with pool.get_connection():
            pass


async def test_initialize_opens_min_size_connections(upstream: Upstream) -> None:
    async with opened(HTTPConnectionPool(make_config(min_size=3), upstream.url)) as pool:
        assert upstream.connections == 3
        assert pool.get_stats_snapshot()["http"]["open_connections"] == 3


async def test_initialize_with_min_size_zero_sends_nothing(upstream: Upstream) -> None:
    async with opened(HTTPConnectionPool(make_config(min_size=0), upstream.url)):
        assert upstream.requests == 0


async def test_initialize_fails_with_setup_error_when_nothing_listens() -> None:
    pool = HTTPConnectionPool(
        make_config(min_size=1), f"http://127.0.0.1:{free_port()}", retry=FAST_RETRY
    )
    with pytest.raises(HTTPSetupError, match="Failed to setup pool 'http-test'") as info:
        await pool.initialize()
    assert isinstance(info.value, TWSConnectionError)
    await pool.close()


# --- leasing, limits, timeouts --------------------------------------------------------------


async def test_lease_yields_a_client_with_base_url_limits_and_timeouts_from_config(
    upstream: Upstream,
) -> None:
    config = make_config(connection_timeout=1.5)
    async with (
        opened(HTTPConnectionPool(config, upstream.url)) as pool,
        pool.get_connection() as client,
    ):
        assert isinstance(client, httpx.AsyncClient)
        response = await client.get("/ok")
        assert (response.status_code, response.text) == (200, "ok")
        assert client.timeout == httpx.Timeout(1.5)
        assert str(client.base_url).rstrip("/") == upstream.url


async def test_max_size_is_respected_under_1000_concurrent_leases(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(max_size=10, connection_timeout=60.0), upstream.url)
    holding = peak = 0

    async def worker() -> None:
        nonlocal holding, peak
        async with pool.get_connection() as client:
            holding += 1
            peak = max(peak, holding)
            response = await client.get("/ok")
            holding -= 1
            assert response.status_code == 200

    async with opened(pool):
        await asyncio.gather(*(worker() for _ in range(1000)))
        stats = pool.get_stats_snapshot()
    assert peak <= 10
    assert upstream.connections <= 10
    assert upstream.count("/ok") == 1000
    assert stats["peak_active"] <= 10
    assert stats["pool_hits"] == 1000


async def test_waiting_past_connection_timeout_raises_typed_timeout(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(max_size=1, connection_timeout=0.3), upstream.url)
    async with opened(pool), pool.get_connection():
        started = time.monotonic()
        with pytest.raises(HTTPPoolTimeoutError) as info:
            async with pool.get_connection():
                pass
        assert 0.2 < time.monotonic() - started < 3
    assert isinstance(info.value, TimeoutError)
    assert str(info.value).startswith("Timeout acquiring connection from pool 'http-test'")


async def test_upstream_that_hangs_raises_typed_timeout_once(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(connection_timeout=0.3), upstream.url)
    async with opened(pool):
        started = time.monotonic()
        with pytest.raises(HTTPTimeoutError, match="timed out") as info:
            async with pool.get_connection() as client:
                await client.get("/hang")
        assert time.monotonic() - started < 3
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert upstream.count("/hang") == 1  # a read timeout is never retried


async def test_lease_cancelled_during_a_request_frees_its_slot(upstream: Upstream) -> None:
    async with opened(HTTPConnectionPool(make_config(max_size=1), upstream.url)) as pool:

        async def hang() -> None:
            async with pool.get_connection() as client:
                await client.get("/hang")

        task = asyncio.create_task(hang())
        while upstream.count("/hang") == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.get_stats_snapshot()["active_connections"] == 0
        async with pool.get_connection() as client:
            assert (await client.get("/ok")).status_code == 200


# --- retries ------------------------------------------------------------------------------


async def test_idempotent_request_on_a_dropped_connection_is_retried(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(), upstream.url, retry=FAST_RETRY)
    async with opened(pool):
        with pytest.raises(HTTPProtocolError, match="dropped the connection") as info:
            async with pool.get_connection() as client:
                await client.get("/drop")
        assert upstream.count("/drop") == 3
        assert pool.get_stats_snapshot()["http"]["retries"] == 2
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_request_that_may_have_arrived_is_never_retried(
    upstream: Upstream, method: str
) -> None:
    pool = HTTPConnectionPool(make_config(), upstream.url, retry=FAST_RETRY)
    async with opened(pool):
        with pytest.raises(HTTPProtocolError):
            async with pool.get_connection() as client:
                await client.request(method, "/drop", content=b"charge the card")
        assert upstream.count("/drop") == 1
        assert pool.get_stats_snapshot()["http"]["retries"] == 0


async def test_connect_failure_is_retried_for_any_method_with_backoff() -> None:
    pool = HTTPConnectionPool(
        make_config(min_size=0),
        f"http://127.0.0.1:{free_port()}",
        retry=RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05),
    )
    async with opened(pool):
        with pytest.raises(HTTPConnectError, match="Could not connect"):
            async with pool.get_connection() as client:
                await client.post("/orders", content=b"{}")
        assert pool.get_stats_snapshot()["http"]["retries"] == 3


async def test_connect_failure_then_upstream_up_succeeds_within_the_retries() -> None:
    port = free_port()
    late = Upstream(port)
    pool = HTTPConnectionPool(
        make_config(min_size=0),
        f"http://127.0.0.1:{port}",
        retry=RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=0.1),
    )
    async with opened(pool):

        async def call() -> int:
            async with pool.get_connection() as client:
                return (await client.post("/echo", content=b"once")).status_code

        task = asyncio.create_task(call())
        await asyncio.sleep(0.2)
        late.start()
        try:
            assert await task == 200
            assert late.count("/echo") == 1
        finally:
            late.stop()


# --- errors --------------------------------------------------------------------------------


async def test_server_error_raised_for_status_is_http_status_error(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(), upstream.url, circuit_breaker=False)
    async with opened(pool):
        with pytest.raises(HTTPStatusError, match="answered 500") as info:
            async with pool.get_connection() as client:
                (await client.get("/fail")).raise_for_status()
        assert isinstance(info.value.__cause__, httpx.HTTPStatusError)
        with pytest.raises(TWSConnectionError, match="answered 404") as client_error:
            async with pool.get_connection() as client:
                (await client.get("/status/404")).raise_for_status()
        assert not isinstance(client_error.value, HTTPStatusError)


async def test_application_errors_pass_through_unchanged(upstream: Upstream) -> None:
    async with opened(HTTPConnectionPool(make_config(), upstream.url)) as pool:
        with pytest.raises(KeyError):
            async with pool.get_connection():
                raise KeyError("nope")


# --- health ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "healthy"), [("/", True), ("/status/404", True), ("/fail", False)]
)
async def test_health_is_a_request_to_the_health_path_below_500(
    upstream: Upstream, path: str, healthy: bool
) -> None:
    pool = HTTPConnectionPool(make_config(), upstream.url, health_path=path)
    async with opened(pool):
        assert await pool.health_check() is healthy
        assert upstream.count(path.split("?")[0]) == 1
        assert pool.get_stats_snapshot()["last_health_check"] is not None


async def test_health_check_of_a_hanging_upstream_is_false_within_the_timeout(
    upstream: Upstream,
) -> None:
    pool = HTTPConnectionPool(
        make_config(connection_timeout=0.3), upstream.url, health_path="/hang"
    )
    async with opened(pool):
        started = time.monotonic()
        assert await pool.health_check() is False
        assert time.monotonic() - started < 3


# --- circuit breaker ------------------------------------------------------------------------------


def breaker_pool(upstream: Upstream, **breaker: Any) -> HTTPConnectionPool:
    settings: dict[str, Any] = {"failure_threshold": 3, "recovery_timeout": 0.3}
    settings.update(breaker)
    return HTTPConnectionPool(
        make_config(), upstream.url, circuit_breaker=CircuitBreakerConfig(**settings)
    )


async def fail_requests(pool: HTTPConnectionPool, count: int) -> None:
    for _ in range(count):
        async with pool.get_connection() as client:
            assert (await client.get("/fail")).status_code == 500


async def test_breaker_is_on_by_default(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(), upstream.url)
    assert pool.circuit_breaker is not None
    assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "closed"


async def test_breaker_opens_after_consecutive_failures_and_fails_fast_without_traffic(
    upstream: Upstream,
) -> None:
    async with opened(breaker_pool(upstream)) as pool:
        await fail_requests(pool, 3)
        assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "open"
        sent = upstream.requests
        durations = []
        for _ in range(20):
            started = time.perf_counter()
            with pytest.raises(HTTPUnavailableError, match="circuit breaker is open"):
                async with pool.get_connection() as client:
                    await client.get("/ok")
            durations.append(time.perf_counter() - started)
        assert upstream.requests == sent  # nothing reached the upstream
        assert sorted(durations)[len(durations) // 2] < 0.001
        snapshot = pool.get_stats_snapshot()["circuit_breaker"]
        assert snapshot["rejected"] == 20
        assert snapshot["opened"] == 1


async def test_breaker_counts_each_request_of_a_lease(upstream: Upstream) -> None:
    async with opened(breaker_pool(upstream)) as pool:
        async with pool.get_connection() as client:
            for _ in range(3):
                await client.get("/fail")
        assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "open"


async def test_breaker_half_opens_after_recovery_timeout_and_closes_on_success(
    upstream: Upstream,
) -> None:
    async with opened(breaker_pool(upstream)) as pool:
        await fail_requests(pool, 3)
        await asyncio.sleep(0.35)
        async with pool.get_connection() as client:  # the probe
            assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "half_open"
            assert (await client.get("/ok")).status_code == 200
        snapshot = pool.get_stats_snapshot()["circuit_breaker"]
        assert snapshot["state"] == "closed"
        assert snapshot["transitions"] == 3  # closed -> open -> half_open -> closed


async def test_half_open_admits_limited_probes_and_a_failed_probe_reopens(
    upstream: Upstream,
) -> None:
    async with opened(breaker_pool(upstream, half_open_max_calls=1)) as pool:
        await fail_requests(pool, 3)
        await asyncio.sleep(0.35)
        async with pool.get_connection() as probe:
            with pytest.raises(HTTPUnavailableError):
                async with pool.get_connection():
                    pass
            assert (await probe.get("/fail")).status_code == 500
        assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "open"


async def test_breaker_recovers_when_the_upstream_heals(upstream: Upstream) -> None:
    async with opened(breaker_pool(upstream)) as pool:
        upstream.failing = True
        await fail_requests(pool, 3)
        upstream.failing = False
        deadline = time.monotonic() + 5
        while True:
            try:
                async with pool.get_connection() as client:
                    assert (await client.get("/ok")).status_code == 200
                break
            except HTTPUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert pool.get_stats_snapshot()["circuit_breaker"]["state"] == "closed"


async def test_connection_failures_open_the_breaker_too() -> None:
    pool = HTTPConnectionPool(
        make_config(),
        f"http://127.0.0.1:{free_port()}",
        retry=RetryPolicy(max_attempts=1),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, recovery_timeout=5),
    )
    async with opened(pool):
        for _ in range(2):
            with pytest.raises(HTTPConnectError):
                async with pool.get_connection() as client:
                    await client.get("/")
        with pytest.raises(HTTPUnavailableError):
            async with pool.get_connection():
                pass
        assert pool.get_stats_snapshot()["connection_errors"] == 2


async def test_breaker_can_be_turned_off(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(), upstream.url, circuit_breaker=False)
    async with opened(pool):
        await fail_requests(pool, 10)
        async with pool.get_connection() as client:
            assert (await client.get("/ok")).status_code == 200
        assert pool.get_stats_snapshot()["circuit_breaker"] is None


# --- HTTP/2, secrets, close ---------------------------------------------------------------------


async def test_http2_pool_works_against_an_http1_upstream(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(min_size=1), upstream.url, enable_http2=True)
    async with opened(pool), pool.get_connection() as client:
        response = await client.get("/ok")
    # Cleartext has no ALPN: httpx speaks HTTP/1.1 unless told the server does h2c.
    assert response.http_version == "HTTP/1.1"
    assert (await pool.get_pool_stats())["http2_enabled"] is True


async def test_password_in_base_url_never_shows(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "pw-7730-secret"
    url = upstream.url.replace("http://", f"http://svc:{secret}@")
    pool = HTTPConnectionPool(make_config(), url, circuit_breaker=False)
    async with opened(pool):
        with pytest.raises(HTTPStatusError) as info:
            async with pool.get_connection() as client:
                (await client.get("/fail")).raise_for_status()
        shown = [repr(pool), str(info.value), str(pool.get_stats_snapshot())]
        shown.append(str(await pool.get_pool_stats()))
    for text in [*shown, caplog.text]:
        assert secret not in text


async def test_close_refuses_new_leases_and_is_idempotent(upstream: Upstream) -> None:
    pool = HTTPConnectionPool(make_config(min_size=2), upstream.url)
    await pool.initialize()
    await pool.close()
    await pool.close()
    assert pool._client is None
    with pytest.raises(HTTPPoolClosedError, match="shutdown"):
        async with pool.get_connection():
            pass
