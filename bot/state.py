"""SQLite: results messages, picks, and per-server settings.

Everything a reaction needs lives here, so paging and sharing work on old messages
after a restart. All calls run on one dedicated thread: the event loop never waits
on the disk, and the connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.pixabay import Filters, Hit
from search.ranking import Ranking

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    message_id INTEGER PRIMARY KEY,
    channel_id INTEGER NOT NULL,
    guild_id INTEGER,
    requester_id INTEGER NOT NULL,
    tag TEXT NOT NULL,
    phrase TEXT NOT NULL,
    filters TEXT NOT NULL,
    per_page INTEGER NOT NULL,
    page INTEGER NOT NULL,
    seconds REAL NOT NULL,
    ranking TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS picks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    member_id INTEGER NOT NULL,
    phrase TEXT NOT NULL,
    page_url TEXT NOT NULL,
    source_message_id INTEGER NOT NULL,
    channel_id INTEGER,
    message_id INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS picks_recent ON picks (guild_id, created_at);
CREATE TABLE IF NOT EXISTS guild_settings (
    guild_id INTEGER PRIMARY KEY,
    picks_channel_id INTEGER
);
CREATE TABLE IF NOT EXISTS results_view (
    message_id INTEGER PRIMARY KEY,
    view TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shared_picks (
    message_id INTEGER PRIMARY KEY,
    pick_id INTEGER NOT NULL,
    results_message_id INTEGER NOT NULL,
    hit TEXT NOT NULL
);
"""


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


class State:
    def __init__(self, path: Path | str, *, clock=time.time) -> None:
        self.path = str(path)
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        self._conn: sqlite3.Connection | None = None

    async def _call(self, fn, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> State:
        await self._call(self._open)
        return self

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> State:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- results --------------------------------------------------------------
    async def save_results(self, s: ResultsState) -> None:
        row = (s.message_id, s.channel_id, s.guild_id, s.requester_id, s.tag, s.phrase,
               json.dumps(s.filters.to_dict()), s.per_page, s.page, s.seconds,
               json.dumps(s.ranking.to_dict(), separators=(",", ":")), self.clock())

        def q():
            self._conn.execute("INSERT OR REPLACE INTO results VALUES "
                               "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

        await self._call(q)

    async def get_results(self, message_id: int) -> ResultsState | None:
        def q():
            return self._conn.execute(
                "SELECT message_id, channel_id, guild_id, requester_id, tag, phrase, filters, "
                "per_page, page, seconds, ranking FROM results WHERE message_id=?",
                (message_id,)).fetchone()

        row = await self._call(q)
        if row is None:
            return None
        return ResultsState(row[0], row[1], row[2], row[3], row[4], row[5],
                            Filters.from_dict(json.loads(row[6])), row[7], row[8], row[9],
                            Ranking.from_dict(json.loads(row[10])))

    async def is_results(self, message_id: int) -> bool:
        def q():
            return self._conn.execute("SELECT 1 FROM results WHERE message_id=?",
                                      (message_id,)).fetchone() is not None

        return await self._call(q)

    async def set_page(self, message_id: int, page: int) -> None:
        await self._call(lambda: self._conn.execute(
            "UPDATE results SET page=? WHERE message_id=?", (page, message_id)))

    # -- picks ----------------------------------------------------------------
    async def claim_pick(self, guild_id: int, image_id: int, member_id: int, phrase: str,
                         page_url: str, source_message_id: int, window: float = 60.0
                         ) -> int | None:
        """Record a pick unless the same image was picked in this server within ``window``.

        Returns the new pick's id, or None for a duplicate. Runs on the state thread,
        so two reactions at once cannot both claim it.
        """
        now = self.clock()

        def q():
            dup = self._conn.execute(
                "SELECT 1 FROM picks WHERE guild_id=? AND image_id=? AND created_at>?",
                (guild_id, image_id, now - window)).fetchone()
            if dup:
                return None
            cur = self._conn.execute(
                "INSERT INTO picks (guild_id, image_id, member_id, phrase, page_url, "
                "source_message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (guild_id, image_id, member_id, phrase, page_url, source_message_id, now))
            return cur.lastrowid

        return await self._call(q)

    async def posted_pick(self, pick_id: int, channel_id: int, message_id: int) -> None:
        await self._call(lambda: self._conn.execute(
            "UPDATE picks SET channel_id=?, message_id=? WHERE id=?",
            (channel_id, message_id, pick_id)))

    async def drop_pick(self, pick_id: int) -> None:
        await self._call(lambda: self._conn.execute("DELETE FROM picks WHERE id=?", (pick_id,)))

    async def latest_picks(self, guild_id: int, member_id: int | None = None, limit: int = 10
                           ) -> list[Pick]:
        def q():
            sql = ("SELECT id, guild_id, image_id, member_id, phrase, page_url, channel_id, "
                   "message_id, created_at FROM picks WHERE guild_id=? AND message_id IS NOT NULL")
            args: list[Any] = [guild_id]
            if member_id is not None:
                sql += " AND member_id=?"
                args.append(member_id)
            sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
            args.append(limit)
            return self._conn.execute(sql, args).fetchall()

        return [Pick(*row) for row in await self._call(q)]

    # -- server settings ----------------------------------------------------------
    async def set_picks_channel(self, guild_id: int, channel_id: int | None) -> None:
        await self._call(lambda: self._conn.execute(
            "INSERT INTO guild_settings VALUES (?, ?) ON CONFLICT(guild_id) "
            "DO UPDATE SET picks_channel_id=excluded.picks_channel_id", (guild_id, channel_id)))

    async def picks_channel(self, guild_id: int) -> int | None:
        def q():
            row = self._conn.execute("SELECT picks_channel_id FROM guild_settings "
                                     "WHERE guild_id=?", (guild_id,)).fetchone()
            return row[0] if row else None

        return await self._call(q)

    # -- views, shared pick messages (more like this) --------------------------------
    async def save_view(self, message_id: int, view: View) -> None:
        await self._call(lambda: self._conn.execute(
            "INSERT OR REPLACE INTO results_view VALUES (?, ?)", (message_id, view.to_json())))

    async def get_view(self, message_id: int) -> View:
        """A results message's view; messages from before views existed are lists."""
        def q():
            return self._conn.execute("SELECT view FROM results_view WHERE message_id=?",
                                      (message_id,)).fetchone()

        row = await self._call(q)
        return View.from_json(row[0]) if row else View()

    async def save_shared_pick(self, message_id: int, pick_id: int, results_message_id: int,
                               hit: Hit) -> None:
        row = (message_id, pick_id, results_message_id, json.dumps(hit.to_dict()))
        await self._call(lambda: self._conn.execute(
            "INSERT OR REPLACE INTO shared_picks VALUES (?, ?, ?, ?)", row))

    async def shared_picks(self, message_ids: list[int]) -> dict[int, SharedPick]:
        if not message_ids:
            return {}

        def q():
            marks = ",".join("?" * len(message_ids))
            return self._conn.execute(
                f"SELECT message_id, pick_id, results_message_id, hit FROM shared_picks "
                f"WHERE message_id IN ({marks})", message_ids).fetchall()

        return {row[0]: SharedPick(row[0], row[1], row[2], Hit.from_dict(json.loads(row[3])))
                for row in await self._call(q)}
