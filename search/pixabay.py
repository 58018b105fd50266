"""The retriever: a Pixabay API client on one shared aiohttp session.

It pages with ``per_page=200``, caches every page for 24 hours (Pixabay's terms),
keeps its own budget of requests per window so it never sends a request it knows
will be refused, and maps every failure to a typed error. The API key travels as a
query parameter, so full request URLs are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import aiohttp
from yarl import URL

from . import metrics
from .errors import (
    InvalidApiKey,
    MalformedResponse,
    PixabayRejected,
    PixabayUnavailable,
    PixabayUnreachable,
    RateLimited,
)
from .models import (  # noqa: F401  (re-exported: the vocabularies' old home)
    CATEGORIES,
    COLORS,
    IMAGE_TYPES,
    LANGS,
    MAX_CANDIDATES,
    ORDERS,
    ORIENTATIONS,
    Filters,
    Source,
    check_tag,
    key_fingerprint,
)
from .store import Store
from .upstream import (
    MAX_WAIT,
    Invalid,
    TooLarge,
    cached_page,
    header_seconds,
    header_whole,
    http_url,
    optional_http_url,
    optional_whole,
    parse_json_off_loop,
    read_body,
    redact,
    text,
    whole,
)

log = logging.getLogger(__name__)

PROVIDER = "pixabay"
PER_PAGE = 200
MAX_REACHABLE = MAX_CANDIDATES
# Pixabay's answers are under 1 MB at 200 hits; anything past this is refused unread.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ERROR_BYTES = 16 * 1024  # of an error's text, for the log
MAX_TAGS_CHARS = 1000
MAX_USER_CHARS = 100
MAX_SIDE = 1_000_000  # pixels: no photo is wider
MAX_FILE_BYTES = 10**12


@dataclass(frozen=True)
class Hit:
    """One image from a source, with only the fields we use; unknown fields are dropped.

    Pixabay ids are numbers; Openverse ids are UUID strings. ``source`` keeps them apart
    (see ``search.sources`` for what each source's fields mean).
    """

    id: int | str
    page_url: str
    image_url: str
    preview_url: str = ""
    large_url: str = ""
    tags: tuple[str, ...] = ()
    user: str = "unknown"
    user_id: int = 0
    width: int = 0
    height: int = 0
    image_size: int = 0
    source: str = PROVIDER
    title: str = ""
    license: str = ""
    license_version: str = ""
    license_url: str = ""
    provider: str = ""

    @property
    def user_page_url(self) -> str:
        return f"https://pixabay.com/users/{self.user}-{self.user_id}/"

    def variant_url(self, size: int) -> str:
        """The webformat URL at another size: Pixabay serves _180, _340, _640 and _960."""
        return self.image_url.replace("_640.", f"_{size}.") if size != 640 else self.image_url

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Hit:
        d = dict(d)
        d["tags"] = tuple(d.get("tags") or ())
        return cls(**d)

    @classmethod
    def from_api(cls, raw: object) -> Hit | None:
        """Build a Hit from an API hit; None when it fails ``check_hit``."""
        try:
            return cls.checked(raw)
        except Invalid:
            return None

    @classmethod
    def checked(cls, raw: object) -> Hit:
        """Build a Hit from an API hit, or ``Invalid`` saying which field is wrong."""
        if not isinstance(raw, Mapping):
            raise Invalid(f"a hit is a {type(raw).__name__}, not an object")
        image_id = whole(raw.get("id"), "id", lo=1)
        image_url = raw.get("webformatURL") or raw.get("largeImageURL")
        image_url = http_url(image_url, "webformatURL")
        tags = text(raw.get("tags"), "tags", max_chars=MAX_TAGS_CHARS)
        return cls(
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
        )


def _link(value: object, name: str) -> str:
    """An optional URL: one that is not http(s) is dropped (logged), not the whole hit."""
    try:
        return optional_http_url(value, name)
    except Invalid as e:
        log.info("pixabay: ignoring %s", e)
        return ""


@dataclass
class Candidates:
    hits: list[Hit]
    total_hits: int
    requests: int = 0  # API requests actually sent for this call
    from_cache: bool = False


@dataclass
class RateBudget:
    """A sliding window of our own requests, tightened by what Pixabay's headers say."""

    limit: int = 100
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    sent: deque = field(default_factory=deque)
    server_remaining: int | None = None
    server_reset_at: float = 0.0
    label: str = "Pixabay"  # who refuses, in the sentence a user sees

    def acquire(self) -> None:
        now = self.clock()
        while self.sent and now - self.sent[0] >= self.window:
            self.sent.popleft()
        if now >= self.server_reset_at:
            self.server_remaining = None
        if self.server_remaining is not None and self.server_remaining <= 0:
            raise RateLimited(self.server_reset_at - now, self.label, cap=self.window)
        if len(self.sent) >= self.limit:
            raise RateLimited(self.sent[0] + self.window - now, self.label, cap=self.window)
        self.sent.append(now)
        if self.server_remaining is not None:
            self.server_remaining -= 1

    def remaining(self) -> int:
        """Requests this budget would still allow now."""
        now = self.clock()
        ours = self.limit - sum(1 for t in self.sent if now - t < self.window)
        if self.server_remaining is not None and now < self.server_reset_at:
            return max(0, min(ours, self.server_remaining))
        return max(0, ours)

    def observe(self, headers: Mapping[str, str]) -> float | None:
        """Read X-RateLimit-*; returns the reset delay in seconds when given.

        The reset is clamped to MAX_WAIT: a header of ``inf`` or ``1e12`` must not lock
        searches out until a restart.
        """
        remaining = header_whole(headers.get("X-RateLimit-Remaining"), lo=0, hi=10**6)
        reset = header_seconds(headers.get("X-RateLimit-Reset"))
        if remaining is None or reset is None:
            return None
        now = self.clock()
        self.server_remaining = remaining
        self.server_reset_at = now + reset
        limit = header_whole(headers.get("X-RateLimit-Limit"), lo=1, hi=10**6)
        if limit is not None:
            self.limit = min(self.limit, limit)
        return reset


def normalise_tag(tag: str) -> str:
    return " ".join(tag.lower().split())


class PixabayClient:
    name = PROVIDER

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, key: str,
                 store: Store | None = None, rate_limit: int = 100, window: float = 60.0,
                 timeout: float = 10.0, retries: int = 2, backoff: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.session = session
        self.api_url = api_url
        self._key = key
        self.store = store
        self.source = Source(PROVIDER, api_url, key_fingerprint(key))
        self.budget = RateBudget(limit=rate_limit, window=window, clock=clock)
        metrics.watch_budget(PROVIDER, self.budget)
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
                hit = Hit.from_api(raw)
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
        last = "no answer"
        unreachable = False
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            self.budget.acquire()
            try:
                async with self.session.get(self.api_url, params={"key": self._key, **params},
                                            timeout=self.timeout) as resp:
                    reset = self.budget.observe(resp.headers)
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                    data = await read_body(resp, self.max_body if status == 200
                                           else MAX_ERROR_BYTES, cut=status != 200)
            except TooLarge as e:
                metrics.UPSTREAM_REQUESTS.labels(PROVIDER, str(status)).inc()
                log.warning("pixabay: refused an answer %s", e)
                raise MalformedResponse() from None
            except TimeoutError:
                metrics.UPSTREAM_REQUESTS.labels(PROVIDER, "timeout").inc()
                last = "timed out"
                log.warning("pixabay: request timed out (attempt %d)", attempt + 1)
                continue
            except aiohttp.ClientError as e:
                metrics.UPSTREAM_REQUESTS.labels(PROVIDER, "error").inc()
                last = type(e).__name__
                unreachable = isinstance(e, aiohttp.ClientConnectorError)
                log.warning("pixabay: %s (attempt %d)", last, attempt + 1)
                continue
            unreachable = False
            metrics.UPSTREAM_REQUESTS.labels(PROVIDER, str(status)).inc()
            if status == 200:
                return await self._body(data)
            if status == 429:
                retry = reset if reset is not None else header_seconds(retry_after)
                retry = MAX_WAIT if retry is None else retry
                self.budget.server_remaining = 0
                self.budget.server_reset_at = self.budget.clock() + retry
                raise RateLimited(retry)
            if status >= 500:
                last = f"HTTP {status}"
                log.warning("pixabay: HTTP %d (attempt %d)", status, attempt + 1)
                continue
            # Pixabay's text may echo the request, key included: it goes to the log with the
            # key redacted, and members get our own sentence.
            detail = redact(" ".join(data.decode("utf-8", "replace").split()), self._key,
                            param="key")
            detail = detail[:300] or f"HTTP {status}"
            log.warning("pixabay: HTTP %d: %s", status, detail)
            if status in (401, 403) or "invalid or missing api key" in detail.lower():
                raise InvalidApiKey(detail)
            raise PixabayRejected(detail, status)
        if unreachable:
            shown = URL(self.api_url).with_query(None).with_user(None)  # no secrets in it
            raise PixabayUnreachable(str(shown), last)
        raise PixabayUnavailable(last)

    async def _body(self, data: bytes) -> dict:
        """A 200's body, checked and cut down to the fields we use before it is cached."""
        try:
            body = await parse_json_off_loop(data)
        except Invalid as e:
            log.warning("pixabay: unreadable answer: %s", e)
            raise MalformedResponse() from None
        if not isinstance(body, dict) or not isinstance(body.get("hits"), list):
            log.warning("pixabay: the answer has no list of hits")
            raise MalformedResponse()
        hits, dropped = [], []
        for raw in body["hits"][:PER_PAGE]:
            try:
                Hit.checked(raw)
            except Invalid as e:
                dropped.append(str(e))
                continue
            hits.append({k: raw[k] for k in HIT_FIELDS if k in raw})
        if dropped:
            log.warning("pixabay: dropped %d of %d hits; first: %s", len(dropped),
                        len(body["hits"][:PER_PAGE]), dropped[0])
        return {"totalHits": body.get("totalHits"), "hits": hits, "dropped": len(dropped)}


# The fields Hit.checked reads: all a cached answer keeps.
HIT_FIELDS = ("id", "pageURL", "webformatURL", "previewURL", "largeImageURL", "tags", "user",
              "user_id", "imageWidth", "imageHeight", "imageSize")
