"""Figures for issue 12's features: ``python -m bench.beyond [--model M] [--runs N]``.

* **more like this**: what 🔍 does before it posts, on a cached ranking of 200
  candidates: read the results message's ranking from the bot's state, the 200 vectors
  from the embedding cache, rank them by the pick's vector, cut the first page.
* **image query**, warm: a tag whose vectors are cached, queried by an attached JPEG
  (decode, one image encode, rank), alone and with a phrase; and once cold (a tag seen
  for the first time: 200 downloads and encodes plus the query image).
* **grid page**: one ``layout:grid`` page of 10 tiles (10 downloads, drawing, JPEG).

Same set-up as ``python -m bench``: the fake Pixabay in a child process with
``--latency-ms`` added to each request, open_clip ``ViT-B-32`` with random weights.
Medians of ``--runs``; the JSON goes to ``bench/results/beyond-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.fakes.scenes import Scene, jpeg_bytes, render
from bench.measure import machine
from bench.run import ROOT, FakeProcess, log
from bot.pages import render_page
from bot.state import ResultsState, State, View
from search.clip import ClipEncoder, resolve_device
from search.config import Settings
from search.models import Filters
from search.service import SearchService


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(model: str, runs: int, latency_ms: float, candidates: int,
                  backend: str = "auto") -> dict:
    device = resolve_device("cpu")
    out: dict = {"model": model, "device": device, "runs": runs, "latency_ms": latency_ms,
                 "candidates": candidates, "machine": machine(device)}
    pictures = [jpeg_bytes(render(Scene(shape, colour, "grass"), 7000 + i, 640, 480))
                for i, (shape, colour) in enumerate(
                    (s, c) for s in ("circle", "square", "star") for c in ("red", "blue"))]
    async with FakeProcess(latency_ms, 10) as fake:
        with tempfile.TemporaryDirectory(prefix="bench-beyond-") as scratch:
            # As python -m bench loads it: the default backend, seeded random weights.
            encoder = ClipEncoder(model, None, device, backend=backend,
                                  cache_dir=Path(scratch) / "models",
                                  random_weights=not model.startswith("local-dir:"),
                                  export="wait")
            async with encoder:
                out["backend"] = f"{encoder.backend.name} {encoder.backend.precision}"
                log(f"serving with {out['backend']}")
                settings = Settings.from_mapping({
                    "PIXABAY_API_URL": fake.api_url, "PIXABAY_API_KEY": fake.key,
                    "IMAGE_HOSTS": "127.0.0.1", "CLIP_DEVICE": "cpu", "DATA_DIR": scratch,
                }).replace(clip_model=model, clip_pretrained=None)
                async with SearchService.open(settings, encoder=encoder) as svc, \
                        State(Path(scratch) / "bot.sqlite3") as state:
                    t0 = time.perf_counter()
                    cold = await svc.find("circle", "a red circle on snow",
                                          candidates=candidates)
                    out["cold_text_query_ms"] = (time.perf_counter() - t0) * 1000
                    log(f"cold text query: {out['cold_text_query_ms']:.0f} ms")
                    saved = ResultsState(1, 1, 1, 1, cold.tag, cold.phrase, Filters(), 5, 0,
                                         1.0, cold.ranking)
                    await state.save_results(saved)
                    pick = cold.hits[0].hit

                    async def magnifier() -> float:
                        t = time.perf_counter()
                        origin = await state.get_results(1)
                        ranking = await svc.more_like(pick, origin.ranking)
                        ranking.page(0, 5)
                        return (time.perf_counter() - t) * 1000

                    await magnifier()  # warm-up
                    more = [await magnifier() for _ in range(runs)]
                    out["more_like_ms"] = {"p50": statistics.median(more),
                                           "p90": _p(more, 0.9)}
                    log(f"more like this: p50 {statistics.median(more):.1f} ms")

                    async def image_query(phrase: str | None, i: int) -> float:
                        t = time.perf_counter()
                        await svc.find("circle", phrase, image=pictures[i % len(pictures)],
                                       candidates=candidates)
                        return (time.perf_counter() - t) * 1000

                    alone = [await image_query(None, i) for i in range(runs)]
                    both = [await image_query("a red circle", i) for i in range(runs)]
                    out["image_query_warm_ms"] = {"p50": statistics.median(alone),
                                                  "p90": _p(alone, 0.9)}
                    out["image_and_phrase_warm_ms"] = {"p50": statistics.median(both),
                                                       "p90": _p(both, 0.9)}
                    log(f"image query, warm: p50 {statistics.median(alone):.1f} ms; "
                        f"with a phrase {statistics.median(both):.1f} ms")

                    t0 = time.perf_counter()
                    await svc.find("square", None, image=pictures[0], candidates=candidates)
                    out["image_query_cold_ms"] = (time.perf_counter() - t0) * 1000
                    log(f"image query, cold tag: {out['image_query_cold_ms']:.0f} ms")

                    ten = ResultsState(2, 1, 1, 1, cold.tag, cold.phrase, Filters(), 10, 0,
                                       1.0, cold.ranking)
                    grid = []
                    for page in range(min(runs, 10)):
                        t = time.perf_counter()
                        await render_page(svc, ten, View(layout="grid"), page)
                        grid.append((time.perf_counter() - t) * 1000)
                    out["grid_page_ms"] = {"p50": statistics.median(grid),
                                           "p90": _p(grid, 0.9)}
                    log(f"grid page of 10: p50 {statistics.median(grid):.0f} ms")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.beyond", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--latency-ms", type=float, default=30.0)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    result = asyncio.run(measure(a.model, a.runs, a.latency_ms, a.candidates, a.backend))
    path = a.out or ROOT / "bench" / "results" / f"beyond-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
