"""SearchService.find(): retriever → fetch → encode → rank.

The one entry point that the CLI and the bot share. Images are decoded and
preprocessed as they arrive and handed straight to the encoder, whose worker
coalesces them into batches, so downloads, decoding and encoding overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from .clip import ClipEncoder
from .config import Settings
from .errors import AllImagesFailed, ImageSkipped, InvalidQuery, NoResults
from .hub import check_weights_reachable
from .images import ImageFetcher
from .models import MAX_TOP, Filters, Query
from .pixabay import Hit, PixabayClient
from .ranking import Ranking, ScoredHit, rank
from .store import Store

log = logging.getLogger(__name__)

# Image downloads in flight at once, across all queries, on keep-alive connections to
# the image CDN. Measured on 2 cores with 30 ms a request (bench --fetch-concurrency):
# 16 took 480 ms for 200 thumbnails; 32 takes ~260 ms with the worst event-loop stall
# 7-16 ms; 64 saves another 80 ms but its bursts of completions stall the loop 18-25 ms.
DOWNLOADS_IN_FLIGHT = 32
Progress = Callable[[str, int, int], None]
TOO_SLOW = "still downloading at the deadline"


@dataclass
class SearchResult:
    tag: str
    phrase: str
    hits: list[ScoredHit]
    ranking: Ranking
    offset: int
    top: int
    candidates: int  # ranked candidates
    fetched: int  # hits Pixabay returned
    total_hits: int
    skipped: dict[str, int]
    api_cached: bool
    embeddings_cached: int  # vectors read from the embedding cache
    downloaded: int
    truncated: bool
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    left_out: int = 0  # images still on their way when the search's deadline passed

    @property
    def cached(self) -> bool:
        return self.api_cached and self.downloaded == 0


class SearchService:
    def __init__(self, settings: Settings, *, pixabay: PixabayClient, fetcher: ImageFetcher,
                 encoder: ClipEncoder, store: Store) -> None:
        self.settings = settings
        self.pixabay = pixabay
        self.fetcher = fetcher
        self.encoder = encoder
        self.store = store

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, session: aiohttp.ClientSession | None = None,
                   encoder: ClipEncoder | None = None, **pixabay_options
                   ) -> AsyncIterator[SearchService]:
        """Open every resource the service needs, load and warm the model, close on exit."""
        settings.require("PIXABAY_API_KEY")
        async with AsyncExitStack() as stack:
            if session is None:
                connector = aiohttp.TCPConnector(limit=DOWNLOADS_IN_FLIGHT + 8,
                                                 limit_per_host=DOWNLOADS_IN_FLIGHT,
                                                 keepalive_timeout=30)
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(connector=connector))
            store = await asyncio.to_thread(Store, settings.db_path)
            stack.push_async_callback(asyncio.to_thread, store.close)
            if encoder is None:
                # The model comes last: every cheaper check has passed by now.
                await asyncio.to_thread(settings.check_model)
                await asyncio.to_thread(check_weights_reachable, settings.clip_model,
                                        settings.clip_pretrained)
                encoder = ClipEncoder(settings.clip_model, settings.clip_pretrained,
                                      settings.clip_device)
                await stack.enter_async_context(encoder)
            fetcher = ImageFetcher(session, settings.image_hosts,
                                   concurrency=DOWNLOADS_IN_FLIGHT)
            stack.push_async_callback(fetcher.close)
            pixabay = PixabayClient(session, api_url=settings.pixabay_api_url,
                                    key=settings.pixabay_api_key or "", store=store,
                                    rate_limit=settings.pixabay_rate_limit, **pixabay_options)
            yield cls(settings, pixabay=pixabay, fetcher=fetcher, encoder=encoder, store=store)

    @property
    def model_key(self) -> str:
        return f"{self.encoder.identity}|_{self.settings.image_variant}"

    async def find(self, tag: str, phrase: str, *, top: int = 5, offset: int = 0,
                   candidates: int | None = None, filters: Filters | None = None,
                   progress: Progress | None = None) -> SearchResult:
        query = Query(tag, phrase, candidates or self.settings.search_candidates,
                      filters or Filters())
        return await self.find_query(query, top=top, offset=offset, progress=progress)

    async def find_query(self, query: Query, *, top: int = 5, offset: int = 0,
                         progress: Progress | None = None) -> SearchResult:
        # A Query checks itself when built; a caller's own (a subclass, a copy) is re-checked.
        query = Query(query.tag, query.phrase, query.candidates, query.filters, query.source)
        if not 1 <= top <= MAX_TOP:
            raise InvalidQuery(f"top must be from 1 to {MAX_TOP}.")
        if offset < 0:
            raise InvalidQuery("offset must be 0 or more.")
        tag, phrase, limit, filters = query.tag, query.phrase, query.candidates, query.filters
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # The text encode runs beside the API call and the downloads.
        text_task = asyncio.ensure_future(self.encoder.encode_text(phrase))
        try:
            t0 = time.perf_counter()
            found = await self.pixabay.candidates(tag, filters, limit)
            timings["api"] = _ms(t0)
            if not found.hits:
                raise NoResults(tag)
            hits = found.hits
            source = self.pixabay.source
            cached = await self.store.get_embeddings(source, self.model_key,
                                                     [h.id for h in hits])
            missing = [h for h in hits if h.id not in cached]
            deadline = started + self.settings.search_deadline_seconds
            fresh, skipped, stage = await self._embed(missing, progress, deadline)
            left_out = len(missing) - len(fresh) - sum(skipped.values())
            timings.update(stage)
            vectors = {**cached, **fresh}
            if fresh:
                await self.store.put_embeddings(source, self.model_key, fresh.items())
            ranked_hits = [h for h in hits if h.id in vectors]
            if not ranked_hits:
                raise AllImagesFailed(len(hits), skipped + Counter({TOO_SLOW: left_out}))
            text = await text_task
        finally:
            if not text_task.done():
                text_task.cancel()
        t0 = time.perf_counter()
        matrix = np.stack([vectors[h.id] for h in ranked_hits])
        ranking = rank(ranked_hits, matrix, text.vector)
        timings["rank"] = _ms(t0)
        timings["total"] = _ms(started)
        return SearchResult(
            tag=tag, phrase=phrase, hits=ranking.page(offset, top), ranking=ranking,
            offset=offset, top=top, candidates=len(ranking), fetched=len(hits),
            total_hits=found.total_hits, skipped=dict(skipped), api_cached=found.from_cache,
            embeddings_cached=len(cached), downloaded=len(fresh), truncated=text.truncated,
            timings=timings, left_out=left_out)

    async def _embed(self, hits: list[Hit], progress: Progress | None,
                     deadline: float | None = None
                     ) -> tuple[dict[int, np.ndarray], Counter, dict[str, float]]:
        """Download, decode and encode ``hits`` concurrently; skips are counted.

        On CPU each image is decoded on the decode threads as soon as it arrives and
        handed to the encoder, whose worker batches what is waiting. When the encoder
        decodes JPEGs itself (CUDA), arrivals are handed over in batches of
        ``gpu_batch``, the last partial one when the last download ends; other formats
        and files the batched decoder refuses take the CPU way.

        Downloaded bytes count against the fetcher's byte budget until they are decoded
        (until their batch is encoded, on CUDA), not while they wait for the encoder.
        At ``deadline`` (a ``perf_counter`` time) images still on their way are given
        up: what has arrived is ranked, the caller counts the rest.
        """
        skipped: Counter = Counter()
        vectors: dict[int, np.ndarray] = {}
        spent = {"download": 0.0, "decode": 0.0, "encode": 0.0}
        if not hits:
            return vectors, skipped, {k: 0.0 for k in spent}
        variant = self.settings.image_variant
        min_side = min(self.encoder.image_size)
        on_device = self.encoder.decodes_jpegs
        pending: list[tuple[Hit, bytes, asyncio.Future]] = []
        arrived: set[asyncio.Task] = set()  # downloads that are complete
        remaining = len(hits)
        done = 0
        download_end = 0.0
        t_start = time.perf_counter()

        def finished(n: int = 1) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("images", done, len(hits))

        def skip(hit: Hit, error: ImageSkipped) -> None:
            skipped[error.reason] += 1
            log.info("skipping image %s: %s", hit.id, error)

        async def decode(hit: Hit, data: bytes):
            """The image as 8-bit levels, or None when it is skipped (counted)."""
            try:
                # 8-bit levels: on CPU the encoder lags the downloads, so most of the
                # decoded images wait in its queue; levels take a quarter of floats' room.
                pixels, seconds = await self.fetcher.prepare(
                    data, self.encoder.preprocess_levels, min_side=min_side)
            except ImageSkipped as e:
                skip(hit, e)
                finished()
                return None
            spent["decode"] += seconds
            return pixels

        async def encode(hit: Hit, pixels) -> None:
            try:
                vecs, seconds = await self.encoder.encode_images(pixels[None])
                spent["encode"] += seconds
                vectors[hit.id] = vecs[0]
            finally:
                finished()

        async def on_cpu(hit: Hit, data: bytes) -> None:
            pixels = await decode(hit, data)
            if pixels is not None:
                await encode(hit, pixels)

        async def on_device_batch(batch: list[tuple[Hit, bytes]]) -> None:
            result = await self.encoder.encode_jpegs([data for _, data in batch],
                                                     max_pixels=self.fetcher.max_pixels)
            spent["decode"] += result.decode_seconds
            spent["encode"] += result.encode_seconds
            for row, index in enumerate(result.encoded):
                vectors[batch[index][0].id] = result.vectors[row]
            finished(len(result.encoded))
            await asyncio.gather(*(on_cpu(*batch[i]) for i in result.failed))

        def batch_due() -> bool:
            waiting = sum(len(data) for _, data, _ in pending)
            return bool(pending) and (len(pending) >= self.gpu_batch or remaining == 0
                                      or waiting >= self.fetcher.budget.capacity // 2)

        async def flush_if_due() -> None:
            if not (on_device and batch_due()):
                return
            batch = pending.copy()
            pending.clear()
            try:
                await on_device_batch([(hit, data) for hit, data, _ in batch])
            finally:
                for _, _, done_ in batch:
                    if not done_.done():
                        done_.set_result(None)

        async def one(hit: Hit) -> None:
            nonlocal download_end, remaining
            pixels = None
            try:
                async with self.fetcher.held(hit.variant_url(variant)) as data:
                    arrived.add(asyncio.current_task())
                    download_end = max(download_end, time.perf_counter())
                    remaining -= 1
                    if on_device and data.startswith(b"\xff\xd8"):
                        encoded = asyncio.get_running_loop().create_future()
                        pending.append((hit, data, encoded))
                        await flush_if_due()
                        await encoded  # the bytes stay counted until their batch is encoded
                        return
                    await flush_if_due()
                    # Only the decode holds the bytes: the encoder's queue holds levels.
                    pixels = await decode(hit, data)
            except ImageSkipped as e:
                if asyncio.current_task() in arrived:
                    raise
                remaining -= 1
                skip(hit, e)
                finished()
                await flush_if_due()
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
                await flush_if_due()
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
        return vectors, skipped, timings

    # JPEGs handed to the GPU decoder at a time as they arrive: the decode and encode
    # of one batch overlap the downloads of the next.
    gpu_batch = 32

    def page(self, ranking: Ranking, offset: int, top: int) -> list[ScoredHit]:
        """Another page of a ranking already computed: no Pixabay call, no model call."""
        return ranking.page(offset, top)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
