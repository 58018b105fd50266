"""Talking to a source API: the one request loop, and the checks on what comes back.

``request`` is the loop every source uses: its budget first, then the request, retries
with backoff on timeouts, connection errors and 5xx, bodies read up to a cap, waits
from headers charged to the right window, metrics and log lines per answer. A source
supplies only ``Terms``: what its statuses and headers mean, as its own errors.

Every value in a remote JSON body or header is hostile until one of these accepts it:
numbers are whole and bounded (``1e400`` is infinity in Python's JSON, and an id past
2**63 does not fit SQLite), strings are strings and capped, URLs are absolute http(s),
waits from headers are finite, not negative and at most a day (``inf``, ``nan`` or
``1e12`` are unreadable, never a lock-out), and a body is read up to a cap and must be
UTF-8 JSON. ``Invalid`` carries the reason that is logged for a dropped row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

import aiohttp
from yarl import URL

from . import metrics
from .budget import RateBudget, acquire_all, hold_for
from .errors import SourceError

MAX_ID = 2**63 - 1  # SQLite's INTEGER
# Seconds: a wait in a header past this is nonsense, not an instruction. A day is the
# longest window any source documents (Openverse's anonymous day budget); each wait is
# then capped at the window it is charged to (a minute for a per-minute budget).
MAX_HEADER_WAIT = 86400.0
MAX_BODY_BYTES = 8 * 1024 * 1024  # a page of results is well under 1 MB
MAX_ERROR_BYTES = 16 * 1024  # of an error's text, for the log
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


def header_seconds(value: str | None, *, most: float = MAX_HEADER_WAIT) -> float | None:
    """A wait from a header in seconds, from 0 to ``most``; None if absent or unreadable.

    ``inf``, ``nan``, ``-5`` and ``1e12`` are unreadable: a caller falls back to what it
    does when no wait is given, and no header can lock a source out."""
    if value is None:
        return None
    try:
        seconds = float(value.strip()[:32])
    except ValueError:
        return None
    if not math.isfinite(seconds) or not 0.0 <= seconds <= most:
        return None
    return seconds


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


@dataclass(frozen=True)
class Reply:
    """One answer as the loop read it: the body is capped (an error's text cut short)."""

    status: int
    headers: Mapping[str, str]
    data: bytes


class Terms(Protocol):
    """What one source's API means by its answers; ``request`` does everything else."""

    name: str  # the metrics label and the log lines' prefix
    label: str  # who refuses, in the sentence a member sees
    log: logging.Logger

    @property
    def budgets(self) -> Sequence[RateBudget]:
        """Every budget a request spends from; a 429's wait goes to one of them."""

    def observe(self, headers: Mapping[str, str]) -> None:
        """Read the rate headers of any answer into the budgets."""

    def wait(self, reply: Reply) -> float | None:
        """A 429's wait in seconds, from the headers; None when it gives none we can read."""

    def refused(self, reply: Reply) -> SourceError:
        """The error for a 4xx other than 429 (the text is for the log only)."""

    def unavailable(self, why: str, *, unreachable: bool) -> SourceError:
        """The error once every attempt failed; ``unreachable``: no connection at all."""

    def malformed(self) -> SourceError:
        """The error for an answer too large, or not the JSON we expect."""


async def request(session: aiohttp.ClientSession, url: str, terms: Terms, *,
                  params: Mapping[str, str], timeout: aiohttp.ClientTimeout,
                  retries: int, backoff: float, max_body: int = MAX_BODY_BYTES,
                  headers: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
                  renew: Callable[[Reply], Awaitable[bool]] | None = None) -> bytes:
    """GET ``url`` until a 200's body comes back (at most ``max_body`` bytes), or raise
    the source's error. ``headers`` gives each attempt's headers (a bearer token);
    ``renew(reply)`` is offered a 401 once, and True sends again at no attempt's cost.

    ``params`` may hold a key: no URL is ever logged."""
    last = "no answer"
    unreachable = renewed = False
    attempt = 0
    while attempt <= retries:
        if attempt:
            await asyncio.sleep(backoff * 2 ** (attempt - 1))
        sent = await headers() if headers is not None else {}
        # With REDIS_URL the source's windows are shared by every process (search.shared).
        shared = getattr(terms, "shared", None)
        if shared is not None:
            await shared.take()
        else:
            acquire_all(terms.budgets)
        status = 0
        try:
            async with session.get(url, params=params, headers=sent, timeout=timeout) as resp:
                terms.observe(resp.headers)
                if shared is not None:
                    await shared.learn_from(terms.budgets)
                status = resp.status
                data = await read_body(resp, max_body if status == 200 else MAX_ERROR_BYTES,
                                       cut=status != 200)
                reply = Reply(status, resp.headers, data)
        except TooLarge as e:
            metrics.UPSTREAM_REQUESTS.labels(terms.name, str(status)).inc()
            terms.log.warning("%s: refused an answer %s", terms.name, e)
            raise terms.malformed() from None
        except TimeoutError:
            metrics.UPSTREAM_REQUESTS.labels(terms.name, "timeout").inc()
            last, unreachable = "timed out", False
            terms.log.warning("%s: request timed out (attempt %d)", terms.name, attempt + 1)
            attempt += 1
            continue
        except aiohttp.ClientError as e:
            metrics.UPSTREAM_REQUESTS.labels(terms.name, "error").inc()
            last = type(e).__name__
            unreachable = isinstance(e, aiohttp.ClientConnectorError)
            terms.log.warning("%s: %s (attempt %d)", terms.name, last, attempt + 1)
            attempt += 1
            continue
        unreachable = False
        metrics.UPSTREAM_REQUESTS.labels(terms.name, str(status)).inc()
        if status == 200:
            return reply.data
        if status == 429:
            held = hold_for(terms.budgets, terms.wait(reply), terms.label)
            if shared is not None:
                await shared.learn_from(terms.budgets)
            raise held
        if status == 401 and renew is not None and not renewed and await renew(reply):
            renewed = True  # a renewed credential: the same request again, once
            continue
        if status >= 500:
            last = f"HTTP {status}"
            terms.log.warning("%s: HTTP %d (attempt %d)", terms.name, status, attempt + 1)
            attempt += 1
            continue
        raise terms.refused(reply)
    raise terms.unavailable(last, unreachable=unreachable)


async def read_json(data: bytes, terms: Terms) -> Any:
    """A 200's body as JSON, or the source's ``malformed`` error (the reason logged)."""
    try:
        return await parse_json_off_loop(data)
    except Invalid as e:
        terms.log.warning("%s: unreadable answer: %s", terms.name, e)
        raise terms.malformed() from None
