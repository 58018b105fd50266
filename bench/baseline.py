"""The seed-style pipeline, as the original notebook ran it.

One request at a time with ``urllib``, each image decoded in full by PIL and put
through open_clip's own transform, each encoded alone (batch 1, float32), the text
encoded at full context length, then one cosine per image. Same tag, same images,
same weights as the product's run; it blocks, so the bench runs it in a thread.
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request

import numpy as np
import torch
from PIL import Image

from search.models import Filters


def seed_style(*, api_url: str, key: str, tag: str, phrase: str, candidates: int,
               variant: int, model: torch.nn.Module, preprocess, tokenizer, device: str,
               threads: int | None) -> dict:
    """Per-stage milliseconds (api, download, decode, encode, rank, total) and the ranking."""
    if threads:
        torch.set_num_threads(threads)
    stages = dict.fromkeys(("api", "download", "decode", "encode", "rank"), 0.0)
    started = time.perf_counter()
    params = {"key": key, "q": tag, **Filters().params(), "per_page": "200"}
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"{api_url}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        hits = json.load(r)["hits"][:candidates]
    stages["api"] += time.perf_counter() - t0
    features, ids = [], []
    for hit in hits:
        url = hit["webformatURL"].replace("_640.", f"_{variant}.")
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
        t1 = time.perf_counter()
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except OSError:
            stages["download"] += t1 - t0
            continue
        pixels = preprocess(image).unsqueeze(0).to(device)
        t2 = time.perf_counter()
        with torch.no_grad():
            feature = model.encode_image(pixels).float()
            feature = (feature / feature.norm(dim=-1, keepdim=True)).cpu().numpy()[0]
        t3 = time.perf_counter()
        stages["download"] += t1 - t0
        stages["decode"] += t2 - t1
        stages["encode"] += t3 - t2
        features.append(feature)
        ids.append(hit["id"])
    t0 = time.perf_counter()
    with torch.no_grad():
        text = model.encode_text(tokenizer([phrase]).to(device)).float()
        text = (text / text.norm(dim=-1, keepdim=True)).cpu().numpy()[0]
    t1 = time.perf_counter()
    scores = np.stack(features) @ text
    order = np.argsort(-scores)
    ranking = [ids[i] for i in order]
    stages["encode"] += t1 - t0
    stages["rank"] += time.perf_counter() - t1
    out = {k: v * 1000.0 for k, v in stages.items()}
    out["total"] = (time.perf_counter() - started) * 1000.0
    out["images"] = len(ids)
    out["ranking"] = ranking
    return out
