"""What a source API sends, checked before we trust it: bodies, JSON, numbers, strings, URLs.

Every value in a remote JSON body or header is hostile until one of these accepts it:
numbers are whole and bounded (``1e400`` is infinity in Python's JSON, and an id past
2**63 does not fit SQLite), strings are strings and capped, URLs are absolute http(s),
waits from headers are finite and at most ``MAX_WAIT`` seconds, and a body is read up
to a cap and must be UTF-8 JSON. Any source client (Pixabay, Openverse) builds its
schema from these; ``Invalid`` carries the reason that is logged for a dropped row.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
from yarl import URL

MAX_ID = 2**63 - 1  # SQLite's INTEGER
MAX_WAIT = 60.0  # seconds: no header may make us wait longer than this
MAX_URL_CHARS = 2048
# Parsing a JSON body this large takes a few milliseconds: larger ones go to a thread.
PARSE_ON_LOOP_BYTES = 256 * 1024


class Invalid(ValueError):
    """A value that failed its check; ``str()`` is the reason, for the log."""


class TooLarge(Exception):
    def __init__(self, limit: int, seen: int | None = None) -> None:
        self.limit, self.seen = limit, seen
        super().__init__(f"over {limit} bytes" + (f" ({seen} declared)" if seen else ""))


def whole(value: Any, name: str, *, lo: int = 0, hi: int = MAX_ID) -> int:
    """``value`` as an int from ``lo`` to ``hi``: an int, an integral finite float, or digits."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        number = int(value)
    if number is None or not lo <= number <= hi:
        raise Invalid(f"{name} is not a whole number from {lo} to {hi}: {_show(value)}")
    return number


def optional_whole(value: Any, name: str, *, lo: int = 0, hi: int = MAX_ID,
                   default: int = 0) -> int:
    """Like ``whole``, with ``default`` for a missing or empty value."""
    return default if value is None or value == "" else whole(value, name, lo=lo, hi=hi)


def text(value: Any, name: str, *, max_chars: int, default: str = "") -> str:
    """A string, stripped of control characters and cut to ``max_chars``."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise Invalid(f"{name} is not a string: {_show(value)}")
    cleaned = "".join(c if c.isprintable() else " " for c in value[:max_chars * 2])
    return cleaned.strip()[:max_chars] or default


def http_url(value: Any, name: str, *, max_chars: int = MAX_URL_CHARS) -> str:
    """An absolute http(s) URL with a host, at most ``max_chars`` long."""
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise Invalid(f"{name} is not a URL of at most {max_chars} characters: {_show(value)}")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise Invalid(f"{name} holds spaces or control characters: {_show(value)}")
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise Invalid(f"{name} is not a URL: {_show(value)}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Invalid(f"{name} is not an http(s) URL: {_show(value)}")
    return value


def optional_http_url(value: Any, name: str, *, max_chars: int = MAX_URL_CHARS) -> str:
    return "" if value is None or value == "" else http_url(value, name, max_chars=max_chars)


def header_seconds(value: str | None, *, cap: float = MAX_WAIT) -> float | None:
    """A wait from a header in seconds, from 0 to ``cap``; None if absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip()[:32])
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)  # inf and 1e12 become the cap


def header_whole(value: str | None, *, lo: int, hi: int) -> int | None:
    """A count from a header, clamped to ``lo``..``hi``; None if absent or unreadable."""
    if value is None:
        return None
    raw = value.strip()
    if not raw or len(raw) > 20 or not raw.isascii() or not raw.lstrip("-").isdigit():
        return None
    return min(max(int(raw), lo), hi)


async def read_body(resp: aiohttp.ClientResponse, limit: int, *, cut: bool = False) -> bytes:
    """The body, refused (``TooLarge``) past ``limit`` bytes before more is read.

    With ``cut`` the first ``limit`` bytes are returned instead, for error texts.
    """
    declared = resp.content_length
    if declared is not None and declared > limit and not cut:
        raise TooLarge(limit, declared)
    data = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            if cut:
                return bytes(data[:limit])
            raise TooLarge(limit)
    return bytes(data)


def _no_constants(token: str) -> Any:
    raise Invalid(f"{token} is not a JSON number")


def parse_json(data: bytes) -> Any:
    """UTF-8 JSON text to Python values; ``Invalid`` for anything else (NaN, Infinity too)."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError as e:
        raise Invalid(f"the body is not UTF-8 (byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, digits past int's limit
        raise Invalid(f"the body is not JSON: {str(e)[:100]}") from None


async def parse_json_off_loop(data: bytes) -> Any:
    """``parse_json``, on a thread when the body is large enough to stall the event loop."""
    if len(data) > PARSE_ON_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, data)
    return parse_json(data)


def redact(text_: str, secret: str, *, param: str | None = None) -> str:
    """``text_`` with ``secret`` (as typed or URL-encoded in any usual way) replaced by
    [redacted], and so is every value of the query parameter ``param``."""
    if param:
        text_ = re.sub(rf"(?i)(\b{re.escape(param)}=)[^&\s\"'<>]*", r"\1[redacted]", text_)
    if secret:
        forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
                 str(URL.build(query={"k": secret}).query_string)[2:]}
        for form in sorted(forms, key=len, reverse=True):
            text_ = text_.replace(form, "[redacted]")
    return text_


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


async def cached_page(store: Any, source: Any, inflight: dict[str, asyncio.Future],
                      params: dict[str, str], request: Callable[[dict[str, str]], Awaitable[dict]],
                      *, fresh: bool = False) -> tuple[dict, bool]:
    """One API page: from the 24 h response cache, else one request however many ask at once.

    ``store`` keys the cached page by the source's endpoint (and key fingerprint) as well
    as ``params``; ``fresh`` skips the cache read but still writes. Returns (body,
    whether it came without a request of this caller's own)."""
    key = json.dumps(sorted(params.items()), separators=(",", ":"))
    if store is not None and not fresh:
        cached = await store.get_response(source, key)
        if cached is not None:
            return cached, True
    if key in inflight:  # the same page asked twice at once: one request
        return await asyncio.shield(inflight[key]), True
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    inflight[key] = future
    try:
        body = await request(params)
        if store is not None:
            await store.put_response(source, key, body)
        future.set_result(body)
        return body, False
    except BaseException as e:
        future.set_exception(e)
        future.exception()  # mark retrieved: waiters re-raise it themselves
        raise
    finally:
        del inflight[key]
