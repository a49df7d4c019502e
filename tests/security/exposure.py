"""Sentinel secrets and a recorder of everything a user or an operator could see.

A :class:`Sentinel` is a password nobody else would write; it is put in every
URL under test, and :class:`Exposure` collects every surface where it must not
show up: each log record of every logger at DEBUG (message, arguments, extra
fields, formatted exception with its chained causes, stack), the text, repr
and formatted traceback of every exception, reprs of pools, the manager and
settings, HTTP answers, command output. :meth:`Exposure.assert_clean` then
names each surface that shows the password in any form: raw, percent-encoded,
a recognisable piece of it, or inside an HTTP Basic credential.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = ["LOGGERS", "Exposure", "Sentinel"]

#: Loggers set to DEBUG while a scenario runs (the root logger too).
LOGGERS = (
    "resync",
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "sqlalchemy.orm",
    "asyncpg",
    "aiosqlite",
    "redis",
    "httpx",
    "httpcore",
    "hpack",
    "h2",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "fastapi",
    "asyncio",
)

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


@dataclass(frozen=True)
class Sentinel:
    """A password to hunt for, and the user names it is paired with."""

    password: str
    http_user: str = "api"

    @property
    def encoded(self) -> str:
        """The password as it must be written inside a URL."""
        return quote(self.password, safe="")

    def fragments(self) -> list[str]:
        """Every form in which the password would count as shown."""
        forms = {self.password, self.encoded, quote(self.password)}
        # Each run of 5+ letters and digits: a half-masked password still shows.
        forms.update(re.findall(r"[A-Za-z0-9]{5,}", self.password))
        basic = f"{self.http_user}:{self.password}".encode()
        forms.add(base64.b64encode(basic).decode())
        return sorted(forms, key=len, reverse=True)


class _Collector(logging.Handler):
    def __init__(self, exposure: Exposure) -> None:
        super().__init__(logging.DEBUG)
        self._exposure = exposure
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as exc:  # a record that cannot even be formatted
            text = f"<unformattable record {record.msg!r} {record.args!r}: {exc!r}>"
        extra = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        if extra:
            text += f"\nextra: {extra!r}"
        self._exposure.add(f"log {record.name}", text)


@dataclass
class Exposure:
    """Everything seen during a scenario, checked against a :class:`Sentinel`."""

    sentinel: Sentinel
    surfaces: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, shown: Any) -> None:
        """Record ``shown`` (text, or anything JSON-able / repr-able) seen at ``where``."""
        if not isinstance(shown, str):
            try:
                shown = json.dumps(shown, default=repr, sort_keys=True)
            except (TypeError, ValueError):
                shown = repr(shown)
        self.surfaces.append((where, shown))

    def add_error(self, where: str, error: BaseException) -> None:
        """The text, the repr and the formatted traceback (with causes) of ``error``."""
        self.add(f"{where}: str", str(error))
        self.add(f"{where}: repr", repr(error))
        self.add(f"{where}: traceback", "".join(traceback.format_exception(error)))

    def add_repr(self, where: str, obj: object) -> None:
        """``repr`` and ``str`` of ``obj``."""
        self.add(f"{where}: repr", repr(obj))
        self.add(f"{where}: str", str(obj))

    @contextmanager
    def expect_error(self, where: str) -> Iterator[list[BaseException]]:
        """Run a block that must fail; record the error. Yields a list that gets it."""
        caught: list[BaseException] = []
        try:
            yield caught
        except Exception as exc:
            caught.append(exc)
            self.add_error(where, exc)
        else:
            raise AssertionError(f"{where}: expected an error, nothing was raised")

    @contextmanager
    def debug_logs(self) -> Iterator[None]:
        """Capture every log record, from every logger, at DEBUG."""
        handler = _Collector(self)
        root = logging.getLogger()
        saved = {name: logging.getLogger(name).level for name in LOGGERS}
        saved_root = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        for name in LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(saved_root)
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)

    def leaks(self) -> list[tuple[str, str, str]]:
        """``(where, fragment, excerpt)`` for every surface that shows the secret."""
        found = []
        fragments = self.sentinel.fragments()
        for where, text in self.surfaces:
            for fragment in fragments:
                at = text.find(fragment)
                if at >= 0:
                    excerpt = text[max(0, at - 120) : at + len(fragment) + 60]
                    found.append((where, fragment, excerpt))
                    break
        return found

    def assert_clean(self, *, at_least: int = 1) -> None:
        """Fail naming every surface that shows the secret; ``at_least`` surfaces seen."""
        assert len(self.surfaces) >= at_least, (
            f"only {len(self.surfaces)} surfaces recorded; the scenario did not run"
        )
        leaks = self.leaks()
        report = "\n\n".join(
            f"[{where}] shows {frag!r}:\n{excerpt}" for where, frag, excerpt in leaks
        )
        assert not leaks, f"the secret leaked in {len(leaks)} place(s):\n\n{report}"
