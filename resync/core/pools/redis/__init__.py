"""The Redis room: one server (:mod:`.pool`), Sentinel and Cluster.

:mod:`.url` parses every ``redis*://`` scheme and is driver-free (settings use
it); :mod:`.factory` picks the pool class from a URL; :mod:`.stock` owns the
connections of the one-server and Sentinel pools, :mod:`.connections` what a
lease holds, :mod:`.errors` the error rules of every topology. The other
modules import ``redis.asyncio``.
"""
