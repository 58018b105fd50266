"""SQLite: the Pixabay response cache and the embedding cache.

One file in DATA_DIR, WAL mode, a versioned schema. A file that is corrupt, or
locked past the busy timeout, is moved aside and rebuilt: the caches are only
caches, and a query must still answer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
API_CACHE_TTL = 24 * 3600.0  # Pixabay's terms: cache responses for 24 hours.

FeatureVector = NDArray[np.float32]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_cache (
    key TEXT PRIMARY KEY,
    fetched_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    provider TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (provider, image_id, model)
);
"""


class Store:
    """Thread-safe wrapper round one sqlite3 connection; every call is short."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 1.0,
                 clock=time.time) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.rebuilt = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._open()

    # -- life cycle -------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self.path is None else str(self.path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(target, timeout=self.busy_timeout, check_same_thread=False,
                               isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                self._migrate(conn, int(row[0]))
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection, found: int) -> None:
        # Only one version exists so far; anything else is from the future or broken,
        # and the caches can always be refilled.
        raise sqlite3.DatabaseError(f"unknown schema version {found}")

    def _open(self) -> None:
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as e:
            self._rebuild(e)

    def _rebuild(self, error: Exception) -> None:
        """Move the broken file aside and start an empty cache."""
        self.rebuilt += 1
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None
        if self.path is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log.warning("cache %s is unusable (%s); moving it aside and rebuilding",
                        self.path, error)
            for suffix in ("", "-wal", "-shm"):
                old = Path(str(self.path) + suffix)
                if old.exists():
                    old.replace(Path(f"{self.path}.broken-{stamp}{suffix}"))
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as e:  # the folder itself is unusable: keep working in memory
            log.warning("cannot rebuild cache at %s (%s); using memory", self.path, e)
            self.path = None
            self._conn = self._connect()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, fn):
        """Run ``fn(conn)``; on a corrupt or locked file rebuild once and retry."""
        with self._lock:
            if self._conn is None:
                raise RuntimeError("store is closed")
            try:
                return fn(self._conn)
            except sqlite3.DatabaseError as e:
                self._rebuild(e)
                return fn(self._conn)

    # -- Pixabay responses ------------------------------------------------------
    def get_response(self, key: str, ttl: float = API_CACHE_TTL) -> dict | None:
        now = self.clock()

        def q(conn: sqlite3.Connection):
            return conn.execute("SELECT fetched_at, body FROM api_cache WHERE key=?",
                                (key,)).fetchone()

        row = self._run(q)
        if row is None or now - row[0] > ttl:
            return None
        try:
            return json.loads(row[1])
        except ValueError:
            return None

    def put_response(self, key: str, body: dict) -> None:
        text = json.dumps(body, separators=(",", ":"))
        now = self.clock()

        def q(conn: sqlite3.Connection):
            conn.execute("INSERT OR REPLACE INTO api_cache VALUES (?, ?, ?)", (key, now, text))
            conn.execute("DELETE FROM api_cache WHERE fetched_at < ?", (now - API_CACHE_TTL,))

        self._run(q)

    # -- embeddings -------------------------------------------------------------
    def get_embeddings(self, provider: str, model: str, ids: Sequence[int | str]
                       ) -> dict[int | str, FeatureVector]:
        if not ids:
            return {}
        out: dict[int | str, FeatureVector] = {}
        wanted = {str(i): i for i in ids}  # Pixabay ids are numbers, Openverse ids UUIDs

        def q(conn: sqlite3.Connection):
            rows = []
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(
                    f"SELECT image_id, dim, vector FROM embeddings WHERE provider=? AND model=?"
                    f" AND image_id IN ({marks})", (provider, model, *chunk)).fetchall()
            return rows

        for image_id, dim, blob in self._run(q):
            vec = np.frombuffer(blob, dtype=np.float32)
            if vec.shape == (dim,) and str(image_id) in wanted:
                out[wanted[str(image_id)]] = vec
        return out

    def put_embeddings(self, provider: str, model: str,
                       items: Iterable[tuple[int | str, FeatureVector]]) -> None:
        rows = [(provider, i, model, int(v.shape[0]),
                 np.ascontiguousarray(v, dtype=np.float32).tobytes()) for i, v in items]
        if not rows:
            return

        def q(conn: sqlite3.Connection):
            conn.execute("BEGIN")
            try:
                conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._run(q)
