"""SearchService.find(): retriever → cache → embed → rank.

The one entry point that the CLI and the bot share. ``search.embed`` turns the hits
the cache lacks into vectors (downloads, decoding and encoding overlap); a caller
that passes ``partial`` is handed the ranking of what is ranked so far as it grows.
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
from .embed import Embedder
from .errors import AllImagesFailed, InvalidQuery, NoResults
from .hub import check_weights_reachable
from .images import ImageFetcher
from .models import MAX_TOP, Filters, Query
from .pixabay import PixabayClient
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


@dataclass(frozen=True)
class PartialRanking:
    """The candidates ranked so far, best first, while the others are still on their way."""

    ranking: Ranking
    ranked: int
    total: int


# A callback rather than an async iterator: ``find`` keeps one return value and one
# way to fail for every caller; the callback is a plain function called on the loop
# between two batches, so a slow consumer (a Discord edit) never holds the encoder
# back, and a caller that ignores partial answers pays nothing.
Partial = Callable[[PartialRanking], None]


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
        self.embedder = Embedder(encoder, variant=settings.image_variant)

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
                                      settings.clip_device, backend=settings.clip_backend,
                                      precision=settings.clip_precision,
                                      cache_dir=settings.data_dir / "models")
                await stack.enter_async_context(encoder)
            fetcher = ImageFetcher(session, settings.image_hosts,
                                   concurrency=DOWNLOADS_IN_FLIGHT)
            stack.push_async_callback(fetcher.close)
            pixabay = PixabayClient(session, api_url=settings.pixabay_api_url,
                                    key=settings.pixabay_api_key or "", store=store,
                                    rate_limit=settings.pixabay_rate_limit, **pixabay_options)
            service = cls(settings, pixabay=pixabay, fetcher=fetcher, encoder=encoder,
                          store=store)
            await service.embedder.warm_up(fetcher)
            yield service

    @property
    def model_key(self) -> str:
        return f"{self.encoder.identity}|_{self.settings.image_variant}"

    async def find(self, tag: str, phrase: str, *, top: int = 5, offset: int = 0,
                   candidates: int | None = None, filters: Filters | None = None,
                   progress: Progress | None = None, partial: Partial | None = None,
                   partial_interval: float = 0.5) -> SearchResult:
        query = Query(tag, phrase, candidates or self.settings.search_candidates,
                      filters or Filters())
        return await self.find_query(query, top=top, offset=offset, progress=progress,
                                     partial=partial, partial_interval=partial_interval)

    async def find_query(self, query: Query, *, top: int = 5, offset: int = 0,
                         progress: Progress | None = None, partial: Partial | None = None,
                         partial_interval: float = 0.5) -> SearchResult:
        """Rank the query's candidates by its phrase.

        ``partial``: called with the ranking so far after newly encoded images, at most
        once every ``partial_interval`` seconds, once the phrase's vector is known.
        """
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
            so_far = dict(cached)
            last_partial = -float("inf")

            def on_vectors(new: dict[int, np.ndarray]) -> None:
                nonlocal last_partial
                so_far.update(new)
                now = time.perf_counter()
                if (partial is None or now - last_partial < partial_interval
                        or not text_task.done() or text_task.cancelled()
                        or text_task.exception() is not None):
                    return
                last_partial = now
                ranked = [h for h in hits if h.id in so_far]
                partial(PartialRanking(
                    rank(ranked, np.stack([so_far[h.id] for h in ranked]),
                         text_task.result().vector), len(ranked), len(hits)))

            deadline = started + self.settings.search_deadline_seconds
            embedded = await self.embedder.embed(missing, self.fetcher, progress=progress,
                                                 on_vectors=on_vectors, deadline=deadline)
            fresh, skipped = embedded.vectors, embedded.skipped
            left_out = len(missing) - len(fresh) - sum(skipped.values())
            timings.update(embedded.timings)
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

    def page(self, ranking: Ranking, offset: int, top: int) -> list[ScoredHit]:
        """Another page of a ranking already computed: no Pixabay call, no model call."""
        return ranking.page(offset, top)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
