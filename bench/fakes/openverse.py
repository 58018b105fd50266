"""A fake Openverse API on 127.0.0.1, for testing the real aiohttp client.

It follows the documented API (https://api.openverse.org/v1/, docs.openverse.org
"Authentication and throttling") and serves the synthetic scenes of ``bench/fakes/scenes.py``
so every ranking has a ground truth (``fake.truth[uuid] -> Scene``).

``FakeOpenverse(entries=None, *, clients=None, per_scene=10)``; ``async with`` or
``start()`` / ``close()``. After start: ``api_url`` ("http://127.0.0.1:PORT/v1/").

Routes
------
``GET /v1/images/?q=&page=&page_size=&mature=&aspect_ratio=&category=``
    ``q``: every word must equal one of the result's tags (case-insensitive).
    ``page_size`` default 20; over 20 without a valid bearer token: 401
    ``{"detail": ...}``; over 500: 400. ``page`` default 1; over 20: 400 (Openverse's
    maximum depth, for everyone); past ``page_count``: 400. ``mature`` (default false)
    drops ``fake.mature_ids``. ``aspect_ratio`` tall|wide|square, ``category``
    photograph (every scene is one) | illustration | digitized_artwork (nothing).
    200: ``{"result_count", "page_count", "page_size", "page", "results": [...]}``;
    each result has the documented fields (``id`` a UUID, ``title``,
    ``foreign_landing_url``, ``url`` (the original, on a foreign host the client must not
    fetch), ``creator``, ``creator_url``, ``license``, ``license_version``,
    ``license_url``, ``provider``, ``source``, ``category``, ``filesize``, ``filetype``,
    ``tags`` [{"name", "accuracy"}], ``attribution``, ``fields_matched``, ``mature``,
    ``height``, ``width``, ``thumbnail`` (``{api}images/<id>/thumb/``), ``detail_url``,
    ``related_url``).
    Throttling: anonymous callers per scope ``anon_burst`` (``burst_limit`` a minute,
    default 20) and ``anon_sustained`` (``sustained_limit`` a day, default 200);
    registered ones ``burst``/``sustained`` with the ``registered_*`` limits. Every answer
    carries ``X-RateLimit-Limit-<scope>: N/min|N/day`` and
    ``X-RateLimit-Available-<scope>``; past a limit: 429 ``{"detail": ...}`` with
    ``Retry-After``. Time is ``fake.clock`` (default ``time.monotonic``).
``POST /v1/auth_tokens/token/`` (form: grant_type=client_credentials, client_id,
    client_secret) -> 200 ``{"access_token", "token_type": "Bearer", "expires_in",
    "scope"}``; unknown client: 401 ``{"error": "invalid_client"}``. Tokens live
    ``token_ttl`` seconds (default 36000); ``fake.revoke_tokens()`` forgets them all.
``GET /v1/images/<id>/thumb/`` a JPEG of the image, 600 px on its longest side
    (``?full_size=true``: 1280 px); unknown id: 404.

Knobs and counters: ``latency``, ``fail_next(n, status)``, ``malformed_next(n)``,
``extra_headers`` (dict: headers set last on every search answer, e.g. a hostile
``{"Retry-After": "inf"}`` on the 429),
``api_requests``, ``token_requests``, ``thumb_requests``, ``queries`` (each search's
query dict), ``auth_headers`` (each search's Authorization header or None),
``reset_counters()``, ``uuid_of(entry_id)``, ``entry(uuid)``, ``thumb_url(uuid)``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from bench.fakes.pixabay import _cache_get, _cache_put, _render, default_catalogue
from bench.fakes.scenes import CatalogueEntry

NAMESPACE = uuid.UUID("6f1c2a3e-0000-4000-8000-0000000f0b5e")
MAX_PAGE = 20
ANON_PAGE_SIZE = 20
MAX_PAGE_SIZE = 500
THUMB_SIZE = 600
FULL_SIZE = 1280
_LICENSES = (("by", "2.0"), ("by-sa", "4.0"), ("cc0", "1.0"), ("by-nc", "3.0"), ("pdm", "1.0"))
_PROVIDERS = ("flickr", "wikimedia", "smithsonian")
_CREATORS = ("Ada Shapes", "geo_lens", "Colour Study", "Mira K.", "openframes")


def _license_url(code: str, version: str) -> str:
    if code == "cc0":
        return f"https://creativecommons.org/publicdomain/zero/{version}/"
    if code == "pdm":
        return f"https://creativecommons.org/publicdomain/mark/{version}/"
    return f"https://creativecommons.org/licenses/{code}/{version}/"


class FakeOpenverse:
    def __init__(self, entries: Iterable[CatalogueEntry] | None = None, *,
                 clients: dict[str, str] | None = None, per_scene: int = 10) -> None:
        self.entries = list(entries if entries is not None else default_catalogue(per_scene))
        self._by_uuid = {self.uuid_of(e.id): e for e in self.entries}
        self.truth = {u: e.scene for u, e in self._by_uuid.items()}
        self.mature_ids = {u for u, e in self._by_uuid.items() if e.id % 53 == 0}
        self.clients = dict(clients or {})
        self.token_ttl = 36000.0
        self.burst_limit, self.sustained_limit = 20, 200
        self.registered_burst_limit, self.registered_sustained_limit = 100, 10_000
        self.clock = time.monotonic
        self.latency = 0.0
        self.extra_headers: dict[str, str] = {}
        self.host = "127.0.0.1"
        self.port = 0
        self._tokens: dict[str, float] = {}
        self._calls: dict[str, deque] = {}
        self._fail: deque[int] = deque()
        self._malformed = 0
        self._runner: web.AppRunner | None = None
        self.reset_counters()

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/"

    async def start(self, port: int = 0) -> FakeOpenverse:
        app = web.Application()
        app.router.add_get("/v1/images/", self._search)
        app.on_response_prepare.append(self._extra_headers)
        app.router.add_post("/v1/auth_tokens/token/", self._token)
        app.router.add_get("/v1/images/{id}/thumb/", self._thumb)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenverse:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- knobs and lookups -------------------------------------------------------------
    def reset_counters(self) -> None:
        self.api_requests = self.token_requests = self.thumb_requests = 0
        self.queries: list[dict[str, str]] = []
        self.auth_headers: list[str | None] = []

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        self._fail.extend([status] * n)

    def malformed_next(self, n: int = 1) -> None:
        self._malformed += n

    def revoke_tokens(self) -> None:
        self._tokens.clear()

    @staticmethod
    def uuid_of(entry_id: int) -> str:
        return str(uuid.uuid5(NAMESPACE, str(entry_id)))

    def entry(self, image_id: str) -> CatalogueEntry:
        return self._by_uuid[image_id]

    def thumb_url(self, image_id: str) -> str:
        return f"{self.api_url}images/{image_id}/thumb/"

    def result(self, image_id: str) -> dict[str, Any]:
        e = self._by_uuid[image_id]
        code, version = _LICENSES[e.id % len(_LICENSES)]
        provider = _PROVIDERS[e.id % len(_PROVIDERS)]
        creator = _CREATORS[e.id % len(_CREATORS)]
        aw, ah = e.aspect
        width, height = (2000, round(2000 * ah / aw)) if aw >= ah else (round(2000 * aw / ah), 2000)
        title = f"{e.scene.colour.title()} {e.scene.shape} on {e.scene.background}"
        return {
            "id": image_id, "title": title, "indexed_on": "2024-05-01T00:00:00Z",
            "foreign_landing_url": f"https://www.flickr.com/photos/shapes/{e.id}",
            "url": f"https://live.staticflickr.com/65535/{e.id}_original.jpg",
            "creator": creator, "creator_url": f"https://www.flickr.com/photos/{creator}",
            "license": code, "license_version": version,
            "license_url": _license_url(code, version), "provider": provider,
            "source": provider, "category": "photograph", "filesize": width * height // 5,
            "filetype": "jpg",
            "tags": [{"name": t, "accuracy": None} for t in e.scene.tags.split(", ")],
            "attribution": f'"{title}" by {creator} is licensed under CC {code.upper()} {version}.',
            "fields_matched": ["tags"], "mature": image_id in self.mature_ids,
            "height": height, "width": width, "thumbnail": self.thumb_url(image_id),
            "detail_url": f"{self.api_url}images/{image_id}/",
            "related_url": f"{self.api_url}images/{image_id}/related/",
            "unstable__sensitivity": [],
        }

    # -- handlers ----------------------------------------------------------------------
    @staticmethod
    def _json(body: Any, status: int = 200, headers: dict | None = None) -> web.Response:
        return web.Response(text=json.dumps(body), status=status, headers=headers,
                            content_type="application/json")

    async def _extra_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/v1/images/":
            response.headers.update(self.extra_headers)

    def _caller(self, request: web.Request) -> str | None:
        """The client id behind a valid bearer token, or None (anonymous)."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        token = auth[7:]
        expires = self._tokens.get(token)
        if expires is None or self.clock() >= expires:
            raise web.HTTPUnauthorized(text=json.dumps({"detail": "Invalid token."}),
                                       content_type="application/json")
        return token

    def _throttle(self, registered: bool) -> tuple[bool, float, dict[str, str]]:
        now = self.clock()
        prefix = "" if registered else "anon_"
        limits = ((f"{prefix}burst", self.registered_burst_limit if registered
                   else self.burst_limit, 60, "min"),
                  (f"{prefix}sustained", self.registered_sustained_limit if registered
                   else self.sustained_limit, 86400, "day"))
        headers, allowed, wait = {}, True, 0.0
        for scope, limit, period, _unit in limits:
            calls = self._calls.setdefault(scope, deque())
            while calls and now - calls[0] >= period:
                calls.popleft()
            if len(calls) >= limit:
                allowed = False
                wait = max(wait, (calls[0] + period - now) if calls else period)
        for scope, limit, _period, unit in limits:
            calls = self._calls[scope]
            if allowed:
                calls.append(now)
            headers[f"X-RateLimit-Limit-{scope}"] = f"{limit}/{unit}"
            headers[f"X-RateLimit-Available-{scope}"] = str(max(0, limit - len(calls)))
        return allowed, wait, headers

    async def _search(self, request: web.Request) -> web.Response:
        self.api_requests += 1
        query = dict(request.query)
        self.queries.append(query)
        self.auth_headers.append(request.headers.get("Authorization"))
        if self.latency:
            await asyncio.sleep(self.latency)
        token = self._caller(request)
        allowed, wait, headers = self._throttle(token is not None)
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return self._json({"detail": f"Request was throttled. Expected available in "
                                         f"{math.ceil(wait)} seconds."}, 429, headers)
        if self._fail:
            status = self._fail.popleft()
            return web.Response(status=status, text=f"<h1>{status}</h1>",
                                content_type="text/html", headers=headers)
        if self._malformed:
            self._malformed -= 1
            return web.Response(status=200, text='{"result_count": 3, "results": [{"id"',
                                content_type="application/json", headers=headers)
        try:
            page = int(query.get("page", "1"))
            page_size = int(query.get("page_size", "20"))
        except ValueError:
            return self._json({"detail": {"page": ["A valid integer is required."]}}, 400,
                              headers)
        if page_size > ANON_PAGE_SIZE and token is None:
            return self._json({"detail": "Authentication credentials were not provided. "
                                         "page_size above 20 requires authentication."},
                              401, headers)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            return self._json({"detail": {"page_size": [
                f"Ensure this value is between 1 and {MAX_PAGE_SIZE}."]}}, 400, headers)
        if not 1 <= page <= MAX_PAGE:
            return self._json({"detail": {"page": [
                f"Ensure this value is less than or equal to {MAX_PAGE}."]}}, 400, headers)
        words = [w.lower() for w in re.split(r"[\s+]+", query.get("q", "")) if w]
        mature = query.get("mature", "false").lower() == "true"
        aspect = query.get("aspect_ratio")
        category = query.get("category")
        found = []
        for u, e in self._by_uuid.items():
            tags = set(e.scene.tags.split(", "))
            if words and not set(words) <= tags:
                continue
            if not mature and u in self.mature_ids:
                continue
            aw, ah = e.aspect
            if aspect == "wide" and not aw > ah or aspect == "tall" and not ah > aw:
                continue
            if aspect == "square" and aw != ah:
                continue
            if category and category != "photograph":
                continue
            found.append(u)
        found.sort(key=lambda u: self._by_uuid[u].id)  # a stable "relevance"
        page_count = min(math.ceil(len(found) / page_size), MAX_PAGE)
        if page > max(page_count, 1):
            return self._json({"detail": "Invalid page."}, 400, headers)
        chosen = found[(page - 1) * page_size:page * page_size]
        body = {"result_count": len(found), "page_count": page_count, "page_size": page_size,
                "page": page, "results": [self.result(u) for u in chosen]}
        return self._json(body, headers=headers)

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if (form.get("grant_type") != "client_credentials" or client_id not in self.clients
                or self.clients[client_id] != secret):
            return self._json({"error": "invalid_client"}, 401)
        token = secrets.token_urlsafe(24)
        self._tokens[token] = self.clock() + self.token_ttl
        return self._json({"access_token": token, "token_type": "Bearer",
                           "expires_in": int(self.token_ttl), "scope": "read write groups"})

    async def _thumb(self, request: web.Request) -> web.Response:
        self.thumb_requests += 1
        entry = self._by_uuid.get(request.match_info["id"])
        if entry is None:
            return self._json({"detail": "Not found."}, 404)
        size = FULL_SIZE if request.query.get("full_size", "").lower() == "true" else THUMB_SIZE
        key = (entry, size, None, None)
        value = _cache_get(key)
        if value is None:
            value = await asyncio.to_thread(_render, entry, size, None, (0, 0))
            _cache_put(key, value)
        body, content_type = value
        return web.Response(body=body, content_type=content_type)
