"""SQLite: the API response cache and the embedding cache (DATA_DIR/search.sqlite3).

Responses are keyed by the source's endpoint and a fingerprint of its key, so another
PIXABAY_API_URL or another key never reads them; vectors by the source's endpoint, the
model and the image id, so ids from two catalogues never meet.

These are caches: a query must still answer when they cannot be used. A busy file
(another process writing) is waited for, then the write is skipped; a full disk skips
the write and the cache is used again once space returns. Only a file that fails
``quick_check`` or is not a database is moved aside, once, with a loud log line.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .models import Source
from .sqlite import BUSY_TIMEOUT, BUSY_TRIES, Corrupt, Database, StorageError, write

log = logging.getLogger(__name__)

API_CACHE_TTL = 24 * 3600.0  # Pixabay's terms: cache responses for 24 hours.

FeatureVector = NDArray[np.float32]

MIGRATIONS = (
    # 1: the first release (kept so its files upgrade through 2).
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS api_cache (
        key TEXT PRIMARY KEY, fetched_at REAL NOT NULL, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS embeddings (
        provider TEXT NOT NULL, image_id INTEGER NOT NULL, model TEXT NOT NULL,
        dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (provider, image_id, model));
    """,
    # 2: responses keyed by endpoint + key fingerprint, vectors by endpoint. Release 1's
    # rows cannot say which endpoint they came from, so they are dropped, not guessed.
    """
    DROP TABLE IF EXISTS api_cache;
    DROP TABLE IF EXISTS embeddings;
    DROP TABLE IF EXISTS meta;
    CREATE TABLE api_cache (
        scope TEXT NOT NULL, request TEXT NOT NULL, fetched_at REAL NOT NULL,
        body TEXT NOT NULL, PRIMARY KEY (scope, request));
    CREATE INDEX api_cache_age ON api_cache (fetched_at);
    CREATE TABLE embeddings (
        source TEXT NOT NULL, image_id INTEGER NOT NULL, model TEXT NOT NULL,
        dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (source, image_id, model));
    """,
)


class Store:
    """The caches. Reads that fail are misses; writes that fail are skipped and logged."""

    def __init__(self, path: Path | str, *, busy_timeout: float = BUSY_TIMEOUT,
                 busy_tries: int = BUSY_TRIES, clock=time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.rebuilt = 0
        self.skipped_writes = 0
        self.db = Database(self.path, MIGRATIONS, what="the search cache",
                           busy_timeout=busy_timeout, busy_tries=busy_tries)
        try:
            self.db.open()
        except Corrupt as e:
            self.db.move_aside(str(e))
            self.rebuilt += 1
            self.db.open()

    def close(self) -> None:
        self.db.close()

    async def _read(self, fn, *args, default=None):
        try:
            return await self.db.run(fn, *args)
        except Corrupt as e:
            self._corrupt(e)
        except StorageError as e:
            log.warning("the search cache could not be read (%s); searching without it", e)
        return default

    async def _write(self, fn, *args) -> bool:
        try:
            await self.db.run(fn, *args)
            return True
        except Corrupt as e:
            self._corrupt(e)
        except StorageError as e:
            self.skipped_writes += 1
            log.warning("the search cache was not updated (%s: %s); results are unaffected",
                        type(e).__name__, e)
        return False

    def _corrupt(self, error: Exception) -> None:
        """Found broken while running: move it aside once and start an empty cache."""
        def rebuild(conn: sqlite3.Connection) -> None:
            conn.close()
            self.db.conn = None
            self.db.move_aside(str(error))
            self.db.conn = self.db._connect()

        self.rebuilt += 1
        assert self.db.conn is not None  # found broken while open
        try:
            self.db._pool.submit(rebuild, self.db.conn).result()
        except (sqlite3.Error, OSError) as e:
            log.error("cannot rebuild the search cache at %s (%s); searching without it",
                      self.path, e)

    # -- API responses ----------------------------------------------------------
    async def get_response(self, source: Source, request: str, ttl: float = API_CACHE_TTL
                           ) -> dict | None:
        def q(conn: sqlite3.Connection):
            return conn.execute("SELECT fetched_at, body FROM api_cache WHERE scope=? AND "
                                "request=?", (source.response_scope, request)).fetchone()

        row = await self._read(q)
        if row is None or self.clock() - row[0] > ttl:
            return None
        try:
            return json.loads(row[1])
        except ValueError:
            return None

    async def put_response(self, source: Source, request: str, body: dict) -> bool:
        text = json.dumps(body, separators=(",", ":"))
        now = self.clock()

        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute("INSERT OR REPLACE INTO api_cache VALUES (?, ?, ?, ?)",
                             (source.response_scope, request, now, text))
                conn.execute("DELETE FROM api_cache WHERE fetched_at < ?", (now - API_CACHE_TTL,))

        return await self._write(q)

    # -- embeddings -------------------------------------------------------------
    async def get_embeddings(self, source: Source, model: str, ids: Sequence[int | str]
                             ) -> dict[int | str, FeatureVector]:
        if not ids:
            return {}
        wanted = {str(i): i for i in ids}  # Pixabay ids are numbers, Openverse ids UUIDs

        def q(conn: sqlite3.Connection):
            rows = []
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(
                    f"SELECT image_id, dim, vector FROM embeddings WHERE source=? AND model=?"
                    f" AND image_id IN ({marks})", (source.id, model, *chunk)).fetchall()
            return rows

        out: dict[int | str, FeatureVector] = {}
        for image_id, dim, blob in await self._read(q, default=[]):
            vec = np.frombuffer(blob, dtype=np.float32)
            if vec.shape == (dim,) and str(image_id) in wanted:
                out[wanted[str(image_id)]] = vec
        return out

    async def put_embeddings(self, source: Source, model: str,
                             items: Iterable[tuple[int | str, FeatureVector]]) -> bool:
        rows = [(source.id, i, model, int(v.shape[0]),
                 np.ascontiguousarray(v, dtype=np.float32).tobytes()) for i, v in items]
        if not rows:
            return True

        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)", rows)

        return await self._write(q)

    async def count_embeddings(self) -> int:
        return await self._read(
            lambda conn: conn.execute("SELECT count(*) FROM embeddings").fetchone()[0], default=0)
