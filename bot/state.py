"""SQLite: results messages, picks, pending searches and per-server settings (DATA_DIR/bot.sqlite3).

Everything a reaction needs lives here, so paging and sharing work on old messages
after a restart. The file is opened through ``search.sqlite.Database``: WAL, a busy
timeout, ``quick_check`` at open, versioned migrations, one thread for every call.

A crash (``kill -9``) at any point leaves something the next start or the next press
can finish: searches still "thinking" are answered at start-up, a pick claimed by a
process that died no longer blocks the image, and a page is recorded before the message
is edited. A write that fails (a full disk) keeps the results in memory for their message
and writes them when it can; the member is not told of a failure that did not touch them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.models import Filters
from search.pixabay import Hit
from search.ranking import Ranking
from search.sqlite import Corrupt, Database, StorageError, write

log = logging.getLogger(__name__)

DAY = 86400.0
INTERACTION_TTL = 15 * 60.0  # Discord: an interaction token works for 15 minutes
EXPIRED_NOTE_DAYS = 365  # an expired message keeps a ~100-byte row this long, to say so
UNSAVED_LIMIT = 256  # results kept in memory while the disk refuses them
PRUNE_EVERY = 3600.0

MIGRATIONS = (
    # 1: the first release.
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS results (
        message_id INTEGER PRIMARY KEY, channel_id INTEGER NOT NULL, guild_id INTEGER,
        requester_id INTEGER NOT NULL, tag TEXT NOT NULL, phrase TEXT NOT NULL,
        filters TEXT NOT NULL, per_page INTEGER NOT NULL, page INTEGER NOT NULL,
        seconds REAL NOT NULL, ranking TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS picks (
        id INTEGER PRIMARY KEY AUTOINCREMENT, guild_id INTEGER NOT NULL,
        image_id INTEGER NOT NULL, member_id INTEGER NOT NULL, phrase TEXT NOT NULL,
        page_url TEXT NOT NULL, source_message_id INTEGER NOT NULL, channel_id INTEGER,
        message_id INTEGER, created_at REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS picks_recent ON picks (guild_id, created_at);
    CREATE TABLE IF NOT EXISTS guild_settings (
        guild_id INTEGER PRIMARY KEY, picks_channel_id INTEGER);
    """,
    # 2: crash safety and pruning.
    """
    DROP TABLE IF EXISTS meta;
    ALTER TABLE results ADD COLUMN turning INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX results_age ON results (created_at);
    ALTER TABLE picks ADD COLUMN run_id INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL);
    CREATE TABLE pending_interactions (
        interaction_id INTEGER PRIMARY KEY, application_id INTEGER NOT NULL,
        token TEXT NOT NULL, created_at REAL NOT NULL);
    """,
    # 3: how a results message looks (layout, source, "more like" link), and the pick
    # messages 🔍 can start from.
    """
    CREATE TABLE results_view (message_id INTEGER PRIMARY KEY, view TEXT NOT NULL);
    CREATE TABLE shared_picks (
        message_id INTEGER PRIMARY KEY, pick_id INTEGER NOT NULL,
        results_message_id INTEGER NOT NULL, hit TEXT NOT NULL);
    """,
)


@dataclass
class ResultsState:
    message_id: int
    channel_id: int
    guild_id: int | None
    requester_id: int
    tag: str
    phrase: str
    filters: Filters
    per_page: int
    page: int  # 0-based
    seconds: float
    ranking: Ranking
    turning: bool = False  # a page was recorded but its edit may not have reached Discord
    expired: bool = False  # older than RESULTS_KEEP_DAYS: the ranking is gone
    created_at: float = 0.0

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.ranking) // self.per_page))


@dataclass
class View:
    """How a results message looks: its layout, source, and a label beyond the phrase."""

    layout: str = "list"
    source: str = "pixabay"
    link: str = ""  # for "more like #id": the pick message it came from

    def to_json(self) -> str:
        return json.dumps({"layout": self.layout, "source": self.source, "link": self.link})

    @classmethod
    def from_json(cls, text: str) -> View:
        try:
            data = json.loads(text)
            return cls(str(data.get("layout", "list")), str(data.get("source", "pixabay")),
                       str(data.get("link", "")))
        except (ValueError, AttributeError):
            return cls()


@dataclass
class SharedPick:
    """A pick message the bot posted: which hit, from which results message."""

    message_id: int
    pick_id: int
    results_message_id: int
    hit: Hit


@dataclass
class Pick:
    id: int
    guild_id: int
    image_id: int
    member_id: int
    phrase: str
    page_url: str
    channel_id: int | None
    message_id: int | None
    created_at: float


@dataclass
class PendingInteraction:
    interaction_id: int
    application_id: int
    token: str
    created_at: float


class State:
    def __init__(self, path: Path | str, *, clock=time.time, keep_days: int = 30) -> None:
        self.path = Path(path)
        self.clock = clock
        self.keep = keep_days * DAY
        self.db = Database(self.path, MIGRATIONS, what="the bot's state")
        self.run_id = 0
        self._unsaved: OrderedDict[int, ResultsState] = OrderedDict()
        self._unsaved_views: OrderedDict[int, View] = OrderedDict()
        self._pruned_at = 0.0

    async def open(self) -> State:
        try:
            await self.db.open_async()
        except Corrupt as e:
            from search.errors import DataDirError

            await self.db.aclose()
            raise DataDirError(
                f"DATA_DIR file {self.path} is corrupt ({e}); restore it from a backup "
                "(see docs/operations.md) or move it aside to start with no saved results.") from None

        def start(conn: sqlite3.Connection) -> int:
            with write(conn):
                run_id = conn.execute("INSERT INTO runs (started_at) VALUES (?)",
                                      (self.clock(),)).lastrowid
                assert run_id is not None  # an INSERT always sets it
                return run_id

        self.run_id = await self.db.run(start)
        await self.prune()
        return self

    async def close(self) -> None:
        if self._unsaved:
            await self._flush()
        if self._unsaved:
            log.warning("%d results could not be written before shutdown", len(self._unsaved))
        await self.db.aclose()

    async def __aenter__(self) -> State:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- results --------------------------------------------------------------
    @staticmethod
    def _row(s: ResultsState, now: float) -> tuple:
        return (s.message_id, s.channel_id, s.guild_id, s.requester_id, s.tag, s.phrase,
                json.dumps(s.filters.to_dict()), s.per_page, s.page, s.seconds,
                json.dumps(s.ranking.to_dict(), separators=(",", ":")),
                s.created_at or now, int(s.turning))

    async def save_results(self, s: ResultsState) -> bool:
        """Write the results; if the disk refuses, keep them in memory and say False."""
        if not s.created_at:
            s.created_at = self.clock()
        self._unsaved.pop(s.message_id, None)
        self._unsaved[s.message_id] = s
        await self._flush()
        if self.clock() - self._pruned_at > PRUNE_EVERY:
            await self.prune()
        return s.message_id not in self._unsaved

    async def _flush(self) -> None:
        """Write what the disk refused before, oldest first; stop at the first refusal."""
        while self._unsaved:
            message_id, s = next(iter(self._unsaved.items()))
            row = self._row(s, self.clock())

            def q(conn: sqlite3.Connection, row=row) -> None:
                with write(conn):
                    conn.execute("INSERT OR REPLACE INTO results (message_id, channel_id, "
                                  "guild_id, requester_id, tag, phrase, filters, per_page, page, "
                                  "seconds, ranking, created_at, turning) VALUES "
                                  "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

            try:
                await self.db.run(q)
            except StorageError as e:
                log.warning("results of message %s kept in memory; the state file refused them "
                            "(%s: %s)", message_id, type(e).__name__, e)
                while len(self._unsaved) > UNSAVED_LIMIT:
                    dropped, _ = self._unsaved.popitem(last=False)
                    log.warning("results of message %s dropped from memory", dropped)
                return
            if self._unsaved.get(message_id) is s:
                del self._unsaved[message_id]

    async def get_results(self, message_id: int) -> ResultsState | None:
        if message_id in self._unsaved:
            return self._unsaved[message_id]

        def q(conn: sqlite3.Connection):
            return conn.execute(
                "SELECT message_id, channel_id, guild_id, requester_id, tag, phrase, filters, "
                "per_page, page, seconds, ranking, turning, created_at FROM results "
                "WHERE message_id=?", (message_id,)).fetchone()

        row = await self.db.run(q)
        if row is None:
            return None
        expired = row[10] == ""
        ranking = Ranking(()) if expired else Ranking.from_dict(json.loads(row[10]))
        return ResultsState(row[0], row[1], row[2], row[3], row[4], row[5],
                            Filters.from_dict(json.loads(row[6])), row[7], row[8], row[9],
                            ranking, turning=bool(row[11]), expired=expired, created_at=row[12])

    async def is_results(self, message_id: int) -> bool:
        if message_id in self._unsaved:
            return True

        def q(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM results WHERE message_id=?",
                                (message_id,)).fetchone() is not None

        return await self.db.run(q)

    async def set_page(self, s: ResultsState, page: int, *, turning: bool) -> None:
        """Record the page (``turning``: before the message edit; False once it is shown)."""
        s.page, s.turning = page, turning
        if s.message_id in self._unsaved:
            await self._flush()
            return

        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute("UPDATE results SET page=?, turning=? WHERE message_id=?",
                             (page, int(turning), s.message_id))

        try:
            await self.db.run(q)
        except StorageError as e:
            log.warning("page of message %s kept in memory (%s)", s.message_id, e)
            self._unsaved[s.message_id] = s

    async def prune(self) -> int:
        """Drop rankings older than RESULTS_KEEP_DAYS (a slim row says they expired)."""
        now = self.clock()
        self._pruned_at = now

        def q(conn: sqlite3.Connection) -> int:
            with write(conn):
                n = conn.execute("UPDATE results SET ranking='' WHERE created_at < ? AND "
                                 "ranking != ''", (now - self.keep,)).rowcount
                conn.execute("DELETE FROM results_view WHERE message_id IN (SELECT message_id "
                             "FROM results WHERE created_at < ?)",
                             (now - self.keep - EXPIRED_NOTE_DAYS * DAY,))
                conn.execute("DELETE FROM results WHERE created_at < ?",
                             (now - self.keep - EXPIRED_NOTE_DAYS * DAY,))
                conn.execute("DELETE FROM pending_interactions WHERE created_at < ?",
                             (now - INTERACTION_TTL,))
                return n

        try:
            pruned = await self.db.run(q)
        except StorageError as e:
            log.warning("could not prune old results (%s); will try again", e)
            return 0
        if pruned:
            log.info("pruned the rankings of %d results older than %.0f days", pruned,
                     self.keep / DAY)
        return pruned

    # -- searches in flight ---------------------------------------------------
    async def add_pending(self, interaction_id: int, application_id: int, token: str) -> None:
        now = self.clock()

        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute("INSERT OR REPLACE INTO pending_interactions VALUES (?, ?, ?, ?)",
                             (interaction_id, application_id, token, now))

        try:
            await self.db.run(q)
        except StorageError as e:
            log.warning("could not note search %s as pending (%s)", interaction_id, e)

    async def done_pending(self, interaction_id: int) -> None:
        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute("DELETE FROM pending_interactions WHERE interaction_id=?",
                             (interaction_id,))

        try:
            await self.db.run(q)
        except StorageError as e:
            log.warning("could not clear pending search %s (%s)", interaction_id, e)

    async def take_pending(self) -> list[PendingInteraction]:
        """Searches a previous run deferred and never answered, still within 15 minutes."""
        now = self.clock()

        def q(conn: sqlite3.Connection) -> list[tuple]:
            with write(conn):
                rows = conn.execute("SELECT interaction_id, application_id, token, created_at "
                                    "FROM pending_interactions WHERE created_at >= ?",
                                    (now - INTERACTION_TTL,)).fetchall()
                conn.execute("DELETE FROM pending_interactions")
                return rows

        return [PendingInteraction(*row) for row in await self.db.run(q)]

    # -- picks ----------------------------------------------------------------
    async def claim_pick(self, guild_id: int, image_id: int | str, member_id: int, phrase: str,
                         page_url: str, source_message_id: int, window: float = 60.0
                         ) -> int | None:
        """Claim a pick unless the same image was shared here within ``window``.

        Returns the pick's id, or None for a duplicate. A claim left unposted by a run
        that died blocks nothing: this run takes it over, so the press posts the image.
        """
        now = self.clock()
        run_id = self.run_id

        def q(conn: sqlite3.Connection) -> int | None:
            with write(conn):
                dup = conn.execute(
                    "SELECT 1 FROM picks WHERE guild_id=? AND image_id=? AND created_at>? "
                    "AND (message_id IS NOT NULL OR run_id=?)",
                    (guild_id, image_id, now - window, run_id)).fetchone()
                if dup:
                    return None
                conn.execute("DELETE FROM picks WHERE guild_id=? AND image_id=? AND "
                             "message_id IS NULL AND run_id!=?", (guild_id, image_id, run_id))
                return conn.execute(
                    "INSERT INTO picks (guild_id, image_id, member_id, phrase, page_url, "
                    "source_message_id, created_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (guild_id, image_id, member_id, phrase, page_url, source_message_id, now,
                     run_id)).lastrowid

        return await self.db.run(q)

    async def posting_pick(self, pick_id: int, channel_id: int) -> None:
        """Note where the pick is about to be posted, so a crash can be reconciled there."""
        await self._update_pick("UPDATE picks SET channel_id=? WHERE id=?", channel_id, pick_id)

    async def posted_pick(self, pick_id: int, channel_id: int, message_id: int) -> None:
        await self._update_pick("UPDATE picks SET channel_id=?, message_id=? WHERE id=?",
                                channel_id, message_id, pick_id)

    async def drop_pick(self, pick_id: int) -> None:
        await self._update_pick("DELETE FROM picks WHERE id=?", pick_id)

    async def _update_pick(self, sql: str, *args: Any) -> None:
        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute(sql, args)

        await self.db.run(q)

    async def unfinished_picks(self) -> list[Pick]:
        """Picks claimed by runs that died before recording the posted message."""
        def q(conn: sqlite3.Connection) -> list[tuple]:
            return conn.execute(
                "SELECT id, guild_id, image_id, member_id, phrase, page_url, channel_id, "
                "message_id, created_at FROM picks WHERE message_id IS NULL AND run_id!=?",
                (self.run_id,)).fetchall()

        return [Pick(*row) for row in await self.db.run(q)]

    async def latest_picks(self, guild_id: int, member_id: int | None = None, limit: int = 10
                           ) -> list[Pick]:
        def q(conn: sqlite3.Connection) -> list[tuple]:
            sql = ("SELECT id, guild_id, image_id, member_id, phrase, page_url, channel_id, "
                   "message_id, created_at FROM picks WHERE guild_id=? AND message_id IS NOT NULL")
            args: list[Any] = [guild_id]
            if member_id is not None:
                sql += " AND member_id=?"
                args.append(member_id)
            sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
            args.append(limit)
            return conn.execute(sql, args).fetchall()

        return [Pick(*row) for row in await self.db.run(q)]

    # -- server settings ----------------------------------------------------------
    async def set_picks_channel(self, guild_id: int, channel_id: int | None) -> None:
        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute("INSERT INTO guild_settings VALUES (?, ?) ON CONFLICT(guild_id) "
                             "DO UPDATE SET picks_channel_id=excluded.picks_channel_id",
                             (guild_id, channel_id))

        await self.db.run(q)

    async def picks_channel(self, guild_id: int) -> int | None:
        def q(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT picks_channel_id FROM guild_settings "
                               "WHERE guild_id=?", (guild_id,)).fetchone()
            return row[0] if row else None

        return await self.db.run(q)

    # -- views, shared pick messages (more like this) --------------------------------
    async def save_view(self, message_id: int, view: View) -> None:
        """Record how a results message looks; if the disk refuses, remember it here."""
        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute("INSERT OR REPLACE INTO results_view VALUES (?, ?)",
                             (message_id, view.to_json()))

        try:
            await self.db.run(q)
        except StorageError as e:
            log.warning("view of message %s kept in memory (%s)", message_id, e)
            self._unsaved_views[message_id] = view
            while len(self._unsaved_views) > UNSAVED_LIMIT:
                self._unsaved_views.popitem(last=False)

    async def get_view(self, message_id: int) -> View:
        """A results message's view; messages from before views existed are lists."""
        if message_id in self._unsaved_views:
            return self._unsaved_views[message_id]

        def q(conn: sqlite3.Connection):
            return conn.execute("SELECT view FROM results_view WHERE message_id=?",
                                (message_id,)).fetchone()

        row = await self.db.run(q)
        return View.from_json(row[0]) if row else View()

    async def save_shared_pick(self, message_id: int, pick_id: int, results_message_id: int,
                               hit: Hit) -> None:
        row = (message_id, pick_id, results_message_id, json.dumps(hit.to_dict()))

        def q(conn: sqlite3.Connection) -> None:
            with write(conn):
                conn.execute("INSERT OR REPLACE INTO shared_picks VALUES (?, ?, ?, ?)", row)

        try:
            await self.db.run(q)
        except StorageError as e:  # the pick is posted; only 🔍 on it will not answer
            log.warning("pick message %s not recorded for more-like (%s)", message_id, e)

    async def shared_picks(self, message_ids: list[int]) -> dict[int, SharedPick]:
        if not message_ids:
            return {}

        def q(conn: sqlite3.Connection):
            marks = ",".join("?" * len(message_ids))
            return conn.execute(
                f"SELECT message_id, pick_id, results_message_id, hit FROM shared_picks "
                f"WHERE message_id IN ({marks})", message_ids).fetchall()

        return {row[0]: SharedPick(row[0], row[1], row[2], Hit.from_dict(json.loads(row[3])))
                for row in await self.db.run(q)}
