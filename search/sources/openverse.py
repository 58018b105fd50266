"""Openverse: no account needed, openly licensed images, thumbnails from its API host.

Openverse (https://api.openverse.org/v1/) indexes openly licensed images. Anonymous
callers get at most 20 results a page (a larger ``page_size`` is answered 401) and a
small budget (about 20 requests a minute, 200 a day, announced in
``X-RateLimit-Limit-<scope>`` / ``X-RateLimit-Available-<scope>``); registered
applications trade ``OPENVERSE_CLIENT_ID`` / ``OPENVERSE_CLIENT_SECRET`` for a bearer
token at ``auth_tokens/token/`` and may ask for more a page. No caller may page past
page 20. Pages are cached for 24 hours like Pixabay's, and the client keeps its own
budget so it never sends a request it knows will be refused.

Each result's ``thumbnail`` is served by the API host itself, so ranking and sharing
download only from that host, whatever site the original lives on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from .. import metrics
from ..budget import RateBudget
from ..config import Settings
from ..errors import (
    InvalidOpenverseCredentials,
    InvalidQuery,
    MalformedResponse,
    OpenverseRejected,
    OpenverseUnavailable,
    OpenverseUnreachable,
    SourceError,
)
from ..models import Candidates, Filters, Hit, Source, check_tag, key_fingerprint, normalise_tag
from ..store import Store
from ..upstream import (
    MAX_ERROR_BYTES,
    Invalid,
    Reply,
    TooLarge,
    cached_page,
    header_seconds,
    header_whole,
    optional_http_url,
    optional_whole,
    parse_json_off_loop,
    read_body,
    read_json,
    request,
    text,
)
from .base import Adapter

log = logging.getLogger(__name__)

NAME = "openverse"
LABEL = "Openverse"
DEFAULT_API_URL = "https://api.openverse.org/v1/"
ANONYMOUS_PAGE_SIZE = 20  # a larger page_size without a token is answered 401
REGISTERED_PAGE_SIZE = 500  # what the API allows a registered application
MAX_PAGES = 20  # Openverse refuses deeper pages for everyone
MAX_REACHABLE = ANONYMOUS_PAGE_SIZE * MAX_PAGES
# The anonymous budget Openverse documents; a registered key's is larger and is read
# from the headers of the first answer.
ANONYMOUS_PER_MINUTE, ANONYMOUS_PER_DAY = 20, 200
REGISTERED_PER_MINUTE, REGISTERED_PER_DAY = 100, 10_000
MAX_BODY_BYTES = 8 * 1024 * 1024  # 20 results are ~30 KB; 500 are ~1 MB

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$", re.I)
_PERIOD = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
           "hour": 3600, "d": 86400, "day": 86400}
_LICENSE = re.compile(r"^[a-z0-9-]{1,16}$")
_VERSION = re.compile(r"^[0-9.]{1,8}$")


def search_params(filters: Filters) -> dict[str, str]:
    """Pixabay-shaped filters in Openverse's terms; what it cannot filter is refused."""
    if filters.colors:
        raise InvalidQuery("Openverse cannot filter by colour; leave colors empty or use "
                           "source pixabay.")
    if filters.image_type == "vector":
        raise InvalidQuery("Openverse has no vector images; choose photo or illustration.")
    params: dict[str, str] = {}
    if filters.image_type == "photo":
        params["category"] = "photograph"
    elif filters.image_type == "illustration":
        params["category"] = "illustration"
    if filters.orientation == "horizontal":
        params["aspect_ratio"] = "wide"
    elif filters.orientation == "vertical":
        params["aspect_ratio"] = "tall"
    if not filters.safesearch:
        params["mature"] = "true"
    return params


def _text(value: object, cap: int, default: str = "") -> str:
    """A field's text, whitespace collapsed and capped; ``default`` when it is not text."""
    try:
        return " ".join(text(value, "text", max_chars=cap).split()) or default
    except Invalid:
        return default


def _web_url(value: object) -> str:
    """An absolute http(s) URL of sane length, or ''."""
    try:
        return optional_http_url(value, "url")
    except Invalid:
        return ""


def hit_from_api(raw: Mapping) -> Hit | None:
    """A Hit from one Openverse result; None when it lacks a UUID id or a thumbnail."""
    image_id = raw.get("id")
    thumbnail = _web_url(raw.get("thumbnail"))
    if not isinstance(image_id, str) or not _UUID.match(image_id) or not thumbnail:
        return None
    tags = raw.get("tags")
    if not isinstance(tags, list):
        tags = []
    names = tuple(dict.fromkeys(
        _text(t.get("name"), 40) for t in tags[:30] if isinstance(t, Mapping)
        and _text(t.get("name"), 40)))

    def num(name: str) -> int:
        try:
            return optional_whole(raw.get(name), name, hi=10**12)
        except Invalid:
            return 0

    licence = _text(raw.get("license"), 16).lower()
    version = _text(raw.get("license_version"), 8)
    return Hit(
        id=image_id.lower(),
        page_url=_web_url(raw.get("foreign_landing_url")) or thumbnail,
        image_url=_web_url(raw.get("url")) or thumbnail,
        preview_url=thumbnail,
        tags=names,
        user=_text(raw.get("creator"), 80, "unknown"),
        width=num("width"),
        height=num("height"),
        image_size=num("filesize"),
        source=NAME,
        title=_text(raw.get("title"), 200),
        license=licence if _LICENSE.match(licence) else "",
        license_version=version if _VERSION.match(version) else "",
        license_url=_web_url(raw.get("license_url")),
        provider=_text(raw.get("provider"), 40),
    )


class OpenverseClient:
    """Searches Openverse images on a shared session; anonymous unless given credentials.
    Also the request loop's ``Terms`` for Openverse."""

    name = NAME
    label = LABEL
    log = log

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str = DEFAULT_API_URL,
                 client_id: str | None = None, client_secret: str | None = None,
                 store: Store | None = None, timeout: float = 10.0, retries: int = 2,
                 backoff: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self._client_id = client_id or None
        self._client_secret = client_secret or None
        # Cached pages are keyed by endpoint and who asks: a registered client's pages are
        # larger than an anonymous one's. Vectors by endpoint alone.
        self.source = Source(NAME, self.api_url,
                             key_fingerprint(client_id) if client_id else "anonymous")
        self.store = store
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.retries = retries
        self.backoff = backoff
        self.clock = clock
        per_minute, per_day = ((ANONYMOUS_PER_MINUTE, ANONYMOUS_PER_DAY) if self.anonymous
                               else (REGISTERED_PER_MINUTE, REGISTERED_PER_DAY))
        self.minute = RateBudget(limit=per_minute, window=60.0, clock=clock, label=LABEL)
        self.day = RateBudget(limit=per_day, window=86400.0, clock=clock, label=LABEL)
        self.budgets = (self.minute, self.day)
        metrics.watch_budget(NAME, self.minute)
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        self._inflight: dict[str, asyncio.Future] = {}

    @property
    def anonymous(self) -> bool:
        return not (self._client_id and self._client_secret)

    @property
    def page_size(self) -> int:
        return ANONYMOUS_PAGE_SIZE if self.anonymous else REGISTERED_PAGE_SIZE

    @property
    def max_reachable(self) -> int:
        return self.page_size * MAX_PAGES

    async def candidates(self, tag: str, filters: Filters | None = None, limit: int = 200
                         ) -> Candidates:
        """Up to ``limit`` hits for ``tag``: pages of ``page_size``, never past page 20."""
        q = normalise_tag(check_tag(tag))
        extra = search_params(filters or Filters())
        limit = max(1, min(int(limit), self.max_reachable))
        size = min(self.page_size, limit) if not self.anonymous else self.page_size
        hits: list[Hit] = []
        seen: set[str] = set()
        total = 0
        sent = cached_pages = 0
        page = 1
        while len(hits) < limit:
            body, was_cached = await self._page({"q": q, **extra, "page": str(page),
                                                 "page_size": str(size)})
            sent += 0 if was_cached else 1
            cached_pages += 1 if was_cached else 0
            results = body.get("results")
            if not isinstance(results, list):
                raise MalformedResponse(LABEL)
            count, pages = body.get("result_count"), body.get("page_count")
            total = count if isinstance(count, int) and count >= 0 else len(results)
            pages = pages if isinstance(pages, int) and pages >= 0 else page
            for raw in results[:size]:
                hit = hit_from_api(raw) if isinstance(raw, Mapping) else None
                if hit is not None and hit.id not in seen:
                    seen.add(str(hit.id))
                    hits.append(hit)
            if len(results) < size or page >= min(pages, MAX_PAGES):
                break
            page += 1
        return Candidates(hits=hits[:limit], total_hits=min(total, self.max_reachable),
                          requests=sent, from_cache=sent == 0 and cached_pages > 0)

    async def _page(self, params: dict[str, str]) -> tuple[dict, bool]:
        return await cached_page(self.store, self.source, self._inflight, params,
                                 self._request)

    async def _request(self, params: dict[str, str]) -> dict:
        data = await request(self.session, self.api_url + "images/", self, params=params,
                             timeout=self.timeout, retries=self.retries,
                             backoff=self.backoff, headers=self._auth, renew=self._renew)
        body = await read_json(data, self)
        if not isinstance(body, dict):
            raise MalformedResponse(LABEL)
        return body

    # -- OAuth2 client credentials ---------------------------------------------------
    async def _auth(self) -> dict[str, str]:
        token = await self._bearer()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _renew(self, reply: Reply) -> bool:
        """A 401 to a registered client: its token expired or was revoked."""
        if self.anonymous:
            return False
        await self._bearer(renew=True)
        return True

    async def _bearer(self, *, renew: bool = False) -> str | None:
        if self.anonymous:
            return None
        async with self._token_lock:
            if renew or self._token is None or self.clock() >= self._token_expires:
                await self._fetch_token()
            return self._token

    async def _fetch_token(self) -> None:
        data = {"grant_type": "client_credentials", "client_id": self._client_id or "",
                "client_secret": self._client_secret or ""}
        try:
            async with self.session.post(self.api_url + "auth_tokens/token/", data=data,
                                         timeout=self.timeout) as resp:
                status = resp.status
                body_bytes = await read_body(resp, MAX_ERROR_BYTES, cut=status != 200)
        except TooLarge:
            raise MalformedResponse(LABEL) from None
        except TimeoutError:
            raise OpenverseUnavailable("the token request timed out") from None
        except aiohttp.ClientError as e:
            raise OpenverseUnavailable(type(e).__name__) from None
        if status in (400, 401, 403):
            raise InvalidOpenverseCredentials()
        if status != 200:
            raise OpenverseUnavailable(f"HTTP {status} for a token")
        try:
            body = await parse_json_off_loop(body_bytes)
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
        except (Invalid, ValueError, KeyError, TypeError, AttributeError):
            raise MalformedResponse(LABEL) from None
        if not isinstance(token, str) or not token or not 0 < expires_in <= 10**7:
            raise MalformedResponse(LABEL)
        self._token = token
        # Renewed before it expires: a minute early, or a tenth of a short lifetime.
        self._token_expires = self.clock() + expires_in - min(60.0, expires_in / 10)

    # -- what Openverse's answers mean (upstream.Terms) ---------------------------------
    def observe(self, headers: Mapping[str, str]) -> None:
        """Read ``X-RateLimit-Limit-<scope>: N/period`` and ``X-RateLimit-Available-<scope>``."""
        limits: dict[str, tuple[int, int]] = {}
        available: dict[str, int] = {}
        for name, value in headers.items():
            lower = name.lower()
            if lower.startswith("x-ratelimit-limit-"):
                m = _RATE.match(value)
                if m:
                    limits[lower[18:]] = (int(m.group(1)), _PERIOD[m.group(2).lower()])
            elif lower.startswith("x-ratelimit-available-"):
                count = header_whole(value, lo=0, hi=10**9)
                if count is not None:
                    available[lower[22:]] = count
        for scope, (limit, period) in limits.items():
            budget = self.day if period >= 3600 else self.minute
            if scope in available:
                budget.tighten(available[scope], period, limit)
            else:
                budget.limit = max(1, limit)

    def wait(self, reply: Reply) -> float | None:
        return header_seconds(reply.headers.get("Retry-After"))

    def refused(self, reply: Reply) -> SourceError:
        detail = _detail(reply.data.decode("utf-8", "replace"), reply.status)
        log.warning("openverse: HTTP %d: %s", reply.status, detail)
        return OpenverseRejected(detail, reply.status)

    def unavailable(self, why: str, *, unreachable: bool) -> SourceError:
        if unreachable:
            return OpenverseUnreachable(str(URL(self.api_url).with_user(None)), why)
        return OpenverseUnavailable(why)

    def malformed(self) -> SourceError:
        return MalformedResponse(LABEL)


def _detail(text: str, status: int) -> str:
    """Openverse's own reason from ``{"detail": ...}``, one short line."""
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict):
        detail = "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}"
                           for k, v in detail.items())
    detail = " ".join(str(detail or "").split())[:200]
    return detail or f"HTTP {status}"


class Openverse(Adapter):
    name = NAME
    label = LABEL
    home = "https://openverse.org"
    colour = 0x3C5BD1  # Openverse's blue

    def open(self, session: aiohttp.ClientSession, settings: Settings, store: Store | None,
             **options: Any) -> OpenverseClient:
        """Always offered: anonymously unless given client credentials."""
        mine = {k: v for k, v in options.items() if k in ("timeout", "retries", "backoff",
                                                          "clock")}
        return OpenverseClient(session, api_url=settings.openverse_api_url,
                               client_id=settings.openverse_client_id,
                               client_secret=settings.openverse_client_secret,
                               store=store, **mine)

    def endpoint(self, settings: Settings) -> str:
        return settings.openverse_api_url

    def image_hosts(self, settings: Settings) -> tuple[str, ...]:
        """Thumbnails come from the API host, whatever site the original lives on."""
        return (settings.openverse_host,)

    def rank_url(self, hit: Hit, variant: int) -> str:
        """Its thumbnail, served by the API host whatever site the original lives on."""
        return hit.preview_url

    def display_url(self, hit: Hit) -> str:
        return hit.preview_url

    def share_urls(self, hit: Hit) -> list[str]:
        """The originals live on many foreign hosts; the API host serves the thumbnail at
        full size, so the allow-list needs only that one host."""
        if not hit.preview_url:
            return []
        return [str(URL(hit.preview_url).update_query(full_size="true")), hit.preview_url]


ADAPTER = Openverse()
