"""The HTTP pool's transport wrapper: safe retries and per-request breaker outcomes.

:class:`ResilientTransport` sits between ``httpx.AsyncClient`` and the real
transport, so every request a lease makes (and every redirect hop) passes here.

What is retried (:func:`may_retry`), with the pool's :class:`RetryPolicy`
(exponential backoff, full jitter):

- a connection that could not be established (``ConnectError``,
  ``ConnectTimeout``): the request never left, so any method is safe;
- a connection that dropped before the answer (``RemoteProtocolError``,
  ``ReadError``, ``WriteError``): the request may have reached the upstream,
  so only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) with a
  replayable body are retried -- a POST is never sent twice;
- never a read timeout: the upstream may be working on it, and retrying an
  overloaded upstream makes it worse.

Retries are also limited by the pool's :class:`~resync.core.retry_budget.RetryBudget`
(Finagle's: 20 % of the requests of the last 10 s plus 10 per second), so a
failing upstream gets at most about 1.2 x its load from the pool, whatever
the retry policy's attempts: a retry the budget refuses is not made (the
request fails with its last error) and is counted in ``retries_refused``.

Breaker outcomes are recorded once per request, after retries: a transport
error that says the upstream is failing, or an answer with status >= 500, is
a failure; any other answer is a success. Cancellation records nothing.

Inside ``resync.deadline()`` each request runs within the time left
(:mod:`resync.core.pools.http.deadline`): retries and backoff included, the
body too; past it the pool's ``HTTPDeadlineExceededError``, and no outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from resync.core.deadlines import DEADLINE
from resync.core.pools.http.deadline import DeadlineErrorFactory, send_within
from resync.core.pools.http.httpcore_state import GuardedStream, reclaim_orphaned_connections
from resync.core.resilience import CircuitBreaker, RetryPolicy
from resync.core.retry_budget import RetryBudget

__all__ = ["IDEMPOTENT_METHODS", "HTTPCounters", "ResilientTransport", "is_upstream_failure"]

logger = logging.getLogger("resync.pool.http")

#: RFC 9110 idempotent methods: repeating one has the effect of sending it once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

_NOT_ESTABLISHED = (httpx.ConnectError, httpx.ConnectTimeout)
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# Raised without the upstream doing anything wrong: a local limit or a bug.
_LOCAL = (httpx.PoolTimeout, httpx.LocalProtocolError, httpx.UnsupportedProtocol)


@dataclass(slots=True)
class HTTPCounters:
    """Per-pool request counters (requests, retries, retries the budget
    refused, upstream failures, 5xx answers)."""

    requests: int = 0
    retries: int = 0
    retries_refused: int = 0
    upstream_failures: int = 0
    server_errors: int = 0


def may_retry(request: httpx.Request, error: BaseException) -> bool:
    """Is it safe to send ``request`` again after ``error``?"""
    if isinstance(error, _NOT_ESTABLISHED):
        return True
    if isinstance(error, _DROPPED):
        return request.method in IDEMPOTENT_METHODS and isinstance(request.stream, httpx.ByteStream)
    return False


def is_upstream_failure(error: BaseException) -> bool:
    """Does ``error`` say the upstream is failing (rather than the caller or a local limit)?"""
    return isinstance(error, httpx.TransportError) and not isinstance(error, _LOCAL)


class ResilientTransport(httpx.AsyncBaseTransport):
    """Wraps ``inner``: retries what is safe to retry, reports outcomes to ``breaker``.

    ``on_failure`` is called once per failed request (after retries: no
    connection, reset, timeout), ``on_server_error`` once per 5xx answer, for
    the pool's ``connection_errors`` / ``server_errors``. ``budget`` (``None``:
    no budget) limits the retries; ``deadline_error`` builds the pool's
    deadline error (``None``: requests ignore ``resync.deadline()``).
    Closing this transport closes ``inner``.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        retry: RetryPolicy,
        breaker: CircuitBreaker | None,
        counters: HTTPCounters,
        label: str,
        on_failure: Callable[[], None] | None = None,
        on_server_error: Callable[[], None] | None = None,
        budget: RetryBudget | None = None,
        deadline_error: DeadlineErrorFactory | None = None,
    ) -> None:
        self.inner = inner
        self.retry = retry
        self.budget = budget
        self._deadline_error = deadline_error
        self.breaker = breaker
        self.counters = counters
        self._label = label
        self._on_failure = on_failure
        self._on_server_error = on_server_error

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; retry per :func:`may_retry`; record the outcome.

        Cancellation propagates at once (no retry, no outcome) -- after the
        slot httpcore may have lost to it is reclaimed. The time spent
        is bounded by the client's timeouts per attempt and by the retry
        policy's attempts and ``max_elapsed`` overall, and by the caller's
        ``resync.deadline()`` if one is in force (then the deadline error).
        """
        deadline = DEADLINE.get()
        if deadline is not None and self._deadline_error is not None:
            return await send_within(
                deadline, self.handle_async_request, request, self._deadline_error
            )
        counters = self.counters
        counters.requests += 1
        if self.budget is not None:
            self.budget.deposit()
        try:
            try:
                # The first attempt runs inline: a request that succeeds costs
                # nothing here beyond the outcome bookkeeping below.
                response = await self.inner.handle_async_request(request)
            except Exception as exc:
                if self.retry.max_attempts < 2 or not may_retry(request, exc):
                    raise
                response = await self._retry(request, exc)
        except BaseException as exc:
            # A request that did not return may have left httpcore a slot it
            # never gets back (encode/httpcore#1093): give it back now.
            reclaim_orphaned_connections(self.inner, self._label)
            if isinstance(exc, Exception) and is_upstream_failure(exc):
                counters.upstream_failures += 1
                if self._on_failure is not None:
                    self._on_failure()
                if self.breaker is not None:
                    self.breaker.record_failure()
            raise
        # Closing the body (or failing to read it) must give its slot back too.
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = GuardedStream(response.stream, self._label)
        breaker = self.breaker
        if response.status_code >= 500:
            counters.server_errors += 1
            if self._on_server_error is not None:
                self._on_server_error()
            if breaker is not None:
                breaker.record_failure()
        elif breaker is not None:
            breaker.record_success()
        return response

    async def _retry(self, request: httpx.Request, failed: BaseException) -> httpx.Response:
        inner = self.inner
        budget = self.budget
        counters = self.counters
        attempts = 1

        def retryable(error: BaseException) -> bool:
            nonlocal attempts
            if not may_retry(request, error):
                return False
            if budget is None or attempts >= self.retry.max_attempts:
                return True  # (out of attempts: the policy stops it, not the budget)
            # Checked here, withdrawn in _count_retry: the policy decides and
            # sleeps in between, with no other task running in between the two.
            if budget.can_retry():
                attempts += 1
                return True
            counters.retries_refused += 1
            logger.debug(
                "%s: retry budget spent (%r); not retrying %s", self._label, budget, request.method
            )
            return False

        return await self.retry.resume(
            lambda: inner.handle_async_request(request),
            failed,
            retry_if=retryable,
            on_retry=self._count_retry,
        )

    def _count_retry(self, attempt: int, error: BaseException) -> None:
        self.counters.retries += 1
        if self.budget is not None:
            self.budget.withdraw()
        logger.debug(
            "%s: attempt %d failed (%s: %s); retrying",
            self._label,
            attempt,
            type(error).__name__,
            error,
        )

    async def aclose(self) -> None:
        """Close the wrapped transport and its connections."""
        await self.inner.aclose()
