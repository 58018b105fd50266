"""One query in a fresh process, as a user of ``python -m search`` meets it.

The bench runs this module as a child process (``bench.run``'s "fresh" scenario): it
imports, opens the service (load, ONNX files from DATA_DIR/models, warm-up) and runs
one query, and prints one JSON line with the time each step took. Unlike the CLI it
may load random weights, which only the benchmark may ask for.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


async def run(a: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    import torch  # noqa: F401

    t1 = time.perf_counter()
    from search.clip import ClipEncoder
    from search.config import Settings
    from search.service import SearchService
    from search.tuning import freeze_heap, tune_process

    t2 = time.perf_counter()
    tune_process()
    settings = Settings.from_mapping({
        "PIXABAY_API_URL": a.api_url, "PIXABAY_API_KEY": a.key, "IMAGE_HOSTS": "127.0.0.1",
        "CLIP_DEVICE": a.device, "DATA_DIR": str(a.data_dir),
    }).replace(clip_model=a.model, clip_pretrained=None)
    encoder = ClipEncoder(a.model, None, a.device, backend=a.backend, precision=a.precision,
                          cache_dir=a.data_dir / "models",
                          random_weights=not a.model.startswith("local-dir:"),
                          # --until-onnx: the export child un-niced, start() waits for it
                          export="wait" if a.until_onnx else "beside")
    until_onnx = None
    async with encoder, SearchService.open(settings, encoder=encoder) as svc:
        freeze_heap()
        t3 = time.perf_counter()
        result = await svc.find(a.tag, a.phrase, candidates=a.candidates)
        t4 = time.perf_counter()
        exported_by_then = not encoder.exporting
        if a.until_onnx:  # a bot stays up: wait for the export beside it and the switch
            deadline = time.monotonic() + 900
            while (encoder.backend.name != "onnx"  # noqa: ASYNC110 (another process decides)
                   and "failed" not in encoder.note and time.monotonic() < deadline):
                await asyncio.sleep(0.2)
            until_onnx = time.perf_counter() - STARTED
    return {"until_onnx_s": until_onnx, "export_child_peak_mb": encoder.export_child_peak_mb,
            "export_done_before_exit": exported_by_then, "note": encoder.note,
            "export_facts": encoder.export_facts,
            "served_at_exit": f"{encoder.backend.name} {encoder.backend.precision}","import_torch_s": t1 - t0, "import_search_s": t2 - t1, "open_s": t3 - t2,
            "query_ms": (t4 - t3) * 1000.0, "timings": result.timings,
            "downloaded": result.downloaded, "candidates": result.candidates,
            "served_by": f"{encoder.backend.name} {encoder.backend.precision}",
            "before_query_s": t3 - STARTED}


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("--model", "--device", "--backend", "--precision", "--api-url", "--key",
                 "--tag", "--phrase"):
        p.add_argument(name, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--candidates", type=int, required=True)
    p.add_argument("--until-onnx", action="store_true",
                   help="a first start that waits for its export child before the query (the "
                        "bench's preparation, and its first-start memory figures)")
    a = p.parse_args()
    report = asyncio.run(run(a))
    report["process_s"] = time.perf_counter() - STARTED
    from bench.measure import peak_rss_mb, rss_anon_mb, rss_mb

    report.update(peak_rss_mb=peak_rss_mb(), rss_mb=rss_mb(), rss_anon_mb=rss_anon_mb())
    print(json.dumps(report), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
