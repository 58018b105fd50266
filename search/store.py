"""The API response cache and the embedding cache: DATA_DIR/search.sqlite3, or PostgreSQL.

Responses are keyed by the source's endpoint and a fingerprint of its key, so another
PIXABAY_API_URL or another key never reads them; vectors by the source's endpoint, the
model and the image id, so ids from two catalogues never meet. With DATABASE_URL every
process reads what any process cached (within Pixabay's 24 hours).

These are caches: a query must still answer when they cannot be used. A busy file
(another process writing) is waited for, then the write is skipped; a full disk or a
database server that is down skips the write and the cache is used again once it returns.
Only a file that fails ``quick_check`` or is not a database is moved aside, once, with a
loud log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from .models import FeatureVector, Source
from .storage import BUSY_TIMEOUT, BUSY_TRIES, Corrupt, Database, StorageError, upsert
from .storage.database import MAX_OVERFLOW, POOL_SIZE
from .storage.schema import api_cache, embeddings

log = logging.getLogger(__name__)

API_CACHE_TTL = 24 * 3600.0  # Pixabay's terms: cache responses for 24 hours.
CHUNK = 500  # ids a statement: well under SQLite's 32766 bound parameters
TAG_ANSWERS = 200  # newest cached answers whose images' tags are suggested
MAX_SUGGESTED_TAG = 100  # Discord's limit on a choice's name and value



class Store:
    """The caches. Reads that fail are misses; writes that fail are skipped and logged.

    ``target`` is the SQLite file, or a ``postgresql://`` URL (DATABASE_URL).
    """

    def __init__(self, target: Path | str, *, busy_timeout: float = BUSY_TIMEOUT,
                 busy_tries: int = BUSY_TRIES, clock=time.time, pool_size: int = POOL_SIZE,
                 max_overflow: int = MAX_OVERFLOW) -> None:
        self.clock = clock
        self.rebuilt = 0
        self.skipped_writes = 0
        self._tags: dict[tuple, frozenset[str]] = {}  # an answer's images' tags, by key
        self.db = Database(target, branch="cache", what="the search cache",
                           busy_timeout=busy_timeout, busy_tries=busy_tries,
                           pool_size=pool_size, max_overflow=max_overflow)
        self.path = self.db.path
        try:
            self.db.precheck()  # SQLite: a newer file is refused here, a corrupt one rebuilt
        except Corrupt as e:
            self.db.move_aside(str(e))
            self.rebuilt += 1
            self.db.precheck()

    async def open(self) -> Store:
        """Connect and migrate now (else the first call does); raises what start-up reports."""
        await self.db.open()
        return self

    async def aclose(self) -> None:
        await self.db.aclose()

    def close(self) -> None:
        """For callers from before the store was async: ``aclose`` on the store's loop,
        waited for from another thread, scheduled from the loop's own."""
        loop = self.db.loop
        if self.db.engine is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self.aclose())
        else:
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result()

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _read(self, work, default=None):
        try:
            return await self.db.run(work, write=False)
        except Corrupt as e:
            await self._corrupt(e)
        except StorageError as e:
            log.warning("the search cache could not be read (%s); searching without it",
                        getattr(e, "detail", "") or e)
        return default

    async def _write(self, work) -> bool:
        async def cached(conn: AsyncConnection):
            if conn.dialect.name == "postgresql":
                # A cache row lost in a server crash is fetched again: its commit need not
                # wait for the WAL flush.
                await conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            return await work(conn)

        try:
            await self.db.run(cached)
            return True
        except Corrupt as e:
            await self._corrupt(e)
        except StorageError as e:
            self.skipped_writes += 1
            log.warning("the search cache was not updated (%s: %s); results are unaffected",
                        type(e).__name__, getattr(e, "detail", "") or e)
        return False

    async def _corrupt(self, error: Exception) -> None:
        """Found broken while running: move it aside once and start an empty cache."""
        self.rebuilt += 1
        try:
            await self.db.rebuild(str(error))
        except (StorageError, OSError) as e:
            log.error("cannot rebuild the search cache at %s (%s); searching without it",
                      self.path, e)

    # -- API responses ----------------------------------------------------------
    async def get_response(self, source: Source, request: str, ttl: float = API_CACHE_TTL
                           ) -> dict | None:
        async def q(conn: AsyncConnection):
            return (await conn.execute(
                sa.select(api_cache.c.fetched_at, api_cache.c.body).where(
                    api_cache.c.scope == source.response_scope,
                    api_cache.c.request == request))).first()

        row = await self._read(q)
        if row is None or self.clock() - row[0] > ttl:
            return None
        try:
            return json.loads(row[1])
        except ValueError:
            return None

    async def cached_tags(self, prefix: str, limit: int = 25) -> list[str]:
        """Tags that images in the cached answers carry, starting with ``prefix`` (any
        source, any server: they are the catalogue's words, not what anyone typed).

        The newest TAG_ANSWERS answers are read; each answer's tags are kept in memory by
        its key and time, so a keystroke parses nothing it parsed before."""
        prefix = " ".join(prefix.lower().split())
        since = self.clock() - API_CACHE_TTL

        async def q(conn: AsyncConnection):
            return (await conn.execute(
                sa.select(api_cache.c.scope, api_cache.c.request, api_cache.c.fetched_at)
                .where(api_cache.c.fetched_at >= since)
                .order_by(api_cache.c.fetched_at.desc()).limit(TAG_ANSWERS))).all()

        found: set[str] = set()
        for scope, request, fetched_at in await self._read(q, default=[]):
            key = (scope, request, fetched_at)
            tags = self._tags.get(key)
            if tags is None:
                async def body(conn: AsyncConnection, scope=scope, request=request):
                    return (await conn.execute(sa.select(api_cache.c.body).where(
                        api_cache.c.scope == scope, api_cache.c.request == request))).first()

                row = await self._read(body)
                try:
                    tags = frozenset(hit_tags(json.loads(row[0]))) if row else frozenset()
                except ValueError:
                    tags = frozenset()
                self._tags[key] = tags
                while len(self._tags) > 4 * TAG_ANSWERS:
                    self._tags.pop(next(iter(self._tags)))
            found |= {t for t in tags if t.startswith(prefix)}
        return sorted(found)[:limit]

    async def put_response(self, source: Source, request: str, body: dict) -> bool:
        text = json.dumps(body, separators=(",", ":"))
        now = self.clock()

        async def q(conn: AsyncConnection) -> None:
            await upsert(conn, api_cache, {"scope": source.response_scope, "request": request,
                                           "fetched_at": now, "body": text})
            await conn.execute(sa.delete(api_cache).where(
                api_cache.c.fetched_at < now - API_CACHE_TTL))

        return await self._write(q)

    # -- embeddings -------------------------------------------------------------
    async def get_embeddings(self, source: Source, model: str, ids: Sequence[int | str]
                             ) -> dict[int | str, FeatureVector]:
        if not ids:
            return {}
        wanted = {str(i): i for i in ids}  # Pixabay ids are numbers, Openverse ids UUIDs
        keys = list(wanted)

        async def q(conn: AsyncConnection):
            rows: list[Any] = []
            for start in range(0, len(keys), CHUNK):
                chunk = keys[start:start + CHUNK]
                if conn.dialect.name == "postgresql":  # one array parameter, not 500
                    among = embeddings.c.image_id == sa.any_(sa.cast(
                        sa.bindparam("ids", chunk, type_=ARRAY(sa.Text)), ARRAY(sa.Text)))
                else:
                    among = embeddings.c.image_id.in_(chunk)
                rows += (await conn.execute(
                    sa.select(embeddings.c.image_id, embeddings.c.dim, embeddings.c.vector)
                    .where(embeddings.c.source == source.id, embeddings.c.model == model,
                           among))).all()
            return rows

        out: dict[int | str, FeatureVector] = {}
        for image_id, dim, blob in await self._read(q, default=[]):
            vec = np.frombuffer(bytes(blob), dtype=np.float32)
            if vec.shape == (dim,) and str(image_id) in wanted:
                out[wanted[str(image_id)]] = vec
        return out

    async def put_embeddings(self, source: Source, model: str,
                             items: Iterable[tuple[int | str, FeatureVector]]) -> bool:
        rows = [{"source": source.id, "image_id": str(i), "model": model,
                 "dim": int(v.shape[0]),
                 "vector": np.ascontiguousarray(v, dtype=np.float32).tobytes()}
                for i, v in items]
        if not rows:
            return True

        async def q(conn: AsyncConnection) -> None:
            for start in range(0, len(rows), CHUNK):
                await upsert(conn, embeddings, rows[start:start + CHUNK])

        return await self._write(q)

    async def count_embeddings(self) -> int:
        async def q(conn: AsyncConnection) -> int:
            return (await conn.execute(sa.select(sa.func.count()).select_from(embeddings))
                    ).scalar_one()

        return await self._read(q, default=0)


def hit_tags(body: dict) -> set[str]:
    """The tags of an answer's images: Pixabay's "a, b" strings, Openverse's [{"name"}]."""
    found: set[str] = set()
    for key in ("hits", "results"):
        items = body.get(key) if isinstance(body, dict) else None
        for raw in items if isinstance(items, list) else ():
            tags = raw.get("tags") if isinstance(raw, dict) else None
            names: list[object]
            if isinstance(tags, str):
                names = list(tags.split(","))
            elif isinstance(tags, list):
                names = [t.get("name") for t in tags[:30] if isinstance(t, dict)]
            else:
                continue
            for name in names:
                if isinstance(name, str) and (tag := " ".join(name.lower().split())):
                    if len(tag) <= MAX_SUGGESTED_TAG:
                        found.add(tag)
    return found
