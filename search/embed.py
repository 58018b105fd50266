"""Hits to vectors, a pipeline that reads top to bottom: download → decode → encode → keep.

Every image goes through ``_Run.image``, and the images overlap one another:

1. download (``search.images``): from allow-listed hosts; the bytes count against the
   fetcher's byte budget until they are decoded (on the GPU path, until their batch is
   encoded), not while the pixels wait for the encoder.
2. decode (``search.decode``): on a CPU, Pillow on the decode threads, to the encoder's
   8-bit levels, as soon as the bytes arrive. On a GPU, JPEG bytes wait for a batch that
   the encoder's worker decodes in one nvjpeg call, then resizes, crops and normalises
   on the device, so the pixels never cross the bus. Bytes that arrive together (already
   downloaded) go in one call; bytes that trickle in from the network go in batches of
   ``gpu_batch`` that overlap the downloads. What that decoder should not take, or
   refuses, goes the CPU way.
3. encode: the encoder's worker batches what is waiting.
4. keep: each new vector is kept and handed to ``on_vectors`` (the service ranks partial
   answers from them, and writes them to the cache).

A skipped image is counted by its reason. At the deadline, downloads still on their way
are given up; what has arrived is still decoded, encoded and ranked. Nothing here blocks
the event loop: decoding runs on threads, encoding on the worker.

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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, cast

import numpy as np

from .decode import MAX_PIXELS, Decoder, decode_on_device
from .errors import ImageSkipped
from .images import ImageFetcher
from .models import Hit
from .sources import rank_url

if TYPE_CHECKING:
    from .clip import ClipEncoder

from .inference import RemoteEncoder

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
# Called with the vectors of each newly encoded group of hits (image id -> vector).
OnVectors = Callable[[dict[int | str, np.ndarray]], None]
# A JPEG waiting for a device batch, and the future its download waits on meanwhile.
Waiting = tuple[Hit, bytes, "asyncio.Future[None]"]

# Shapes of Pixabay's _340 thumbnails seen most (landscape 3:2, portrait, square, 16:9).
WARM_SHAPES = ((340, 227), (227, 340), (340, 340), (340, 191))
STAGES = ("download", "decode", "encode")


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
    vectors: dict[int | str, np.ndarray]
    skipped: Counter
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage


class Embedder:
    """Turns hits into vectors with the strategy that suits the encoder's device."""

    # JPEGs handed to the GPU decoder at a time as they trickle in: the decode and
    # encode of one batch overlap the downloads of the next.
    gpu_batch = 32

    def __init__(self, encoder: ClipEncoder | RemoteEncoder, decoder: Decoder | None = None, *,
                 variant: int, on_device: bool | None = None) -> None:
        self.encoder = encoder
        # Its threads start only when an image takes the CPU way.
        self.decoder = decoder or Decoder()
        self.variant = variant
        # INFERENCE_URL: every file goes to the service as bytes, in batches as the GPU
        # path's JPEGs do; the service decodes and encodes them, or says why not.
        self.remote = encoder.device == "remote"
        self.on_device = (encoder.device.startswith("cuda") if on_device is None
                          else on_device) and not self.remote

    @property
    def batched(self) -> bool:
        """Files go out in batches (to the device's decoder, or to the service)."""
        return self.on_device or self.remote

    async def embed(self, hits: list[Hit], fetcher: ImageFetcher, *,
                    progress: Progress | None = None, on_vectors: OnVectors | None = None,
                    deadline: float | None = None) -> Embedded:
        """Download, decode and encode ``hits`` concurrently; skips are counted.

        At ``deadline`` (a ``perf_counter`` time) images still on their way are given
        up: what has arrived is ranked, the caller counts the rest.
        """
        if not hits:
            return Embedded({}, Counter(), {stage: 0.0 for stage in STAGES})
        run = _Run(self, fetcher, hits, progress, on_vectors)
        await run.until(deadline)
        return Embedded(run.vectors, run.skipped, run.timings())

    # -- the GPU strategy's batch call --------------------------------------------
    async def encode_jpegs(self, data: Sequence[bytes], *, max_pixels: int = MAX_PIXELS
                           ) -> EncodedJpegs:
        """Decode, preprocess and encode JPEG files on the encoder's worker.

        Meant for CUDA, where decoding is one nvjpeg call; it works on CPU too. Files
        that are not plain JPEGs (CMYK, EXIF-rotated, truncated, too large, other
        formats) or that the decoder refuses are listed in ``failed``.
        """
        if not data:
            return EncodedJpegs(np.zeros((0, 0), np.float32), [], [], 0.0, 0.0)
        assert not isinstance(self.encoder, RemoteEncoder)
        size = self.encoder.max_batch
        chunks = [list(data[i:i + size]) for i in range(0, len(data), size)]
        parts = await asyncio.gather(*(
            self.encoder.encode_prepared(
                partial(decode_on_device, self.encoder, chunk, max_pixels),
                len(chunk))
            for chunk in chunks))
        encoded, failed, vectors = [], [], []
        for k, part in enumerate(parts):
            base = k * size
            got, refused = cast(tuple[list[int], list[int]], part.extra)
            encoded += [base + i for i in got]
            failed += [base + i for i in refused]
            if len(part.vectors):
                vectors.append(part.vectors)
        return EncodedJpegs(
            np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
            encoded, failed, sum(p.prepare_seconds for p in parts),
            sum(p.encode_seconds for p in parts))

    # -- warm-up ---------------------------------------------------------------------
    async def warm_up(self) -> None:
        """Run every stage a query runs once, on JPEGs made here, before the first query.

        The CPU path: a PIL decode and preprocess on the decode threads, and the encoder.
        The GPU path besides: one batched decode of a batch of JPEGs of typical shapes,
        the tensor resize, crop and normalise, and the encoder at the batch sizes a
        query hands it (one image, a batch of ``gpu_batch``). Then the text tower.
        """
        if self.remote:
            return  # the service warmed itself before it answered its first request
        assert not isinstance(self.encoder, RemoteEncoder)
        t0 = time.perf_counter()
        jpegs = warm_jpegs(max(self.gpu_batch, 4) if self.on_device else 4)
        prepared = await asyncio.gather(*(self.decoder.for_encoder(data, self.encoder)
                                          for data in jpegs[:len(WARM_SHAPES)]))
        one = prepared[0][0][None]
        await self.encoder.encode_images(one)
        if self.on_device:
            # CUDA picks kernels per shape; a CPU backend has nothing to pick, and a full
            # batch there would cost most of a second of every start.
            batch = min(self.encoder.max_batch, self.gpu_batch)
            await self.encoder.encode_images(one.expand(batch, -1, -1, -1).contiguous())
            await self.encode_jpegs(jpegs, max_pixels=self.decoder.max_pixels)
            await self.encode_jpegs(jpegs[:1], max_pixels=self.decoder.max_pixels)
        await self.encoder.encode_texts_uncached(["a photo taken to warm up the text tower"])
        log.info("warm-up: every stage ran in %.0f ms", (time.perf_counter() - t0) * 1000.0)


class _Run:
    """One ``embed`` call: its images on their way, and what they came to."""

    def __init__(self, embedder: Embedder, fetcher: ImageFetcher, hits: list[Hit],
                 progress: Progress | None, on_vectors: OnVectors | None) -> None:
        self.embedder = embedder
        self.encoder = embedder.encoder
        self.decoder = embedder.decoder
        self.fetcher = fetcher
        self.hits = hits
        self.progress = progress
        self.on_vectors = on_vectors
        self.on_device = embedder.on_device
        self.remote = embedder.remote
        self.batched = embedder.batched
        self.loop = asyncio.get_running_loop()
        self.vectors: dict[int | str, np.ndarray] = {}
        self.skipped: Counter = Counter()
        self.seconds = {"decode": 0.0, "encode": 0.0}  # thread and worker time, not waits
        self.started = time.perf_counter()
        self.last_arrival = 0.0
        self.coming = len(hits)  # downloads neither arrived nor failed
        self.done = 0
        self.arrived: set[asyncio.Task] = set()  # images whose download is complete
        self.waiting: list[Waiting] = []  # JPEGs for the next device batch
        self.batches: set[asyncio.Task] = set()
        self.flush_scheduled = False

    async def until(self, deadline: float | None) -> None:
        """Every image through the pipeline, or as far as it got by ``deadline``."""
        tasks = [asyncio.ensure_future(self.image(h)) for h in self.hits]
        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        try:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            if late:
                # Past the deadline: downloads still on their way are given up; what has
                # arrived is still decoded and encoded (bounded work), and ranked.
                given_up = [t for t in late if t not in self.arrived]
                log.info("search deadline passed: %d images left out", len(given_up))
                for task in given_up:
                    task.cancel()
                self.coming = 0  # the last JPEG batch goes now
                self.flush()
                await asyncio.gather(*late, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    def timings(self) -> dict[str, float]:
        """Milliseconds: until the last download arrived, then decode and encode work."""
        return {"download": (max(self.last_arrival, self.started) - self.started) * 1000.0,
                "decode": self.seconds["decode"] * 1000.0,
                "encode": self.seconds["encode"] * 1000.0}

    # -- one image: download → decode → encode → keep ----------------------------------
    async def image(self, hit: Hit) -> None:
        pixels = None
        try:
            async with self.download(hit) as data:
                if self.remote or self.on_device and data.startswith(b"\xff\xd8"):
                    # The bytes stay counted until their batch is encoded.
                    await self.on_device_batch(hit, data)
                    return
                # Only the decode holds the bytes: the encoder's queue holds levels.
                pixels = await self.decode(hit, data)
        except ImageSkipped as e:
            if asyncio.current_task() in self.arrived:
                raise
            self.coming -= 1
            self.skip(hit, e)
            self.flush_soon()
        if pixels is not None:
            await self.encode(hit, pixels)

    @asynccontextmanager
    async def download(self, hit: Hit) -> AsyncIterator[bytes]:
        """The image's bytes, counted against the byte budget until the block ends."""
        async with self.fetcher.held(rank_url(hit, self.embedder.variant)) as data:
            self.arrived.add(cast(asyncio.Task, asyncio.current_task()))  # in a task
            self.last_arrival = max(self.last_arrival, time.perf_counter())
            self.coming -= 1
            self.flush_soon()  # this may be the arrival a device batch waits for
            yield data

    async def decode(self, hit: Hit, data: bytes):
        """The image as the encoder's 8-bit levels, or None when it is skipped (counted)."""
        assert not isinstance(self.encoder, RemoteEncoder)  # the service decodes its own
        try:
            pixels, seconds = await self.decoder.for_encoder(data, self.encoder)
        except ImageSkipped as e:
            self.skip(hit, e)
            return None
        self.seconds["decode"] += seconds
        return pixels

    async def encode(self, hit: Hit, pixels) -> None:
        assert not isinstance(self.encoder, RemoteEncoder)
        try:
            vectors, seconds = await self.encoder.encode_images(pixels[None])
            self.seconds["encode"] += seconds
            self.keep({hit.id: vectors[0]})
        finally:
            self.finished()

    def keep(self, new: dict[int | str, np.ndarray]) -> None:
        self.vectors.update(new)
        if self.on_vectors is not None and new:
            self.on_vectors(new)

    async def on_cpu(self, hit: Hit, data: bytes) -> None:
        pixels = await self.decode(hit, data)
        if pixels is not None:
            await self.encode(hit, pixels)

    # -- the GPU path: JPEGs decode and encode in batches on the encoder's worker -------
    async def on_device_batch(self, hit: Hit, data: bytes) -> None:
        """Wait for the batch these bytes join to be decoded and encoded."""
        encoded: asyncio.Future[None] = self.loop.create_future()
        self.waiting.append((hit, data, encoded))
        await encoded

    def flush_soon(self) -> None:
        if self.batched and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        # Runs once every download that finished in this turn of the loop has queued
        # its bytes: bytes that are all there at once go in one decoder call.
        self.flush_scheduled = False
        if self.batched and self.batch_due():
            batch = self.waiting.copy()
            self.waiting.clear()
            task = asyncio.ensure_future(self.encode_batch(batch))
            self.batches.add(task)
            task.add_done_callback(self.batches.discard)

    def batch_due(self) -> bool:
        held = sum(len(data) for _, data, _ in self.waiting)
        return bool(self.waiting) and (len(self.waiting) >= self.embedder.gpu_batch
                                       or self.coming == 0
                                       or held >= self.fetcher.budget.capacity // 2)

    async def encode_batch(self, batch: list[Waiting]) -> None:
        """Encode one batch; every download waiting on it goes on (or raises its error)."""
        try:
            if self.remote:
                await self.encode_remote(batch)
            else:
                await self.encode_on_device(batch)
        except Exception as e:  # each download waiting on this batch raises it
            for _, _, encoded in batch:
                if not encoded.done():
                    encoded.set_exception(e)
        finally:
            for _, _, encoded in batch:
                if not encoded.done():
                    encoded.set_result(None)

    async def encode_on_device(self, batch: list[Waiting]) -> None:
        """The batch's JPEGs decoded and encoded on the device; the ones it refuses on the CPU."""
        result = await self.embedder.encode_jpegs([data for _, data, _ in batch],
                                                  max_pixels=self.decoder.max_pixels)
        self.seconds["decode"] += result.decode_seconds
        self.seconds["encode"] += result.encode_seconds
        self.keep({batch[index][0].id: result.vectors[row]
                   for row, index in enumerate(result.encoded)})
        self.finished(len(result.encoded))
        await asyncio.gather(*(self.on_cpu(*batch[i][:2]) for i in result.failed))

    async def encode_remote(self, batch: list[Waiting]) -> None:
        """The batch's files to the service, which decodes and encodes them there."""
        assert isinstance(self.encoder, RemoteEncoder)
        result = await self.encoder.encode_images([data for _, data, _ in batch])
        self.seconds["decode"] += result.decode_seconds
        self.seconds["encode"] += result.encode_seconds
        self.keep({batch[index][0].id: result.vectors[row]
                   for row, index in enumerate(result.ok)})
        self.finished(len(result.ok))
        for index, reason in result.failed.items():
            self.skip(batch[index][0], ImageSkipped(reason, "the service could not read it"))

    # -- counts --------------------------------------------------------------------------
    def skip(self, hit: Hit, error: ImageSkipped) -> None:
        self.skipped[error.reason] += 1
        log.info("skipping image %s: %s", hit.id, error)
        self.finished()

    def finished(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress("images", self.done, len(self.hits))


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
