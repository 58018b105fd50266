"""A grid page turn, before and after the recent-files cache: ``python -m bench.pageturn``.

The ranking of 200 candidates downloads every candidate at the ranked size, which is the
size a contact sheet's tiles use. Before issue 17 each ▶️ on a grid fetched its tiles
again; now they come from ``ImageFetcher.recent``. Both are measured in one run, turn by
turn alternately (so the machine's load hits both alike), against the fake Pixabay in a
child process with ``--latency-ms`` added to each request (a CDN's round trip).
The tiny test model ranks: a page turn never calls the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time

from bench.run import TINY_CLIP, FakeProcess, log
from bot.pages import render_page
from bot.state import ResultsState, View
from search.clip import ClipEncoder
from search.config import Settings
from search.images import RecentBytes
from search.models import Filters
from search.service import SearchService


async def measure(turns: int, latency_ms: float, per_page: int, candidates: int) -> dict:
    out: dict = {"turns": turns, "latency_ms": latency_ms, "tiles": per_page,
                 "candidates": candidates, "cpu_cores": len(os.sched_getaffinity(0)),
                 "load_average_before": os.getloadavg()}
    async with FakeProcess(latency_ms, 10) as fake:
        with tempfile.TemporaryDirectory(prefix="bench-pageturn-") as scratch:
            settings = Settings.from_mapping({
                "PIXABAY_API_URL": fake.api_url, "PIXABAY_API_KEY": fake.key,
                "IMAGE_HOSTS": "127.0.0.1", "CLIP_DEVICE": "cpu", "DATA_DIR": scratch,
                "CLIP_MODEL": TINY_CLIP, "CLIP_BACKEND": "torch"})
            async with ClipEncoder(TINY_CLIP, None, "cpu", backend="torch") as encoder, \
                    SearchService.open(settings, encoder=encoder) as svc:
                result = await svc.find("circle", "a red circle on snow", candidates=candidates)
                state = ResultsState(1, 1, 1, 1, result.tag, result.phrase, Filters(),
                                     per_page, 0, 1.0, result.ranking)
                cached, uncached = svc.fetcher.recent, RecentBytes(max_entries=0)
                times: dict[str, list[float]] = {"before": [], "after": []}
                for turn in range(turns):
                    page = 1 + turn % (state.pages - 1)
                    for name, recent in (("before", uncached), ("after", cached)):
                        svc.fetcher.recent = recent
                        t = time.perf_counter()
                        await render_page(svc, state, View(layout="grid"), page)
                        times[name].append((time.perf_counter() - t) * 1000)
                svc.fetcher.recent = cached
    for name, values in times.items():
        out[f"{name}_ms"] = {"p50": round(statistics.median(values), 1),
                             "min": round(min(values), 1), "max": round(max(values), 1)}
        log(f"grid page of {per_page}, {name}: p50 {statistics.median(values):.0f} ms")
    out["ratio_p50"] = round(out["before_ms"]["p50"] / out["after_ms"]["p50"], 2)
    out["load_average_after"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pageturn",
                                description=__doc__.split("\n")[0])
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--latency-ms", type=float, default=30.0)
    p.add_argument("--tiles", type=int, default=10, help="hits a page (the grid's tiles)")
    p.add_argument("--candidates", type=int, default=200)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(measure(a.turns, a.latency_ms, a.tiles, a.candidates)),
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
