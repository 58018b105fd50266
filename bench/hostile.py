"""Hostile upstreams, measured: peak RSS growth, wall time and the worst event-loop stall.

    .venv/bin/python -m bench.hostile                 # every scenario
    .venv/bin/python -m bench.hostile big huge        # some of them

Scenarios (issue 9, items 5 and 6), each against the fake Pixabay in a child process,
so only this process's memory is counted, with the tiny test model:

* ``big``: 190 candidates whose images are 4.65 MB JPEGs;
* ``png``: 40 candidates whose images are PNGs just under 20 megapixels;
* ``slow``: 190 slowloris images (one byte a second);
* ``huge``: one API answer of 120 MB.

Prints one JSON line per scenario. To measure another checkout (the code before a
change), run this file with that checkout first on the path:
``PYTHONPATH=/path/to/old .venv/bin/python bench/hostile.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-clip"
SCENARIOS = ("big", "png", "slow", "huge")


# -- the child: a fake Pixabay with one hostile behaviour ---------------------------------
async def serve(kind: str) -> None:
    import bench.fakes.pixabay as fake_module
    from bench.fakes.pixabay import FakePixabay, default_catalogue

    fake_module._CACHE_BUDGET = 1 << 34  # renders are shared bytes: keep them all
    fake = FakePixabay(default_catalogue(10), rate_limit=10**9)
    fault = {"big": "big", "png": "near_cap_png", "slow": "slow"}.get(kind)
    if fault:
        fake.image_faults = {e.id: fault for e in fake.entries}
    if fault == "big":
        fake_module.big_jpeg()
    elif fault == "near_cap_png":
        fake_module.near_cap_png()
    async with fake:
        if kind == "huge":
            fake.huge_next(120 * 1024 * 1024)
        print(json.dumps({"api_url": fake.api_url, "key": fake.key}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# -- the parent: the engine under measurement ----------------------------------------
class Peak:
    """Peak resident memory of this process, sampled every 2 ms on a thread."""

    def __init__(self) -> None:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> Peak:
        self.base = self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Stalls:
    """The worst lateness of a 5 ms ticker on the event loop."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - t - 0.005)

    def __enter__(self) -> Stalls:
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()


async def measure(kind: str, info: dict) -> dict:
    import aiohttp

    from search.clip import ClipEncoder
    from search.config import Settings
    from search.errors import SearchError
    from search.service import SearchService
    from search.sources.pixabay import PixabayClient

    out: dict = {"scenario": kind}
    if kind == "huge":
        async with aiohttp.ClientSession() as session:
            client = PixabayClient(session, api_url=info["api_url"], key=info["key"],
                                   timeout=120.0)
            t0 = time.perf_counter()
            with Peak() as peak, Stalls() as stalls:
                try:
                    found = await client.candidates("circle", limit=10)
                    out["outcome"] = f"{len(found.hits)} hits"
                except SearchError as e:
                    out["outcome"] = str(e)
            out.update(wall_s=round(time.perf_counter() - t0, 2),
                       rss_growth_mb=peak.growth_mb,
                       worst_loop_stall_ms=round(stalls.worst * 1000, 1))
        return out
    import tempfile

    with tempfile.TemporaryDirectory() as data:
        settings = Settings.from_mapping({
            "PIXABAY_API_URL": info["api_url"], "PIXABAY_API_KEY": info["key"],
            "IMAGE_HOSTS": "127.0.0.1", "CLIP_MODEL": f"local-dir:{TINY}",
            "CLIP_DEVICE": "cpu", "DATA_DIR": data})
        encoder = ClipEncoder(f"local-dir:{TINY}", None, "cpu", export="wait")
        async with encoder, SearchService.open(settings, encoder=encoder) as service:
            count = 40 if kind == "png" else 190
            t0 = time.perf_counter()
            with Peak() as peak, Stalls() as stalls:
                try:
                    result = await service.find("circle", "a red circle", candidates=count)
                    out["outcome"] = (f"{result.candidates} ranked, skipped "
                                      f"{result.skipped}, left out "
                                      f"{getattr(result, 'left_out', 'n/a')}")
                    out["decode_thread_s"] = round(result.timings["decode"] / 1000, 2)
                except SearchError as e:
                    out["outcome"] = str(e)
            out.update(wall_s=round(time.perf_counter() - t0, 2),
                       rss_growth_mb=peak.growth_mb,
                       worst_loop_stall_ms=round(stalls.worst * 1000, 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], default=[])
    parser.add_argument("--serve", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    for kind in args.scenarios or SCENARIOS:
        child = subprocess.Popen([sys.executable, __file__, "--serve", kind], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            info = json.loads(child.stdout.readline())
            print(json.dumps(asyncio.run(measure(kind, info))), flush=True)
        finally:
            child.stdin.close()
            child.wait(30)


if __name__ == "__main__":
    sys.path.append(str(ROOT))  # bench.fakes when run as a file; PYTHONPATH goes first
    main()
