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

# A URL-like token: a scheme (maybe left out), then everything up to
# whitespace, a quote or an angle bracket (how URLs end in reprs and messages)
_SCHEME = r"(?:[A-Za-z][A-Za-z0-9+.\-]*)?://"
# ... and it ends where the next URL of a list starts ("url1,url2").
_URL_TOKEN = re.compile(rf"(?P<scheme>{_SCHEME})(?P<rest>(?:(?!{_SCHEME})[^\s'\"<>])+)")
# host[:port] as it ends an authority: a name or an IPv6 literal, digits for a port.
_HOST_PORT = re.compile(r"(?:\[[0-9A-Za-z:.%]*\]|[A-Za-z0-9._~%!$&*+;=\-]+)(?::\d*)?")
# One host or a comma-separated list (Sentinel, Cluster and replica URLs).
# The trailing comma is the one before the next URL of a list.
_HOSTS = re.compile(rf"{_HOST_PORT.pattern}(?:,{_HOST_PORT.pattern})*,?")
# Query-string secrets (?password=..., &token=...).
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|secret|api_key)=)[^&\s]*")


def _password_span(rest: str) -> tuple[int, int] | None:
    """Where the password is in ``rest`` (a URL after ``scheme://``), or None.

    The userinfo ends at the last "@" of the authority when what follows it is
    a host -- redis-py and httpx accept an unencoded "@" in a password and
    split at the last one. When it is not (an unencoded "/", "?" or "#" in
    the password cut the authority short), or when the authority reads
    "user:word" with no "@" at all, the password runs to the last "@" of the
    whole URL: a broken URL is masked too much rather than too little.
    """
    cut = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    authority = rest[: min(cut)] if cut else rest
    at = authority.rfind("@")
    if at >= 0 and _HOSTS.fullmatch(authority[at + 1 :]):
        end = at
    elif at < 0 and (not authority or _HOSTS.fullmatch(authority)):
        return None  # host[:port] and no user info
    else:
        end = rest.rfind("@")
        if end < 0:
            return None
    colon = rest.find(":", 0, end)
    if colon < 0 or "/" in rest[:colon]:
        return None  # a user name and no password
    after = rest[end + 1 :]
    cut = [i for i in (after.find(c) for c in "/?#") if i >= 0]
    host = after[: min(cut)] if cut else after
    if host and not _HOSTS.fullmatch(host):
        return colon + 1, len(rest)  # no host where one belongs: hide all of it
    return colon + 1, end


def _mask_token(match: re.Match[str]) -> str:
    rest = match["rest"]
    span = _password_span(rest)
    if span is not None:
        rest = f"{rest[: span[0]]}{MASK}{rest[span[1] :]}"
    return match["scheme"] + rest


def _is_bare_value(text: str) -> bool:
    """One value with user info and no scheme ("user:password@host")?"""
    return "://" not in text and "@" in text and not any(c.isspace() for c in text)


def mask_url(url: object) -> str:
    """Return ``url`` as text with its password (and query-string secrets) masked.

    Works on any text: every ``scheme://`` URL in it is masked, and so is a
    whole value written without a scheme (``user:password@host``). Never
    raises: anything that is not a string is rendered with ``str`` first.
    """
    text = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    if _is_bare_value(text):
        # One value with no scheme ("user:password@host", a scheme forgotten).
        span = _password_span(text)
        if span is not None:
            text = f"{text[: span[0]]}{MASK}{text[span[1] :]}"
    text = _URL_TOKEN.sub(_mask_token, text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)


def url_secrets(url: object) -> list[str]:
    """The secret strings inside ``url`` (password, raw and percent-decoded)."""
    text = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    found: list[str] = []
    if _is_bare_value(text):
        span = _password_span(text)
        if span is not None and span[1] > span[0]:
            found.append(text[span[0] : span[1]])
    for match in _URL_TOKEN.finditer(text):
        span = _password_span(match["rest"])
        if span is not None and span[1] > span[0]:
            found.append(match["rest"][span[0] : span[1]])
    if not found:
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
    # An already masked URL has "***" for a password: nothing to hide there.
    return sorted({s for s in found + decoded if s and s != MASK}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return mask_url(text)
