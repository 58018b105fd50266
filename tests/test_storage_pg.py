"""The caches and the bot's state on a real PostgreSQL server (each test its own database):
shared between processes, the schema created once under a lock by processes starting
together, a lost connection retried, the pool bounded, a newer schema refused."""

import asyncio
import json
import sys
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from bot.state import ResultsState, State
from search.models import Filters, Source, key_fingerprint
from search.ranking import Ranking
from search.storage import DatabaseUrlError
from search.store import Store
from tests.pg import admin

PIXABAY = Source("pixabay", "https://pixabay.com/api/", key_fingerprint("k"))
ROOT = Path(__file__).resolve().parent.parent


def results(message_id: int, page: int = 0) -> ResultsState:
    ranking = Ranking.from_dict({"entries": []})
    return ResultsState(message_id, 10, 20, 30, "tiger", "a tiger in snow", Filters(), 5, page,
                        1.5, ranking)


async def test_a_response_and_vectors_cached_by_one_process_are_read_by_another(pg_url):
    async with Store(pg_url) as first, Store(pg_url) as second:
        await first.put_response(PIXABAY, "q=tiger", {"hits": [1, 2]})
        vectors = [(1, np.arange(4, dtype=np.float32)), ("a-uuid", np.ones(4, np.float32))]
        await first.put_embeddings(PIXABAY, "m", vectors)
        assert await second.get_response(PIXABAY, "q=tiger") == {"hits": [1, 2]}
        got = await second.get_embeddings(PIXABAY, "m", [1, "a-uuid", 3])
        assert set(got) == {1, "a-uuid"}
        np.testing.assert_array_equal(got[1], np.arange(4, dtype=np.float32))
        assert await second.count_embeddings() == 2


async def test_a_searchs_vectors_are_found_by_id_whatever_the_statistics(pg_url):
    """The lookup a search makes (its 200 ids, one model) probes those ids only, on a table
    that has grown since PostgreSQL last gathered statistics (cache 3's key: under cache
    2's, this plan matched the source and model in the index and filtered 100,000 rows),
    and every call is planned for its own ids (a generic plan made while the table was
    small would stay a sequential scan for the connection's life)."""
    import sqlalchemy as sa

    store = Store(pg_url)
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(16).astype(np.float32)
    for start in range(0, 100_000, 5000):
        await store.put_embeddings(PIXABAY, "m", [(i, vector) for i in range(start, start + 5000)])
    wanted = list(range(99_800, 100_000))
    assert set(await store.get_embeddings(PIXABAY, "m", wanted)) == set(wanted)
    assert store.db.engine is not None
    async with store.db.engine.connect() as conn:  # one of the store's own connections
        mode = (await conn.execute(sa.text("SHOW plan_cache_mode"))).scalar_one()
    await store.aclose()
    assert mode == "force_custom_plan"
    conn = await asyncpg.connect(pg_url)
    try:
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN ANALYZE SELECT image_id, dim, vector FROM embeddings WHERE source = $1 "
            "AND model = $2 AND image_id = ANY($3::text[])", PIXABAY.id, "m",
            [str(i) for i in wanted]))
    finally:
        await conn.close()
    assert "Index Cond: ((image_id = ANY" in plan, plan
    assert "Rows Removed by Filter" not in plan, plan


async def test_results_saved_by_one_process_page_in_another_with_snowflake_ids(pg_url):
    snowflake = 1_234_567_890_123_456_789  # Discord ids are past 2**32
    async with State(pg_url) as first, State(pg_url) as second:
        await first.save_results(results(snowflake, page=2))
        got = await second.get_results(snowflake)
        assert (got.message_id, got.page, got.tag) == (snowflake, 2, "tiger")
        await second.set_page(got, 3, turning=False)
        assert (await first.get_results(snowflake)).page == 3


async def test_a_live_process_claim_blocks_the_same_pick_and_a_dead_ones_is_taken_over(pg_url):
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    async with State(pg_url, clock=clock, run_timeout=20) as a, \
            State(pg_url, clock=clock, run_timeout=20) as b:
        claimed = await a.claim_pick(7, 99, 1, "a tiger", "https://x/99", 5)
        assert claimed is not None
        # A is alive (it beat just now): B pressing the same image posts nothing.
        assert await b.claim_pick(7, 99, 2, "a tiger", "https://x/99", 5) is None
        assert await b.unfinished_picks() == []
        now[0] += 30  # A stops beating (killed); B is alive
        await b.beat()
        taken = await b.claim_pick(7, 99, 2, "a tiger", "https://x/99", 5)
        assert taken is not None and taken != claimed


async def test_a_dead_process_pending_search_is_taken_once_and_a_live_ones_never(pg_url):
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    async with State(pg_url, clock=clock) as dead, State(pg_url, clock=clock) as b, \
            State(pg_url, clock=clock) as c:
        await dead.add_pending(111, 9, "token-of-a-dead-run")
        await b.add_pending(222, 9, "token-of-a-live-run")
        assert await c.take_pending() == []  # both runs beat just now
        now[0] += 30
        await b.beat()
        await c.beat()
        taken = await asyncio.gather(b.take_pending(), c.take_pending())
        assert sorted(p.interaction_id for got in taken for p in got) == [111]


async def test_a_clean_close_hands_over_at_once(pg_url):
    async with State(pg_url) as b:
        a = await State(pg_url).open()
        await a.add_pending(333, 9, "token")
        await a.close()  # a clean stop marks the run ended: no timeout to wait out
        assert [p.interaction_id for p in await b.take_pending()] == [333]


OPEN_BOTH = """
import asyncio, sys
from bot.state import State
from search.store import Store

async def main():
    async with Store(sys.argv[1]), State(sys.argv[1]):
        pass

asyncio.run(main())
print("opened")
"""


async def test_processes_starting_together_create_the_schema_once_without_racing(pg_url):
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", OPEN_BOTH, pg_url, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE) for _ in range(4)]
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert (proc.returncode, out) == (0, b"opened\n"), err.decode()[-2000:]
    conn = await asyncpg.connect(pg_url)
    try:
        heads = {r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version")}
    finally:
        await conn.close()
    assert heads == {"cache3", "state4"}


async def test_a_connection_the_server_dropped_is_replaced_and_the_call_answers(pg_url):
    async with State(pg_url) as state:
        await state.save_results(results(1))
        conn = await admin()
        try:  # what a server restart or a failover does to every open connection
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()", pg_url.rsplit("/", 1)[1])
        finally:
            await conn.close()
        assert killed >= 1
        assert (await state.get_results(1)).tag == "tiger"
        assert await state.save_results(results(2)) is True


async def test_the_pool_never_opens_more_than_its_bound(pg_url):
    name = pg_url.rsplit("/", 1)[1]
    async with State(pg_url, pool_size=2, max_overflow=1) as state:
        for i in range(10):
            await state.save_results(results(i))
        conn = await admin()
        seen = []
        done = asyncio.Event()

        async def watch():
            while not done.is_set():
                seen.append(await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND "
                    "application_name = 'findimage'", name))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            got = await asyncio.gather(*(state.get_results(i % 10) for i in range(60)))
        finally:
            done.set()
            await watcher
            await conn.close()
    assert [g.message_id for g in got] == [i % 10 for i in range(60)]
    assert max(seen) <= 3 and len(seen) > 1


async def test_a_database_from_a_newer_release_is_refused_with_a_sentence(pg_url):
    async with State(pg_url):
        pass
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = 'state99' "
                           "WHERE version_num = 'state4'")
    finally:
        await conn.close()
    where = pg_url.split("@", 1)[1]
    with pytest.raises(DatabaseUrlError) as info:
        await State(pg_url).open()
    assert str(info.value) == (
        f"The database at {where} was written by a newer findimage (schema state99); "
        "upgrade findimage or point DATABASE_URL at another database.")


async def test_a_database_that_does_not_exist_is_one_sentence_naming_it(pg_url):
    missing = pg_url + "_missing"
    with pytest.raises(DatabaseUrlError) as info:
        await Store(missing).open()
    assert str(info.value).startswith(
        f"PostgreSQL at {missing.split('@', 1)[1]} refused the connection (")
    assert str(info.value).endswith("; check DATABASE_URL.")


async def test_picks_and_settings_round_trip(pg_url):
    async with State(pg_url) as state:
        pick = await state.claim_pick(7, "uuid-image", 3, "a fox", "https://x/fox", 42)
        await state.posting_pick(pick, 8)
        await state.posted_pick(pick, 8, 77)
        await state.set_picks_channel(7, 8)
        assert [(p.image_id, p.message_id) for p in await state.latest_picks(7)] == [
            ("uuid-image", 77)]
        assert await state.picks_channel(7) == 8
        view = json.loads((await state.get_view(1)).to_json())
        assert view["layout"] == "list"
