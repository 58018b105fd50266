"""The tiny CLIP fixture ranks held-out synthetic photos by phrase.

The model in ``tests/fixtures/tiny-clip`` is trained by
``python -m tests.fixtures.train_tiny_clip`` on scene seeds ``[0, 48)`` (its own
eval uses ``[1_000_000, 1_000_008)``).  This test renders scenes from seeds
``[2_000_000_000, 2_000_000_000 + 1000)`` — never seen in training — at several
sizes, aspects and JPEG qualities, and loads the model exactly as the product
does: ``open_clip.create_model_and_transforms('local-dir:...')`` and
``open_clip.get_tokenizer('local-dir:...')``.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from bench.fakes.scenes import ALL_SCENES, ASPECTS, jpeg_bytes, render, size_for

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny-clip"
MODEL_ID = f"local-dir:{FIXTURE}"
TEST_SEED_BASE = 2_000_000_000  # held out: training uses [0, 48), its eval [1_000_000, ...)
SIZES = (150, 240, 340, 480, 640)
POOLS = 2  # independent pools of one image per scene (144 images each)


@pytest.fixture(scope="module")
def clip():
    torch.set_num_threads(2)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_ID)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(MODEL_ID)


def _pool(preprocess, k: int) -> torch.Tensor:
    """One held-out thumbnail per scene, in ALL_SCENES order."""
    rng = random.Random(f"tiny-clip-test-{k}")
    images = []
    for scene in ALL_SCENES:
        seed = TEST_SEED_BASE + rng.randrange(1000)
        aspect = rng.choice(ASPECTS)
        longest = rng.choice(SIZES)
        img = render(scene, seed, *size_for(aspect, longest))
        img = Image.open(io.BytesIO(jpeg_bytes(img, rng.randint(55, 92))))
        images.append(preprocess(img.convert("RGB")))
    return torch.stack(images)


def test_fixture_files_are_small_fp16():
    config = FIXTURE / "open_clip_config.json"
    weights = FIXTURE / "open_clip_model.safetensors"
    assert config.stat().st_size + weights.stat().st_size <= 10_000_000
    cfg = json.loads(config.read_text())
    assert set(cfg) >= {"model_cfg", "preprocess_cfg"}
    assert cfg["preprocess_cfg"]["resize_mode"] == "shortest"
    with safe_open(str(weights), framework="pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    assert dtypes == {"F16"}


def test_tokenizer_context_is_16(clip):
    _, _, tokenizer = clip
    assert tokenizer.context_length == 16
    long_phrase = "a very very very very very very very very long phrase about a red circle on snow"
    tokens = tokenizer([long_phrase, "a red circle on snow"])
    assert tokens.shape == (2, 16)


@torch.no_grad()
def test_held_out_phrases_rank_the_right_image_first(clip):
    model, preprocess, tokenizer = clip
    text = model.encode_text(tokenizer([s.caption for s in ALL_SCENES]), normalize=True)
    correct = total = exact = 0
    misses = []
    for k in range(POOLS):
        images = model.encode_image(_pool(preprocess, k), normalize=True)
        best = (text @ images.T).argmax(1).tolist()
        for query, j in zip(ALL_SCENES, best, strict=True):
            got = ALL_SCENES[j]
            total += 1
            exact += got == query
            if got.colour == query.colour and got.shape == query.shape:
                correct += 1
            else:
                misses.append(f"{query.caption!r} -> {got.caption!r}")
    accuracy = correct / total
    assert accuracy >= 0.90, f"colour+shape top-1 {accuracy:.3f} ({exact}/{total} exact): {misses}"
