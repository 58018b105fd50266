"""Pixabay: a key, sized webformat images on its CDN, 100 requests a minute, 24 h cache.

The client pages with ``per_page=200``, caches every page for 24 hours (Pixabay's
terms), keeps its own budget of requests per window so it never sends a request it
knows will be refused, and maps every failure to a typed error. The API key travels as
a query parameter, so full request URLs are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from .. import metrics
from ..budget import RateBudget
from ..config import Settings
from ..errors import (
    InvalidApiKey,
    MalformedResponse,
    PixabayRejected,
    PixabayUnavailable,
    PixabayUnreachable,
    SourceError,
)
from ..models import (
    LANGS,
    MAX_CANDIDATES,
    Candidates,
    Filters,
    Hit,
    Source,
    check_tag,
    key_fingerprint,
    normalise_tag,
)
from ..store import Store
from ..upstream import (
    MAX_BODY_BYTES,
    Invalid,
    Reply,
    cached_page,
    header_seconds,
    header_whole,
    http_url,
    optional_http_url,
    optional_whole,
    read_json,
    redact,
    request,
    text,
    whole,
)
from .base import Adapter, creator

log = logging.getLogger(__name__)

NAME = "pixabay"
PER_PAGE = 200
MAX_REACHABLE = MAX_CANDIDATES
MAX_TAGS_CHARS = 1000
MAX_USER_CHARS = 100
MAX_SIDE = 1_000_000  # pixels: no photo is wider
MAX_FILE_BYTES = 10**12
# The fields checked_hit reads: all a cached answer keeps.
HIT_FIELDS = ("id", "pageURL", "webformatURL", "previewURL", "largeImageURL", "tags", "user",
              "user_id", "imageWidth", "imageHeight", "imageSize")


def checked_hit(raw: object) -> Hit:
    """A Hit from an API hit, or ``Invalid`` saying which field is wrong."""
    if not isinstance(raw, Mapping):
        raise Invalid(f"a hit is a {type(raw).__name__}, not an object")
    image_id = whole(raw.get("id"), "id", lo=1)
    image_url = raw.get("webformatURL") or raw.get("largeImageURL")
    image_url = http_url(image_url, "webformatURL")
    tags = text(raw.get("tags"), "tags", max_chars=MAX_TAGS_CHARS)
    return Hit(
        id=image_id,
        page_url=(_link(raw.get("pageURL"), "pageURL")
                  or f"https://pixabay.com/photos/id-{image_id}/"),
        image_url=image_url,
        preview_url=_link(raw.get("previewURL"), "previewURL"),
        large_url=_link(raw.get("largeImageURL"), "largeImageURL"),
        tags=tuple(t.strip() for t in tags.split(",") if t.strip()),
        user=text(raw.get("user"), "user", max_chars=MAX_USER_CHARS, default="unknown"),
        user_id=optional_whole(raw.get("user_id"), "user_id"),
        width=optional_whole(raw.get("imageWidth"), "imageWidth", hi=MAX_SIDE),
        height=optional_whole(raw.get("imageHeight"), "imageHeight", hi=MAX_SIDE),
        image_size=optional_whole(raw.get("imageSize"), "imageSize", hi=MAX_FILE_BYTES),
        source=NAME,
    )


def hit_from_api(raw: object) -> Hit | None:
    """A Hit from an API hit; None when it fails ``checked_hit``."""
    try:
        return checked_hit(raw)
    except Invalid:
        return None


def _link(value: object, name: str) -> str:
    """An optional URL: one that is not http(s) is dropped (logged), not the whole hit."""
    try:
        return optional_http_url(value, name)
    except Invalid as e:
        log.info("pixabay: ignoring %s", e)
        return ""


def variant_url(hit: Hit, size: int) -> str:
    """The webformat URL at another size: Pixabay serves _180, _340, _640 and _960."""
    return hit.image_url.replace("_640.", f"_{size}.") if size != 640 else hit.image_url


def user_page_url(hit: Hit) -> str:
    return f"https://pixabay.com/users/{hit.user}-{hit.user_id}/"


class PixabayClient:
    """Searches Pixabay on a shared session; also the request loop's ``Terms`` for it."""

    name = NAME
    label = "Pixabay"
    log = log

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, key: str,
                 store: Store | None = None, rate_limit: int = 100, window: float = 60.0,
                 timeout: float = 10.0, retries: int = 2, backoff: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.session = session
        self.api_url = api_url
        self._key = key
        self.store = store
        self.source = Source(NAME, api_url, key_fingerprint(key))
        self.budget = RateBudget(limit=rate_limit, window=window, clock=clock)
        self.budgets = (self.budget,)
        metrics.watch_budget(NAME, self.budget)
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_body = max_body
        self._inflight: dict[str, asyncio.Future] = {}

    async def candidates(self, tag: str, filters: Filters | None = None, limit: int = 200
                         ) -> Candidates:
        """Up to ``limit`` hits for ``tag``, paging with per_page=200."""
        q = normalise_tag(check_tag(tag))
        limit = max(1, min(int(limit), MAX_REACHABLE))
        filters = filters or Filters()
        hits: list[Hit] = []
        seen: set[int | str] = set()
        total_hits = 0
        sent = 0
        cached_pages = 0
        dropped = 0
        page = 1
        while len(hits) < limit:
            body, was_cached = await self._page(q, filters, page)
            sent += 0 if was_cached else 1
            cached_pages += 1 if was_cached else 0
            raw_hits = body.get("hits")
            if not isinstance(raw_hits, list):
                raise MalformedResponse()
            try:
                total_hits = min(whole(body.get("totalHits") or 0, "totalHits"), MAX_REACHABLE)
            except Invalid:
                total_hits = len(raw_hits)
            for raw in raw_hits[:PER_PAGE]:
                hit = hit_from_api(raw)
                if hit is not None and hit.id not in seen:
                    seen.add(hit.id)
                    hits.append(hit)
            page_dropped = whole(body.get("dropped") or 0, "dropped", hi=PER_PAGE)
            dropped += page_dropped
            if len(raw_hits) + page_dropped < PER_PAGE or page * PER_PAGE >= total_hits:
                break
            page += 1
        if not hits and dropped:
            raise MalformedResponse()  # hits were there, but none could be read
        return Candidates(hits=hits[:limit], total_hits=total_hits, requests=sent,
                          from_cache=sent == 0 and cached_pages > 0)

    async def check_key(self, tag: str = "nature") -> int:
        """Prove the key works with one request, sent even when the answer is cached (the
        page is cached for searches, the request counted in the budget); totalHits."""
        body, _ = await self._page(normalise_tag(tag), Filters(), 1, fresh=True)
        try:
            return int(body.get("totalHits") or 0)
        except (TypeError, ValueError):
            raise MalformedResponse() from None

    async def _page(self, q: str, filters: Filters, page: int, *, fresh: bool = False
                    ) -> tuple[dict, bool]:
        params = {"q": q, **filters.params(), "page": str(page), "per_page": str(PER_PAGE)}
        return await cached_page(self.store, self.source, self._inflight, params,
                                 self._request, fresh=fresh)

    async def _request(self, params: dict[str, str]) -> dict:
        data = await request(self.session, self.api_url, self,
                             params={"key": self._key, **params}, timeout=self.timeout,
                             retries=self.retries, backoff=self.backoff,
                             max_body=self.max_body)
        return self._body(await read_json(data, self))

    def _body(self, body: Any) -> dict:
        """A 200's body, checked and cut down to the fields we use before it is cached."""
        if not isinstance(body, dict) or not isinstance(body.get("hits"), list):
            log.warning("pixabay: the answer has no list of hits")
            raise MalformedResponse()
        hits, dropped = [], []
        for raw in body["hits"][:PER_PAGE]:
            try:
                checked_hit(raw)
            except Invalid as e:
                dropped.append(str(e))
                continue
            hits.append({k: raw[k] for k in HIT_FIELDS if k in raw})
        if dropped:
            log.warning("pixabay: dropped %d of %d hits; first: %s", len(dropped),
                        len(body["hits"][:PER_PAGE]), dropped[0])
        return {"totalHits": body.get("totalHits"), "hits": hits, "dropped": len(dropped)}

    # -- what Pixabay's answers mean (upstream.Terms) -----------------------------------
    def observe(self, headers: Mapping[str, str]) -> None:
        """Read X-RateLimit-*: the requests left, until the window resets."""
        remaining = header_whole(headers.get("X-RateLimit-Remaining"), lo=0, hi=10**6)
        reset = header_seconds(headers.get("X-RateLimit-Reset"))
        if remaining is None or reset is None:
            return
        limit = header_whole(headers.get("X-RateLimit-Limit"), lo=1, hi=10**6)
        self.budget.tighten(remaining, reset,
                            None if limit is None else min(self.budget.limit, limit))

    def wait(self, reply: Reply) -> float | None:
        reset = header_seconds(reply.headers.get("X-RateLimit-Reset"))
        return reset if reset is not None else header_seconds(reply.headers.get("Retry-After"))

    def refused(self, reply: Reply) -> SourceError:
        # Pixabay's text may echo the request, key included: it goes to the log with the
        # key redacted, and members get our own sentence.
        detail = redact(" ".join(reply.data.decode("utf-8", "replace").split()), self._key,
                        param="key")
        detail = detail[:300] or f"HTTP {reply.status}"
        log.warning("pixabay: HTTP %d: %s", reply.status, detail)
        if reply.status in (401, 403) or "invalid or missing api key" in detail.lower():
            return InvalidApiKey(detail)
        return PixabayRejected(detail, reply.status)

    def unavailable(self, why: str, *, unreachable: bool) -> SourceError:
        if unreachable:
            shown = URL(self.api_url).with_query(None).with_user(None)  # no secrets in it
            return PixabayUnreachable(str(shown), why)
        return PixabayUnavailable(why)

    def malformed(self) -> SourceError:
        return MalformedResponse()


class Pixabay(Adapter):
    name = NAME
    label = "Pixabay"
    home = "https://pixabay.com"
    colour = 0x2EC66D  # Pixabay's green
    required = ("PIXABAY_API_KEY",)
    languages = LANGS  # https://pixabay.com/api/docs/#api_search_images: lang
    table_column = "tags"

    def missing(self, name: str) -> str | None:
        return ("PIXABAY_API_KEY is not set; put your key from https://pixabay.com/api/docs/ in "
                "the environment or in .env (see .env.example), or search Openverse, which "
                "needs no key: SEARCH_SOURCE=openverse (the CLI: --source openverse).")

    def open(self, session: aiohttp.ClientSession, settings: Settings, store: Store | None,
             **options: Any) -> PixabayClient | None:
        if not settings.pixabay_api_key:
            return None
        return PixabayClient(session, api_url=settings.pixabay_api_url,
                             key=settings.pixabay_api_key, store=store,
                             rate_limit=settings.pixabay_rate_limit, **options)

    def endpoint(self, settings: Settings) -> str:
        return settings.pixabay_api_url

    def rank_url(self, hit: Hit, variant: int) -> str:
        """Its webformat at ``variant`` pixels."""
        return variant_url(hit, variant)

    def display_url(self, hit: Hit) -> str:
        return hit.image_url

    def share_urls(self, hit: Hit) -> list[str]:
        return list(dict.fromkeys(u for u in (hit.large_url, hit.image_url) if u))

    def licence_label(self, hit: Hit) -> str:
        return ""  # one licence for every image: the Pixabay Content License

    def credit(self, hit: Hit, max_name: int = 256) -> str:
        return f"Image by {creator(hit, max_name)} on Pixabay"

    def short_credit(self, hit: Hit) -> str:
        return f"{hit.user} · Pixabay"

    def table_text(self, hit: Hit) -> str:
        return ", ".join(hit.tags)

    def json_fields(self, hit: Hit) -> Mapping[str, object]:
        return {}

    def cli_footer(self) -> str:
        return f"Images from {self.label} ({self.home})."


ADAPTER = Pixabay()
