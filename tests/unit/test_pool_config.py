"""ConnectionPoolConfig validates at construction with the seed's messages."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resync.core.exceptions import ConfigurationError, PoolConfigError
from resync.core.pools.base_pool import ConnectionPoolConfig


def test_defaults_are_valid() -> None:
    config = ConnectionPoolConfig(pool_name="db")
    assert config.min_size <= config.max_size
    assert config.connection_timeout > 0
    assert config.max_waiting == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_size": -1}, r"min_size must be >= 0, got -1 \(pool 'db'\)"),
        ({"min_size": 10, "max_size": 5}, r"max_size \(5\) must be >= min_size \(10\)"),
        ({"min_size": 0, "max_size": 0}, r"max_size must be >= 1"),
        ({"connection_timeout": 0}, r"connection_timeout must be > 0"),
        ({"connection_timeout": -3}, r"connection_timeout must be > 0"),
        ({"idle_timeout": -1}, r"idle_timeout must be >= 0"),
        ({"health_check_interval": -1}, r"health_check_interval must be >= 0"),
        ({"max_lifetime": -1}, r"max_lifetime must be >= 0"),
        ({"max_waiting": -1}, r"max_waiting must be >= 0"),
        ({"connection_timeout": math.nan}, r"connection_timeout must be a finite number"),
        ({"min_size": 1.5}, r"min_size must be an integer"),
        ({"max_size": True}, r"max_size must be an integer"),
        ({"idle_timeout": "30"}, r"idle_timeout must be a finite number"),
        ({"pool_name": ""}, r"pool_name must be a non-empty string"),
    ],
)
def test_invalid_values_raise_with_a_message_naming_the_rule(
    changes: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {"pool_name": "db"}
    values.update(changes)
    with pytest.raises(PoolConfigError, match=message) as info:
        ConnectionPoolConfig(**values)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ConfigurationError)


def test_replace_validates_the_copy() -> None:
    config = ConnectionPoolConfig(pool_name="db", min_size=1, max_size=2)
    assert config.replace(max_size=4).max_size == 4
    with pytest.raises(PoolConfigError, match="max_size"):
        config.replace(max_size=0)
    with pytest.raises(PoolConfigError, match="unknown"):
        config.replace(bogus=1)


values = st.one_of(
    st.integers(min_value=-10, max_value=100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)


@given(
    min_size=values,
    max_size=values,
    timeout=values,
    idle=values,
    lifetime=values,
)
def test_any_input_is_accepted_or_refused_with_a_config_error(
    min_size: object, max_size: object, timeout: object, idle: object, lifetime: object
) -> None:
    try:
        config = ConnectionPoolConfig(
            pool_name="fuzz",
            min_size=min_size,  # type: ignore[arg-type]
            max_size=max_size,  # type: ignore[arg-type]
            connection_timeout=timeout,  # type: ignore[arg-type]
            idle_timeout=idle,  # type: ignore[arg-type]
            max_lifetime=lifetime,  # type: ignore[arg-type]
        )
    except PoolConfigError as exc:
        assert "pool 'fuzz'" in str(exc)
    else:
        assert 0 <= config.min_size <= config.max_size
        assert config.connection_timeout > 0
