"""One way to open the database, SQLite or PostgreSQL, and one way to run a transaction.

Both the engine's caches (``search/store.py``) and the bot's state (``bot/state.py``) go
through ``Database``; the statements are SQLAlchemy Core, the same for both engines.

SQLite (the default, a file in DATA_DIR), as issue 10 made it:
- ``PRAGMA quick_check`` at open: only a file that fails it, or is not a database, is
  ``Corrupt``. A busy file, a full disk or an I/O error is never called corrupt;
- WAL, so readers never wait for a writer, and a busy timeout, so a writer waits for
  another writer (a backup, an ``sqlite3`` shell, the CLI beside the bot); a write still
  locked out after a bounded number of tries is ``Busy``;
- one connection (aiosqlite: its own thread), so the event loop never waits on the disk
  and per-connection settings hold; writes take the lock up front (``BEGIN IMMEDIATE``);
- ``PRAGMA user_version`` still carries the schema number beside Alembic's table, so a
  file from a newer release is refused with a sentence before anything is written.

PostgreSQL (``DATABASE_URL``), shared by every process:
- the schema is created or upgraded at start-up under ``pg_try_advisory_lock``, so
  processes starting together take turns instead of racing to create a table;
- a lost connection is retried: a transaction that fails on a lost connection (a server
  restart drops every pooled one; SQLAlchemy then empties the pool) is tried again,
  ``len(RETRY_WAITS) + 1`` times in all; then calls fail fast (``Unavailable``) for ``DOWN_FOR`` seconds, so a
  search that can go on without the database does not wait on each call;
- the pool is bounded (DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW connections a database
  object, POOL_TIMEOUT to wait for one); every connect and statement has a timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from ..errors import ConfigError, DataDirError, SearchError

log = logging.getLogger("search.storage")

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[T]]

MIGRATIONS = Path(__file__).parent / "migrations"

# A writer waits this long for another process's write lock, and tries this many times,
# before the write is given up as busy (about 30 s in all: longer than a backup of a
# cache-sized file takes, shorter than a member's patience).
BUSY_TIMEOUT = 10.0
BUSY_TRIES = 3

# PostgreSQL. A server that has not answered the handshake in 5 s is treated as down; no
# statement of ours takes a second, so 10 s means the connection is stuck.
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
RETRY_WAITS = (0.2, 0.5)  # between tries of a transaction that lost its connection
DOWN_FOR = 2.0  # then calls fail fast this long: a search goes on without its cache
POOL_SIZE = 5
MAX_OVERFLOW = 5
POOL_TIMEOUT = 10.0  # waiting for a pooled connection longer than this is Busy
SCHEMA_LOCK_WAIT = 60.0  # another process creating the schema takes well under a second
SCHEMA_LOCK = zlib.crc32(b"findimage schema")  # pg_advisory_lock's key, the same everywhere


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


class Unavailable(StorageError, SearchError):
    """The database server cannot be reached (down, restarting, network); ``detail`` says
    why, for the log. ``str()`` is the sentence a member sees."""

    SENTENCE = "The bot's database is not answering right now; try again in a minute."

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(self.SENTENCE)


class DatabaseUrlError(ConfigError):
    """DATABASE_URL names a server that refuses us (password, database, newer schema)."""


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


# SQLSTATE classes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_GONE = ("08", "57P01", "57P02", "57P03", "53300")  # connection, shutdown, starting, full
_PG_REFUSED = ("28", "3D000")  # authorisation, no such database


def _pg_kind(error: BaseException) -> type[StorageError] | type[DatabaseUrlError] | None:
    for e in (error, getattr(error, "orig", None), getattr(error, "__cause__", None),
              getattr(getattr(error, "orig", None), "__cause__", None)):
        if e is None:
            continue
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and state:
            if state.startswith(_PG_GONE):
                return Unavailable
            if state.startswith(_PG_REFUSED):
                return DatabaseUrlError
            if state == "53100":
                return Full
            if state.startswith("40"):  # serialisation failure, deadlock: try again
                return Busy
            return StorageError
        if isinstance(e, (OSError, asyncio.TimeoutError, ConnectionError)):
            return Unavailable
        if type(e).__name__ in ("ConnectionDoesNotExistError", "InterfaceError",
                                "InternalClientError", "ConnectionFailureError"):
            return Unavailable
    if isinstance(error, sa.exc.DBAPIError):
        return Unavailable if error.connection_invalidated else StorageError
    return None


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


def is_url(target: Path | str) -> bool:
    return isinstance(target, str) and "://" in target


def engine_url(raw: str) -> sa.URL:
    """``postgresql://`` (or ``postgres://``) as SQLAlchemy's asyncpg URL."""
    url = sa.make_url(raw)
    return url.set(drivername="postgresql+asyncpg")


def describe_url(raw: str) -> str:
    """host:port/database, for sentences and logs: never the password."""
    try:
        url = sa.make_url(raw)
    except sa.exc.ArgumentError:
        return "DATABASE_URL"
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


# -- the migration history (search/storage/migrations) -------------------------------
def _config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_number(branch: str) -> int:
    """The branch's newest revision as a number: ``state4`` is 4 (PRAGMA user_version)."""
    head = _script().get_revision(f"{branch}@head")
    return int(head.revision[len(branch):])


def known_revisions() -> set[str]:
    return {r.revision for r in _script().walk_revisions()}


def schema_status(connection: sa.Connection) -> tuple[set[str], set[str]]:
    """(revisions this database is at, of them those this release does not know)."""
    current = set(MigrationContext.configure(connection).get_current_heads())
    return current, current - known_revisions()


class Database:
    """One database: the SQLite file at ``target``, or the PostgreSQL server at the URL.

    ``branch`` is the part of the migration history this object needs (``cache`` or
    ``state``); both may share one PostgreSQL database.
    """

    def __init__(self, target: Path | str, *, branch: str, what: str,
                 busy_timeout: float = BUSY_TIMEOUT, busy_tries: int = BUSY_TRIES,
                 pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW) -> None:
        self.url: str | None = str(target) if is_url(target) else None
        self.path: Path | None = None if self.url else Path(target)
        self.branch = branch
        self.what = what  # "the search cache", "the bot's state": for log lines
        self.busy_timeout = busy_timeout
        self.busy_tries = max(1, busy_tries)
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.engine: AsyncEngine | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._checked = False
        self._found = 0  # SQLite: the schema number the file had at open
        self._lock: asyncio.Lock | None = None
        self._down_until = 0.0
        self._down_detail = ""

    @property
    def shared(self) -> bool:
        """Several processes may use this database at once (PostgreSQL)."""
        return self.url is not None

    @property
    def version(self) -> int:
        return head_number(self.branch)

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else describe_url(self.url or "")

    # -- SQLite: the checks before the engine ---------------------------------------
    def precheck(self) -> None:
        """SQLite: DATA_DIR writable, the file sound (quick_check), not from a newer release,
        in WAL. Synchronous and idempotent; nothing for PostgreSQL."""
        if self.path is None or self._checked:
            return
        check_data_dir(self.path.parent)
        deadline = time.monotonic() + self.busy_timeout * self.busy_tries
        while True:
            try:
                self._found = self._check_file()
                self._checked = True
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

    def _check_file(self) -> int:
        assert self.path is not None
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: quick_check "
                                            f"says {verdict[0] if verdict else 'nothing'}")
            found = conn.execute("PRAGMA user_version").fetchone()[0] or _legacy_version(conn)
            if found > self.version:  # before WAL: a newer file is left untouched
                raise DataDirError(
                    f"{self.path} was written by a newer findimage (schema {found}; this one "
                    f"reads up to {self.version}); upgrade findimage or point DATA_DIR at "
                    "another folder.")
            conn.execute("PRAGMA journal_mode=WAL")
            return found
        finally:
            conn.close()

    # -- life cycle -------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, check and migrate, once; raises StorageError kinds or DataDirError."""
        if self.engine is not None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.engine is not None:
                return
            self._fail_fast()
            if self.path is not None:
                await asyncio.to_thread(self.precheck)
            engine = self._create_engine()
            try:
                await self._migrate(engine)
            except BaseException as e:
                await engine.dispose()
                if isinstance(e, Unavailable):  # the caller says so: start-up, or a cache miss
                    self._went_down(e.detail, quiet=True)
                raise
            self.loop = asyncio.get_running_loop()  # the engine's connections belong to it
            self.engine = engine

    def _create_engine(self) -> AsyncEngine:
        if self.url is not None:
            return create_async_engine(
                engine_url(self.url), pool_size=self.pool_size, max_overflow=self.max_overflow,
                # No pool_pre_ping: it cost ~7 ms a checkout here (bench/storage.py). A dead
                # connection fails its first statement instead; SQLAlchemy then drops the
                # whole pool and ``run`` tries again on a fresh connection.
                pool_timeout=POOL_TIMEOUT, pool_recycle=1800,
                connect_args={"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT,
                              # asyncpg prepares every statement; a generic plan made
                              # while a table was small (a seq scan) would stay for the
                              # connection's life as the table grows: 150 ms for a search's
                              # 200 vectors at 40k rows, against 3 ms planned each time.
                              "server_settings": {"application_name": "findimage",
                                                  "plan_cache_mode": "force_custom_plan"}})
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{self.path}", poolclass=AsyncAdaptedQueuePool, pool_size=1,
            max_overflow=0, pool_timeout=3600, connect_args={"timeout": self.busy_timeout})

        @event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we say BEGIN ourselves, below
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # A write takes the lock up front, so a busy database fails before anything is
            # read; a read is a WAL snapshot and never waits for a writer.
            readonly = conn.get_execution_options().get("findimage_read", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine

    async def _migrate(self, engine: AsyncEngine) -> None:
        try:
            async with engine.connect() as conn:
                if self.url is not None:
                    await self._schema_lock(conn)
                try:
                    async with conn.begin():
                        await conn.run_sync(self._upgrade)
                finally:
                    if self.url is not None and not conn.invalidated:
                        await conn.execute(sa.select(sa.func.pg_advisory_unlock(SCHEMA_LOCK)))
                        await conn.commit()
        except (ConfigError, StorageError):
            raise
        except Exception as e:
            error = self._error(e)
            if error is None:
                raise
            raise error from e

    async def _schema_lock(self, conn: AsyncConnection) -> None:
        """PostgreSQL: wait (bounded) for the schema lock; a session lock, freed if we die."""
        deadline = time.monotonic() + SCHEMA_LOCK_WAIT
        while True:
            got = (await conn.execute(sa.select(sa.func.pg_try_advisory_lock(SCHEMA_LOCK)))
                   ).scalar()
            await conn.commit()
            if got:
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"another process held the schema lock for over "
                                  f"{SCHEMA_LOCK_WAIT:.0f} s")
            await asyncio.sleep(0.05)

    def _upgrade(self, conn: sa.Connection) -> None:
        current, unknown = schema_status(conn)
        if unknown:
            if self.url is not None:
                raise DatabaseUrlError(
                    f"The database at {self.where} was written by a newer findimage (schema "
                    f"{', '.join(sorted(unknown))}); upgrade findimage or point DATABASE_URL "
                    "at another database.")
            raise DataDirError(f"{self.path} was written by a newer findimage (schema "
                               f"{', '.join(sorted(unknown))}); upgrade findimage or point "
                               "DATA_DIR at another folder.")
        cfg = _config(conn)
        mine = {r for r in current if r.startswith(self.branch)}
        if not mine and self._found:  # a file from before Alembic: its user_version says
            command.stamp(cfg, f"{self.branch}{self._found}")
            mine = {f"{self.branch}{self._found}"}
        head = f"{self.branch}{self.version}"
        if mine != {head}:
            command.upgrade(cfg, f"{self.branch}@head")
            if mine:
                log.info("%s: schema %s -> %s", self.what, ", ".join(sorted(mine)), head)
        if self.path is not None:
            conn.exec_driver_sql(f"PRAGMA user_version = {int(self.version)}")

    async def aclose(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await engine.dispose()

    # -- the transaction -----------------------------------------------------------
    async def run(self, work: Work[T], *, write: bool = True) -> T:
        """``await work(conn)`` in one transaction; StorageError kinds on failure.

        A busy SQLite file and a lost PostgreSQL connection are tried again (bounded);
        the whole transaction is repeated, so ``work`` must not have side effects outside
        the database.
        """
        await self.open()
        self._fail_fast()
        assert self.engine is not None
        tries = self.busy_tries if self.url is None else len(RETRY_WAITS) + 1
        for attempt in range(tries):
            try:
                async with self.engine.connect() as conn:
                    if not write and self.url is not None:
                        # a read is its own snapshot: no BEGIN/COMMIT round trips
                        await conn.execution_options(isolation_level="AUTOCOMMIT")
                        return await work(conn)
                    if not write:
                        await conn.execution_options(findimage_read=True)
                    async with conn.begin():
                        return await work(conn)
            except (StorageError, ConfigError):
                raise
            except Exception as e:
                error = self._error(e)
                if error is None:
                    raise
                retry = isinstance(error, (Busy, Unavailable)) and attempt + 1 < tries
                detail = getattr(error, "detail", "") or str(error)
                if retry:
                    log.info("%s: %s; trying again", self.what, detail)
                    if isinstance(error, Unavailable):
                        await asyncio.sleep(RETRY_WAITS[attempt])
                    continue
                if isinstance(error, Unavailable):
                    self._went_down(detail)
                raise error from e
        raise AssertionError("unreachable")

    async def execute_raw(self, sql: str) -> Any:
        """One statement on a pooled connection (SQLite's only one): PRAGMAs, for tests and
        ``--check``."""
        async def work(conn: AsyncConnection) -> Any:
            result = await conn.exec_driver_sql(sql)
            return result.scalar() if result.returns_rows else None

        return await self.run(work)

    def _error(self, e: BaseException) -> StorageError | ConfigError | None:
        if self.url is None:
            orig = getattr(e, "orig", None)
            if isinstance(orig, sqlite3.Error):
                return classify(orig)(str(orig))
            if isinstance(e, sa.exc.TimeoutError):
                return Busy(str(e))
            return StorageError(str(e)) if isinstance(e, sa.exc.SQLAlchemyError) else None
        if isinstance(e, sa.exc.TimeoutError):  # every pooled connection busy for 10 s
            return Busy(f"no free connection in the pool for {POOL_TIMEOUT:.0f} s")
        kind = _pg_kind(e)
        if kind is None:
            return None
        reason = _short(e)
        if kind is DatabaseUrlError:
            return DatabaseUrlError(f"PostgreSQL at {self.where} refused the connection "
                                    f"({reason}); check DATABASE_URL.")
        if kind is Unavailable:
            return Unavailable(f"PostgreSQL at {self.where} is not answering ({reason})")
        return kind(reason)

    def _went_down(self, detail: str, *, quiet: bool = False) -> None:
        self._down_until = time.monotonic() + DOWN_FOR
        self._down_detail = detail
        if not quiet:
            log.warning("%s: %s; going on without it, trying again in %.0f s", self.what,
                        detail, DOWN_FOR)

    def _fail_fast(self) -> None:
        if time.monotonic() < self._down_until:
            raise Unavailable(self._down_detail)

    # -- a file that fails quick_check ---------------------------------------------
    def move_aside(self, reason: str) -> Path:
        """Rename the file (and its WAL) to ``*.broken-STAMP``; keep only the newest such set."""
        assert self.path is not None
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
        self._checked = False
        log.error("%s at %s is corrupt (%s); moved it to %s and starting empty", self.what,
                  self.path, reason, target)
        return target

    async def rebuild(self, reason: str) -> None:
        """SQLite found broken while running: close, move it aside, start an empty file."""
        await self.aclose()
        await asyncio.to_thread(self.move_aside, reason)
        await self.open()


def _short(e: BaseException) -> str:
    for candidate in (getattr(getattr(e, "orig", None), "__cause__", None),
                      getattr(e, "orig", None), e.__cause__, e):
        if candidate is not None:
            text = str(candidate).strip().splitlines()
            return f"{type(candidate).__name__}: {text[0]}" if text else type(candidate).__name__
    return type(e).__name__


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


async def inspect_server(url: str) -> str:
    """``--check``: connect to DATABASE_URL and say what schema it holds, in one line.

    Raises DatabaseUrlError (refused, or written by a newer release) or Unavailable.
    """
    db = Database(url, branch="state", what="the database", pool_size=1, max_overflow=0)
    engine = db._create_engine()
    heads = {f"{b}{head_number(b)}" for b in ("cache", "state")}

    def look(conn: sa.Connection) -> tuple[str, set[str], set[str]]:
        version = conn.exec_driver_sql("SHOW server_version").scalar()
        return str(version).split()[0], *schema_status(conn)

    try:
        async with engine.connect() as conn:
            version, current, unknown = await conn.run_sync(look)
    except Exception as e:
        error = db._error(e)
        raise (error or Unavailable(str(e))) from e
    finally:
        await engine.dispose()
    where = f"PostgreSQL {version} at {db.where}"
    if unknown:
        raise DatabaseUrlError(f"The database at {db.where} was written by a newer findimage "
                               f"(schema {', '.join(sorted(unknown))}); upgrade findimage or "
                               "point DATABASE_URL at another database.")
    if current == heads:
        return f"{where}, schema {', '.join(sorted(heads))} (current)"
    if not current:
        return f"{where}, empty: start-up creates the schema ({', '.join(sorted(heads))})"
    return (f"{where}, schema {', '.join(sorted(current))}: start-up upgrades it to "
            f"{', '.join(sorted(heads))}")
