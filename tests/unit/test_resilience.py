"""Circuit breaker state machine (fake clock) and retry policy."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from resync.core.pools.http.transport import is_upstream_failure, may_retry
from resync.core.resilience import (
    BreakerState,
    CircuitBreaker,
    CircuitBreakerConfig,
    RetryPolicy,
    build_circuit_breaker,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_breaker(clock: FakeClock, **config: float) -> CircuitBreaker:
    settings: dict[str, float] = {"failure_threshold": 3, "recovery_timeout": 10.0}
    settings.update(config)
    return CircuitBreaker("b", CircuitBreakerConfig(**settings), clock=clock)  # type: ignore[arg-type]


# --- circuit breaker -----------------------------------------------------------------


def test_closed_breaker_allows_and_opens_after_consecutive_failures(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_count == 1


def test_a_success_resets_the_consecutive_failure_count(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_open_breaker_rejects_until_the_recovery_timeout(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(9.9)
    assert not breaker.allow()
    assert breaker.rejected_count == 1
    assert breaker.retry_after() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_half_open_admits_only_the_configured_number_of_probes(clock: FakeClock) -> None:
    breaker = make_breaker(clock, half_open_max_calls=2)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()


def test_half_open_probe_success_closes(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_half_open_needs_success_threshold_successes(clock: FakeClock) -> None:
    breaker = make_breaker(clock, half_open_max_calls=2, success_threshold=2)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_half_open_probe_failure_reopens_for_a_new_recovery_timeout(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_count == 2
    clock.advance(5)
    assert not breaker.allow()


def test_probe_that_never_reports_back_frees_its_place_after_a_window(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()  # this probe's caller is cancelled: no outcome
    assert not breaker.allow()
    clock.advance(10)
    assert breaker.allow()


def test_snapshot_shows_state_counts_and_transitions(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    breaker.allow()
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["total_failures"] == 3
    assert snapshot["rejected"] == 1
    assert snapshot["opened"] == 1
    assert snapshot["transitions"] == 1
    assert snapshot["retry_after"] == pytest.approx(10.0)


def test_reset_closes_the_breaker(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


@pytest.mark.parametrize(
    "config",
    [
        {"failure_threshold": 0},
        {"recovery_timeout": 0},
        {"half_open_max_calls": 0},
        {"success_threshold": 0},
    ],
)
def test_breaker_config_is_validated(config: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreakerConfig(**config)  # type: ignore[arg-type]


def test_build_circuit_breaker_accepts_every_spelling() -> None:
    assert build_circuit_breaker("p", None) is None
    assert build_circuit_breaker("p", False) is None
    default = build_circuit_breaker("p", True)
    assert default is not None and default.config == CircuitBreakerConfig()
    tuned = build_circuit_breaker("p", CircuitBreakerConfig(failure_threshold=9))
    assert tuned is not None and tuned.config.failure_threshold == 9
    shared = CircuitBreaker("shared")
    assert build_circuit_breaker("p", shared) is shared
    with pytest.raises(TypeError):
        build_circuit_breaker("p", "yes")  # type: ignore[arg-type]


# --- retry policy ------------------------------------------------------------------------


class Flaky:
    """Fails with ``error`` ``failures`` times, then returns ``"done"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record tenacity's waits instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return recorded


async def test_first_success_makes_one_call_and_never_waits(sleeps: list[float]) -> None:
    op = Flaky(0, ConnectionError())
    assert await RetryPolicy().call(op, retry_if=lambda e: True) == "done"
    assert op.calls == 1
    assert sleeps == []


async def test_retryable_errors_are_retried_until_success(sleeps: list[float]) -> None:
    op = Flaky(2, ConnectionError("refused"))
    retried: list[int] = []
    result = await RetryPolicy(max_attempts=3).call(
        op,
        retry_if=lambda e: isinstance(e, ConnectionError),
        on_retry=lambda n, e: retried.append(n),
    )
    assert result == "done"
    assert op.calls == 3
    assert retried == [1, 2]
    assert len(sleeps) == 2


async def test_the_last_error_is_raised_when_attempts_run_out(sleeps: list[float]) -> None:
    op = Flaky(10, ConnectionError("refused"))
    with pytest.raises(ConnectionError, match="refused"):
        await RetryPolicy(max_attempts=4).call(op, retry_if=lambda e: True)
    assert op.calls == 4


async def test_errors_refused_by_retry_if_are_raised_at_once(sleeps: list[float]) -> None:
    op = Flaky(10, ValueError("bad request"))
    with pytest.raises(ValueError):
        await RetryPolicy(max_attempts=5).call(op, retry_if=lambda e: False)
    assert op.calls == 1
    assert sleeps == []


async def test_backoff_is_exponential_with_full_jitter_and_capped(sleeps: list[float]) -> None:
    policy = RetryPolicy(max_attempts=8, initial_backoff=0.1, max_backoff=0.5)
    with pytest.raises(ConnectionError):
        await policy.call(Flaky(100, ConnectionError()), retry_if=lambda e: True)
    windows = [min(0.5, 0.1 * 2**n) for n in range(7)]
    assert len(sleeps) == 7
    assert all(0 <= s <= w for s, w in zip(sleeps, windows, strict=True))
    assert len(set(sleeps)) > 1  # jittered, not a fixed schedule


def test_one_attempt_disables_retries_and_config_is_validated() -> None:
    assert RetryPolicy(max_attempts=1).max_attempts == 1
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff=-1)
    with pytest.raises(ValueError):
        RetryPolicy(max_elapsed=0)


async def test_max_elapsed_stops_retrying() -> None:
    policy = RetryPolicy(max_attempts=1000, initial_backoff=0.02, max_backoff=0.02, max_elapsed=0.1)
    op = Flaky(10_000, ConnectionError())
    with pytest.raises(ConnectionError):
        await policy.call(op, retry_if=lambda e: True)
    assert 2 <= op.calls < 100


async def test_cancellation_is_never_retried() -> None:
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    task = asyncio.create_task(RetryPolicy(max_attempts=5).call(slow, retry_if=lambda e: True))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


# --- what the HTTP pool retries --------------------------------------------------------------


def request(method: str, content: bytes | None = None) -> httpx.Request:
    return httpx.Request(method, "http://upstream.test/x", content=content)


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE"])
def test_connect_failures_are_retried_for_every_method(method: str) -> None:
    assert may_retry(request(method), httpx.ConnectError("refused"))
    assert may_retry(request(method), httpx.ConnectTimeout("slow connect"))


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("GET", True),
        ("HEAD", True),
        ("PUT", True),
        ("DELETE", True),
        ("POST", False),
        ("PATCH", False),
    ],
)
def test_dropped_connections_are_retried_only_for_idempotent_methods(
    method: str, expected: bool
) -> None:
    error = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    assert may_retry(request(method, b"body"), error) is expected


def test_read_timeouts_and_streamed_bodies_are_never_retried() -> None:
    assert not may_retry(request("GET"), httpx.ReadTimeout("slow answer"))

    async def stream() -> object:
        yield b"chunk"

    streamed = httpx.Request("PUT", "http://upstream.test/x", content=stream())
    assert not may_retry(streamed, httpx.ReadError("reset"))


def test_local_limits_are_not_upstream_failures() -> None:
    assert is_upstream_failure(httpx.ConnectError("refused"))
    assert is_upstream_failure(httpx.ReadTimeout("slow"))
    assert not is_upstream_failure(httpx.PoolTimeout("local pool full"))
    assert not is_upstream_failure(ValueError())
