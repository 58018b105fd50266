"""The SQLite caches: TTL, model isolation, and recovery from a broken file."""

import sqlite3

import numpy as np

from search.store import API_CACHE_TTL, Store


def test_responses_expire_after_24_hours(tmp_path):
    now = [1000.0]
    store = Store(tmp_path / "c.sqlite3", clock=lambda: now[0])
    store.put_response("k", {"hits": [1]})
    now[0] += API_CACHE_TTL - 1
    assert store.get_response("k") == {"hits": [1]}
    now[0] += 2
    assert store.get_response("k") is None


def test_another_model_never_reads_another_models_vectors(tmp_path):
    store = Store(tmp_path / "c.sqlite3")
    v = np.arange(4, dtype=np.float32)
    store.put_embeddings("pixabay", "model-a", [(1, v), (2, v * 2)])
    assert set(store.get_embeddings("pixabay", "model-a", [1, 2, 3])) == {1, 2}
    assert store.get_embeddings("pixabay", "model-b", [1, 2]) == {}
    np.testing.assert_array_equal(store.get_embeddings("pixabay", "model-a", [2])[2], v * 2)


def test_corrupt_file_is_moved_aside_and_rebuilt(tmp_path):
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = Store(path)
    store.put_response("k", {"ok": True})
    assert store.get_response("k") == {"ok": True}
    assert store.rebuilt == 1
    assert list(tmp_path.glob("c.sqlite3.broken-*"))


def test_locked_file_is_rebuilt_and_the_query_still_answers(tmp_path):
    path = tmp_path / "c.sqlite3"
    store = Store(path, busy_timeout=0.05)
    store.put_response("k", {"ok": 1})
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    blocker.execute("INSERT INTO meta VALUES ('other', 'writer')")
    try:
        store.put_embeddings("pixabay", "m", [(7, np.ones(3, np.float32))])
        assert store.rebuilt == 1
        assert set(store.get_embeddings("pixabay", "m", [7])) == {7}
    finally:
        blocker.close()
