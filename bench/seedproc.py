"""The seed-style script as a whole process: import, load the model, one query, exit.

``python -m bench.seedproc --model ViT-B-32 --api-url ... --key ... --tag circle --phrase
"..." --candidates 200`` prints one JSON line. ``bench.firststart`` times it from its start
to its exit beside the product's first-ever query in a fresh DATA_DIR.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("--model", "--api-url", "--key", "--tag", "--phrase"):
        p.add_argument(name, required=True)
    p.add_argument("--candidates", type=int, required=True)
    a = p.parse_args()
    import open_clip
    import torch

    from bench.baseline import seed_style

    if a.model.startswith("local-dir:"):
        model, _, preprocess = open_clip.create_model_and_transforms(a.model)
    else:  # the bench's seeded random weights, as bench.fresh loads them
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(a.model, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(a.model)
    loaded = time.perf_counter() - STARTED
    row = seed_style(api_url=a.api_url, key=a.key, tag=a.tag, phrase=a.phrase,
                     candidates=a.candidates, variant=340, model=model, preprocess=preprocess,
                     tokenizer=tokenizer, device="cpu", threads=None)
    row.pop("ranking")
    print(json.dumps({"load_s": loaded, "query_ms": row["total"], "images": row["images"],
                      "process_s": time.perf_counter() - STARTED}), flush=True)


if __name__ == "__main__":
    main()
