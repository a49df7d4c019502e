"""The HTTP error contract: every error becomes a JSON body that leaks nothing.

Every error answer has the same body::

    {"error": "<stable code>", "pool": "<pool name or null>",
     "detail": "<fixed sentence for the code>", "request_id": "<id>"}

``detail`` is a fixed sentence per code (it may name the pool), never the
exception's text: no SQL, no bound parameter, no URL, no driver message ever
reaches the client. The log line of the error carries the same request id and
resync's own (scrubbed) description; for an exception resync did not raise, the
log line carries its class and stack but not its message, which may quote data.

==================================  ======  ==========================  ===========
what happened                        status  ``error``                   Retry-After
==================================  ======  ==========================  ===========
no connection within the timeout      503    ``pool_timeout``            1
too many callers waiting              503    ``pool_overloaded``         1
circuit breaker open                  503    ``backend_unavailable``     breaker's
server unreachable (refused, reset,   503    ``backend_unreachable``     1
DNS, lost connection, cannot open)
pool not started yet / shutting down  503    ``pool_not_ready`` /        1 / 5
                                             ``shutting_down``
pool not configured                   503    ``pool_not_configured``     5
statement timeout                     504    ``statement_timeout``       --
the request's deadline ran out        504    ``deadline_exceeded``       --
commit outcome unknown                500    ``commit_outcome_unknown``  --
upstream HTTP API failed              502    ``upstream_error``          --
any other resync error                500    ``backend_error``           --
any other exception                   500    ``internal_error``          --
text that is not valid Unicode        422    ``invalid_text``            --
request validation failed             422    ``validation_error``        --
==================================  ======  ==========================  ===========

The request id is the caller's ``X-Request-ID`` when it is a plain token
(letters, digits, ``.-_:``, at most 64 characters), otherwise a new one; it is
returned in the ``X-Request-ID`` header of every answer and available to log
records as ``request_id`` (see :func:`current_request_id`).

Deadlines: a request may say how long its caller will wait, in
``X-Request-Timeout`` (seconds, a decimal: ``2.5``) or gRPC's ``grpc-timeout``
(an integer of at most 8 digits and a unit: ``H`` hours, ``M`` minutes, ``S``
seconds, ``m`` milliseconds, ``u`` microseconds, ``n`` nanoseconds:
``100m``); with both, the earlier wins. The request then runs inside
``resync.deadline()`` of that many seconds, from when the middleware saw it:
every lease and every call on a leased connection is bounded by it, and one
that runs out answers 504 ``deadline_exceeded``. Once the answer is sent the
deadline ends: background tasks run after it without one. A malformed value is ignored
(logged at DEBUG, the request served without a deadline): a proxy or client
sending a header resync does not understand must not break the request.
"""

from __future__ import annotations

import logging
import math
import re
import traceback
import uuid
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import httpx
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resync.core.deadlines import DEADLINE, deadline
from resync.core.exceptions import (
    BackendUnavailableError,
    DatabaseCommitUnknownError,
    DatabaseConnectionLostError,
    DatabaseStatementTimeoutError,
    DeadlineExceededError,
    HTTPConnectError,
    ManagerError,
    PoolClosedError,
    PoolNotFoundError,
    PoolNotInitializedError,
    PoolOverloadedError,
    PoolSetupError,
    PoolTimeoutError,
    ResyncError,
    TWSConnectionError,
)
from resync.core.pools.manager.specs import DATABASE_POOL, HTTP_POOL, REDIS_POOL

__all__ = [
    "GRPC_TIMEOUT_HEADER",
    "REQUEST_ID_HEADER",
    "REQUEST_TIMEOUT_HEADER",
    "SETUP_HINTS",
    "ErrorAnswer",
    "RequestContextMiddleware",
    "classify",
    "current_request_id",
    "deadline_of_headers",
    "install_error_handlers",
]

logger = logging.getLogger("resync.api")

REQUEST_ID_HEADER = "X-Request-ID"
#: The request's deadline in seconds (a decimal), set as ``resync.deadline()``.
REQUEST_TIMEOUT_HEADER = "X-Request-Timeout"
#: gRPC's form of the same (``100m``, ``2S``); see the module docstring.
GRPC_TIMEOUT_HEADER = "grpc-timeout"
_SECONDS = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,9})?)\s*$")
_GRPC_TIMEOUT = re.compile(r"^\s*(\d{1,8})([HMSmun])\s*$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_request_id: ContextVar[str | None] = ContextVar("resync_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this task (None outside a request)."""
    return _request_id.get()


class ErrorAnswer:
    """Status, code, fixed detail and Retry-After of one error (see the table above)."""

    __slots__ = ("code", "detail", "retry_after", "status")

    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None):
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


# Exceptions that mean "could not reach the server" when found in an error's chain.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, socket.gaierror ...
    redis.exceptions.ConnectionError,
    httpx.NetworkError,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, DatabaseConnectionLostError | HTTPConnectError | PoolSetupError):
        return True
    return any(isinstance(link, _UNREACHABLE) for link in _chain(exc))


_BAD_TEXT = "the request carries text that is not valid Unicode (a lone surrogate?)"

#: How to turn on each pool configured from settings (fixed text, safe to send).
SETUP_HINTS = {
    DATABASE_POOL: "set DATABASE_URL",
    REDIS_POOL: "set REDIS_URL (and REDIS_POOL_MIN_SIZE > 0)",
    HTTP_POOL: "set TWS_BASE_URL",
}


def _pool_words(pool: str | None) -> str:
    return f"pool '{pool}'" if pool else "the pool"


def classify(exc: BaseException, breaker_retry_after: float | None = None) -> ErrorAnswer:
    """The answer for ``exc`` (pure: reads only the exception's class and chain)."""
    if any(isinstance(link, UnicodeError) for link in _chain(exc)):
        # A lone surrogate ("\\ud800" in JSON) reached an encoder or a driver.
        return ErrorAnswer(422, "invalid_text", _BAD_TEXT)
    if not isinstance(exc, ResyncError):
        return ErrorAnswer(500, "internal_error", "internal error; quote the request id")
    where = _pool_words(exc.pool_name)
    if isinstance(exc, DeadlineExceededError):
        return ErrorAnswer(504, "deadline_exceeded", f"{where}: the request's deadline ran out")
    if isinstance(exc, DatabaseStatementTimeoutError):
        return ErrorAnswer(504, "statement_timeout", f"{where}: the statement timed out")
    if isinstance(exc, DatabaseCommitUnknownError):
        return ErrorAnswer(
            500,
            "commit_outcome_unknown",
            f"{where}: the connection broke during COMMIT; the write may or may not "
            "have been saved, check before retrying",
        )
    if isinstance(exc, PoolTimeoutError):
        return ErrorAnswer(503, "pool_timeout", f"{where} is busy: no connection in time", 1)
    if isinstance(exc, PoolOverloadedError):
        return ErrorAnswer(503, "pool_overloaded", f"{where} is overloaded; retry later", 1)
    if isinstance(exc, BackendUnavailableError):
        wait = max(1, math.ceil(breaker_retry_after)) if breaker_retry_after else 1
        return ErrorAnswer(
            503, "backend_unavailable", f"{where}: its server is failing (circuit open)", wait
        )
    if isinstance(exc, PoolClosedError):
        return ErrorAnswer(503, "shutting_down", f"{where} is shutting down", 5)
    if isinstance(exc, PoolNotInitializedError):
        return ErrorAnswer(503, "pool_not_ready", f"{where} is not open yet", 1)
    if isinstance(exc, PoolNotFoundError):
        hint = SETUP_HINTS.get(exc.pool_name or "", "configure or register it")
        return ErrorAnswer(503, "pool_not_configured", f"{where} is not configured: {hint}", 5)
    if isinstance(exc, ManagerError):
        return ErrorAnswer(
            503, "pool_not_configured", "the pools of this service are not running", 5
        )
    if _unreachable(exc):
        return ErrorAnswer(503, "backend_unreachable", f"{where}: its server is unreachable", 1)
    if isinstance(exc, TWSConnectionError):
        return ErrorAnswer(502, "upstream_error", f"{where}: the upstream API failed")
    return ErrorAnswer(500, "backend_error", f"{where}: the operation failed")


def _breaker_retry_after(request: Request, exc: BaseException) -> float | None:
    if not isinstance(exc, BackendUnavailableError):
        return None
    manager = getattr(request.app.state, "resync_manager", None)
    pools = getattr(manager, "pools", None) or {}
    breaker = getattr(pools.get(exc.pool_name or ""), "circuit_breaker", None)
    return float(breaker.retry_after()) if breaker is not None else None


def _request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                break
            if _REQUEST_ID.match(text):
                return str(text)
            break
    return uuid.uuid4().hex


def deadline_of_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[float, str] | None:
    """The deadline a request asks for: (seconds, the header's name), or None.

    Reads ``X-Request-Timeout`` and ``grpc-timeout`` (ASGI headers: lower-case
    names, bytes); the earlier of the two wins. A malformed value is ignored
    with a DEBUG log line naming the header (not its value).
    """
    found: tuple[float, str] | None = None
    for name, value in headers:
        if name == b"x-request-timeout":
            header, pattern = REQUEST_TIMEOUT_HEADER, _SECONDS
        elif name == b"grpc-timeout":
            header, pattern = GRPC_TIMEOUT_HEADER, _GRPC_TIMEOUT
        else:
            continue
        match = pattern.match(value.decode("latin-1"))
        if match is None:
            logger.debug("ignoring a malformed %s header (%d bytes)", header, len(value))
            continue
        seconds = float(match.group(1))
        if pattern is _GRPC_TIMEOUT:
            seconds *= _GRPC_UNITS[match.group(2)]
        if found is None or seconds < found[0]:
            found = (seconds, header)
    return found


def _answer(answer: ErrorAnswer, pool: str | None, request_id: str | None) -> JSONResponse:
    headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
    if answer.retry_after is not None:
        headers["Retry-After"] = str(answer.retry_after)
    body = {"error": answer.code, "pool": pool, "detail": answer.detail, "request_id": request_id}
    return JSONResponse(body, status_code=answer.status, headers=headers)


def _log(
    request: Request | None, answer: ErrorAnswer, exc: BaseException, pool: str | None
) -> None:
    where = f"{request.method} {request.url.path}" if request is not None else "request"
    request_id = current_request_id()
    extra = {"pool": pool, "event": answer.code, "request_id": request_id}
    if isinstance(exc, ResyncError):
        # resync's messages name the pool and the fix, with URLs masked and
        # database values masked (resync.core.pools.database.errors).
        level = (
            logging.INFO
            if answer.status < 500
            else logging.WARNING
            if answer.status in (503, 504)
            else logging.ERROR
        )
        logger.log(
            level,
            "%s -> %d %s [request_id=%s]: %s",
            where,
            answer.status,
            answer.code,
            request_id,
            exc,
            extra=extra,
        )
        return
    # Someone else's exception: its message may quote data, so log its class
    # and where it was raised, never its text.
    stack = "".join(traceback.format_tb(exc.__traceback__))
    logger.error(
        "%s -> 500 internal_error [request_id=%s]: unhandled %s.%s (message withheld)\n%s",
        where,
        request_id,
        type(exc).__module__,
        type(exc).__qualname__,
        stack,
        extra=extra,
    )


async def _resync_error(request: Request, exc: Exception) -> JSONResponse:
    answer = classify(exc, _breaker_retry_after(request, exc))
    pool = exc.pool_name if isinstance(exc, ResyncError) else None
    _log(request, answer, exc, pool)
    return _answer(answer, pool, current_request_id())


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    # FastAPI echoes the rejected input (and pydantic's ctx) back: that may be
    # a secret the client sent in the wrong field, so only the location,
    # type and message are kept.
    cleaned = []
    for err in errors:
        cleaned.append(
            {"loc": list(err.get("loc", ())), "type": err.get("type"), "msg": err.get("msg")}
        )
    return cleaned


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    request_id = current_request_id()
    body = {
        "error": "validation_error",
        "pool": None,
        "detail": _clean_errors(exc.errors()),
        "request_id": request_id,
    }
    headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
    return JSONResponse(body, status_code=422, headers=headers)


async def _bad_text(request: Request, exc: Exception) -> JSONResponse:
    # A JSON string may carry a lone surrogate ("\\ud800"): valid JSON, but
    # no text any database, driver or encoder accepts.
    answer = ErrorAnswer(422, "invalid_text", _BAD_TEXT)
    logger.info(
        "%s %s -> 422 invalid_text [request_id=%s]",
        request.method,
        request.url.path,
        current_request_id(),
        extra={"event": "invalid_text", "request_id": current_request_id()},
    )
    return _answer(answer, None, current_request_id())


class RequestContextMiddleware:
    """Give every request an id and its deadline, echo the id, and turn an
    unhandled exception into a 500.

    Pure ASGI (no body buffering). The id is set in a contextvar for the
    request's task, so log records and error answers carry it; a deadline
    asked for in ``X-Request-Timeout`` or ``grpc-timeout`` (see the module
    docstring) is set as ``resync.deadline()`` around the app. An exception no
    handler took becomes the contract's ``internal_error`` answer when no
    response has started; it is logged (class and stack, no message) and not
    re-raised, so the server does not print its text as well. A cancelled
    request (client gone, shutdown) is re-raised untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id_of(scope)
        asked = deadline_of_headers(scope.get("headers") or ())
        token = _request_id.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)
            if (
                asked is not None
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                # The answer is out: what runs after it (background tasks) is
                # no longer the caller's to wait for, so it has no deadline.
                DEADLINE.set(None)

        try:
            if asked is None:
                await self.app(scope, receive, send_with_id)
            else:
                with deadline(asked[0], source=f"the request's {asked[1]} header"):
                    await self.app(scope, receive, send_with_id)
        except Exception as exc:
            request = Request(scope)
            if isinstance(exc, UnicodeError):
                response = await _bad_text(request, exc)
            else:
                answer = classify(exc, _breaker_retry_after(request, exc))
                pool = exc.pool_name if isinstance(exc, ResyncError) else None
                _log(request, answer, exc, pool)
                response = _answer(answer, pool, request_id)
            if not started:
                await response(scope, receive, send)
        finally:
            _request_id.reset(token)


def install_error_handlers(app: FastAPI) -> None:
    """Apply the error contract to ``app``: handlers plus the request-id middleware.

    Call before the app starts (Starlette refuses middleware afterwards).
    Idempotent. Starlette picks the handler of the closest class in the MRO,
    so an app's own handler for a subclass still wins.
    """
    if getattr(app.state, "resync_error_contract", False):
        return
    app.state.resync_error_contract = True
    app.add_exception_handler(ResyncError, _resync_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(UnicodeError, _bad_text)
    app.add_middleware(RequestContextMiddleware)
