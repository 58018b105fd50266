"""torch against ONNX Runtime fp32 and int8 on CPU: speed, and what int8 does to the ranking.

    .venv/bin/python -m bench.backends                     # ViT-B-32, random weights
    .venv/bin/python -m bench.backends --model local-dir:tests/fixtures/tiny-clip

For each backend, in one process and one run: the encoder's images per second on the
same 200 thumbnails (the product's CPU path: 8-bit levels, micro-batches of 16, its
thread count), a phrase's text encode, the load time (first start exports, a second
start loads the cached files), and, against torch fp32 on the same weights, the
smallest cosine and the top-10 overlap over 16 phrases. Random weights are seeded, so
every backend serves the same model. Then the quality row: the bundled probe photographs
(``search/clip/probe``) ranked against their phrases by each backend, against torch fp32:
how many phrases keep torch's best photograph (and within a tie), and Spearman's rho over
all pairs, the export's own rule for keeping int8. With real weights:

    .venv/bin/python -m bench.backends --model ViT-B-32 --pretrained laion2b_s34b_b79k

Prints a table and writes JSON beside the bench's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.fakes.scenes import ALL_SCENES, jpeg_bytes, render
from bench.measure import machine
from search.clip import ClipEncoder
from search.clip.quality import judge
from search.decode import decode_image
from search.tuning import freeze_heap, tune_process

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"))
PHRASES = [s.caption for s in ALL_SCENES[::9]]


def thumbnails(n: int) -> list[bytes]:
    rng = random.Random("bench-backends")
    out = []
    for k in range(n):
        scene = ALL_SCENES[rng.randrange(len(ALL_SCENES))]
        w, h = rng.choice([(340, 227), (227, 340), (340, 340), (340, 191)])
        out.append(jpeg_bytes(render(scene, 4_000_000 + k, w, h), rng.randint(60, 90)))
    return out


async def measure(model: str, pretrained: str | None, backend: str, precision: str,
                  datas: list[bytes], cache: Path, threads: int | None) -> dict:
    random_weights = not model.startswith("local-dir:") and pretrained is None
    row: dict = {"backend": backend, "precision": precision}
    for start in ("first", "cached"):
        t0 = time.perf_counter()
        # export="wait": the first start returns once ONNX Runtime serves what it exported
        enc = ClipEncoder(model, pretrained, "cpu", backend=backend, precision=precision,
                          cache_dir=cache, random_weights=random_weights, threads=threads,
                          export="wait")
        await enc.start()
        row[f"load_{start}_s"] = time.perf_counter() - t0
        if start == "first" and backend == "onnx" and not random_weights:
            await enc.close()
            continue
        break  # random weights are never cached: every start exports
    freeze_heap()
    row["served_by"] = f"{enc.backend.name} {enc.backend.precision}"
    levels = torch.stack([enc.preprocess_levels(decode_image(d, min_side=min(enc.image_size)))
                          for d in datas])
    await enc.encode_images(levels[:16])  # shapes not seen yet
    t0 = time.perf_counter()
    images, _ = await enc.encode_images(levels)
    row["images_per_s"] = len(datas) / (time.perf_counter() - t0)
    texts, seconds = [], []
    for phrase in PHRASES:
        t0 = time.perf_counter()
        texts.append((await enc.encode_text(phrase)).vector)
        seconds.append(time.perf_counter() - t0)
    row["text_ms_p50"] = statistics.median(seconds) * 1000.0
    row["probe_scores"] = await probe_scores(enc)
    row["export_note"] = enc.note
    await enc.close()
    return row | {"_images": images, "_texts": np.stack(texts)}


async def probe_scores(enc: ClipEncoder) -> list[list[float]]:
    """The bundled photographs against their phrases (phrases x photographs), through the
    encoder as a search runs it (its preprocessing, micro-batches, text path)."""
    from PIL import Image

    from search.clip.quality import probe_set

    paths, phrases = probe_set()
    pixels = []
    for path in paths:
        with Image.open(path) as im:
            pixels.append(enc.preprocess(im.convert("RGB")))
    images, _ = await enc.encode_images(torch.stack(pixels))
    texts = np.stack([(await enc.encode_texts_uncached([p]))[0] for p in phrases])
    return (texts @ images.T).tolist()


def top10(images: np.ndarray, text: np.ndarray) -> set[int]:
    return set(np.argsort(-(images @ text), kind="stable")[:10].tolist())


async def run(model: str, n: int, threads: int | None, pretrained: str | None = None) -> dict:
    tune_process()
    datas = thumbnails(n)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as cache:
        for backend, precision in CONFIGS:
            print(f"[bench.backends] {backend} {precision} ...", flush=True)
            rows.append(await measure(model, pretrained, backend, precision, datas,
                                      Path(cache), threads))
    ref = rows[0]
    for row in rows:
        row["x_torch"] = row["images_per_s"] / ref["images_per_s"]
        row["min_cosine_images"] = float((row["_images"] * ref["_images"]).sum(1).min())
        overlaps = [len(top10(row["_images"], t) & top10(ref["_images"], r))
                    for t, r in zip(row["_texts"], ref["_texts"], strict=True)]
        row["top10_overlap_mean"] = float(np.mean(overlaps))
        row["top10_overlap_min"] = int(min(overlaps))
        verdict = judge(np.array(ref["probe_scores"]), np.array(row["probe_scores"]))
        row["probe"] = {"top1": verdict.top1_same, "top1_strict": verdict.top1_strict,
                        "phrases": verdict.phrases, "spearman": verdict.spearman,
                        "keeps_int8_rule": verdict.passed, "why": verdict.why}
    for row in rows:
        del row["_images"], row["_texts"]
    return {"model": model, "pretrained": pretrained, "candidates": n,
            "machine": machine("cpu"), "rows": rows}


def table(report: dict) -> str:
    m = report["machine"]
    lines = [f"bench.backends: {report['model']} on CPU, {report['candidates']} thumbnails | "
             f"{m['cpu_cores']} cores, load {', '.join(f'{x:.1f}' for x in m['load_average'])}",
             f"{'backend':<14}{'img/s':>8}{'x torch':>9}{'text ms':>9}{'load s':>8}"
             f"{'cached s':>9}{'min cos':>9}{'top10 mean':>11}{'min':>5}"]
    for r in report["rows"]:
        cached = r.get("load_cached_s")
        lines.append(f"{r['served_by']:<14}{r['images_per_s']:>8.1f}{r['x_torch']:>9.2f}"
                     f"{r['text_ms_p50']:>9.1f}{r['load_first_s']:>8.1f}"
                     f"{(f'{cached:.1f}' if cached else '-'):>9}{r['min_cosine_images']:>9.4f}"
                     f"{r['top10_overlap_mean']:>11.2f}{r['top10_overlap_min']:>5}")
    lines.append(f"quality on the {len(report['rows'][0]['probe_scores'])} probe phrases x "
                 "photographs, against torch fp32 (the export's rule: every top-1, rho >= "
                 "0.95):")
    for r in report["rows"]:
        q = r["probe"]
        lines.append(f"  {r['served_by']:<12} top-1 {q['top1']}/{q['phrases']} (strict "
                     f"{q['top1_strict']}), Spearman {q['spearman']:.4f}"
                     + (f"  [{r['export_note']}]" if r.get("export_note") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", help="a pretrained tag or weights file (default: seeded "
                                        "random weights, or the local-dir: folder's)")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    report = asyncio.run(run(a.model, a.candidates, a.threads, a.pretrained))
    text = table(report)
    print(text)
    out = a.out or ROOT / "bench" / "results" / f"backends-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "table": text}, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
