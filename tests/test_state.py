"""bot/state.py on real files: a first-release file is upgraded with its results kept, and
every statement runs on the database's own thread."""

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
