"""Per-operation latency of the storage layer: SQLite in a temporary DATA_DIR beside
PostgreSQL (DATABASE_URL, or a scratch database on 127.0.0.1:5432), in the same run.

    .venv/bin/python -m bench.storage                # 200 rounds each
    .venv/bin/python -m bench.storage --rounds 50 --url postgresql://postgres@host/db

Each round is what one search and one press cost the store and the state: a cached
response read and written, 200 vectors read and written, results saved and read back, a
page recorded, a pick claimed. It prints the median and p95 of each operation in ms, and
the ratio PostgreSQL / SQLite; ``--concurrency N`` runs N rounds at once (several members).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bot.state import ResultsState, State
from search.models import Filters, Source, key_fingerprint
from search.ranking import Ranking
from search.store import Store

PIXABAY = Source("pixabay", "https://pixabay.com/api/", key_fingerprint("k"))
OPS = ("get_response", "put_response", "get_embeddings", "put_embeddings", "save_results",
       "get_results", "set_page", "claim_pick")


def ranking(n: int = 200) -> Ranking:
    hit = {"id": 0, "page_url": "https://pixabay.com/photos/x-0/",
           "image_url": "https://cdn.pixabay.com/photo/x_640.jpg", "tags": "a, b, c"}
    return Ranking.from_dict({"entries": [[{**hit, "id": i}, 1.0 - i / n] for i in range(n)]})


async def rounds(store: Store, state: State, n: int, concurrency: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {op: [] for op in OPS}
    rng = np.random.default_rng(0)
    vectors = [(i, rng.standard_normal(512).astype(np.float32)) for i in range(200)]
    ranked = ranking()
    body = {"total": 500, "hits": [{"id": i, "tags": "x"} for i in range(200)]}

    async def timed(op: str, call):
        t0 = time.perf_counter()
        result = await call
        times[op].append((time.perf_counter() - t0) * 1000)
        return result

    async def one(i: int) -> None:
        await timed("put_response", store.put_response(PIXABAY, f"q={i}", body))
        await timed("get_response", store.get_response(PIXABAY, f"q={i}"))
        offset = [(j + i * 200, v) for j, v in vectors]
        await timed("put_embeddings", store.put_embeddings(PIXABAY, "m", offset))
        await timed("get_embeddings", store.get_embeddings(PIXABAY, "m", [j for j, _ in offset]))
        s = ResultsState(10**18 + i, 1, 2, 3, "tiger", "a tiger", Filters(), 5, 0, 1.0, ranked)
        await timed("save_results", state.save_results(s))
        got = await timed("get_results", state.get_results(s.message_id))
        await timed("set_page", state.set_page(got, 1, turning=False))
        await timed("claim_pick", state.claim_pick(2, i, 3, "p", "u", s.message_id))

    for start in range(0, n, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {op: {"p50": statistics.median(v), "p95": float(np.percentile(v, 95))}
            for op, v in times.items()}


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.storage")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--url", help="a PostgreSQL database to use (default: a scratch one)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        async with Store(Path(scratch) / "search.sqlite3") as store, \
                State(Path(scratch) / "bot.sqlite3") as state:
            results["sqlite"] = summary(await rounds(store, state, args.rounds,
                                                     args.concurrency))
    url, scratch_db = args.url, None
    if url is None:
        import asyncpg

        scratch_db = f"findimage_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        await admin.execute(f'CREATE DATABASE "{scratch_db}"')
        url = f"postgresql://postgres@127.0.0.1:5432/{scratch_db}"
    try:
        async with Store(url) as store, State(url) as state:
            results["postgresql"] = summary(await rounds(store, state, args.rounds,
                                                         args.concurrency))
    finally:
        if scratch_db:
            await admin.execute(f'DROP DATABASE "{scratch_db}" WITH (FORCE)')
            await admin.close()
    print(f"{'operation':<16}{'SQLite p50':>12}{'p95':>8}{'PG p50':>10}{'p95':>8}{'PG/SQLite':>11}")
    for op in OPS:
        a, b = results["sqlite"][op], results["postgresql"][op]
        print(f"{op:<16}{a['p50']:>12.2f}{a['p95']:>8.2f}{b['p50']:>10.2f}{b['p95']:>8.2f}"
              f"{b['p50'] / a['p50']:>11.2f}")
    record = {"machine": platform.node(), "rounds": args.rounds,
              "concurrency": args.concurrency, "ms": results}
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
