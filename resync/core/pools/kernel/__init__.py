"""The kernel: what every pool shares, and nothing any backend owns.

Lease, admission, config, stats, lifecycle state, leak watch, pacing and jitter
rules, background-loop helpers and the base :class:`ConnectionPool`. It imports
no driver and no backend room; every room imports from here. Start reading at
:mod:`.lease` (the hot path) and :mod:`.admission` (who gets a slot).
"""
