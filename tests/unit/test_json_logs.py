"""LOG_FORMAT=json: one JSON object per line, no traceback text unless DEBUG."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from resync.logs import JsonFormatter, uvicorn_log_config
from tests.helpers.net import free_port

RESYNC = str(Path(sys.executable).with_name("resync"))
SQL = "SELECT secret FROM users WHERE password = 'hunter2'"


def record(
    msg: str = "lease of %s took %.1f s",
    args: tuple[Any, ...] = ("database", 1.5),
    *,
    level: int = logging.WARNING,
    exc_info: Any = None,
    **extra: Any,
) -> logging.LogRecord:
    rec = logging.LogRecord("resync.test", level, __file__, 10, msg, args, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def parse(line: str) -> dict[str, Any]:
    assert "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def failed() -> Any:
    try:
        raise RuntimeError(SQL)
    except RuntimeError:
        return sys.exc_info()


def test_a_plain_record_has_time_level_logger_and_the_formatted_message() -> None:
    line = parse(JsonFormatter().format(record()))
    assert set(line) == {"time", "level", "logger", "message"}
    assert line["level"] == "WARNING" and line["logger"] == "resync.test"
    assert line["message"] == "lease of database took 1.5 s"
    stamp = datetime.fromisoformat(line["time"])
    assert stamp.utcoffset() == timedelta(0)
    assert abs(stamp.timestamp() - time.time()) < 60


def test_pool_event_and_request_id_are_copied_from_extra() -> None:
    rec = record(pool="database", event="pool_timeout", request_id="r-1", other="ignored")
    line = parse(JsonFormatter().format(rec))
    assert line["pool"] == "database"
    assert line["event"] == "pool_timeout"
    assert line["request_id"] == "r-1"
    assert "other" not in line


def test_extra_set_to_none_is_left_out_and_odd_values_are_stringified() -> None:
    line = parse(JsonFormatter().format(record(pool=None, event=Path("x"), request_id=7)))
    assert "pool" not in line
    assert line["event"] == "x" and line["request_id"] == 7


def test_a_multiline_message_stays_on_one_line() -> None:
    line = parse(JsonFormatter().format(record("first\nsecond", ())))
    assert line["message"] == "first\nsecond"


def test_an_exception_gives_its_class_name_but_no_traceback_or_its_text() -> None:
    rec = record("query failed", (), level=logging.ERROR, exc_info=failed())
    text = JsonFormatter().format(rec)
    line = parse(text)
    assert line["exc_type"] == "RuntimeError"
    assert "exc" not in line
    assert "hunter2" not in text and "Traceback" not in text


def test_at_debug_the_traceback_is_under_exc() -> None:
    rec = record("query failed", (), level=logging.ERROR, exc_info=failed())
    line = parse(JsonFormatter(include_traceback=True).format(rec))
    assert line["exc_type"] == "RuntimeError"
    assert line["exc"].startswith("Traceback") and "RuntimeError" in line["exc"]


def test_through_a_real_logger_with_extra() -> None:
    from io import StringIO

    out = StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("resync.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("no extra")
        logger.warning("with %s", "extra", extra={"pool": "redis", "event": "slow"})
        try:
            raise ValueError(SQL)
        except ValueError:
            logger.exception("boom", extra={"request_id": "abc"})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = [parse(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["no extra", "with extra", "boom"]
    assert lines[1]["pool"] == "redis" and lines[1]["event"] == "slow"
    assert lines[2]["exc_type"] == "ValueError" and lines[2]["request_id"] == "abc"
    assert "hunter2" not in out.getvalue()


def test_uvicorn_config_is_uvicorns_own_for_text() -> None:
    from uvicorn.config import LOGGING_CONFIG

    assert uvicorn_log_config("INFO", "text") is LOGGING_CONFIG
    config = uvicorn_log_config("debug", "json")
    assert config["root"]["level"] == "DEBUG"
    assert config["formatters"]["json"]["include_traceback"] is True
    with pytest.raises(ValueError, match="xml"):
        uvicorn_log_config("INFO", "xml")


@pytest.mark.slow
def test_serve_with_log_format_json_writes_only_json_lines_on_stderr(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "HTTP_"))}
    env.update(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
        REDIS_URL="",
        TWS_BASE_URL="",
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        POOL_DRAIN_TIMEOUT="5",
    )
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [RESYNC, "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=tmp_path,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, f"resync serve exited with {proc.returncode}"
                assert time.monotonic() < deadline, "resync serve did not become ready"
                try:
                    if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            httpx.get(f"{base}/pools", timeout=5)  # an access-log line
            httpx.get(f"{base}/no-such-page", timeout=5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    lines = stderr_path.read_text().splitlines()
    assert lines, "resync serve printed nothing on stderr"
    parsed = []
    for line in lines:
        try:
            parsed.append(parse(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    loggers = {p["logger"] for p in parsed}
    assert "uvicorn.error" in loggers and "uvicorn.access" in loggers, loggers
    events = {p.get("event") for p in parsed}
    assert {"serve.start", "serve.sigterm"} <= events, events
