"""Hits to vectors: download, decode, preprocess, encode, overlapped.

Two strategies share ``Embedder.embed``:

- CPU (PIL): each image is decoded and preprocessed on the decode threads as soon
  as it arrives and handed to the encoder, whose worker batches what is waiting.
- GPU (nvjpeg): JPEG bytes go to the encoder's worker, which decodes a whole batch
  on the device in one call, resizes, crops and normalises it there
  (``search.preprocess``) and encodes it, so the pixels never cross the bus. Bytes
  that arrive together (already downloaded) are decoded in one call; bytes that
  trickle in from the network go in batches of ``gpu_batch`` that overlap the
  downloads. Files the batched decoder should not take go the CPU way.

``warm_up`` runs every one of those stages once at start, on JPEGs it makes, so the
first query of a process meets no first-call costs (nvjpeg's set-up, the resize
kernels, the encoder's allocations at the batch sizes a query uses, the text tower).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .clip import ClipEncoder
from .errors import ImageSkipped
from .images import ImageFetcher
from .models import Hit
from .preprocess import batch_decodable, jpeg_info, preprocess
from .sources import rank_url

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
# Called with the vectors of each newly encoded group of hits (image id -> vector).
OnVectors = Callable[[dict[int, np.ndarray]], None]

# Shapes of Pixabay's _340 thumbnails seen most (landscape 3:2, portrait, square, 16:9).
WARM_SHAPES = ((340, 227), (227, 340), (340, 340), (340, 191))


@dataclass(frozen=True)
class EncodedJpegs:
    """What ``encode_jpegs`` made of a list of JPEG bytes.

    ``vectors[k]`` belongs to ``data[encoded[k]]``; the files at ``failed`` were not
    taken (not a plain JPEG, or the decoder refused them) and need the PIL path.
    """

    vectors: np.ndarray
    encoded: list[int]
    failed: list[int]
    decode_seconds: float
    encode_seconds: float

    @property
    def seconds(self) -> float:
        return self.decode_seconds + self.encode_seconds


@dataclass
class Embedded:
    vectors: dict[int, np.ndarray]
    skipped: Counter
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage


def decode_on_device(encoder: ClipEncoder, datas: Sequence[bytes], max_pixels: int
                     ) -> tuple[torch.Tensor | None, tuple[list[int], list[int]]]:
    """Decode and preprocess JPEGs on the encoder's device, in one decoder call.

    Runs on the encoder's worker thread (as a ``prepare`` job). Returns the pixels
    and ``(encoded, failed)`` indices into ``datas``.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    loaded = encoder.loaded
    stats = encoder.stats
    take = [i for i, d in enumerate(datas) if batch_decodable(jpeg_info(d), max_pixels=max_pixels)]
    raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in take]
    decoded: list[torch.Tensor | None] = []
    try:
        if raw:
            decoded = list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=encoder.device))
    except RuntimeError:  # one bad file fails the whole call; find it
        decoded = []
        for tensor in raw:
            try:
                decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB,
                                           device=encoder.device))
            except RuntimeError:
                decoded.append(None)
    encoded = [i for i, img in zip(take, decoded, strict=True) if img is not None]
    kept = set(encoded)
    failed = [i for i in range(len(datas)) if i not in kept]
    stats.jpegs_decoded += len(encoded)
    stats.jpegs_refused += len(failed)
    if not encoded:
        return None, (encoded, failed)
    stats.stages["decode:batched"] += 1
    pixels = preprocess([img for img in decoded if img is not None], size=loaded.image_size,
                        mean=loaded.mean, std=loaded.std, interpolation=loaded.interpolation,
                        resize_mode=loaded.resize_mode, dtype=encoder.dtype)
    stats.stages["preprocess:tensor"] += 1
    return pixels, (encoded, failed)


class Embedder:
    """Turns hits into vectors with the strategy that suits the encoder's device."""

    # JPEGs handed to the GPU decoder at a time as they trickle in: the decode and
    # encode of one batch overlap the downloads of the next.
    gpu_batch = 32

    def __init__(self, encoder: ClipEncoder, *, variant: int, on_device: bool | None = None
                 ) -> None:
        self.encoder = encoder
        self.variant = variant
        self.on_device = encoder.device.startswith("cuda") if on_device is None else on_device

    # -- the GPU strategy's batch call --------------------------------------------
    async def encode_jpegs(self, data: Sequence[bytes], *, max_pixels: int = 20_000_000
                           ) -> EncodedJpegs:
        """Decode, preprocess and encode JPEG files on the encoder's worker.

        Meant for CUDA, where decoding is one nvjpeg call; it works on CPU too. Files
        that are not plain JPEGs (CMYK, EXIF-rotated, truncated, too large, other
        formats) or that the decoder refuses are listed in ``failed``.
        """
        if not data:
            return EncodedJpegs(np.zeros((0, 0), np.float32), [], [], 0.0, 0.0)
        size = self.encoder.max_batch
        chunks = [list(data[i:i + size]) for i in range(0, len(data), size)]
        parts = await asyncio.gather(*(
            self.encoder.encode_prepared(
                lambda chunk=chunk: decode_on_device(self.encoder, chunk, max_pixels),
                len(chunk))
            for chunk in chunks))
        encoded, failed, vectors = [], [], []
        for k, part in enumerate(parts):
            base = k * size
            got, refused = part.extra
            encoded += [base + i for i in got]
            failed += [base + i for i in refused]
            if len(part.vectors):
                vectors.append(part.vectors)
        return EncodedJpegs(
            np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
            encoded, failed, sum(p.prepare_seconds for p in parts),
            sum(p.encode_seconds for p in parts))

    # -- hits to vectors ----------------------------------------------------------
    async def embed(self, hits: list[Hit], fetcher: ImageFetcher, *,
                    progress: Progress | None = None, on_vectors: OnVectors | None = None,
                    deadline: float | None = None) -> Embedded:
        """Download, decode and encode ``hits`` concurrently; skips are counted.

        Downloaded bytes count against the fetcher's byte budget until they are decoded
        (until their batch is encoded, on the GPU path), not while they wait for the
        encoder. At ``deadline`` (a ``perf_counter`` time) images still on their way are
        given up: what has arrived is ranked, the caller counts the rest.
        """
        skipped: Counter = Counter()
        vectors: dict[int, np.ndarray] = {}
        spent = {"download": 0.0, "decode": 0.0, "encode": 0.0}
        if not hits:
            return Embedded(vectors, skipped, {k: 0.0 for k in spent})
        encoder = self.encoder
        on_device = self.on_device
        min_side = min(encoder.image_size)
        loop = asyncio.get_running_loop()
        pending: list[tuple[Hit, bytes, asyncio.Future]] = []
        arrived: set[asyncio.Task] = set()  # downloads that are complete
        flush_scheduled = False
        remaining = len(hits)
        done = 0
        download_end = 0.0
        t_start = time.perf_counter()

        def finished(n: int = 1) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("images", done, len(hits))

        def got(new: dict[int, np.ndarray]) -> None:
            vectors.update(new)
            if on_vectors is not None and new:
                on_vectors(new)

        def skip(hit: Hit, error: ImageSkipped) -> None:
            skipped[error.reason] += 1
            log.info("skipping image %s: %s", hit.id, error)

        async def decode(hit: Hit, data: bytes):
            """The image as 8-bit levels, or None when it is skipped (counted)."""
            try:
                # 8-bit levels: on CPU the encoder lags the downloads, so most of the
                # decoded images wait in its queue; levels take a quarter of floats' room.
                pixels, seconds = await fetcher.prepare(data, encoder.preprocess_levels,
                                                        min_side=min_side)
            except ImageSkipped as e:
                skip(hit, e)
                finished()
                return None
            encoder.stats.stages["decode:pil"] += 1
            spent["decode"] += seconds
            return pixels

        async def encode(hit: Hit, pixels) -> None:
            try:
                vecs, seconds = await encoder.encode_images(pixels[None])
                spent["encode"] += seconds
                got({hit.id: vecs[0]})
            finally:
                finished()

        async def on_cpu(hit: Hit, data: bytes) -> None:
            pixels = await decode(hit, data)
            if pixels is not None:
                await encode(hit, pixels)

        async def on_device_batch(batch: list[tuple[Hit, bytes, asyncio.Future]]) -> None:
            try:
                result = await self.encode_jpegs([data for _, data, _ in batch],
                                                 max_pixels=fetcher.max_pixels)
                spent["decode"] += result.decode_seconds
                spent["encode"] += result.encode_seconds
                got({batch[index][0].id: result.vectors[row]
                     for row, index in enumerate(result.encoded)})
                finished(len(result.encoded))
                await asyncio.gather(*(on_cpu(*batch[i][:2]) for i in result.failed))
            except Exception as e:  # each download waiting on this batch raises it
                for _, _, encoded in batch:
                    if not encoded.done():
                        encoded.set_exception(e)
            finally:
                for _, _, encoded in batch:
                    if not encoded.done():
                        encoded.set_result(None)

        def batch_due() -> bool:
            waiting = sum(len(data) for _, data, _ in pending)
            return bool(pending) and (len(pending) >= self.gpu_batch or remaining == 0
                                      or waiting >= fetcher.budget.capacity // 2)

        def flush() -> None:
            # Runs once every download that finished in this turn of the loop has queued
            # its bytes: bytes that are all there at once go in one decoder call.
            nonlocal flush_scheduled
            flush_scheduled = False
            if on_device and batch_due():
                batch = pending.copy()
                pending.clear()
                asyncio.ensure_future(on_device_batch(batch))

        def flush_soon() -> None:
            nonlocal flush_scheduled
            if on_device and not flush_scheduled:
                flush_scheduled = True
                loop.call_soon(flush)

        async def one(hit: Hit) -> None:
            nonlocal download_end, remaining
            pixels = None
            try:
                async with fetcher.held(rank_url(hit, self.variant)) as data:
                    arrived.add(asyncio.current_task())
                    download_end = max(download_end, time.perf_counter())
                    remaining -= 1
                    if on_device and data.startswith(b"\xff\xd8"):
                        encoded = loop.create_future()
                        pending.append((hit, data, encoded))
                        flush_soon()
                        await encoded  # the bytes stay counted until their batch is encoded
                        return
                    flush_soon()
                    # Only the decode holds the bytes: the encoder's queue holds levels.
                    pixels = await decode(hit, data)
            except ImageSkipped as e:
                if asyncio.current_task() in arrived:
                    raise
                remaining -= 1
                skip(hit, e)
                finished()
                flush_soon()
            if pixels is not None:
                await encode(hit, pixels)

        tasks = [asyncio.ensure_future(one(h)) for h in hits]
        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        try:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            if late:
                # Past the deadline: downloads still on their way are given up; what has
                # arrived is still decoded and encoded (bounded work), and ranked.
                coming = [t for t in late if t not in arrived]
                log.info("search deadline passed: %d images left out", len(coming))
                for task in coming:
                    task.cancel()
                remaining = 0  # the last JPEG batch goes now
                flush()
                await asyncio.gather(*late, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        timings = {
            "download": (max(download_end, t_start) - t_start) * 1000.0,
            "decode": spent["decode"] * 1000.0,
            "encode": spent["encode"] * 1000.0,
        }
        return Embedded(vectors, skipped, timings)

    # -- warm-up ---------------------------------------------------------------------
    async def warm_up(self, fetcher: ImageFetcher) -> None:
        """Run every stage a query runs once, on JPEGs made here, before the first query.

        The CPU path: a PIL decode and preprocess on the decode threads, and the encoder.
        The GPU path besides: one batched decode of a batch of JPEGs of typical shapes,
        the tensor resize, crop and normalise, and the encoder at the batch sizes a
        query hands it (one image, a batch of ``gpu_batch``). Then the text tower.
        """
        t0 = time.perf_counter()
        jpegs = warm_jpegs(max(self.gpu_batch, 4) if self.on_device else 4)
        min_side = min(self.encoder.image_size)
        prepared = await asyncio.gather(*(
            fetcher.prepare(data, self.encoder.preprocess_levels, min_side=min_side)
            for data in jpegs[:len(WARM_SHAPES)]))
        self.encoder.stats.stages["decode:pil"] += len(prepared)
        one = prepared[0][0][None]
        await self.encoder.encode_images(one)
        if self.on_device:
            # CUDA picks kernels per shape; a CPU backend has nothing to pick, and a full
            # batch there would cost most of a second of every start.
            batch = min(self.encoder.max_batch, self.gpu_batch)
            await self.encoder.encode_images(one.expand(batch, -1, -1, -1).contiguous())
            await self.encode_jpegs(jpegs, max_pixels=fetcher.max_pixels)
            await self.encode_jpegs(jpegs[:1], max_pixels=fetcher.max_pixels)
        await self.encoder.encode_texts_uncached(["a photo taken to warm up the text tower"])
        log.info("warm-up: every stage ran in %.0f ms", (time.perf_counter() - t0) * 1000.0)


def warm_jpegs(n: int) -> list[bytes]:
    """``n`` small JPEGs in the shapes of typical thumbnails, with some texture."""
    from PIL import Image

    out = []
    for k in range(n):
        w, h = WARM_SHAPES[k % len(WARM_SHAPES)]
        img = Image.merge("RGB", [Image.effect_noise((w, h), 16 + 8 * c + k) for c in range(3)])
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out
