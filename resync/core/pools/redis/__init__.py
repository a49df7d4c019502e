"""The Redis room: one server (:mod:`.pool`), Sentinel and Cluster.

:mod:`.url` parses every ``redis*://`` scheme and is driver-free (settings use it);
the other modules import ``redis.asyncio``.
"""
