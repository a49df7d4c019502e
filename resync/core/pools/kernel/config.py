"""Pool configuration: sizes and timeouts, validated when built.

Every rule broken raises :class:`~resync.core.exceptions.PoolConfigError` (a
``ValueError``) whose message starts with the rule, as in the seed
("min_size must be >= 0", "max_size (5) must be >= min_size (10)"), then names
the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from resync.core.exceptions import PoolConfigError

__all__ = ["ConnectionPoolConfig"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(slots=True)
class ConnectionPoolConfig:
    """Sizes and timeouts of one pool (all durations in seconds).

    - ``pool_name``: shown in every log line, metric label, repr and error.
    - ``min_size``: connections opened by ``initialize()`` and kept open.
    - ``max_size``: hard cap on leases (and driver connections) at once.
    - ``idle_timeout``: idle connections above ``min_size`` are closed after it.
    - ``connection_timeout``: the longest a lease may wait (queue + connect);
      also bounds health checks.
    - ``health_check_interval``: period of the manager's background checks;
      ``0`` disables them.
    - ``max_lifetime``: connections older than this are replaced (with jitter);
      ``0`` means never.
    - ``max_waiting``: callers allowed to queue; past it a lease fails at once
      with an "overloaded" error. ``0`` means unbounded.
    - ``drain_timeout``: how long ``close()`` waits for active leases.
    - ``leak_detection_threshold``: a lease held longer is logged with the
      stack that acquired it; ``0`` disables.
    - ``queue_target`` / ``queue_interval``: queue management (CoDel, as
      Elixir's DBConnection): when no queued caller got a slot within
      ``queue_target`` for a whole ``queue_interval``, waiters past twice the
      target fail at once with the "overloaded" error, and so do newcomers
      the queue cannot serve in time, until a caller is granted within the
      target again (:mod:`resync.core.pools.kernel.admission`). ``0`` or
      ``None`` (the default) is off; set both (DBConnection uses 0.05 and 1).
    - ``adaptive_limit``: adjust the leases admitted at once between
      ``max(min_size, 1)`` and ``max_size`` from observed lease times
      (Gradient2, :mod:`resync.core.pools.kernel.adaptive`); off by default.
    """

    pool_name: str = "default"
    min_size: int = 5
    max_size: int = 20
    idle_timeout: float = 300.0
    connection_timeout: float = 30.0
    health_check_interval: float = 60.0
    max_lifetime: float = 1800.0
    max_waiting: int = 0
    drain_timeout: float = 30.0
    leak_detection_threshold: float = 0.0
    queue_target: float | None = None
    queue_interval: float | None = None
    adaptive_limit: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise :class:`PoolConfigError` on the first broken rule."""
        if not isinstance(self.pool_name, str) or not self.pool_name.strip():
            raise PoolConfigError(
                f"pool_name must be a non-empty string, got {self.pool_name!r}: "
                "give every pool a name (it labels logs, metrics and errors)"
            )
        name = self.pool_name
        for field_name in ("min_size", "max_size", "max_waiting"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise PoolConfigError(
                    f"{field_name} must be an integer, got {value!r} (pool '{name}')",
                    pool_name=name,
                )
        for field_name in (
            "idle_timeout",
            "connection_timeout",
            "health_check_interval",
            "max_lifetime",
            "drain_timeout",
            "leak_detection_threshold",
        ):
            value = getattr(self, field_name)
            if not _is_number(value) or not math.isfinite(value):
                raise PoolConfigError(
                    f"{field_name} must be a finite number of seconds, got {value!r} "
                    f"(pool '{name}')",
                    pool_name=name,
                )
        self._validate_overload_control()
        self._require(self.min_size >= 0, f"min_size must be >= 0, got {self.min_size}")
        self._require(
            self.max_size >= self.min_size,
            f"max_size ({self.max_size}) must be >= min_size ({self.min_size})",
        )
        self._require(self.max_size >= 1, f"max_size must be >= 1, got {self.max_size}")
        self._require(
            self.connection_timeout > 0,
            f"connection_timeout must be > 0, got {self.connection_timeout}",
        )
        self._require(self.idle_timeout >= 0, f"idle_timeout must be >= 0, got {self.idle_timeout}")
        self._require(
            self.health_check_interval >= 0,
            f"health_check_interval must be >= 0 (0 disables), got {self.health_check_interval}",
        )
        self._require(
            self.max_lifetime >= 0,
            f"max_lifetime must be >= 0 (0 = never recycle), got {self.max_lifetime}",
        )
        self._require(
            self.max_waiting >= 0,
            f"max_waiting must be >= 0 (0 = unbounded), got {self.max_waiting}",
        )
        self._require(
            self.drain_timeout >= 0, f"drain_timeout must be >= 0, got {self.drain_timeout}"
        )
        self._require(
            self.leak_detection_threshold >= 0,
            f"leak_detection_threshold must be >= 0 (0 disables), "
            f"got {self.leak_detection_threshold}",
        )

    def _validate_overload_control(self) -> None:
        name = self.pool_name
        for field_name in ("queue_target", "queue_interval"):
            value = getattr(self, field_name)
            if value is not None and (not _is_number(value) or not math.isfinite(value)):
                raise PoolConfigError(
                    f"{field_name} must be a finite number of seconds or None, got {value!r} "
                    f"(pool '{name}')",
                    pool_name=name,
                )
            self._require(
                value is None or value >= 0,
                f"{field_name} must be >= 0 (0 or None = no queue management), got {value}",
            )
        target = self.queue_target or 0.0
        interval = self.queue_interval or 0.0
        self._require(
            (target > 0) == (interval > 0),
            f"queue_target ({self.queue_target}) and queue_interval ({self.queue_interval}) "
            "must be set together: both > 0 turns queue management on (e.g. 0.05 and 1.0), "
            "both 0 or None leaves it off",
        )
        self._require(
            target < interval or not target,
            f"queue_target ({target:g}s) must be shorter than queue_interval ({interval:g}s)",
        )
        if not isinstance(self.adaptive_limit, bool):
            raise PoolConfigError(
                f"adaptive_limit must be true or false, got {self.adaptive_limit!r} "
                f"(pool '{name}')",
                pool_name=name,
            )

    def _require(self, ok: bool, rule: str) -> None:
        if not ok:
            raise PoolConfigError(f"{rule} (pool '{self.pool_name}')", pool_name=self.pool_name)

    def replace(self, **changes: Any) -> ConnectionPoolConfig:
        """A validated copy with ``changes`` applied."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = set(changes) - set(values)
        if unknown:
            raise PoolConfigError(
                f"unknown ConnectionPoolConfig field(s): {', '.join(sorted(unknown))}",
                pool_name=self.pool_name,
            )
        values.update(changes)
        return ConnectionPoolConfig(**values)
