"""How redis-py's errors come out of a Redis pool: one set of rules for every topology.

- :func:`is_driver_exhausted`: redis-py saying it has no connection to give;
  the pool reports it as its own timeout error, and it is no backend failure.
- :func:`leaves_state_unknown`: could the error have interrupted a command,
  so that a reply may still be on its way (the connection must be closed)?
- :class:`ErrorRules`: which driver errors a pool translates into its
  ``RedisPoolError`` family and which count as a failure of the backend (for
  ``connection_errors`` and the circuit breaker). :data:`SERVER_RULES` are
  those of one server and Sentinel, :data:`CLUSTER_RULES` those of a Cluster
  (which adds ``RedisClusterException``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from resync.core.exceptions import ErrorFamily, ResyncError

__all__ = [
    "CLUSTER_RULES",
    "SERVER_RULES",
    "ErrorRules",
    "is_driver_exhausted",
    "leaves_state_unknown",
]


def is_driver_exhausted(error: BaseException) -> bool:
    """Is ``error`` redis-py saying it has no connection to give?"""
    return isinstance(error, MaxConnectionsError) or (
        isinstance(error, RedisConnectionError) and str(error).startswith("No connection available")
    )


def leaves_state_unknown(error: BaseException) -> bool:
    """Could ``error`` have interrupted a command (so a reply may still be on its way)?"""
    if isinstance(error, ResponseError):
        return False  # the server answered; the exchange is complete
    if not isinstance(error, Exception):
        return True  # cancelled or interrupted
    return isinstance(error, TimeoutError | OSError | BaseExceptionGroup | RedisError)


@dataclass(frozen=True, slots=True)
class ErrorRules:
    """The error rules of one Redis topology (see the module docstring)."""

    #: How the wrapped message names the operation ("Redis", "Redis Cluster").
    operation: str
    #: Driver errors that are translated into the pool's family.
    driver_errors: tuple[type[BaseException], ...]
    #: Errors that count as a failure of the backend (unless a ``ResponseError``
    #: or the driver's "no connection available").
    failures: tuple[type[BaseException], ...]

    def is_backend_failure(self, error: BaseException) -> bool:
        """Does ``error`` say the server or the network failed?"""
        if isinstance(error, ResponseError) or is_driver_exhausted(error):
            return False
        return isinstance(error, self.failures)

    def map_error(
        self,
        error: BaseException,
        *,
        pool_name: str,
        family: ErrorFamily,
        scrub: Callable[[object], str],
        timeout_error: Callable[[BaseException], BaseException],
    ) -> BaseException:
        """``error`` as the pool raises it.

        Resync's own errors and non-driver errors (the caller's) pass through;
        "no connection available" becomes ``timeout_error(error)``; any other
        driver error becomes ``family.base`` with the secrets ``scrub``-bed out.
        """
        if isinstance(error, ResyncError) or not isinstance(error, self.driver_errors):
            return error
        if is_driver_exhausted(error):
            return timeout_error(error)
        return family.base(
            f"{self.operation} operation failed on pool '{pool_name}': "
            f"{type(error).__name__}: {scrub(error)}",
            pool_name=pool_name,
        )


SERVER_RULES = ErrorRules(
    operation="Redis",
    driver_errors=(RedisError,),
    failures=(RedisConnectionError, RedisTimeoutError, OSError, TimeoutError),
)

# RedisClusterException (a slot without a node, a topology error) is the
# cluster's own failure; a bare builtin TimeoutError is not one there (the
# rules each pool had before they were merged here).
CLUSTER_RULES = ErrorRules(
    operation="Redis Cluster",
    driver_errors=(RedisError, RedisClusterException),
    failures=(RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError),
)
