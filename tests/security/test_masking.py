"""mask_url and url_secrets on the URLs people really write, broken ones included."""

from __future__ import annotations

import pytest

from resync.core.redact import mask_url, scrub, url_secrets


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # An unencoded "@" in the password: redis-py and httpx split at the last one.
        ("redis://:pa@ss@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("http://api:pa@ss@127.0.0.1/v1", "http://api:***@127.0.0.1/v1"),
        # An unencoded "/" cuts the authority short: mask up to the last "@".
        ("postgresql://u:pa:/ss@127.0.0.1/db", "postgresql://u:***@127.0.0.1/db"),
        ("http://u:pa/ss@host/x", "http://u:***@host/x"),
        # Inside a message, quoted or in a repr.
        ("cannot parse 'redis://:p/w@h/0' (x)", "cannot parse 'redis://:***@h/0' (x)"),
        ("<Pool url=postgresql://u:pw@db/app>", "<Pool url=postgresql://u:***@db/app>"),
        ("redis://:pw@h/0 and http://a:b@c/d", "redis://:***@h/0 and http://a:***@c/d"),
        # IPv6 hosts, unix sockets, host lists.
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("unix://:pw@/tmp/redis.sock?db=0", "unix://:***@/tmp/redis.sock?db=0"),
        ("redis+sentinel://:pw@h1:26379,h2/m", "redis+sentinel://:***@h1:26379,h2/m"),
        # No host where one belongs: everything after the user is hidden.
        ("redis://:pa@:/ss", "redis://:***"),
        # A whole value without its scheme.
        ("user:pw@host:6379", "user:***@host:6379"),
        ("u:pa@:/ss", "u:***"),
        # A list of URLs (DATABASE_REPLICA_URLS): each one masked.
        (
            "postgresql://u:a@h1/db,postgresql://u:b@h2/db",
            "postgresql://u:***@h1/db,postgresql://u:***@h2/db",
        ),
        ("postgresql://u:a@h1,postgresql://u:b@h2", "postgresql://u:***@h1,postgresql://u:***@h2"),
        # No password: left alone, "@" in a path or query included.
        ("http://registry:4873/@scope/pkg", "http://registry:4873/@scope/pkg"),
        ("http://[::1]/users/@me", "http://[::1]/users/@me"),
        ("redis://:pw@host/0?tag=a@b", "redis://:***@host/0?tag=a@b"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://:pa@ss@127.0.0.1:6379/0", "pa@ss"),
        ("postgresql://u:pa:/ss@127.0.0.1/db", "pa:/ss"),
        ("rediss://u:p%40ss@h:6380", "p@ss"),
        ("u:pa@:/ss", "pa@:/ss"),
    ],
)
def test_url_secrets_finds_the_whole_password_so_scrub_removes_it(url: str, password: str) -> None:
    secrets = url_secrets(url)
    assert password in secrets
    message = f"driver says: auth failed with {password!r} for {url}"
    assert password not in scrub(message, secrets)


def test_an_already_masked_url_has_no_secret_to_scrub() -> None:
    assert url_secrets("postgresql://u:***@h/db") == []
