"""Keep secrets out of logs, reprs, errors and endpoints.

Two tools: :func:`mask_url` hides the password of a URL before it is shown,
and :func:`scrub` removes known secret strings from any text (driver error
messages sometimes echo the DSN they were given).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["MASK", "mask_url", "scrub", "url_secrets"]

MASK = "***"

# user:password@ inside the authority of any URL-like string, also when the
# string is too broken for urlsplit. The password runs to the LAST "@" before
# the path: redis-py and httpx accept an unencoded "@" in a password (they
# split at the last one), so masking up to the first would show the rest.
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^/?#\s]*)@"
)
# Query-string secrets (?password=..., &token=...).
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|secret|api_key)=)[^&\s]*")


def mask_url(url: object) -> str:
    """Return ``url`` as text with its password (and query-string secrets) masked.

    Never raises: anything that is not a string is rendered with ``str`` first.
    """
    text = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)


def url_secrets(url: object) -> list[str]:
    """The secret strings inside ``url`` (password, raw and percent-decoded)."""
    text = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    found: list[str] = []
    match = _USERINFO.search(text)
    if match and match["pw"]:
        found.append(match["pw"])
    else:
        try:
            password = urlsplit(text).password
        except ValueError:
            password = None
        if password:
            found.append(password)
    for m in _QUERY_SECRET.finditer(text):
        value = text[m.end(1) : m.end()]
        if value:
            found.append(value)
    decoded = [unquote(s) for s in found]
    return sorted({s for s in found + decoded if len(s) >= 1}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return mask_url(text)
