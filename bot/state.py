"""What a reaction needs: results messages, picks, pending searches and per-server settings.

DATA_DIR/bot.sqlite3 by default; with DATABASE_URL, PostgreSQL, shared by every process.
Everything a reaction needs lives here, so paging and sharing work on old messages
after a restart, or in another process. The database is opened through
``search.storage.Database`` (on SQLite: WAL, a busy timeout, ``quick_check`` at open).

A crash (``kill -9``) at any point leaves something the next start or another process can
finish. Each process start is a run, which beats (``runs.seen_at``) while it lives:
- searches still "thinking" are answered by whoever finds their run dead: on SQLite (one
  process a DATA_DIR) every other run is dead; on PostgreSQL a run is dead once it has not
  beaten for ``run_timeout`` seconds, or once it closed;
- a pick claimed by a dead run no longer blocks the image, and is reconciled (found in
  the channel, or dropped) by the process that adopts it;
- a page is recorded before the message is edited.
A write that fails (a full disk, the server down) keeps the results in memory for their
message and writes them when it can; the member is not told of a failure that did not touch
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from search.models import Filters, Hit
from search.ranking import Ranking
from search.storage import Corrupt, Database, StorageError, upsert
from search.storage.database import MAX_OVERFLOW, POOL_SIZE
from search.storage.schema import (
    guild_settings,
    pending_interactions,
    picks,
    results,
    results_view,
    runs,
    shared_picks,
)

log = logging.getLogger(__name__)

RECENT_TAG_DAYS = 30  # a server's searches suggested as tags for this long

DAY = 86400.0
INTERACTION_TTL = 15 * 60.0  # Discord: an interaction token works for 15 minutes
EXPIRED_NOTE_DAYS = 365  # an expired message keeps a ~100-byte row this long, to say so
UNSAVED_LIMIT = 256  # results kept in memory while the disk refuses them
PRUNE_EVERY = 3600.0
# A run beats every HEARTBEAT s; one silent for RUN_TIMEOUT s is dead (PostgreSQL only),
# so a killed process's searches are answered within about RUN_TIMEOUT + HEARTBEAT s,
# well inside an interaction token's 15 minutes, and a slow beat is never taken for death.
HEARTBEAT = 5.0
RUN_TIMEOUT = 20.0
PICK_LOCK = zlib.crc32(b"findimage pick") - 2**31  # int4; pg_advisory_xact_lock's first key for claims


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
    image_id: int | str
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


RESULT_COLUMNS = (results.c.message_id, results.c.channel_id, results.c.guild_id,
                  results.c.requester_id, results.c.tag, results.c.phrase, results.c.filters,
                  results.c.per_page, results.c.page, results.c.seconds, results.c.ranking,
                  results.c.turning, results.c.created_at)
PICK_COLUMNS = (picks.c.id, picks.c.guild_id, picks.c.image_id, picks.c.member_id,
                picks.c.phrase, picks.c.page_url, picks.c.channel_id, picks.c.message_id,
                picks.c.created_at)


class State:
    """``target`` is the SQLite file, or a ``postgresql://`` URL (DATABASE_URL)."""

    def __init__(self, target: Path | str, *, clock=time.time, keep_days: int = 30,
                 pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW,
                 heartbeat: float = HEARTBEAT, run_timeout: float = RUN_TIMEOUT) -> None:
        self.clock = clock
        self.keep = keep_days * DAY
        self.db = Database(target, branch="state", what="the bot's state",
                           pool_size=pool_size, max_overflow=max_overflow)
        self.path = self.db.path
        self.heartbeat = heartbeat
        self.run_timeout = run_timeout
        self.run_id = 0
        self._unsaved: OrderedDict[int, ResultsState] = OrderedDict()
        self._unsaved_views: OrderedDict[int, View] = OrderedDict()
        self._pruned_at = 0.0
        self._beating: asyncio.Task | None = None

    @property
    def shared(self) -> bool:
        """Other processes use this state too (PostgreSQL): their runs may be alive."""
        return self.db.shared

    async def open(self) -> State:
        try:
            await self.db.open()
        except Corrupt as e:
            from search.errors import DataDirError

            await self.db.aclose()
            raise DataDirError(
                f"DATA_DIR file {self.path} is corrupt ({e}); restore it from a backup "
                "(see docs/operations.md) or move it aside to start with no saved results.") from None
        now = self.clock()

        async def start(conn: AsyncConnection) -> int:
            return (await conn.execute(sa.insert(runs).values(started_at=now, seen_at=now)
                                       .returning(runs.c.id))).scalar_one()

        try:
            self.run_id = await self.db.run(start)
        except BaseException:
            await self.db.aclose()
            raise
        await self.prune()
        self._beating = asyncio.create_task(self._beat_forever(), name="state heartbeat")
        return self

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
        if self._unsaved:
            await self._flush()
        if self._unsaved:
            log.warning("%d results could not be written before shutdown", len(self._unsaved))
        try:  # closed cleanly: what this run left is anyone's at once
            await self._update(sa.update(runs).where(runs.c.id == self.run_id)
                               .values(seen_at=0.0))
        except StorageError as e:
            log.info("could not mark this run closed (%s)", e)
        await self.db.aclose()

    async def __aenter__(self) -> State:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- liveness -------------------------------------------------------------
    async def beat(self) -> None:
        """Say this run is alive, and write what the database refused before."""
        await self._update(sa.update(runs).where(runs.c.id == self.run_id)
                           .values(seen_at=self.clock()))
        if self._unsaved:
            await self._flush()

    async def _beat_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.beat()
                if failing:
                    log.info("the bot's state answers again")
                failing = False
            except StorageError as e:
                if not failing:
                    log.warning("could not note this run alive (%s); trying again every "
                                "%.0f s", getattr(e, "detail", "") or e, self.heartbeat)
                failing = True

    def _dead(self, run_id: sa.ColumnElement, now: float) -> sa.ColumnElement[bool]:
        """``run_id`` names a run that is not this one and no longer lives."""
        if not self.shared:  # one process a DATA_DIR: every other run has ended
            return run_id != self.run_id
        alive = sa.select(runs.c.id).where(runs.c.seen_at >= now - self.run_timeout)
        return sa.and_(run_id != self.run_id, run_id.not_in(alive))

    # -- results --------------------------------------------------------------
    @staticmethod
    def _row(s: ResultsState, now: float) -> dict[str, Any]:
        return {"message_id": s.message_id, "channel_id": s.channel_id,
                "guild_id": s.guild_id, "requester_id": s.requester_id, "tag": s.tag,
                "phrase": s.phrase, "filters": json.dumps(s.filters.to_dict()),
                "per_page": s.per_page, "page": s.page, "seconds": s.seconds,
                "ranking": json.dumps(s.ranking.to_dict(), separators=(",", ":")),
                "created_at": s.created_at or now, "turning": int(s.turning)}

    async def save_results(self, s: ResultsState) -> bool:
        """Write the results; if the database refuses, keep them in memory and say False."""
        if not s.created_at:
            s.created_at = self.clock()
        self._unsaved.pop(s.message_id, None)
        self._unsaved[s.message_id] = s
        await self._flush()
        if self.clock() - self._pruned_at > PRUNE_EVERY:
            await self.prune()
        return s.message_id not in self._unsaved

    async def _flush(self) -> None:
        """Write what the database refused before, oldest first; stop at the first refusal."""
        while self._unsaved:
            message_id, s = next(iter(self._unsaved.items()))
            row = self._row(s, self.clock())

            async def q(conn: AsyncConnection, row=row) -> None:
                await upsert(conn, results, row)

            try:
                await self.db.run(q)
            except StorageError as e:
                log.warning("results of message %s kept in memory; the state database refused "
                            "them (%s: %s)", message_id, type(e).__name__,
                            getattr(e, "detail", "") or e)
                while len(self._unsaved) > UNSAVED_LIMIT:
                    dropped, _ = self._unsaved.popitem(last=False)
                    log.warning("results of message %s dropped from memory", dropped)
                return
            if self._unsaved.get(message_id) is s:
                del self._unsaved[message_id]

    async def get_results(self, message_id: int) -> ResultsState | None:
        if message_id in self._unsaved:
            return self._unsaved[message_id]

        async def q(conn: AsyncConnection):
            return (await conn.execute(sa.select(*RESULT_COLUMNS).where(
                results.c.message_id == message_id))).first()

        row = await self.db.run(q, write=False)
        if row is None:
            return None
        expired = row[10] == ""
        ranking = Ranking(()) if expired else Ranking.from_dict(json.loads(row[10]))
        return ResultsState(row[0], row[1], row[2], row[3], row[4], row[5],
                            Filters.from_dict(json.loads(row[6])), row[7], row[8], row[9],
                            ranking, turning=bool(row[11]), expired=expired, created_at=row[12])

    async def recent_tags(self, guild_id: int | None, prefix: str, limit: int = 25
                          ) -> list[str]:
        """Tags this server searched lately that start with ``prefix``, latest first;
        never another server's."""
        if guild_id is None:
            return []
        prefix = " ".join(prefix.lower().split())
        since = self.clock() - RECENT_TAG_DAYS * DAY
        tag = sa.func.lower(results.c.tag)

        async def q(conn: AsyncConnection) -> list[str]:
            rows = await conn.execute(
                sa.select(tag, sa.func.max(results.c.created_at).label("last"))
                .where(results.c.guild_id == guild_id, tag >= prefix,
                       tag < prefix + "\U0010ffff", results.c.created_at >= since)
                .group_by(tag).order_by(sa.desc("last")).limit(limit))
            return [row[0] for row in rows]

        try:
            found = await self.db.run(q, write=False)
        except StorageError as e:
            log.warning("could not read recent tags (%s)", e)
            found = []
        unsaved = [s.tag.lower() for s in reversed(self._unsaved.values())
                   if s.guild_id == guild_id and s.tag.lower().startswith(prefix)]
        return list(dict.fromkeys([*unsaved, *found]))[:limit]

    async def is_results(self, message_id: int) -> bool:
        if message_id in self._unsaved:
            return True

        async def q(conn: AsyncConnection) -> bool:
            return (await conn.execute(sa.select(results.c.message_id).where(
                results.c.message_id == message_id))).first() is not None

        return await self.db.run(q, write=False)

    async def set_page(self, s: ResultsState, page: int, *, turning: bool) -> None:
        """Record the page (``turning``: before the message edit; False once it is shown)."""
        s.page, s.turning = page, turning
        if s.message_id in self._unsaved:
            await self._flush()
            return
        try:
            await self._update(sa.update(results).where(results.c.message_id == s.message_id)
                               .values(page=page, turning=int(turning)))
        except StorageError as e:
            log.warning("page of message %s kept in memory (%s)", s.message_id, e)
            self._unsaved[s.message_id] = s

    async def prune(self) -> int:
        """Drop rankings older than RESULTS_KEEP_DAYS (a slim row says they expired)."""
        now = self.clock()
        self._pruned_at = now
        gone = now - self.keep - EXPIRED_NOTE_DAYS * DAY

        async def q(conn: AsyncConnection) -> int:
            n = (await conn.execute(sa.update(results).where(
                results.c.created_at < now - self.keep, results.c.ranking != "")
                .values(ranking=""))).rowcount
            await conn.execute(sa.delete(results_view).where(results_view.c.message_id.in_(
                sa.select(results.c.message_id).where(results.c.created_at < gone))))
            await conn.execute(sa.delete(results).where(results.c.created_at < gone))
            await conn.execute(sa.delete(pending_interactions).where(
                pending_interactions.c.created_at < now - INTERACTION_TTL))
            # runs that ended long ago and left no claim behind
            await conn.execute(sa.delete(runs).where(
                runs.c.seen_at < now - self.keep, runs.c.id != self.run_id,
                runs.c.id.not_in(sa.select(picks.c.run_id).where(picks.c.message_id.is_(None)))))
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
        row = {"interaction_id": interaction_id, "application_id": application_id,
               "token": token, "created_at": self.clock(), "run_id": self.run_id}

        async def q(conn: AsyncConnection) -> None:
            await upsert(conn, pending_interactions, row)

        try:
            await self.db.run(q)
        except StorageError as e:
            log.warning("could not note search %s as pending (%s)", interaction_id, e)

    async def done_pending(self, interaction_id: int) -> None:
        try:
            await self._update(sa.delete(pending_interactions).where(
                pending_interactions.c.interaction_id == interaction_id))
        except StorageError as e:
            log.warning("could not clear pending search %s (%s)", interaction_id, e)

    async def take_pending(self) -> list[PendingInteraction]:
        """Searches that dead runs deferred and never answered, still within 15 minutes.

        Taken atomically (DELETE ... RETURNING): two processes never both answer one.
        """
        now = self.clock()
        p = pending_interactions

        async def q(conn: AsyncConnection) -> list[Any]:
            await conn.execute(sa.delete(p).where(p.c.created_at < now - INTERACTION_TTL))
            return list((await conn.execute(
                sa.delete(p).where(self._dead(p.c.run_id, now)).returning(
                    p.c.interaction_id, p.c.application_id, p.c.token, p.c.created_at))).all())

        return [PendingInteraction(*row) for row in await self.db.run(q)]

    # -- picks ----------------------------------------------------------------
    async def claim_pick(self, guild_id: int, image_id: int | str, member_id: int, phrase: str,
                         page_url: str, source_message_id: int, window: float = 60.0
                         ) -> int | None:
        """Claim a pick unless the same image was shared here within ``window``.

        Returns the pick's id, or None for a duplicate. A claim left unposted by a run
        that died blocks nothing: this run takes it over, so the press posts the image.
        A live run's unposted claim (another process, a moment ago) does block it.
        """
        now = self.clock()
        image = str(image_id)

        async def q(conn: AsyncConnection) -> int | None:
            if conn.dialect.name == "postgresql":  # claims of one image take turns
                key = zlib.crc32(f"{guild_id}:{image}".encode()) - 2**31
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PICK_LOCK, key)))
            same = sa.and_(picks.c.guild_id == guild_id, picks.c.image_id == image)
            dup = (await conn.execute(sa.select(picks.c.id).where(
                same, picks.c.created_at > now - window,
                sa.or_(picks.c.message_id.is_not(None),
                       sa.not_(self._dead(picks.c.run_id, now)))).limit(1))).first()
            if dup:
                return None
            await conn.execute(sa.delete(picks).where(
                same, picks.c.message_id.is_(None), self._dead(picks.c.run_id, now)))
            return (await conn.execute(sa.insert(picks).values(
                guild_id=guild_id, image_id=image, member_id=member_id, phrase=phrase,
                page_url=page_url, source_message_id=source_message_id, created_at=now,
                run_id=self.run_id).returning(picks.c.id))).scalar_one()

        return await self.db.run(q)

    async def posting_pick(self, pick_id: int, channel_id: int) -> None:
        """Note where the pick is about to be posted, so a crash can be reconciled there."""
        await self._update(sa.update(picks).where(picks.c.id == pick_id)
                           .values(channel_id=channel_id))

    async def posted_pick(self, pick_id: int, channel_id: int, message_id: int) -> None:
        await self._update(sa.update(picks).where(picks.c.id == pick_id)
                           .values(channel_id=channel_id, message_id=message_id))

    async def drop_pick(self, pick_id: int) -> None:
        await self._update(sa.delete(picks).where(picks.c.id == pick_id))

    async def _update(self, statement: sa.Executable) -> None:
        async def q(conn: AsyncConnection) -> None:
            await conn.execute(statement)

        await self.db.run(q)

    async def unfinished_picks(self) -> list[Pick]:
        """Picks claimed by dead runs before recording the posted message, adopted by this
        run (atomically: one process reconciles each)."""
        now = self.clock()

        async def q(conn: AsyncConnection) -> list[Any]:
            return list((await conn.execute(
                sa.update(picks).where(picks.c.message_id.is_(None),
                                       self._dead(picks.c.run_id, now))
                .values(run_id=self.run_id).returning(*PICK_COLUMNS))).all())

        return [Pick(*row) for row in await self.db.run(q)]

    async def latest_picks(self, guild_id: int, member_id: int | None = None, limit: int = 10
                           ) -> list[Pick]:
        query = sa.select(*PICK_COLUMNS).where(picks.c.guild_id == guild_id,
                                               picks.c.message_id.is_not(None))
        if member_id is not None:
            query = query.where(picks.c.member_id == member_id)
        query = query.order_by(picks.c.created_at.desc(), picks.c.id.desc()).limit(limit)

        async def q(conn: AsyncConnection) -> list[Any]:
            return list((await conn.execute(query)).all())

        return [Pick(*row) for row in await self.db.run(q, write=False)]

    # -- server settings ----------------------------------------------------------
    async def set_picks_channel(self, guild_id: int, channel_id: int | None) -> None:
        async def q(conn: AsyncConnection) -> None:
            await upsert(conn, guild_settings,
                         {"guild_id": guild_id, "picks_channel_id": channel_id})

        await self.db.run(q)

    async def picks_channel(self, guild_id: int) -> int | None:
        async def q(conn: AsyncConnection) -> int | None:
            return (await conn.execute(sa.select(guild_settings.c.picks_channel_id).where(
                guild_settings.c.guild_id == guild_id))).scalar()

        return await self.db.run(q, write=False)

    # -- views, shared pick messages (more like this) --------------------------------
    async def save_view(self, message_id: int, view: View) -> None:
        """Record how a results message looks; if the database refuses, remember it here."""
        async def q(conn: AsyncConnection) -> None:
            await upsert(conn, results_view, {"message_id": message_id, "view": view.to_json()})

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

        async def q(conn: AsyncConnection):
            return (await conn.execute(sa.select(results_view.c.view).where(
                results_view.c.message_id == message_id))).scalar()

        text = await self.db.run(q, write=False)
        return View.from_json(text) if text is not None else View()

    async def save_shared_pick(self, message_id: int, pick_id: int, results_message_id: int,
                               hit: Hit) -> None:
        row = {"message_id": message_id, "pick_id": pick_id,
               "results_message_id": results_message_id, "hit": json.dumps(hit.to_dict())}

        async def q(conn: AsyncConnection) -> None:
            await upsert(conn, shared_picks, row)

        try:
            await self.db.run(q)
        except StorageError as e:  # the pick is posted; only 🔍 on it will not answer
            log.warning("pick message %s not recorded for more-like (%s)", message_id, e)

    async def shared_picks(self, message_ids: list[int]) -> dict[int, SharedPick]:
        if not message_ids:
            return {}

        async def q(conn: AsyncConnection) -> list[Any]:
            return list((await conn.execute(
                sa.select(shared_picks.c.message_id, shared_picks.c.pick_id,
                          shared_picks.c.results_message_id, shared_picks.c.hit)
                .where(shared_picks.c.message_id.in_(message_ids)))).all())

        return {row[0]: SharedPick(row[0], row[1], row[2], Hit.from_dict(json.loads(row[3])))
                for row in await self.db.run(q, write=False)}
