"""The SQLite caches on real files: TTL, isolation by model and by source, and what a busy
database, a full disk, a corrupt file and a newer schema each do."""

import asyncio
import logging
import sqlite3
import sys

import numpy as np
import pytest

from search.errors import DataDirError
from search.models import Source, key_fingerprint
from search.store import API_CACHE_TTL, Store

PIXABAY = Source("pixabay", "https://pixabay.com/api/", key_fingerprint("k"))


def vectors(n: int, dim: int = 8, start: int = 0):
    rng = np.random.default_rng(start)
    return [(start + i, rng.standard_normal(dim).astype(np.float32)) for i in range(n)]


async def test_responses_expire_after_24_hours(tmp_path):
    now = [1000.0]
    store = Store(tmp_path / "c.sqlite3", clock=lambda: now[0])
    await store.put_response(PIXABAY, "k", {"hits": [1]})
    now[0] += API_CACHE_TTL - 1
    assert await store.get_response(PIXABAY, "k") == {"hits": [1]}
    now[0] += 2
    assert await store.get_response(PIXABAY, "k") is None
    await store.aclose()


async def test_another_model_never_reads_another_models_vectors(tmp_path):
    store = Store(tmp_path / "c.sqlite3")
    v = np.arange(4, dtype=np.float32)
    await store.put_embeddings(PIXABAY, "model-a", [(1, v), (2, v * 2)])
    assert set(await store.get_embeddings(PIXABAY, "model-a", [1, 2, 3])) == {1, 2}
    assert await store.get_embeddings(PIXABAY, "model-b", [1, 2]) == {}
    np.testing.assert_array_equal((await store.get_embeddings(PIXABAY, "model-a", [2]))[2],
                                  v * 2)
    await store.aclose()


async def test_responses_and_vectors_never_cross_endpoints_or_keys(tmp_path):
    store = Store(tmp_path / "c.sqlite3")
    other_host = Source("pixabay", "https://mirror.example/api/", key_fingerprint("k"))
    other_key = Source("pixabay", "https://pixabay.com/api/", key_fingerprint("wrong"))
    await store.put_response(PIXABAY, "q=tiger", {"hits": [1]})
    await store.put_embeddings(PIXABAY, "m", vectors(3))
    assert await store.get_response(other_host, "q=tiger") is None
    assert await store.get_response(other_key, "q=tiger") is None
    assert await store.get_embeddings(other_host, "m", [0, 1, 2]) == {}
    # vectors belong to the catalogue, not to the key
    assert set(await store.get_embeddings(other_key, "m", [0, 1, 2])) == {0, 1, 2}
    await store.aclose()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"secret-key-123" not in stored  # sanity for the next line's claim
    assert key_fingerprint("secret-key-123") != "secret-key-123"


async def test_corrupt_file_is_moved_aside_once_and_older_copies_are_removed(tmp_path, caplog):
    path = tmp_path / "c.sqlite3"
    (tmp_path / "c.sqlite3.broken-20200101-000000").write_bytes(b"an old broken copy")
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR, logger="search.storage"):
        store = Store(path)
    await store.put_response(PIXABAY, "k", {"ok": True})
    assert await store.get_response(PIXABAY, "k") == {"ok": True}
    assert store.rebuilt == 1
    broken = sorted(p.name for p in tmp_path.glob("c.sqlite3.broken-*"))
    assert len(broken) == 1 and broken[0] != "c.sqlite3.broken-20200101-000000"
    assert (tmp_path / broken[0]).read_bytes() == b"this is not a database" * 100
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    await store.aclose()


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("CREATE TABLE IF NOT EXISTS other_writer (x)")
print("locked", flush=True)
if sys.argv[2] == "stdin":
    sys.stdin.readline()
else:
    time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


async def hold_write_lock(path, until: str):
    """Another process (an sqlite3 shell, a backup, the CLI) holding the write lock."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_LOCK, str(path), until, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"locked\n"
    return proc


async def test_a_lock_held_past_the_busy_timeout_skips_the_write_and_keeps_the_cache(tmp_path):
    path = tmp_path / "c.sqlite3"
    store = Store(path, busy_timeout=0.1, busy_tries=2)
    await store.put_embeddings(PIXABAY, "m", vectors(1000))
    proc = await hold_write_lock(path, "stdin")
    try:
        assert await store.put_embeddings(PIXABAY, "m", vectors(5, start=5000)) is False
        # readers are not blocked by a writer (WAL): the search still gets its vectors
        assert len(await store.get_embeddings(PIXABAY, "m", list(range(1000)))) == 1000
    finally:
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert store.rebuilt == 0 and not list(tmp_path.glob("*.broken-*"))
    assert await store.put_embeddings(PIXABAY, "m", vectors(5, start=5000)) is True
    assert await store.count_embeddings() == 1005
    await store.aclose()


async def test_a_short_lock_is_waited_for_and_the_write_lands(tmp_path):
    path = tmp_path / "c.sqlite3"
    store = Store(path, busy_timeout=20.0)
    proc = await hold_write_lock(path, "0.5")
    assert await store.put_embeddings(PIXABAY, "m", vectors(10)) is True
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert await store.count_embeddings() == 10
    await store.aclose()


async def test_a_full_disk_skips_writes_keeps_what_was_kept_and_recovers(tmp_path, caplog):
    store = Store(tmp_path / "c.sqlite3")
    await store.put_embeddings(PIXABAY, "m", vectors(100, dim=512))
    pages = await store.db.execute_raw("PRAGMA page_count")
    # SQLite's own cap on the file's size: past it, writes fail with SQLITE_FULL exactly
    # as on a full disk.
    await store.db.execute_raw(f"PRAGMA max_page_count = {pages + 2}")
    with caplog.at_level(logging.WARNING):
        assert await store.put_embeddings(PIXABAY, "m", vectors(200, dim=512, start=1000)) \
            is False
    assert store.rebuilt == 0 and store.skipped_writes == 1
    assert len(await store.get_embeddings(PIXABAY, "m", list(range(100)))) == 100
    assert not any("cannot rollback" in r.getMessage() for r in caplog.records)
    assert any("Full" in r.getMessage() for r in caplog.records)
    await store.db.execute_raw("PRAGMA max_page_count = 1073741823")  # space returns
    assert await store.put_embeddings(PIXABAY, "m", vectors(200, dim=512, start=1000)) is True
    assert await store.count_embeddings() == 300
    await store.aclose()


async def test_a_file_from_a_newer_release_is_refused_with_a_sentence(tmp_path):
    path = tmp_path / "search.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute("PRAGMA user_version = 7")
    before = path.read_bytes()
    with pytest.raises(DataDirError) as info:
        Store(path)
    assert str(info.value) == (
        f"{path} was written by a newer findimage (schema 7; this one reads up to 3); "
        "upgrade findimage or point DATA_DIR at another folder.")
    assert path.read_bytes() == before


async def test_a_first_release_file_is_upgraded_and_its_unattributable_rows_dropped(tmp_path):
    path = tmp_path / "search.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('version', '1');
            CREATE TABLE api_cache (key TEXT PRIMARY KEY, fetched_at REAL NOT NULL,
                                    body TEXT NOT NULL);
            CREATE TABLE embeddings (provider TEXT NOT NULL, image_id INTEGER NOT NULL,
                model TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
                PRIMARY KEY (provider, image_id, model));
            INSERT INTO embeddings VALUES ('pixabay', 1, 'm', 1, x'0000803f');
        """)
    store = Store(path)
    assert await store.get_embeddings(PIXABAY, "m", [1]) == {}
    await store.put_embeddings(PIXABAY, "m", vectors(2))
    assert await store.count_embeddings() == 2
    await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


async def test_a_cache_2_file_keeps_its_vectors_and_keys_them_by_id_first(tmp_path):
    """Cache 3 moved the image id to the front of the key: the vectors are copied."""
    path = tmp_path / "search.sqlite3"
    v = np.arange(4, dtype=np.float32)
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE api_cache (scope TEXT NOT NULL, request TEXT NOT NULL,
                fetched_at REAL NOT NULL, body TEXT NOT NULL, PRIMARY KEY (scope, request));
            CREATE INDEX api_cache_age ON api_cache (fetched_at);
            CREATE TABLE embeddings (source TEXT NOT NULL, image_id TEXT NOT NULL,
                model TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
                PRIMARY KEY (source, image_id, model));
            PRAGMA user_version = 2;
        """)
        conn.execute("INSERT INTO embeddings VALUES (?, '7', 'm', 4, ?)",
                     (PIXABAY.id, v.tobytes()))
    store = Store(path)
    got = await store.get_embeddings(PIXABAY, "m", [7])
    np.testing.assert_array_equal(got[7], v)
    await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        key = sorted((row[5], row[1]) for row in conn.execute("PRAGMA table_info(embeddings)")
                     if row[5])
        assert [name for _, name in key] == ["image_id", "source", "model"]
