"""The HTTP room: an ``httpx.AsyncClient`` behind resync's admission.

:mod:`.pool` is the pool, :mod:`.transport` the retrying, breaker-aware
transport, and :mod:`.httpcore_state` the one module that touches httpcore's
private state.
"""
