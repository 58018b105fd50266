"""SearchService: the front door the CLI and the bot share, and nothing deeper.

- ``find``: retriever → cache → embed → rank. ``search.embed`` turns the hits the cache
  lacks into vectors (downloads, decoding and encoding overlap); a caller that passes
  ``partial`` is handed the ranking of what is ranked so far as it grows.
- ``more_like``: a stored ranking re-ranked by one pick's cached vector.
- ``pick_file``: the image a pick attaches, from allow-listed hosts, within a size.
- ``contact_sheet``: a page of hits drawn as one picture of numbered tiles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from .attachments import fetch_attachment
from .config import Settings
from .decode import Decoder
from .embed import Embedder
from .errors import AllImagesFailed, ImageSkipped, InvalidQuery, NoResults, PickForgotten
from .grid import encode, hits_sheet
from .hub import check_weights_reachable
from .imagequery import blend, image_pixels, more_like, unit
from .images import ImageFetcher
from .inference import RemoteEncoder, model_label
from .models import MAX_TOP, Filters, Hit, Query, Source
from .phrase import split_negatives
from .ranking import Ranking, ScoredHit, fold_near_duplicates, rank
from .sources import ADAPTERS, Retriever, adapter, label, require, share_urls, short_credit
from .storage import Unavailable
from .store import Store

if TYPE_CHECKING:  # torch comes with the in-process encoder only: a thin client has none
    from .clip import ClipEncoder

from . import metrics  # noqa: E402
from .errors import ConfigError  # noqa: E402
from .shared import (  # noqa: E402
    RedisUnavailable,
    SharedBudget,
    SharedRedis,
    Window,
    unreachable_sentence,
)

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
    phrase: str | None  # None: ranked by the query's image alone
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
    source: str = "pixabay"
    by_image: bool = False  # an image was (part of) the query

    @property
    def cached(self) -> bool:
        return self.api_cached and self.downloaded == 0


@dataclass(frozen=True)
class ImageFile:
    """An image's bytes and the file name to attach them under."""

    data: bytes
    filename: str


async def load_encoder(settings: Settings, *, cache: bool = True,
                       timeout: float | None = None, export: str = "beside") -> ClipEncoder:
    """Start-up's model steps, shared by the service and ``--check``: the model's name, then
    the weights cached or the hub reachable (one line in seconds instead of a download's
    retries), then the load. Returns a started encoder; the caller closes it."""
    from .clip import ClipEncoder

    await asyncio.to_thread(settings.check_model)
    await asyncio.to_thread(check_weights_reachable, settings.clip_model,
                            settings.clip_pretrained)
    encoder = ClipEncoder(settings.clip_model, settings.clip_pretrained, settings.clip_device,
                          backend=settings.clip_backend, precision=settings.clip_precision,
                          cache_dir=settings.models_dir if cache else None, export=export)
    try:
        await asyncio.wait_for(encoder.start(), timeout)
    except BaseException:
        await encoder.close()
        raise
    return encoder


async def connect_encoder(settings: Settings, session: aiohttp.ClientSession, *,
                          timeout: float = 10.0) -> RemoteEncoder:
    """INFERENCE_URL's service, asked what it serves: one sentence naming the URL when it
    does not answer, and one when it serves another model than CLIP_MODEL names."""
    assert settings.inference_url is not None
    encoder = RemoteEncoder(session, settings.inference_url,
                            timeout=settings.search_deadline_seconds,
                            expect=model_label(settings.clip_model, settings.clip_pretrained))
    await encoder.start(timeout=timeout)
    return encoder


class SearchService:
    def __init__(self, settings: Settings, *, clients: Iterable[Retriever],
                 fetcher: ImageFetcher, encoder: ClipEncoder | RemoteEncoder, store: Store,
                 decoder: Decoder | None = None) -> None:
        self.settings = settings
        self.sources: dict[str, Retriever] = {c.name: c for c in clients}
        self.fetcher = fetcher
        self.decoder = decoder or Decoder()
        self.encoder = encoder
        self.store = store
        self.embedder = Embedder(encoder, self.decoder, variant=settings.image_variant)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, session: aiohttp.ClientSession | None = None,
                   encoder: ClipEncoder | RemoteEncoder | None = None,
                   shared: SharedRedis | None = None, **client_options
                   ) -> AsyncIterator[SearchService]:
        """Open every resource the service needs, load and warm the model, close on exit.

        Each source is offered when its adapter can open a client from the settings
        (Pixabay when PIXABAY_API_KEY is set, and it must be when Pixabay is the default
        source; Openverse always, anonymously unless given client credentials).
        ``client_options`` (timeout, retries, backoff, clock) go to every client.
        """
        require(settings, settings.search_source)
        async with AsyncExitStack() as stack:
            if session is None:
                connector = aiohttp.TCPConnector(limit=DOWNLOADS_IN_FLIGHT + 8,
                                                 limit_per_host=DOWNLOADS_IN_FLIGHT,
                                                 keepalive_timeout=30)
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(connector=connector))
            if shared is None and settings.redis_url:  # budgets shared by every process
                shared = await stack.enter_async_context(SharedRedis(
                    settings.redis_url, prefix=settings.redis_key_prefix,
                    shown=settings.redis_shown))
                try:  # checked before the model loads, as the bot does
                    await shared.round_trip()
                except RedisUnavailable as e:
                    raise ConfigError(unreachable_sentence(settings.redis_shown, str(e))
                                      ) from None
            store = await asyncio.to_thread(Store, settings.cache_target,
                                            **settings.database_pool)
            stack.push_async_callback(store.aclose)
            try:
                await store.open()  # a wrong DATABASE_URL is said now, before the model loads
            except Unavailable as e:  # a cache: searches go on, and it is tried again later
                log.warning("the search cache is not available yet (%s)", e.detail)
            if encoder is None and settings.inference_url:
                encoder = await connect_encoder(settings, session)
            elif encoder is None:
                # The model comes last: every cheaper check has passed by now.
                encoder = await load_encoder(settings)
                stack.push_async_callback(encoder.close)
            # IMAGE_HOSTS, and the hosts each source serves its images from (Openverse: its
            # API host alone).
            hosts = tuple(dict.fromkeys((*settings.image_hosts, *(
                host for a in ADAPTERS.values() for host in a.image_hosts(settings)))))
            fetcher = ImageFetcher(session, hosts, concurrency=DOWNLOADS_IN_FLIGHT)
            decoder = Decoder()
            stack.push_async_callback(decoder.close)
            clients = [a.open(session, settings, store, **client_options)
                       for a in ADAPTERS.values()]
            if shared is not None:  # one set of windows per endpoint and key, in Redis
                for client in clients:
                    if client is not None:
                        share(client, shared, settings.processes)
            service = cls(settings, clients=[c for c in clients if c is not None],
                          fetcher=fetcher, encoder=encoder, store=store, decoder=decoder)
            await service.embedder.warm_up()
            yield service

    def source(self, name: str | None) -> Retriever:
        """The named source's client (default SEARCH_SOURCE), or one sentence saying why not."""
        name = name or self.settings.search_source
        found = self.sources.get(name)
        if found is None:
            raise InvalidQuery(adapter(name).not_set_up(list(self.sources)))
        return found

    def vectors_source(self, name: str) -> Source:
        """What a source's cached vectors are keyed by, even when it is not offered now."""
        client = self.sources.get(name)
        if client is not None:
            return client.source
        return adapter(name).vectors_source(self.settings)

    @property
    def model_key(self) -> str:
        return f"{self.encoder.identity}|_{self.settings.image_variant}"

    async def find(self, tag: str, phrase: str | None, *, top: int = 5, offset: int = 0,
                   candidates: int | None = None, filters: Filters | None = None,
                   progress: Progress | None = None, partial: Partial | None = None,
                   partial_interval: float = 0.5, source: str | None = None,
                   image: bytes | None = None, dedupe: bool = True,
                   vector: np.ndarray | None = None) -> SearchResult:
        """Rank ``source``'s candidates for ``tag`` by ``phrase``, ``image`` (or a cached
        image ``vector``), or both."""
        query = Query(tag, phrase, candidates or self.settings.search_candidates,
                      filters or Filters(lang=self.settings.search_language),
                      source or self.settings.search_source, image, vector)
        return await self.find_query(query, top=top, offset=offset, progress=progress,
                                     partial=partial, partial_interval=partial_interval,
                                     dedupe=dedupe)

    async def find_query(self, query: Query, *, top: int = 5, offset: int = 0,
                         progress: Progress | None = None, partial: Partial | None = None,
                         partial_interval: float = 0.5, dedupe: bool = True) -> SearchResult:
        """Rank the query's candidates by its phrase, its picture, or both.

        ``partial``: called with the ranking so far after newly encoded images, at most
        once every ``partial_interval`` seconds, once the query's vector is known.
        ``dedupe``: fold near-duplicates (cosine >= DEDUPE_SIMILARITY with a better hit).
        """
        # One search's vectors come from one backend: the switch from torch to ONNX
        # Runtime after a first start's export waits until no search holds it.
        with self.encoder.held():
            return await self._find_query(query, top=top, offset=offset, progress=progress,
                                          partial=partial, partial_interval=partial_interval,
                                          dedupe=dedupe)

    async def _find_query(self, query: Query, *, top: int, offset: int,
                          progress: Progress | None, partial: Partial | None,
                          partial_interval: float, dedupe: bool) -> SearchResult:
        threshold = self.settings.dedupe_similarity if dedupe else 2.0
        # A Query checks itself when built; a caller's own (a subclass, a copy) is re-checked.
        query = Query(query.tag, query.phrase, query.candidates, query.filters, query.source,
                      query.image, query.vector)
        retriever = self.source(query.source)
        if not 1 <= top <= MAX_TOP:
            raise InvalidQuery(f"top must be from 1 to {MAX_TOP}.")
        if offset < 0:
            raise InvalidQuery("offset must be 0 or more.")
        tag, phrase, limit, filters = query.tag, query.phrase, query.candidates, query.filters
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # A bad picture is refused before any candidate is fetched; the query's encode
        # then runs beside the API call and the downloads.
        pixels = (None if query.image is None
                  else await self._query_image(query.image))
        text_task = asyncio.ensure_future(self._query_vector(phrase, pixels, query.vector))
        try:
            t0 = time.perf_counter()
            found = await retriever.candidates(tag, filters, limit)
            timings["api"] = _ms(t0)
            if not found.hits:
                raise NoResults(tag, label(retriever.name))
            hits = found.hits
            source = retriever.source
            cached = await self.store.get_embeddings(source, self.model_key,
                                                     [h.id for h in hits])
            missing = [h for h in hits if h.id not in cached]
            so_far = dict(cached)
            last_partial = -float("inf")

            def on_vectors(new: dict[int | str, np.ndarray]) -> None:
                nonlocal last_partial
                so_far.update(new)
                now = time.perf_counter()
                if (partial is None or now - last_partial < partial_interval
                        or not text_task.done() or text_task.cancelled()
                        or text_task.exception() is not None):
                    return
                last_partial = now
                ranked = [h for h in hits if h.id in so_far]
                partial(PartialRanking(fold_near_duplicates(
                    rank(ranked, np.stack([so_far[h.id] for h in ranked]),
                         text_task.result()[0]), so_far, threshold), len(ranked), len(hits)))

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
            vector, truncated = await text_task
        finally:
            if not text_task.done():
                text_task.cancel()
            elif not text_task.cancelled():
                text_task.exception()  # a failed encode is reported by whoever awaits it
        t0 = time.perf_counter()
        matrix = np.stack([vectors[h.id] for h in ranked_hits])
        ranking = fold_near_duplicates(rank(ranked_hits, matrix, vector), vectors, threshold)
        timings["rank"] = _ms(t0)
        timings["total"] = _ms(started)
        return SearchResult(
            tag=tag, phrase=phrase, hits=ranking.page(offset, top), ranking=ranking,
            offset=offset, top=top, candidates=len(ranking) + ranking.folded,
            fetched=len(hits),
            total_hits=found.total_hits, skipped=dict(skipped), api_cached=found.from_cache,
            embeddings_cached=len(cached), downloaded=len(fresh), truncated=truncated,
            timings=timings, left_out=left_out, source=retriever.name,
            by_image=query.image is not None or query.vector is not None)

    async def _query_image(self, data: bytes):
        """The query picture ready for ``_query_vector``: its pixels, or with INFERENCE_URL
        its vector (the service decodes it); InvalidQuery when it is no picture."""
        if not isinstance(self.encoder, RemoteEncoder):
            return await image_pixels(self.decoder, self.encoder, data)
        await image_pixels(None, None, data, size_only=True)
        got = await self.encoder.encode_images([data])
        if got.failed:
            raise InvalidQuery(f"The attached file is not an image I can read ({got.failed[0]});"
                               " attach a JPEG, PNG, GIF or WebP picture.")
        return got.vectors[0]

    async def _query_vector(self, phrase: str | None, pixels, vector=None) -> tuple[np.ndarray, bool]:
        """The query's vector and whether the phrase was cut to the model's length.

        Negative terms (``-snow``) subtract the mean of their unit vectors from the unit
        query (search/phrase.py has the rule and what it measured).
        """
        positive, negatives = split_negatives(phrase or "")
        truncated = False
        if pixels is None and vector is None:
            text = await self.encoder.encode_text(positive)
            query, truncated = unit(text.vector), text.truncated
        else:
            if vector is None:
                if isinstance(self.encoder, RemoteEncoder):
                    vector = pixels  # the inference service already made it a vector
                else:
                    vectors, _seconds = await self.encoder.encode_images(pixels[None])
                    vector = vectors[0]
            query = unit(vector)
            if positive:
                text = await self.encoder.encode_text(positive)
                query, truncated = blend(vector, text.vector), text.truncated
        if not negatives:
            return query, truncated
        avoid = [unit((await self.encoder.encode_text(term)).vector) for term in negatives]
        return query - np.mean(avoid, axis=0), truncated

    async def picture(self, url: str, *, declared_size: int | None = None,
                      whose: str = "your image") -> bytes:
        """A member's picture from Discord's CDN (DISCORD_CDN_HOSTS), under the caps."""
        return await fetch_attachment(self.fetcher, url, self.settings.discord_cdn_hosts,
                                      declared_size=declared_size, whose=whose)

    async def cached_vector(self, hit: Hit) -> np.ndarray | None:
        """The stored image vector of one of our results (no download), if it is kept."""
        found = await self.store.get_embeddings(self.vectors_source(hit.source),
                                                self.model_key, [hit.id])
        return found.get(hit.id)

    def page(self, ranking: Ranking, offset: int, top: int) -> list[ScoredHit]:
        """Another page of a ranking already computed: no Pixabay call, no model call."""
        return ranking.page(offset, top)

    # -- after a search: what a results message asks for -----------------------------
    async def more_like(self, pick: Hit, among: Ranking) -> Ranking:
        """``among``'s hits ranked by ``pick``'s own vector, the pick left out.

        Every vector comes from the embedding cache: no source call, no download, no
        encode. PickForgotten when the pick's vector is gone (pruned, or a new model).
        """
        hits = [hit for hit, _ in among.entries]
        vectors = await self.store.get_embeddings(self.vectors_source(pick.source),
                                                  self.model_key, [h.id for h in hits])
        if pick.id not in vectors:
            raise PickForgotten()
        return more_like(hits, vectors, pick)

    async def pick_file(self, hit: Hit, max_bytes: int) -> ImageFile | None:
        """The image a shared pick attaches (the largest the source offers, from an
        allow-listed host, at most ``max_bytes``); None when none can be had."""
        for url in share_urls(hit):
            try:
                data = await self.fetcher.fetch(url, max_bytes=max_bytes)
            except ImageSkipped as e:
                log.info("pick %s: %s from %s", hit.id, e, url.split("?")[0])
                continue
            ext = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"
            return ImageFile(data, f"{hit.source}-{hit.id}.{ext}")
        return None

    async def contact_sheet(self, items: list[ScoredHit], labels: list[str], *,
                            captions: list[str] | None = None, fmt: str = "JPEG") -> bytes:
        """The hits' small images as one picture of tiles, each with its label on top and
        its caption below (by default the creator and the licence or source), as file
        bytes. An image that cannot be had leaves a grey tile that still has its label."""
        if captions is None:
            captions = [short_credit(item.hit) for item in items]
        sheet = await hits_sheet(self.fetcher, self.decoder, items, labels, captions)
        return await asyncio.to_thread(encode, sheet, fmt)


def share(client: Any, redis: SharedRedis, processes: int) -> None:
    """Give a source client Redis windows matching its own budgets (search.upstream spends
    them instead of the local ones); they are named as the response cache names it."""
    budget = SharedBudget(redis, client.source.response_scope,
                          [Window(f"{b.window:g}s", b.limit, b.window) for b in client.budgets],
                          processes=processes, label=client.label)
    client.shared = budget
    metrics.watch_budget(client.name, budget)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
