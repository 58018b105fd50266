"""One way to open SQLite: connection set-up, versioned migrations, and the thread boundary.

Both the engine's caches (``search/store.py``) and the bot's state (``bot/state.py``) open
their file through ``Database``:

- WAL, so readers never wait for a writer, and a busy timeout, so a writer waits for
  another writer (a backup, an ``sqlite3`` shell, the CLI beside the bot) instead of
  failing; a write still locked out after a bounded number of tries is ``Busy``;
- ``PRAGMA quick_check`` at open: only a file that fails it, or is not a database, is
  ``Corrupt``. A busy file, a full disk or an I/O error is never called corrupt;
- ``PRAGMA user_version`` carries the schema version; older files are upgraded step by
  step, and a file from a newer release is refused with a sentence, never rewritten;
- every statement runs on the database's one thread, so the event loop never waits on
  the disk and the connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .errors import DataDirError

log = logging.getLogger(__name__)

T = TypeVar("T")
Migration = Callable[[sqlite3.Connection], None] | str

# A writer waits this long for another process's write lock, and tries this many times,
# before the write is given up as busy (about 30 s in all: longer than a backup of a
# cache-sized file takes, shorter than a member's patience).
BUSY_TIMEOUT = 10.0
BUSY_TRIES = 3


class StorageError(Exception):
    """A database call failed; the subclass says how (never shown to a member as is)."""


class Busy(StorageError):
    """Another connection held the write lock past the busy timeout, every try."""


class Full(StorageError):
    """The disk (or the file's size limit) is full; nothing was written."""


class Corrupt(StorageError):
    """The file fails ``PRAGMA quick_check`` or is not an SQLite database."""


class Unwritable(StorageError):
    """The file or its folder cannot be written (read-only, I/O error, permissions)."""


def classify(error: sqlite3.Error) -> type[StorageError]:
    """Map sqlite3's error to what the caller should do about it."""
    name = getattr(error, "sqlite_errorname", "") or ""
    text = str(error).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return Busy
    if name.startswith("SQLITE_FULL") or "is full" in text:
        return Full
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text \
            or "not a database" in text:
        return Corrupt
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")) \
            or "readonly" in text or "disk i/o" in text or "unable to open" in text:
        return Unwritable
    return StorageError


def check_data_dir(folder: Path) -> Path:
    """Create ``folder`` if need be and prove it writable; else DataDirError naming it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataDirError(f"DATA_DIR '{folder}' is a file, not a folder; point DATA_DIR at a "
                           "folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in folder.absolute().parents if p.exists() and not p.is_dir()),
                       None)
        if blocker is not None:
            raise DataDirError(f"DATA_DIR '{folder}' cannot be created: '{blocker}' is a file, "
                               "not a folder; point DATA_DIR at a folder elsewhere, or move "
                               "that file aside.") from None
        raise DataDirError(f"DATA_DIR '{folder}' cannot be created ({_reason(e)}); create it "
                           "or point DATA_DIR at a folder this user may write.") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DataDirError(f"DATA_DIR '{folder}' cannot be written ({_reason(e)}); give this "
                           "user write access or point DATA_DIR elsewhere.") from None
    return folder


def _reason(e: OSError) -> str:
    return (e.strerror or type(e).__name__).lower() if isinstance(e, OSError) else str(e)


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction; on any failure it is rolled back if one is still open.

    ``BEGIN IMMEDIATE`` takes the write lock up front, so a busy database fails before
    anything is read, and a failed COMMIT (a full disk) leaves no transaction behind.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Database:
    """One SQLite file: opened, checked and migrated once; every call on its own thread."""

    def __init__(self, path: Path | str, migrations: Sequence[Migration], *, what: str,
                 busy_timeout: float = BUSY_TIMEOUT, busy_tries: int = BUSY_TRIES) -> None:
        self.path = Path(path)
        self.migrations = tuple(migrations)
        self.what = what  # "the search cache", "the bot's state": for log lines
        self.busy_timeout = busy_timeout
        self.busy_tries = max(1, busy_tries)
        self.conn: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    @property
    def version(self) -> int:
        return len(self.migrations)

    # -- the thread boundary ------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on the database thread; StorageError subclasses on failure."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn, args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """The same from synchronous code (never from the database thread itself)."""
        return self._pool.submit(self._call, fn, args).result()

    def _call(self, fn: Callable[..., T], args: tuple) -> T:
        if self.conn is None:
            raise StorageError(f"{self.what} is closed")
        for attempt in range(self.busy_tries):
            try:
                return fn(self.conn, *args)
            except sqlite3.Error as e:
                kind = classify(e)
                if kind is Busy and attempt + 1 < self.busy_tries:
                    log.info("%s is busy (%s); trying again", self.what, e)
                    continue
                raise kind(str(e)) from e
        raise AssertionError("unreachable")

    # -- life cycle ---------------------------------------------------------------
    def open(self) -> None:
        """Connect, check and migrate (on the database thread); raises StorageError kinds."""
        self._pool.submit(self._open).result()

    async def open_async(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._open)

    def _open(self) -> None:
        check_data_dir(self.path.parent)
        deadline = time.monotonic() + self.busy_timeout * self.busy_tries
        while True:
            try:
                self.conn = self._connect()
                return
            except sqlite3.Error as e:
                kind = classify(e)
                if kind is Busy and time.monotonic() < deadline:
                    log.info("%s is busy at open (%s); trying again", self.what, e)
                    continue
                if kind is Busy:
                    raise DataDirError(
                        f"{self.path} is locked by another program for over "
                        f"{self.busy_timeout * self.busy_tries:.0f} s; close it (a backup, "
                        "an sqlite3 shell) and start again.") from None
                if kind is Unwritable:
                    raise DataDirError(f"DATA_DIR file {self.path} cannot be opened for "
                                       f"writing ({e}).") from None
                raise kind(str(e)) from e

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: quick_check "
                                            f"says {verdict[0] if verdict else 'nothing'}")
            found = self._found_version(conn)  # before WAL: a newer file is left untouched
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn, found)
        except BaseException:
            conn.close()
            raise
        return conn

    def _found_version(self, conn: sqlite3.Connection) -> int:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found == 0:
            found = _legacy_version(conn)
        if found > self.version:
            raise DataDirError(
                f"{self.path} was written by a newer findimage (schema {found}; this one "
                f"reads up to {self.version}); upgrade findimage or point DATA_DIR at "
                "another folder.")
        return found

    def _migrate(self, conn: sqlite3.Connection, found: int) -> None:
        if found == self.version:
            return
        with write(conn):
            for step in range(found, self.version):
                migration = self.migrations[step]
                if isinstance(migration, str):
                    for statement in _statements(migration):
                        conn.execute(statement)
                else:
                    migration(conn)
                if found:
                    log.info("%s: schema %d -> %d", self.what, step, step + 1)
            conn.execute(f"PRAGMA user_version = {int(self.version)}")

    def close(self) -> None:
        def shut() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        try:
            self._pool.submit(shut).result()
        except RuntimeError:  # already shut down
            pass
        self._pool.shutdown(wait=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # -- a file that fails quick_check ---------------------------------------------
    def move_aside(self, reason: str) -> Path:
        """Rename the file (and its WAL) to ``*.broken-STAMP``; keep only the newest such set."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = Path(f"{self.path}.broken-{stamp}")
        for old in self.path.parent.glob(f"{self.path.name}.broken-*"):
            try:
                old.unlink()
            except OSError:
                pass
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(target) + suffix))
        log.error("%s at %s is corrupt (%s); moved it to %s and starting empty", self.what,
                  self.path, reason, target)
        return target


def _legacy_version(conn: sqlite3.Connection) -> int:
    """Files written before ``user_version`` kept their version in a ``meta`` table."""
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
                            ).fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
    try:
        return int(row[0]) if row else 0
    except ValueError:
        return 0


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
