"""Cosines that set DEDUPE_SIMILARITY and the negative-terms rule, on the tiny test model.

    python -m bench.similarity [--per-scene N]

Near-duplicates: one stock photo served again re-encoded (another JPEG quality), at
another size, or cropped by 4 %; distinct photos: two photos of one scene (same shape,
colour and background, other seed). Negative terms: for "a red circle -snow" the share
of red circles not on snow among the top 10, with each rule.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from bench.fakes.scenes import CatalogueEntry, Scene, catalogue, jpeg_bytes
from search.clip import ClipEncoder

TINY = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny-clip"


def _reencoded(entry: CatalogueEntry, quality: int, longest: int = 340) -> Image.Image:
    return Image.open(io.BytesIO(jpeg_bytes(entry.image(longest), quality))).convert("RGB")


def _cropped(entry: CatalogueEntry, share: float = 0.04) -> Image.Image:
    img = entry.image(340)
    w, h = img.size
    dx, dy = int(w * share / 2), int(h * share / 2)
    return img.crop((dx, dy, w - dx, h - dy))


async def _vectors(encoder: ClipEncoder, images: list[Image.Image]) -> np.ndarray:
    import torch

    out = []
    for start in range(0, len(images), 64):
        pixels = torch.stack([encoder.preprocess(i) for i in images[start:start + 64]])
        vectors, _ = await encoder.encode_images(pixels)
        out.append(np.asarray(vectors, np.float32))
    v = np.concatenate(out)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


THRESHOLDS = (0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)


def _pct(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values)
    out = {k: round(float(np.percentile(values, p)), 4)
           for k, p in (("min", 0), ("p5", 5), ("median", 50), ("p95", 95), ("max", 100))}
    out.update({f"share >= {t}": round(float(np.mean(values >= t)), 3) for t in THRESHOLDS})
    return out


async def measure(per_scene: int, seed: int) -> dict:
    encoder = ClipEncoder(f"local-dir:{TINY}", None, "cpu", backend="torch")
    await encoder.start()
    try:
        entries = catalogue(per_scene, seed=seed)
        by_scene: dict[Scene, list[CatalogueEntry]] = {}
        for e in entries:
            by_scene.setdefault(e.scene, []).append(e)
        originals = await _vectors(encoder, [e.image(340) for e in entries])
        index = {e.id: i for i, e in enumerate(entries)}
        distinct: list[float] = []
        for group in by_scene.values():
            ids = [index[e.id] for e in group]
            sims = originals[ids] @ originals[ids].T
            distinct += sims[np.triu_indices(len(ids), 1)].tolist()
        other_scene = []
        rng = np.random.default_rng(0)
        for _ in range(2000):
            a, b = rng.integers(0, len(entries), 2)
            if entries[a].scene != entries[b].scene:
                other_scene.append(float(originals[a] @ originals[b]))
        sample = entries[::max(1, len(entries) // 200)]
        near = {}
        for name, make in (("quality 60", lambda e: _reencoded(e, 60)),
                           ("quality 95", lambda e: _reencoded(e, 95)),
                           ("640 px", lambda e: e.image(640)),
                           ("cropped 4 %", _cropped)):
            copies = await _vectors(encoder, [make(e) for e in sample])
            near[name] = _pct(np.sum(copies * originals[[index[e.id] for e in sample]], axis=1))
        negatives = await _negatives(encoder, entries, originals)
    finally:
        await encoder.close()
    return {"model": "tests/fixtures/tiny-clip", "photos": len(entries),
            "distinct photos of one scene": _pct(np.array(distinct)),
            "photos of other scenes": _pct(np.array(other_scene)),
            "near-identical copies": near, "negative terms": negatives}


async def _negatives(encoder: ClipEncoder, entries, originals: np.ndarray) -> dict:
    """Top 10 of the red circles for "a red circle -snow": how many are not on snow."""
    circles = [i for i, e in enumerate(entries) if e.scene.shape == "circle"]
    matrix = originals[circles]
    scenes = [entries[i].scene for i in circles]
    positive = (await encoder.encode_text("a red circle")).vector
    out: dict = {"candidates (tag circle)": len(circles),
                 "red circles on snow": sum((s.colour, s.background) == ("red", "snow")
                                            for s in scenes),
                 "red circles elsewhere": sum(s.colour == "red" and s.background != "snow"
                                              for s in scenes)}
    for name, negative in (("snow", "snow"), ("on snow", "on snow")):
        neg = (await encoder.encode_text(negative)).vector
        for weight in (0.0, 0.5, 1.0, 2.0):
            query = positive - weight * neg
            scores = matrix @ (query / np.linalg.norm(query))
            top = [scenes[i] for i in np.argsort(-scores)[:10]]
            out[f"-{name} weight {weight}: top 10 (red not on snow, red on snow, not red)"] = (
                sum(s.colour == "red" and s.background != "snow" for s in top),
                sum(s.colour == "red" and s.background == "snow" for s in top),
                sum(s.colour != "red" for s in top))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-scene", type=int, default=10)
    p.add_argument("--seed", type=int, default=1000, help="1000: the tests' catalogue")
    args = p.parse_args()
    print(json.dumps(asyncio.run(measure(args.per_scene, args.seed)), indent=1))


if __name__ == "__main__":
    main()
