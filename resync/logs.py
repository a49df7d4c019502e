"""Log lines for ``resync serve``: human text or one JSON object per line.

``LOG_FORMAT=json`` writes every record as one line of JSON on stderr::

    {"time": "2025-01-31T12:00:00.123Z", "level": "ERROR", "logger": "resync.api",
     "message": "...", "pool": "database", "event": "pool_timeout", "request_id": "..."}

``pool``, ``event`` and ``request_id`` appear when the record carries them
(``logger.info(..., extra={"pool": name})``) and they are not ``None``. A
record with an exception adds ``exc_type`` (the class name) but not the
traceback: a traceback's frames and the exception's own text can carry SQL
and bound values. Only when the configured level is ``DEBUG`` is the
formatted traceback added, under ``exc``.

The formatter is the standard library's ``json`` on purpose: no JSON logging
library is a dependency of resync, and these forty lines do not justify one.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["EXTRA_FIELDS", "JsonFormatter", "configure_logging", "uvicorn_log_config"]

LogFormat = Literal["text", "json"]

#: Record attributes (set with ``extra=``) copied into a JSON line when present.
EXTRA_FIELDS = ("pool", "event", "request_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, *, include_traceback: bool = False) -> None:
        super().__init__()
        self.include_traceback = include_traceback

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            if self.include_traceback:
                line["exc"] = self.formatException(record.exc_info)
        if self.include_traceback and record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _level(level: str) -> int:
    value = logging.getLevelName(level.upper())
    return value if isinstance(value, int) else logging.INFO


def _check_format(fmt: str) -> LogFormat:
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    return "json" if fmt == "json" else "text"


def configure_logging(level: str, fmt: str) -> None:
    """Send the root logger's records to stderr as ``fmt`` (``text`` or ``json``) lines.

    Like :func:`logging.basicConfig`, this leaves a root logger that already has
    handlers alone (a host application's, or pytest's). With ``json``, warnings
    go through logging too (``py.warnings``), so stderr stays one object a line.
    """
    json_lines = _check_format(fmt) == "json"
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter(include_traceback=_level(level) <= logging.DEBUG))
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=_level(level), handlers=[handler])


def uvicorn_log_config(level: str, fmt: str) -> dict[str, Any]:
    """The ``log_config`` for ``uvicorn.run``: uvicorn's own for text, JSON lines otherwise.

    uvicorn applies ``log_config`` in every process it starts (workers,
    reloader), so with ``json`` its own loggers (``uvicorn.error``, and
    ``uvicorn.access``, which uvicorn writes to stdout) hand their records to
    the root logger, whose one handler writes JSON lines on stderr.
    """
    if _check_format(fmt) == "text":
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    name = logging.getLevelName(_level(level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": f"{__name__}.JsonFormatter",
                "include_traceback": _level(level) <= logging.DEBUG,
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": name},
        "loggers": {
            "uvicorn": {"handlers": [], "level": name, "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }
