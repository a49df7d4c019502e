"""Helpers shared by the benchmarks: where artifacts go, percentiles, the environment.

The suite itself (``make bench``) is :mod:`benchmarks.run_all`; its harness is
:mod:`benchmarks.harness`.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACTS", "environment", "percentile"]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    loop = type(asyncio.get_event_loop_policy()).__module__
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop_policy": loop,
    }
