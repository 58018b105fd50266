"""A fake Pixabay (API + image CDN) on 127.0.0.1, for testing the real aiohttp client.

It follows https://pixabay.com/api/docs/ for ``GET /api/`` and serves real JPEGs of
the synthetic scenes in ``bench/fakes/scenes.py`` under ``/get/<token>_<size>.jpg``, so
every ranking has a ground truth (``fake.truth[id] -> Scene``).

Quick use::

    async with FakePixabay() as fake:          # default: catalogue(per_scene=10)
        async with aiohttp.ClientSession() as s:
            r = await s.get(fake.api_url, params={"key": fake.key, "q": "circle"})

Construction and lifecycle
--------------------------
``FakePixabay(entries=None, *, key="test-key", per_scene=10, rate_limit=100, window=60.0)``
    ``entries``: the stock library (``CatalogueEntry`` list); default
    ``default_catalogue(per_scene)`` = ``bench.fakes.scenes.catalogue(per_scene)``
    (1440 photos, 240 per shape, 60 per shape+colour, 10 per scene).
``await fake.start()`` / ``await fake.close()``, or ``async with FakePixabay() as fake``.
    ``close()`` releases hung requests (their connections are dropped) and stops the
    server. After ``start()``: ``host`` ("127.0.0.1"), ``port``, ``api_url``
    ("http://127.0.0.1:PORT/api/"), ``key``.

API behaviour (``GET /api/``)
-----------------------------
* ``key`` wrong/missing: 400 text/plain ``[ERROR 400] Invalid or missing API key ([key]).``
* ``q`` (at most 100 characters, else 400): words split on spaces or ``+``; every word
  must equal one of the hit's tags (case-insensitive). Empty ``q``: everything.
* ``lang`` (documented list; validated, does not change results: tags are English),
  ``id`` (just that image, other filters still apply; unknown id: no hits),
  ``image_type`` (every hit is a ``photo``: ``illustration``/``vector`` find nothing),
  ``orientation`` (horizontal: wider than tall, vertical: taller than wide; squares
  match neither), ``category`` (from the background: snow/grass -> nature,
  sand -> travel, night -> backgrounds; ``fake.categories[id]``), ``min_width``,
  ``min_height`` (on imageWidth/imageHeight), ``colors`` (comma list, any of; the
  scene colour, purple -> lilac; ``fake.colours[id]``), ``editors_choice``
  (``fake.editors_choice_ids``), ``safesearch`` (true drops ``fake.unsafe_ids``),
  ``order`` (popular: views descending; latest: id descending), ``page`` (default 1),
  ``per_page`` (3-200, default 20). Unknown parameters are ignored. An invalid value
  gets 400 text/plain naming the parameter, e.g. ``[ERROR 400] "orientation" must be
  one of: all, horizontal, vertical.``; ``per_page`` out of 3-200 gets
  ``[ERROR 400] "per_page" is out of valid range.``
* 200 ``application/json``: ``{"total", "totalHits", "hits"}``; ``totalHits`` is
  ``min(total, 500)``, and paging stops there; a page past it:
  400 ``[ERROR 400] "page" is out of valid range.``
* Every hit has all documented fields (``id, pageURL, type, tags, previewURL,
  previewWidth, previewHeight, webformatURL, webformatWidth, webformatHeight,
  largeImageURL, imageWidth, imageHeight, imageSize, views, downloads, collections,
  likes, comments, user_id, user, userImageURL``), deterministic per id. Image URLs
  are ``http://127.0.0.1:PORT/get/<token>_<size>.jpg`` with size 150 (preview),
  640 (webformat) or 1280 (large); 180, 340 and 960 work too. The longest side of
  the served JPEG is that size; renders are cached per (image, size, fault).
* Every API response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
  ``X-RateLimit-Reset`` (whole seconds left in the window). A fixed window of
  ``window`` seconds per key string starts at its first request; each API request
  spends one unit; past ``rate_limit``: 429 text/plain ``API rate limit exceeded``.
  Time comes from ``fake.clock`` (default ``time.monotonic``), e.g.
  ``fake.clock = lambda: t`` so a test can jump past the window.
  ``rate_limit`` and ``window`` are plain attributes too.

Order of processing an API request: count it and record its query, ``latency``,
rate limit (429), one pending injected fault (hang, then 5xx, then malformed),
key check, parameter checks, search.

Fault knobs
-----------
``fake.latency = 0.2``            seconds added to every request (API and images).
``fake.fail_next(n=1, status=503)`` the next n API requests answer that 5xx (text/html).
``fake.hang_next(n=1)``           the next n API requests never answer until
                                  ``fake.release_hung()`` (they then answer normally)
                                  or ``close()`` (connection dropped).
``await fake.wait_for_hung(n=1, timeout=5.0)`` until n requests are hanging;
                                  ``fake.hung`` is how many hang now.
``fake.malformed_next(n=1)``      the next n API answers are 200 application/json with
                                  a broken (truncated) JSON body.
``fake.set_image_fault(id, kind)`` / ``fake.image_faults`` (dict id -> kind) /
``fake.clear_image_faults()``; a fault applies to every size of that image. Kinds
(``IMAGE_FAULTS``): ``missing`` (404), ``truncated`` (JPEG cut in half, honest
Content-Length), ``html`` (200 text/html page), ``garbage`` (200 image/jpeg, random
bytes), ``bomb`` (a ~50 KB greyscale PNG declaring ``fake.bomb_size`` = 8000x6250),
``rgba`` (PNG with a transparent border), ``gif`` (palette GIF), ``cmyk`` (CMYK
JPEG), ``foreign_host`` (the hit's image URLs use host ``localhost``, same port; they
are still served, so a test can show the client refused them by
``fake.requests_for_image(id) == 0``).
Hostile kinds (a broken or malicious CDN): ``big`` (200 image/jpeg, a 2304x1728 JPEG
of random noise, about 4.65 MB, under the pixel cap; ``big_jpeg()``), ``slow``
(slowloris: honest headers, then one byte of the real JPEG every ``fake.slow_interval``
seconds, default 1.0), ``near_cap_png`` (200 image/png, a ~70 kB 5472x3648 gradient PNG,
just under 20 megapixels; ``near_cap_png()``).
``fake.extra_hit_fields`` / ``fake.extra_response_fields`` (dicts merged into each
hit / the response body, last, so they can also override a field, e.g. with a wrong
type), ``fake.omit_hit_fields`` (set of hit keys to drop, e.g.
``{"userImageURL", "likes", "previewURL"}``).

Hostile API answers
-------------------
``fake.raw_hit_fields[id] = {"imageWidth": "1e400"}`` / ``fake.raw_response_fields =
{"totalHits": "1e400"}``: raw JSON text put in as that field's value, for numbers that
``json.dumps`` cannot write (``1e400``, ``100000000000000000000``) and other raw tokens.
``fake.extra_headers`` (dict): headers set on every API answer last, overriding the
rate-limit headers, e.g. ``{"X-RateLimit-Reset": "inf"}`` or ``{"Retry-After": "inf"}``.
``fake.reject_next(n=1)``: the next n API requests answer 400 text/plain
``[ERROR 400] Invalid request: <the request's whole query string, key included>``.
``fake.raw_body_next(body, n=1, content_type="application/json")``: the next n API
answers are 200 with exactly these bytes (e.g. a body that is not UTF-8).
``fake.huge_next(size, n=1, chunked=False)``: the next n API answers are the real search
answer padded with JSON whitespace to ``size`` bytes; ``chunked=True`` sends it in
chunks without a Content-Length. ``fake.api_bytes_sent`` counts API body bytes written.

Counters and ground truth
-------------------------
``fake.hits_by_path`` (Counter of request paths, any route), ``fake.api_requests``,
``fake.image_requests``, ``fake.requests_for_image(id)`` (all sizes),
``fake.peak_image_requests`` (most image requests being served at once),
``fake.queries`` (list of each API request's query as a dict, without ``key``),
``fake.api_times`` (``time.monotonic()`` at each API request's arrival),
``fake.most_in_window(seconds=60)`` (the most API requests that arrived in any window),
``fake.render_count`` (renders actually done), ``fake.reset_counters()`` (clears
all of these). ``fake.truth[id] -> Scene``, ``fake.entries``, ``fake.entry(id)``,
``fake.hit(id)`` (the hit dict as the API would return it), ``fake.image_url(id,
size=640)``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import math
import random
import re
import struct
import time
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from PIL import Image, ImageDraw

from bench.fakes.scenes import CatalogueEntry, Scene, catalogue, jpeg_bytes, size_for

LANGS = ("cs", "da", "de", "en", "es", "fr", "id", "it", "hu", "nl", "no", "pl", "pt", "ro",
         "sk", "fi", "sv", "tr", "vi", "th", "bg", "ru", "el", "ja", "ko", "zh")
IMAGE_TYPES = ("all", "photo", "illustration", "vector")
ORIENTATIONS = ("all", "horizontal", "vertical")
CATEGORIES = ("backgrounds", "fashion", "nature", "science", "education", "feelings", "health",
              "people", "religion", "places", "animals", "industry", "computer", "food",
              "sports", "transportation", "travel", "buildings", "business", "music")
COLORS = ("grayscale", "transparent", "red", "orange", "yellow", "green", "turquoise", "blue",
          "lilac", "pink", "white", "gray", "black", "brown")
ORDERS = ("popular", "latest")
SIZES = (150, 180, 340, 640, 960, 1280)
MAX_TOTAL_HITS = 500
MAX_Q = 100
IMAGE_FAULTS = ("missing", "truncated", "html", "garbage", "bomb", "rgba", "gif", "cmyk",
                "foreign_host", "big", "slow", "near_cap_png")

COLOUR_OF = {"red": "red", "blue": "blue", "yellow": "yellow", "green": "green",
             "purple": "lilac", "orange": "orange"}
CATEGORY_OF = {"snow": "nature", "grass": "nature", "sand": "travel", "night": "backgrounds"}
_ORIGINAL_LONGEST = (1920, 2400, 3000, 4000, 6000)
_USERS = ("ShapeHunter", "ColourField", "snowlens", "NightOwlPix", "sandwalker", "GrassRoots",
          "geomfoto", "pixelpainter", "studio_42", "Lumen_Ark")
_NAME = re.compile(r"([0-9a-f]{16,64})_(\d{2,4})\.jpg")

KEY_ERROR = "[ERROR 400] Invalid or missing API key ([key])."
PAGE_ERROR = '[ERROR 400] "page" is out of valid range.'
PER_PAGE_ERROR = '[ERROR 400] "per_page" is out of valid range.'
RATE_ERROR = "API rate limit exceeded"


@functools.lru_cache(maxsize=4)
def default_catalogue(per_scene: int = 10) -> tuple[CatalogueEntry, ...]:
    """``bench.fakes.scenes.catalogue(per_scene)``, built once per process."""
    return tuple(catalogue(per_scene))


def _unit(image_id: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Meta:
    """The per-image facts the API reports, all derived from the id."""

    __slots__ = ("token", "width", "height", "size", "views", "downloads", "collections",
                 "likes", "comments", "user_id", "user", "user_image", "editors_choice",
                 "unsafe", "category", "colour")

    def __init__(self, e: CatalogueEntry) -> None:
        rng = random.Random(f"fake-pixabay-{e.id}")
        self.token = hashlib.sha256(f"fake-pixabay-{e.id}".encode()).hexdigest()[:48]
        self.width, self.height = size_for(e.aspect, rng.choice(_ORIGINAL_LONGEST))
        self.size = int(self.width * self.height * rng.uniform(0.15, 0.45))
        self.views = rng.randint(300, 900_000)
        self.downloads = int(self.views * rng.uniform(0.3, 0.8))
        self.likes = int(self.downloads * rng.uniform(0.005, 0.05))
        self.collections = int(self.likes * rng.uniform(0.5, 1.5))
        self.comments = int(self.likes * rng.uniform(0.0, 0.2))
        self.user_id = rng.randint(1_000, 40_000_000)
        self.user = rng.choice(_USERS)
        y, mo, d = rng.randint(2013, 2024), rng.randint(1, 12), rng.randint(1, 28)
        hh, mi, ss = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
        self.user_image = (f"https://cdn.pixabay.com/user/{y}/{mo:02d}/{d:02d}/"
                           f"{hh:02d}-{mi:02d}-{ss:02d}-{rng.randint(0, 999):03d}_250x250.jpg")
        self.editors_choice = _unit(e.id, "editors-choice") < 0.15
        self.unsafe = _unit(e.id, "unsafe") < 0.02
        self.category = CATEGORY_OF.get(e.scene.background, "backgrounds")
        self.colour = COLOUR_OF.get(e.scene.colour, e.scene.colour)


# ---------------------------------------------------------------- rendering (threads)

@functools.lru_cache(maxsize=4)
def bomb_png(width: int = 8000, height: int = 6250) -> bytes:
    """A valid 8-bit greyscale PNG of width x height, all black: tiny in bytes."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + width)  # filter byte + one byte per pixel
    idat = b"".join([comp.compress(row) for _ in range(height)] + [comp.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=2)
def big_jpeg(width: int = 2304, height: int = 1728) -> bytes:
    """Random noise at quality 95: about 4.65 MB for 2304x1728 (4 megapixels)."""
    import numpy as np

    noise = np.random.default_rng(4650).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, "RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


@functools.lru_cache(maxsize=2)
def near_cap_png(width: int = 5472, height: int = 3648) -> bytes:
    """A smooth RGB gradient just under 20 megapixels: tiny in bytes, costly to decode."""
    import numpy as np

    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    pixels[..., 2] = 128
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG", compress_level=9)
    return buf.getvalue()


_HTML = (b"<!DOCTYPE html>\n<html><head><title>Pixabay</title></head>"
         b"<body><h1>Just a moment...</h1><p>Checking your browser.</p></body></html>\n")


def _render(entry: CatalogueEntry, size: int, kind: str | None,
            bomb_size: tuple[int, int]) -> tuple[bytes, str]:
    if kind == "bomb":
        return bomb_png(*bomb_size), "image/png"
    if kind == "big":
        return big_jpeg(), "image/jpeg"
    if kind == "near_cap_png":
        return near_cap_png(), "image/png"
    if kind == "html":
        return _HTML, "text/html"
    if kind == "garbage":
        return random.Random(f"garbage-{entry.id}-{size}").randbytes(4096 + size), "image/jpeg"
    img = entry.image(size)
    buf = io.BytesIO()
    if kind == "rgba":
        alpha = Image.new("L", img.size, 0)
        w, h = img.size
        ImageDraw.Draw(alpha).rectangle((w // 8, h // 8, w - w // 8, h - h // 8), fill=255)
        img.putalpha(alpha)
        img.save(buf, "PNG")
        return buf.getvalue(), "image/png"
    if kind == "gif":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "GIF")
        return buf.getvalue(), "image/gif"
    if kind == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=entry.quality)
        return buf.getvalue(), "image/jpeg"
    data = jpeg_bytes(img, entry.quality)
    if kind == "truncated":
        data = data[: max(1024, len(data) // 2)]
    return data, "image/jpeg"


# Rendered bytes, shared by every fake in the process (rendering is deterministic).
_CACHE: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
_CACHE_BUDGET = 128 * 2**20
_cache_bytes = 0


def _cache_get(key: tuple) -> tuple[bytes, str] | None:
    value = _CACHE.get(key)
    if value is not None:
        _CACHE.move_to_end(key)
    return value


def _cache_put(key: tuple, value: tuple[bytes, str]) -> None:
    global _cache_bytes
    if key in _CACHE:
        return
    _CACHE[key] = value
    _cache_bytes += len(value[0])
    while _cache_bytes > _CACHE_BUDGET and len(_CACHE) > 1:
        _, (old, _) = _CACHE.popitem(last=False)
        _cache_bytes -= len(old)


class _BadRequest(Exception):
    pass


def _choice(query, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = query.get(name, "") or default
    if value not in allowed:
        raise _BadRequest(f'[ERROR 400] "{name}" must be one of: {", ".join(allowed)}.')
    return value


def _integer(query, name: str, default: int) -> int:
    raw = query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _BadRequest(f'[ERROR 400] "{name}" must be an integer.') from None


def _boolean(query, name: str) -> bool:
    raw = query.get(name, "").lower()
    if raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise _BadRequest(f'[ERROR 400] "{name}" must be "true" or "false".')


class FakePixabay:
    """A fake Pixabay API and image CDN; see the module docstring."""

    def __init__(self, entries: Iterable[CatalogueEntry] | None = None, *,
                 key: str = "test-key", per_scene: int = 10, rate_limit: int = 100,
                 window: float = 60.0) -> None:
        self.entries: list[CatalogueEntry] = list(
            default_catalogue(per_scene) if entries is None else entries)
        self._by_id = {e.id: e for e in self.entries}
        self._meta = {e.id: _Meta(e) for e in self.entries}
        self._by_token = {m.token: i for i, m in self._meta.items()}
        self.truth: dict[int, Scene] = {e.id: e.scene for e in self.entries}
        self.categories = {i: m.category for i, m in self._meta.items()}
        self.colours = {i: m.colour for i, m in self._meta.items()}
        self.editors_choice_ids = frozenset(i for i, m in self._meta.items() if m.editors_choice)
        self.unsafe_ids = frozenset(i for i, m in self._meta.items() if m.unsafe)

        self.key = key
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.rate_limit = rate_limit
        self.window = window
        self.clock: Callable[[], float] = time.monotonic
        self._buckets: dict[str, list[float]] = {}  # key -> [window start, used]

        self.latency = 0.0
        self.bomb_size = (8000, 6250)
        self.image_faults: dict[int, str] = {}
        self.extra_hit_fields: dict[str, Any] = {}
        self.extra_response_fields: dict[str, Any] = {}
        self.omit_hit_fields: set[str] = set()
        self.raw_hit_fields: dict[int, dict[str, str]] = {}
        self.raw_response_fields: dict[str, str] = {}
        self.extra_headers: dict[str, str] = {}
        self.slow_interval = 1.0
        self._reject_pending = 0
        self._raw_bodies: deque[tuple[bytes, str]] = deque()
        self._huge: deque[tuple[int, bool]] = deque()
        self.api_bytes_sent = 0
        self._fail: deque[int] = deque()
        self._hang_pending = 0
        self._malformed_pending = 0
        self.hung = 0
        self._release = asyncio.Event()
        self._closing = asyncio.Event()
        self._hung_changed = asyncio.Condition()
        self._renders: dict[tuple, asyncio.Future] = {}

        self.hits_by_path: Counter[str] = Counter()
        self.api_requests = 0
        self.image_requests = 0
        self.images_in_flight = 0
        self.peak_image_requests = 0
        self.render_count = 0
        self.queries: list[dict[str, str]] = []
        self.api_times: list[float] = []
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api/"

    async def start(self, port: int = 0) -> FakePixabay:
        app = web.Application()
        app.router.add_get("/api/", self._api)
        app.router.add_get("/get/{name}", self._image)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is None:
            return
        self._closing.set()
        self._release.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> FakePixabay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ knobs

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        if not 500 <= status <= 599:
            raise ValueError("status must be a 5xx")
        self._fail.extend([status] * n)

    def hang_next(self, n: int = 1) -> None:
        self._hang_pending += n

    def malformed_next(self, n: int = 1) -> None:
        self._malformed_pending += n

    def reject_next(self, n: int = 1) -> None:
        self._reject_pending += n

    def raw_body_next(self, body: bytes, n: int = 1,
                      content_type: str = "application/json") -> None:
        self._raw_bodies.extend([(body, content_type)] * n)

    def huge_next(self, size: int, n: int = 1, chunked: bool = False) -> None:
        self._huge.extend([(size, chunked)] * n)

    def release_hung(self) -> None:
        """Let every request hanging now go on and answer normally."""
        self._release.set()
        self._release = asyncio.Event()

    async def wait_for_hung(self, n: int = 1, timeout: float = 5.0) -> None:
        async with self._hung_changed:
            await asyncio.wait_for(self._hung_changed.wait_for(lambda: self.hung >= n), timeout)

    def set_image_fault(self, image_id: int, kind: str) -> None:
        if kind not in IMAGE_FAULTS:
            raise ValueError(f"unknown image fault {kind!r}; one of {IMAGE_FAULTS}")
        if image_id not in self._by_id:
            raise KeyError(image_id)
        self.image_faults[image_id] = kind

    def clear_image_faults(self) -> None:
        self.image_faults.clear()

    def most_in_window(self, seconds: float = 60.0) -> int:
        """The most API requests that arrived within any ``seconds`` (a sliding window)."""
        times, most, first = sorted(self.api_times), 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= seconds:
                first += 1
            most = max(most, last - first + 1)
        return most

    def reset_counters(self) -> None:
        self.hits_by_path.clear()
        self.api_requests = self.image_requests = self.render_count = 0
        self.api_bytes_sent = 0
        self.peak_image_requests = self.images_in_flight
        self.queries.clear()
        self.api_times.clear()

    # ------------------------------------------------------------------ lookups

    def entry(self, image_id: int) -> CatalogueEntry:
        return self._by_id[image_id]

    def image_path(self, image_id: int, size: int = 640) -> str:
        return f"/get/{self._meta[image_id].token}_{size}.jpg"

    def image_url(self, image_id: int, size: int = 640) -> str:
        host = "localhost" if self.image_faults.get(image_id) == "foreign_host" else self.host
        return f"http://{host}:{self.port}{self.image_path(image_id, size)}"

    def requests_for_image(self, image_id: int) -> int:
        return sum(self.hits_by_path[self.image_path(image_id, s)] for s in SIZES)

    def hit(self, image_id: int) -> dict[str, Any]:
        e, m = self._by_id[image_id], self._meta[image_id]
        tags = e.scene.tags
        pw, ph = size_for(e.aspect, 150)
        ww, wh = size_for(e.aspect, 640)
        hit: dict[str, Any] = {
            "id": e.id,
            "pageURL": f"https://pixabay.com/photos/{'-'.join(tags.split(', '))}-{e.id}/",
            "type": "photo",
            "tags": tags,
            "previewURL": self.image_url(e.id, 150),
            "previewWidth": pw,
            "previewHeight": ph,
            "webformatURL": self.image_url(e.id, 640),
            "webformatWidth": ww,
            "webformatHeight": wh,
            "largeImageURL": self.image_url(e.id, 1280),
            "imageWidth": m.width,
            "imageHeight": m.height,
            "imageSize": m.size,
            "views": m.views,
            "downloads": m.downloads,
            "collections": m.collections,
            "likes": m.likes,
            "comments": m.comments,
            "user_id": m.user_id,
            "user": m.user,
            "userImageURL": m.user_image,
        }
        for name in self.omit_hit_fields:
            hit.pop(name, None)
        hit.update(self.extra_hit_fields)
        return hit

    # ------------------------------------------------------------------ handlers

    def _count(self, request: web.Request) -> None:
        self.hits_by_path[request.path] += 1

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the fake began closing meanwhile."""
        if seconds > 0 and not self._closing.is_set():
            try:
                await asyncio.wait_for(self._closing.wait(), seconds)
            except TimeoutError:
                pass
        return not self._closing.is_set()

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)

    async def _other(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.Response(status=404, text="404 Not Found")

    def _rate_headers(self, key: str) -> tuple[bool, dict[str, str]]:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None or now >= bucket[0] + self.window:
            bucket = self._buckets[key] = [now, 0]
        bucket[1] += 1
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - int(bucket[1]))),
            # rounded first: (t + 60) - t can come out as 60.000000001, which ceils to 61
            "X-RateLimit-Reset": str(max(0, math.ceil(round(bucket[0] + self.window - now, 6)))),
        }
        headers.update(self.extra_headers)
        return bucket[1] <= self.rate_limit, headers

    async def _api(self, request: web.Request) -> web.Response:
        self._count(request)
        self.api_requests += 1
        self.api_times.append(time.monotonic())
        query = request.query
        self.queries.append({k: v for k, v in query.items() if k != "key"})
        if not await self._pause(self.latency):
            return self._drop(request)
        key = query.get("key", "")
        allowed, headers = self._rate_headers(key)
        if not allowed:
            return web.Response(status=429, text=RATE_ERROR,
                                headers={**headers, **self.extra_headers})
        if self._hang_pending > 0:
            self._hang_pending -= 1
            release = self._release
            self.hung += 1
            async with self._hung_changed:
                self._hung_changed.notify_all()
            try:
                await release.wait()
            finally:
                self.hung -= 1
            if self._closing.is_set():
                return self._drop(request)
        elif self._fail:
            status = self._fail.popleft()
            reason = web.Response(status=status).reason
            return web.Response(status=status, content_type="text/html", headers=headers,
                                text=f"<html><body><h1>{status} {reason}</h1></body></html>")
        elif self._malformed_pending > 0:
            self._malformed_pending -= 1
            return web.Response(status=200, content_type="application/json", headers=headers,
                                text='{"total": 3, "totalHits": 3, "hits": [{"id": 1, "pageURL": ')
        elif self._reject_pending > 0:
            self._reject_pending -= 1
            return web.Response(status=400, headers=headers,
                                text=f"[ERROR 400] Invalid request: {request.query_string}")
        elif self._raw_bodies:
            raw, content_type = self._raw_bodies.popleft()
            self.api_bytes_sent += len(raw)
            return web.Response(status=200, body=raw, headers=headers,
                                content_type=content_type)
        if key != self.key:
            return web.Response(status=400, text=KEY_ERROR, headers=headers)
        try:
            body = self._search(query)
        except _BadRequest as e:
            return web.Response(status=400, text=str(e), headers=headers)
        text = self._dumps(body)
        if self._huge:
            size, chunked = self._huge.popleft()
            return await self._send_huge(request, text, size, chunked, headers)
        self.api_bytes_sent += len(text)
        return web.Response(text=text, content_type="application/json", headers=headers)

    def _dumps(self, body: dict[str, Any]) -> str:
        """JSON text, with ``raw_*_fields`` spliced in as raw tokens."""
        raws: list[str] = []

        def mark(value: str) -> str:
            raws.append(value)
            return f"\x00raw{len(raws) - 1}\x00"

        body = dict(body)
        for name, value in self.raw_response_fields.items():
            body[name] = mark(value)
        hits = []
        for hit in body.get("hits", []):
            extra = self.raw_hit_fields.get(hit.get("id")) if isinstance(hit, dict) else None
            if extra:
                hit = {**hit, **{name: mark(value) for name, value in extra.items()}}
            hits.append(hit)
        if "hits" in body:
            body["hits"] = hits
        text = json.dumps(body)
        for i, value in enumerate(raws):
            text = text.replace(json.dumps(f"\x00raw{i}\x00"), value)
        return text

    async def _send_huge(self, request: web.Request, text: str, size: int, chunked: bool,
                         headers: dict[str, str]) -> web.StreamResponse:
        """``text`` padded with whitespace inside the object to ``size`` bytes."""
        head = text.encode()[:-1]  # without the closing brace
        pad = max(0, size - len(head) - 1)
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "application/json"
        if not chunked:
            resp.content_length = len(head) + pad + 1
        await resp.prepare(request)
        block = b" " * (1 << 20)
        try:
            await resp.write(head)
            self.api_bytes_sent += len(head)
            while pad > 0 and not self._closing.is_set():
                piece = block[:min(pad, len(block))]
                await resp.write(piece)
                self.api_bytes_sent += len(piece)
                pad -= len(piece)
            await resp.write(b"}")
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should on a body it refuses
        return resp

    def _search(self, query) -> dict[str, Any]:
        q = query.get("q", "")
        if len(q) > MAX_Q:
            raise _BadRequest(f'[ERROR 400] "q" may not exceed {MAX_Q} characters.')
        words = [w.lower() for w in re.split(r"[\s+]+", q) if w]
        _choice(query, "lang", LANGS, "en")
        image_id = _integer(query, "id", 0) if query.get("id") else None
        image_type = _choice(query, "image_type", IMAGE_TYPES, "all")
        orientation = _choice(query, "orientation", ORIENTATIONS, "all")
        category = _choice(query, "category", CATEGORIES, "") if query.get("category") else None
        colors = {c.strip() for c in query.get("colors", "").split(",") if c.strip()}
        for c in colors:
            if c not in COLORS:
                raise _BadRequest(f'[ERROR 400] "colors" must be a comma separated list of: '
                                  f'{", ".join(COLORS)}.')
        min_width = _integer(query, "min_width", 0)
        min_height = _integer(query, "min_height", 0)
        for name, value in (("min_width", min_width), ("min_height", min_height)):
            if value < 0:
                raise _BadRequest(f'[ERROR 400] "{name}" must be a positive integer.')
        editors_choice = _boolean(query, "editors_choice")
        safesearch = _boolean(query, "safesearch")
        order = _choice(query, "order", ORDERS, "popular")
        page = _integer(query, "page", 1)
        per_page = _integer(query, "per_page", 20)
        if not 3 <= per_page <= 200:
            raise _BadRequest(PER_PAGE_ERROR)
        if page < 1:
            raise _BadRequest(PAGE_ERROR)

        if image_id is not None:
            pool = [self._by_id[image_id]] if image_id in self._by_id else []
        else:
            pool = self.entries
        found = []
        for e in pool:
            m = self._meta[e.id]
            aw, ah = e.aspect
            if words and not set(words) <= {t.lower() for t in e.scene.tags.split(", ")}:
                continue
            if image_type not in ("all", "photo"):
                continue
            if orientation == "horizontal" and not aw > ah:
                continue
            if orientation == "vertical" and not ah > aw:
                continue
            if category is not None and m.category != category:
                continue
            if colors and m.colour not in colors:
                continue
            if m.width < min_width or m.height < min_height:
                continue
            if editors_choice and not m.editors_choice:
                continue
            if safesearch and m.unsafe:
                continue
            found.append(e)
        if order == "popular":
            found.sort(key=lambda e: (-self._meta[e.id].views, e.id))
        else:
            found.sort(key=lambda e: -e.id)
        total_hits = min(len(found), MAX_TOTAL_HITS)
        if page > max(1, math.ceil(total_hits / per_page)):
            raise _BadRequest(PAGE_ERROR)
        start = (page - 1) * per_page
        chosen = found[start:min(start + per_page, total_hits)]
        body: dict[str, Any] = {"total": len(found), "totalHits": total_hits,
                                "hits": [self.hit(e.id) for e in chosen]}
        body.update(self.extra_response_fields)
        return body

    async def _image(self, request: web.Request) -> web.Response:
        self._count(request)
        self.image_requests += 1
        self.images_in_flight += 1
        self.peak_image_requests = max(self.peak_image_requests, self.images_in_flight)
        try:
            return await self._serve_image(request)
        finally:
            self.images_in_flight -= 1

    async def _serve_image(self, request: web.Request) -> web.Response:
        if not await self._pause(self.latency):
            return self._drop(request)
        match = _NAME.fullmatch(request.match_info["name"])
        image_id = self._by_token.get(match.group(1)) if match else None
        size = int(match.group(2)) if match else 0
        if image_id is None or size not in SIZES:
            return web.Response(status=404, text="404 Not Found")
        kind = self.image_faults.get(image_id)
        if kind == "missing":
            return web.Response(status=404, text="404 Not Found")
        if kind == "foreign_host":
            kind = None
        if kind == "slow":
            body, _ = await self._bytes(self._by_id[image_id], size, None)
            return await self._dribble(request, body)
        body, content_type = await self._bytes(self._by_id[image_id], size, kind)
        return web.Response(body=body, content_type=content_type)

    async def _dribble(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Slowloris: honest headers, then one byte every ``slow_interval`` seconds."""
        resp = web.StreamResponse(status=200)
        resp.content_type = "image/jpeg"
        resp.content_length = len(body)
        await resp.prepare(request)
        try:
            for i in range(len(body)):
                await resp.write(body[i:i + 1])
                if not await self._pause(self.slow_interval):
                    break
            else:
                await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client gave up on it
        return resp

    async def _bytes(self, entry: CatalogueEntry, size: int, kind: str | None
                     ) -> tuple[bytes, str]:
        key = (entry, size, kind, self.bomb_size if kind == "bomb" else None)
        cached = _cache_get(key)
        if cached is not None:
            return cached
        future = self._renders.get(key)
        if future is None:
            self.render_count += 1
            future = asyncio.ensure_future(
                asyncio.to_thread(_render, entry, size, kind, self.bomb_size))
            self._renders[key] = future
            future.add_done_callback(lambda _: self._renders.pop(key, None))
        value = await asyncio.shield(future)
        _cache_put(key, value)
        return value
