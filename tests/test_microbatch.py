"""Micro-batching on the encoder's one worker thread, with the tiny model.

To make "queued together" exact rather than a matter of timing, a test holds the
encoder's condition lock while it submits: the worker cannot take a job until the
lock is released, so it finds everything already waiting.
"""

import asyncio
import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.fakes.scenes import ALL_SCENES, jpeg_bytes, render
from search.clip import ClipEncoder
from search.clip.worker import STATS_HISTORY, BatchStats
from search.decode import decode_image
from search.embed import Embedder

TINY_CLIP = Path(__file__).parent / "fixtures" / "tiny-clip"
# torchvision 0.29 warns on every decode_jpeg call; the call is what we test.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
MAX_BATCH = 4


@pytest.fixture(scope="module")
def encoder():
    """One tiny encoder with small batches; each job carries its own event loop."""
    enc = ClipEncoder(f"local-dir:{TINY_CLIP}", None, "cpu", max_batch=MAX_BATCH,
                      batch_wait=0.02, backend="torch")
    asyncio.run(enc.start())
    yield enc
    asyncio.run(enc.close())


def jpegs(n: int) -> list[bytes]:
    return [jpeg_bytes(render(ALL_SCENES[(k * 7) % len(ALL_SCENES)], k, 160, 120))
            for k in range(n)]


def pixels(encoder: ClipEncoder, n: int) -> torch.Tensor:
    return torch.stack([encoder.preprocess(decode_image(d)) for d in jpegs(n)])


@contextlib.contextmanager
def worker_held(encoder: ClipEncoder):
    with encoder._cv:  # the worker takes jobs under this lock; it waits until we let go
        yield


async def until_queued(encoder: ClipEncoder, images: int = 0, texts: int = 0) -> None:
    """Let the callers' tasks take their first steps, which submit their jobs."""
    for _ in range(1000):
        if (sum(j.n for j in encoder._images) >= images
                and sum(j.n for j in encoder._texts) >= texts):
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not queued: {len(encoder._images)} image jobs, "
                         f"{len(encoder._texts)} text jobs")


async def test_concurrent_single_images_are_coalesced_into_bounded_batches(encoder):
    batch = pixels(encoder, 10)
    before = encoder.stats.passes
    with worker_held(encoder):
        tasks = [asyncio.ensure_future(encoder.encode_images(p[None])) for p in batch]
        await until_queued(encoder, images=len(batch))
    together = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    sizes = [n for kind, n in encoder.stats.since(before) if kind == "image"]
    assert sum(sizes) == len(batch)
    assert max(sizes) > 1
    assert all(1 <= s <= MAX_BATCH for s in sizes)
    # Each caller gets its own image's vector: the one it gets when it is alone.
    for p, (vectors, _) in zip(batch, together, strict=True):
        alone, _ = await encoder.encode_images(p[None])
        np.testing.assert_allclose(vectors[0], alone[0], atol=1e-5)


async def test_a_text_queued_behind_many_image_batches_is_served_before_them(encoder):
    batch = pixels(encoder, 6 * MAX_BATCH)
    served = encoder.stats.passes
    finished: list[str] = []
    with worker_held(encoder):
        images = [asyncio.ensure_future(encoder.encode_images(batch[i:i + MAX_BATCH]))
                  for i in range(0, len(batch), MAX_BATCH)]
        text = asyncio.ensure_future(encoder.encode_text("a blue star on grass, asked last"))
        for k, task in enumerate(images):
            task.add_done_callback(lambda _, k=k: finished.append(f"image {k}"))
        text.add_done_callback(lambda _: finished.append("text"))
        await until_queued(encoder, images=len(batch), texts=1)
    await asyncio.wait_for(asyncio.gather(text, *images), 10)
    assert [kind for kind, _ in encoder.stats.since(served)] == ["text"] + ["image"] * len(images)
    assert finished.index("text") < finished.index(f"image {len(images) - 1}")


async def test_one_batch_equals_one_image_at_a_time(encoder):
    batch = pixels(encoder, 2 * MAX_BATCH + 1)
    together, _ = await encoder.encode_images(batch)
    alone = np.concatenate([(await encoder.encode_images(p[None]))[0] for p in batch])
    assert together.shape == alone.shape
    np.testing.assert_allclose(together, alone, atol=1e-5)
    norms = np.linalg.norm(together, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


async def test_jpeg_and_pixel_callers_share_a_batch_and_keep_their_own_vectors(encoder):
    datas = jpegs(3)
    gpu_strategy = Embedder(encoder, variant=340, on_device=True)
    ref_jpegs = await gpu_strategy.encode_jpegs(datas)
    batch = pixels(encoder, 3)[:1]
    ref_pixels, _ = await encoder.encode_images(batch)
    before = encoder.stats.passes
    with worker_held(encoder):
        from_jpegs = asyncio.ensure_future(gpu_strategy.encode_jpegs(datas))
        from_pixels = asyncio.ensure_future(encoder.encode_images(batch))
        await until_queued(encoder, images=4)
    got_jpegs = await asyncio.wait_for(from_jpegs, 10)
    got_pixels, _ = await asyncio.wait_for(from_pixels, 10)
    assert encoder.stats.since(before) == [("image", 4)]
    np.testing.assert_allclose(got_jpegs.vectors, ref_jpegs.vectors, atol=1e-5)
    np.testing.assert_allclose(got_pixels, ref_pixels, atol=1e-5)


async def test_the_loop_keeps_turning_while_the_worker_encodes(encoder):
    turns = 0

    async def ticker():
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    start = turns
    try:
        await encoder.encode_images(pixels(encoder, 2 * MAX_BATCH))
        await encoder.encode_text("a green cross on sand, while the loop turns")
    finally:
        task.cancel()
    assert turns > start  # an encode that ran on the loop would leave the ticker no turn


async def test_eight_bit_levels_give_the_vectors_of_normalised_floats(encoder):
    images = [decode_image(d) for d in jpegs(3)]
    assert encoder.preprocess_levels is not encoder.preprocess
    levels = torch.stack([encoder.preprocess_levels(img) for img in images])
    floats = torch.stack([encoder.preprocess(img) for img in images])
    assert levels.dtype == torch.uint8 and floats.dtype == torch.float32
    from_levels, _ = await encoder.encode_images(levels)
    from_floats, _ = await encoder.encode_images(floats)
    np.testing.assert_array_equal(from_levels, from_floats)


def test_batch_statistics_stay_bounded_however_many_passes_are_served():
    stats = BatchStats()
    for i in range(10 * STATS_HISTORY):
        stats.record("image" if i % 2 else "text", i)
    assert stats.passes == 10 * STATS_HISTORY
    assert len(stats.history) == STATS_HISTORY
    assert stats.since(stats.passes - 2) == [("text", 10 * STATS_HISTORY - 2),
                                             ("image", 10 * STATS_HISTORY - 1)]
    with pytest.raises(ValueError):
        stats.since(0)
