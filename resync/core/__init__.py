"""Core of resync: errors, metrics, resilience, deadlines and the pools."""

from resync.core.deadlines import Deadline, current_deadline, deadline, time_left

__all__ = ["Deadline", "current_deadline", "deadline", "time_left"]
