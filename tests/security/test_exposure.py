"""The detector the security suite relies on: it must see the secret in every form."""

from __future__ import annotations

import base64
import logging

import pytest

from tests.security.exposure import Exposure, Sentinel

SECRET = Sentinel("Zq7Sentinel@:/%Tail9x")


@pytest.mark.parametrize(
    "shown",
    [
        "password=Zq7Sentinel@:/%Tail9x",
        "redis://:Zq7Sentinel%40%3A%2F%25Tail9x@host/0",
        "postgresql://u:Zq7Sentinel%40%3A/%25Tail9x@host/db",  # quote() keeps '/'
        "half masked: redis://:***@:/%Tail9x@host",
        "Authorization: Basic " + base64.b64encode(b"api:Zq7Sentinel@:/%Tail9x").decode(),
    ],
)
def test_every_form_of_the_secret_is_caught(shown: str) -> None:
    exposure = Exposure(SECRET)
    exposure.add("surface", shown)
    with pytest.raises(AssertionError, match=r"leaked in 1 place"):
        exposure.assert_clean()


def test_masked_text_is_clean() -> None:
    exposure = Exposure(SECRET)
    exposure.add("surface", "redis://:***@127.0.0.1:6379/0 and postgresql://u:***@h/db")
    exposure.assert_clean()


def test_logs_of_any_logger_at_debug_are_seen_with_their_causes_and_extras() -> None:
    exposure = Exposure(SECRET)
    with exposure.debug_logs():
        logging.getLogger("some.driver").debug("connecting to %s", "plain text")
        try:
            try:
                raise OSError("dsn Zq7Sentinel")
            except OSError as cause:
                raise RuntimeError("wrapped") from cause
        except RuntimeError:
            logging.getLogger("another").exception("failed")
        logging.getLogger("third").info("ok", extra={"dsn": "Tail9x"})
    assert len(exposure.surfaces) == 3
    assert [where for where, _, _ in exposure.leaks()] == ["log another", "log third"]


def test_a_scenario_that_recorded_nothing_cannot_pass() -> None:
    with pytest.raises(AssertionError, match="did not run"):
        Exposure(SECRET).assert_clean()
