"""bot/state.py on real files: a first-release file is upgraded with its results kept, and
every statement runs on the database's own thread."""

import json
import sqlite3
import threading

from bot.state import State
from search.models import Filters
from search.ranking import Ranking
from search.storage.database import head_number

FIRST_RELEASE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('version', '1');
CREATE TABLE results (
    message_id INTEGER PRIMARY KEY, channel_id INTEGER NOT NULL, guild_id INTEGER,
    requester_id INTEGER NOT NULL, tag TEXT NOT NULL, phrase TEXT NOT NULL,
    filters TEXT NOT NULL, per_page INTEGER NOT NULL, page INTEGER NOT NULL,
    seconds REAL NOT NULL, ranking TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE picks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, guild_id INTEGER NOT NULL,
    image_id INTEGER NOT NULL, member_id INTEGER NOT NULL, phrase TEXT NOT NULL,
    page_url TEXT NOT NULL, source_message_id INTEGER NOT NULL, channel_id INTEGER,
    message_id INTEGER, created_at REAL NOT NULL);
CREATE INDEX picks_recent ON picks (guild_id, created_at);
CREATE TABLE guild_settings (guild_id INTEGER PRIMARY KEY, picks_channel_id INTEGER);
INSERT INTO guild_settings VALUES (7, 8);
"""


def first_release_file(path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(FIRST_RELEASE)
        conn.execute("INSERT INTO results VALUES (42, 1, 7, 3, 'tiger', 'a tiger', ?, 5, 2, 1.5, "
                     "?, strftime('%s', 'now'))",
                     ('{"image_type": "photo"}', '{"entries": []}'))
        conn.execute("INSERT INTO picks (guild_id, image_id, member_id, phrase, page_url, "
                     "source_message_id, channel_id, message_id, created_at) VALUES "
                     "(7, 99, 3, 'a tiger', 'https://pixabay.com/photos/x-99/', 42, 8, 77, "
                     "strftime('%s', 'now'))")


async def test_a_first_release_state_file_is_upgraded_and_keeps_everything(tmp_path):
    path = tmp_path / "bot.sqlite3"
    first_release_file(path)
    async with State(path) as state:
        results = await state.get_results(42)
        assert (results.tag, results.page, results.filters) == ("tiger", 2,
                                                               Filters(image_type="photo"))
        assert results.ranking == Ranking(()) and not results.expired
        assert [p.message_id for p in await state.latest_picks(7)] == [77]
        assert await state.picks_channel(7) == 8
        assert (await state.get_view(42)).layout == "list"  # older messages are lists
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == head_number("state")


async def test_every_statement_runs_on_the_database_thread_never_the_event_loop(tmp_path):
    async with State(tmp_path / "bot.sqlite3") as state:
        async def where(conn):
            raw = await conn.get_raw_connection()
            # SQLite calls a function on the thread that runs the statement.
            await raw.driver_connection.create_function(
                "thread_name", 0, lambda: threading.current_thread().name)
            return (await conn.exec_driver_sql("SELECT thread_name()")).scalar()

        names = {await state.db.run(where, write=False) for _ in range(5)}
        await state.get_results(1)
    assert len(names) == 1 and names.pop() != threading.current_thread().name


CURRENT_RELEASE = """
CREATE TABLE results (
    message_id INTEGER PRIMARY KEY, channel_id INTEGER NOT NULL, guild_id INTEGER,
    requester_id INTEGER NOT NULL, tag TEXT NOT NULL, phrase TEXT NOT NULL,
    filters TEXT NOT NULL, per_page INTEGER NOT NULL, page INTEGER NOT NULL,
    seconds REAL NOT NULL, ranking TEXT NOT NULL, created_at REAL NOT NULL,
    turning INTEGER NOT NULL DEFAULT 0);
CREATE INDEX results_age ON results (created_at);
CREATE TABLE picks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, guild_id INTEGER NOT NULL,
    image_id INTEGER NOT NULL, member_id INTEGER NOT NULL, phrase TEXT NOT NULL,
    page_url TEXT NOT NULL, source_message_id INTEGER NOT NULL, channel_id INTEGER,
    message_id INTEGER, created_at REAL NOT NULL, run_id INTEGER NOT NULL DEFAULT 0);
CREATE INDEX picks_recent ON picks (guild_id, created_at);
CREATE TABLE guild_settings (guild_id INTEGER PRIMARY KEY, picks_channel_id INTEGER);
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL);
CREATE TABLE pending_interactions (
    interaction_id INTEGER PRIMARY KEY, application_id INTEGER NOT NULL,
    token TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE results_view (message_id INTEGER PRIMARY KEY, view TEXT NOT NULL);
CREATE TABLE shared_picks (
    message_id INTEGER PRIMARY KEY, pick_id INTEGER NOT NULL,
    results_message_id INTEGER NOT NULL, hit TEXT NOT NULL);
INSERT INTO runs (started_at) VALUES (strftime('%s', 'now'));
PRAGMA user_version = 3;
"""


async def test_a_file_from_the_release_before_alembic_upgrades_in_place_keeping_everything(
        tmp_path):
    """The schema the hand-written migrations made (user_version 3), with a ranking, a
    posted pick, a pick a killed run left unposted, a pending search, a view."""
    path = tmp_path / "bot.sqlite3"
    hit = {"id": 5, "page_url": "https://pixabay.com/photos/x-5/",
           "image_url": "https://cdn.pixabay.com/photo/x-5_640.jpg"}
    ranking = json.dumps({"entries": [[hit, 0.5]]})
    with sqlite3.connect(path) as conn:
        conn.executescript(CURRENT_RELEASE)
        conn.execute("INSERT INTO results VALUES (1234567890123456789, 1, 7, 3, 'tiger', "
                     "'a tiger', '{}', 5, 1, 1.5, ?, strftime('%s', 'now'), 0)", (ranking,))
        conn.execute("INSERT INTO picks (guild_id, image_id, member_id, phrase, page_url, "
                     "source_message_id, channel_id, message_id, created_at, run_id) VALUES "
                     "(7, 5, 3, 'a tiger', 'https://pixabay.com/photos/x-5/', "
                     "1234567890123456789, 8, 77, strftime('%s', 'now'), 1), "
                     "(7, 6, 3, 'a tiger', 'https://pixabay.com/photos/x-6/', "
                     "1234567890123456789, 8, NULL, strftime('%s', 'now'), 1)")
        conn.execute("INSERT INTO pending_interactions VALUES (55, 9, 'tok', "
                     "strftime('%s', 'now'))")
        conn.execute("INSERT INTO results_view VALUES (1234567890123456789, "
                     "'{\"layout\": \"grid\", \"source\": \"pixabay\", \"link\": \"\"}')")
    async with State(path) as state:
        got = await state.get_results(1234567890123456789)
        assert (got.tag, got.page, len(got.ranking)) == ("tiger", 1, 1)
        assert [p.message_id for p in await state.latest_picks(7)] == [77]
        assert (await state.get_view(1234567890123456789)).layout == "grid"
        # what the last run of the old release left is finished by this one
        assert [p.interaction_id for p in await state.take_pending()] == [55]
        assert [str(p.image_id) for p in await state.unfinished_picks()] == ["6"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == head_number("state")
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (f"state{head_number('state')}",)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
