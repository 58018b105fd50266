"""The reader's scheduler: one worker thread, a queue, micro-batches and futures.

The model loads once on the worker and stays resident; every forward pass runs
there, never on the event loop. Concurrent callers are coalesced into micro-batches
(bounded size, a wait of a few milliseconds), and text requests are served before
the next image batch, so a warm query never waits behind a cold query's images.

An image job carries pixels, or a ``prepare`` callable that the worker runs first
(the GPU strategy decodes JPEGs on the device that way, see ``search.embed``).
What runs the towers is a backend (``search.clip.backends``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from .. import metrics
from ..models import FeatureVector
from ..threads import BACKGROUND_NICENESS
from . import backends
from .backends import Backend, TorchBackend, choose, from_cache
from .model import LoadedModel, default_threads, from_levels, load_model, resolve_device
from .text import is_truncated

if TYPE_CHECKING:
    from .export import ExportChild

log = logging.getLogger(__name__)

# Process-wide hooks, set by the entry points (``search.tuning``), not by this library:
# run first on the worker thread, and after each CPU batch.
THREAD_SETUP: list[Callable[[], None]] = []
AFTER_CPU_BATCH: list[Callable[[], None]] = []

Prepare = Callable[[], tuple[torch.Tensor | None, object]]


@dataclass
class _Job:
    kind: str  # "image" | "text"
    payload: object  # a (n, 3, H, W) tensor, a Prepare callable, or a list of phrases
    n: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class TextVector:
    vector: FeatureVector
    truncated: bool


@dataclass(frozen=True)
class Prepared:
    """What a ``prepare`` job gave: vectors for its pixels, and what ``prepare`` returned."""

    vectors: np.ndarray
    extra: object
    prepare_seconds: float
    encode_seconds: float


# Forward passes the stats remember one by one; the counters cover the process's life.
STATS_HISTORY = 256


@dataclass
class BatchStats:
    """Counters for the life of the process, and the last STATS_HISTORY passes in order.

    The history is bounded: a bot that runs for months serves millions of passes.
    """

    batches: int = 0
    images: int = 0
    texts: int = 0
    largest_batch: int = 0
    passes: int = 0  # forward passes served, image and text
    history: deque = field(default_factory=lambda: deque(maxlen=STATS_HISTORY))  # (kind, n)
    jpegs_decoded: int = 0
    jpegs_refused: int = 0
    stages: Counter = field(default_factory=Counter)  # calls of each stage a query can run

    def record(self, kind: str, n: int) -> None:
        self.passes += 1
        self.history.append((kind, n))

    def since(self, passes: int) -> list[tuple[str, int]]:
        """The (kind, n) of every pass after the first ``passes``, oldest first."""
        count = self.passes - passes
        if count > len(self.history):
            raise ValueError(f"only the last {len(self.history)} passes are remembered")
        return list(self.history)[len(self.history) - count:]


class ClipEncoder:
    def __init__(self, model_name: str, pretrained: str | None = None, device: str = "auto", *,
                 max_batch: int | None = None, batch_wait: float = 0.003,
                 text_cache_size: int = 1024, threads: int | None = None,
                 backend: str = "auto", precision: str = "auto",
                 cache_dir: Path | None = None, random_weights: bool = False,
                 export: str = "beside", on_export_progress: ExportProgress | None = None,
                 export_memory_mb: float | None = None) -> None:
        """``export``: when no checked ONNX files are cached, ``beside`` serves with torch
        at once and exports in a child process, switching between batches once the
        files are checked; ``wait`` returns from ``start()`` once they serve (tests, the
        bench); ``off`` serves with torch and says why (``--check``). ``export_memory_mb``:
        the export's memory ceiling (default: the memory available when it starts)."""
        self.model_name = model_name
        self.pretrained = None if model_name.startswith(("local-dir:", "hf-hub:")) else pretrained
        self.device = resolve_device(device)
        # On CPU, throughput is flat from 8 to 32 images a batch, while the activations'
        # memory and a text's wait behind the batch in progress grow with it; 16 keeps
        # both small (bench/reference/cpu-2core.json).
        self.max_batch = max_batch or (256 if self.device.startswith("cuda") else 16)
        self.batch_wait = batch_wait
        self.threads = threads if threads is not None else default_threads(self.device)
        self.backend_choice = backend
        self.precision_choice = precision
        self.cache_dir = cache_dir
        self.random_weights = random_weights
        self.export_mode = export
        self.on_export_progress = on_export_progress
        self.export_memory_mb = export_memory_mb
        # What ONNX Runtime's state is, in a sentence, when it does not simply serve what
        # was asked: an export under way, an int8 refusal, a failed export.
        self.note = ""
        self.export_facts: dict[str, str] = {}  # the serving files' export.txt
        self.export_step: tuple[int, int, str] | None = None
        self.export_child_peak_mb: float | None = None
        self._child: ExportChild | None = None  # while an export runs
        self._root: Path | None = None  # where ONNX files are looked for and exported
        self._own_root = False
        self._ask: tuple[LoadedModel, str] | None = None  # (skeleton, precision asked)
        self._swap_ready = False
        self._holds = 0
        self.loaded: LoadedModel | None = None
        self.backend: Backend | None = None
        self.stats = BatchStats()
        self._text_cache: OrderedDict[str, TextVector] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._cv = threading.Condition()
        self._texts: deque[_Job] = deque()
        self._images: deque[_Job] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- what the model is ------------------------------------------------------
    def _need(self) -> LoadedModel:
        if self.loaded is None:
            raise RuntimeError("the CLIP encoder is not started")
        return self.loaded

    def _serving(self) -> Backend:
        if self.backend is None:
            raise RuntimeError("the CLIP encoder is not started")
        return self.backend

    @property
    def identity(self) -> str:
        """Keys the embedding cache: the weights, and int8 apart (its vectors differ)."""
        if self.loaded is None:
            return ""
        suffix = "+int8" if self.backend is not None and self.backend.precision == "int8" else ""
        return self.loaded.identity + suffix

    @property
    def model(self) -> torch.nn.Module | None:
        """The torch model, or None once ONNX Runtime serves and it was freed."""
        return self._need().model

    @property
    def preprocess(self):
        return self._need().preprocess

    @property
    def preprocess_levels(self):
        return self._need().preprocess_levels

    @property
    def tokenizer(self):
        return self._need().tokenizer

    @property
    def image_size(self) -> tuple[int, int]:
        return self._need().image_size if self.loaded else (224, 224)

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.input_dtype if self.backend else torch.float32

    @property
    def short_text(self) -> bool:
        return bool(self.backend and self.backend.short_text)

    # -- life cycle -------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm the model on the worker thread; returns when it is ready.

        A failed load raises here and leaves the encoder unstarted, so a later
        ``start()`` tries again instead of handing back a dead worker.
        """
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        self._closed = False
        thread = threading.Thread(target=self._run, args=(loop, ready), name="clip-worker",
                                  daemon=True)
        self._thread = thread
        thread.start()
        try:
            await ready
        except BaseException as e:
            self._thread = None
            self._stop_export()  # a start cut short leaves no export behind
            # A load in progress cannot be stopped: when start-up is cancelled (Ctrl-C,
            # SIGTERM) the daemon thread is left to end with the process, not waited for.
            if not isinstance(e, asyncio.CancelledError):
                await asyncio.to_thread(thread.join, 30)
            raise

    async def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        await asyncio.to_thread(self._stop_export)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None
        if self._own_root and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    @contextlib.contextmanager
    def held(self):
        """While held, the backend does not change: one search's vectors all come from
        the same model files (the switch to ONNX Runtime waits for a quiet moment)."""
        with self._cv:
            self._holds += 1
        try:
            yield
        finally:
            with self._cv:
                self._holds -= 1
                self._cv.notify_all()

    @property
    def exporting(self) -> bool:
        return self._child is not None and self._child.process.poll() is None

    def _stop_export(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.process.poll() is None:
            child.stop()
            log.info("CLIP %s: stopped the ONNX export with the process; the next start "
                     "exports again", self.model_name)

    async def __aenter__(self) -> ClipEncoder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _load(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.backend, self.loaded, self.note = None, None, ""
        name, precision = choose(self.device, self.backend_choice, self.precision_choice)
        plan = False
        if name == "onnx":
            if self._root is None:
                self._own_root = self.cache_dir is None
                self._root = (Path(tempfile.mkdtemp(prefix="clip-onnx-")) if self._own_root
                              else self.cache_dir)
            from .export import remove_stale_staging  # deferred: it is the export's module

            assert self._root is not None
            remove_stale_staging(self._root)
            skeleton = load_model(self.model_name, self.pretrained, self.device,
                                  random_weights=self.random_weights, weights=False)
            self._ask = (skeleton, precision)
            if self._serve_cached(skeleton, precision):
                pass  # files checked at an export: no torch weights to load at all
            elif (why := backends.failure(skeleton, self._root, precision)) is not None:
                self._say(f"the ONNX export failed at an earlier start ({why}); torch serves. "
                          "Run `python -m search.export` (make model) to try again")
            elif self.export_mode == "off":
                self.note = ("no ONNX files exported yet; torch serves until the first start "
                             "exports them, or run `python -m search.export` (make model)")
            else:
                plan = True
        if self.backend is None:
            loaded = load_model(self.model_name, self.pretrained, self.device,
                                random_weights=self.random_weights)
            self.backend, self.loaded = TorchBackend(loaded), loaded
        if plan:
            self._start_export()
            child = self._child
            if self.export_mode == "wait" and child is not None:
                child.thread.join()
                self._swap_if_ready()
        backend = self._serving()
        self._warm(backend)
        log.info("CLIP %s loaded on %s with %s %s (%s, %s threads)", self.model_name,
                 self.device, backend.name, backend.precision, self.identity,
                 self.threads or torch.get_num_threads())

    def _warm(self, backend: Backend) -> None:
        # The first forward pass allocates and picks kernels.
        assert self.loaded is not None
        backend.encode_image(torch.zeros((1, 3, *self.loaded.image_size),
                                         dtype=backend.input_dtype))
        if not self.device.startswith("cuda"):
            for hook in AFTER_CPU_BATCH:
                hook()
        backend.encode_text(self.loaded.tokenizer(["warm up"]).to(self.device))

    def _say(self, note: str) -> None:
        self.note = note
        log.warning("CLIP %s: %s", self.model_name, note)

    def _serve_cached(self, skeleton: LoadedModel, precision: str) -> bool:
        assert self._root is not None
        cached = from_cache(skeleton, self._root, precision, self.threads)
        if cached is None:
            return False
        old = self.loaded
        self.backend, self.export_facts = cached.backend, cached.facts
        self.loaded = skeleton if old is None else replace(old, model=None)
        self._text_cache.clear()  # torch's text vectors are not these files'
        if cached.note:
            self._say(cached.note)
        else:
            self.note = ""
            log.info("CLIP %s: ONNX Runtime serves (%s) files checked at export%s",
                     self.model_name, cached.backend.precision, _figures(cached.facts))
        if old is not None:  # ONNX Runtime serves: torch's copy goes
            del old
            gc.collect()
            for hook in AFTER_CPU_BATCH:
                hook()
        return True

    def _start_export(self) -> None:
        from .export import ExportChild, available_mb, needed_mb

        assert self._root is not None and self._ask is not None and self.loaded is not None
        skeleton, precision = self._ask
        model = self.loaded.model
        parameters = sum(p.numel() for p in model.parameters()) if model is not None else 0
        need, free = needed_mb(parameters), available_mb()
        ceiling = self.export_memory_mb or free
        if ceiling is not None and ceiling < need:
            has = (f"its ceiling is {ceiling:.0f} MB" if self.export_memory_mb
                   else f"{ceiling:.0f} MB are available")
            why = (f"it needs about {need:.0f} MB and {has}; export on a bigger machine and "
                   "share MODEL_CACHE_DIR")
            backends.record_failure(skeleton, self._root, precision, why)
            self._say(f"the ONNX export was not started ({why}); torch serves. Run "
                      "`python -m search.export` (make model) to try again")
            return
        self.note = "torch serves while the ONNX export runs beside it"
        started = time.perf_counter()
        log.info("CLIP %s: torch serves; exporting to ONNX (%s) in a child process "
                 "(ceiling %s MB)", self.model_name, precision,
                 "none" if ceiling is None else f"{ceiling:.0f}")

        def progress(done: int, of: int, what: str) -> None:
            self.export_step = (done, of, what)
            log.info("CLIP %s: ONNX export %d/%d: %s (%.0f s)", self.model_name, done, of,
                     what, time.perf_counter() - started)
            if self.on_export_progress is not None:
                self.on_export_progress(done, of, what)

        root = self._root

        def finished(error: str | None, final: dict) -> None:
            if error is not None:
                backends.record_failure(skeleton, root, precision, error)
                self._say(f"the ONNX export failed ({error}); torch serves. Run "
                          "`python -m search.export` (make model) to try again")
                return
            self.export_child_peak_mb = final.get("peak_rss_mb")
            paused = self._child.paused_seconds if self._child is not None else 0.0
            log.info("CLIP %s: ONNX export done in %.0f s, %.0f s of it paused for searches "
                     "(child peak %s MB resident, %s MB address space)", self.model_name,
                     time.perf_counter() - started, paused, final.get("peak_rss_mb"),
                     final.get("peak_vm_mb"))
            with self._cv:
                self._swap_ready = True
                self._cv.notify_all()

        self._child = ExportChild(self.model_name, self.pretrained, precision, self._root,
                                  random_weights=self.random_weights, ceiling_mb=ceiling,
                                  # the worker thread's own niceness (search.threads),
                                  # inherited: below the event loop and the downloads, level
                                  # with the encoder. More starves it on a busy host (a
                                  # nice-19 export of the test model never finished at load 17)
                                  nice=BACKGROUND_NICENESS if self._thread_niceness() == 0
                                  else 0,
                                  on_progress=progress, on_exit=finished)

    @staticmethod
    def _thread_niceness() -> int:
        try:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        except (AttributeError, OSError):
            return 0

    def _swap_if_ready(self) -> None:
        """On the worker, between batches: serve the freshly exported, checked files."""
        with self._cv:
            ready, self._swap_ready = self._swap_ready, False
        if not ready or self._ask is None:
            return
        skeleton, precision = self._ask
        before = self.backend
        try:
            if self._serve_cached(skeleton, precision):
                served = self._serving()
                self._warm(served)
                log.info("CLIP %s: switched from torch to ONNX Runtime (%s) between batches",
                         self.model_name, served.precision)
                return
            why = "its files were not found after the export"
        except Exception as e:  # torch keeps serving; the files are exported again next start
            why = f"{type(e).__name__}: {e}"
        self.backend = before
        self._say(f"the exported ONNX files could not be served ({why}); torch serves")

    # -- worker thread ----------------------------------------------------------
    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future) -> None:
        for hook in THREAD_SETUP:
            hook()  # before torch starts its own threads, which inherit what it sets
        try:
            self._load()
        except BaseException as e:  # handed to start()'s caller
            _deliver(loop, ready, None, e)
            return
        _deliver(loop, ready, None, None)
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            if not jobs:  # the exported files are ready and no search holds the backend
                self._swap_if_ready()
                continue
            # A member's batch first: the export is stopped while the encoder works and
            # goes on whenever it idles (between a search's batches, between searches).
            child = self._child
            if child is not None:
                child.pause()
            try:
                if jobs[0].kind == "text":
                    results = self._forward_texts(jobs)
                else:
                    results = self._forward_images(jobs)
                error = None
            except BaseException as e:  # one bad batch fails its callers, not the worker
                log.exception("CLIP batch failed")
                results, error = [None] * len(jobs), e
            if child is not None:  # before the results: the caller sees it running again
                with self._cv:
                    idle = not (self._texts or self._images)
                if idle or not child.may_pause():
                    child.resume()
            for job, result in zip(jobs, results, strict=True):
                _deliver(job.loop, job.future, result, error)

    def _next_jobs(self) -> list[_Job] | None:
        with self._cv:
            while not (self._texts or self._images or self._closed or self._may_swap()):
                self._cv.wait()
            if self._may_swap() and not self._closed:
                return []
            if self._closed:
                for job in (*self._texts, *self._images):
                    _deliver(job.loop, job.future, None,
                             RuntimeError("the CLIP encoder is closed"))
                self._texts.clear()
                self._images.clear()
                return None
            if self._texts:
                jobs = list(self._texts)
                self._texts.clear()
                return jobs
            # Coalesce: give concurrent callers a few milliseconds to join this batch.
            if self.batch_wait > 0 and sum(j.n for j in self._images) < self.max_batch:
                deadline = time.perf_counter() + self.batch_wait
                while (not self._texts and not self._closed
                       and sum(j.n for j in self._images) < self.max_batch):
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                if self._texts:
                    jobs = list(self._texts)
                    self._texts.clear()
                    return jobs
                if self._closed:  # settled on the next call
                    return self._next_jobs()
            jobs = [self._images.popleft()]  # at least one, whatever its size
            count = jobs[0].n
            while self._images and count + self._images[0].n <= self.max_batch:
                job = self._images.popleft()
                jobs.append(job)
                count += job.n
            return jobs

    def _may_swap(self) -> bool:
        return self._swap_ready and self._holds == 0

    def _on_device(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            self.stats.stages["normalise:levels"] += 1
            loaded = self._need()
            pixels = from_levels(pixels, loaded.mean, loaded.std)
        return pixels.to(self.dtype)

    def _encode(self, batch: torch.Tensor) -> np.ndarray:
        vectors = self._serving().encode_image(batch)
        if not self.device.startswith("cuda"):
            for hook in AFTER_CPU_BATCH:
                hook()
        return vectors

    def _forward_images(self, jobs: list[_Job]) -> list[object]:
        parts: list[torch.Tensor] = []
        rows: list[int] = []
        prepared: dict[int, tuple[object, Callable[[], float]]] = {}
        for k, job in enumerate(jobs):
            if callable(job.payload):
                (pixels, extra), seconds = _timed(job.payload, self.device)
                prepared[k] = (extra, seconds)
            else:
                pixels = job.payload
            if pixels is not None and len(pixels):
                parts.append(pixels)
            rows.append(0 if pixels is None else len(pixels))
        started = time.perf_counter()
        total = sum(rows)
        if total:
            # prepared jobs arrive on the device, pixel jobs on the host: one place first
            batch = torch.cat([self._on_device(p) for p in parts])
            del parts
            feats = self._encode(batch)
            del batch
            self.stats.stages["encode:image"] += 1
            self.stats.batches += 1
            self.stats.images += total
            self.stats.largest_batch = max(self.stats.largest_batch, total)
            self.stats.record("image", total)
            metrics.ENCODER_BATCH_SIZE.observe(total)
        else:
            feats = np.zeros((0, 0), np.float32)
        elapsed = time.perf_counter() - started
        out: list[object] = []
        start = 0
        for k, n in enumerate(rows):
            vectors = feats[start:start + n]
            start += n
            share = elapsed * n / max(total, 1)
            if k in prepared:
                extra, seconds = prepared[k]
                out.append(Prepared(vectors, extra, seconds(), share))
            else:
                out.append((vectors, share))
        return out

    def _forward_texts(self, jobs: list[_Job]) -> list[object]:
        started = time.perf_counter()
        phrases = [p for j in jobs for p in cast(list[str], j.payload)]
        tokens = self._need().tokenizer(phrases).to(self.device)
        feats = self._serving().encode_text(tokens)
        self.stats.stages["encode:text"] += 1
        self.stats.texts += len(phrases)
        self.stats.record("text", len(phrases))
        elapsed = time.perf_counter() - started
        out: list[object] = []
        start = 0
        for job in jobs:
            out.append((feats[start:start + job.n], elapsed * job.n / len(phrases)))
            start += job.n
        return out

    def _submit(self, kind: str, payload: object, n: int) -> asyncio.Future:
        if self._thread is None or self.loaded is None:
            raise RuntimeError("the CLIP encoder is not started")
        loop = asyncio.get_running_loop()
        job = _Job(kind, payload, n, loop, loop.create_future())
        with self._cv:
            if self._closed:
                raise RuntimeError("the CLIP encoder is closed")
            (self._texts if kind == "text" else self._images).append(job)
            self._cv.notify_all()
        return job.future

    # -- public API (event loop side) ---------------------------------------------
    async def encode_images(self, pixels: torch.Tensor | Sequence[torch.Tensor]
                            ) -> tuple[np.ndarray, float]:
        """Normalised embeddings (n, d) for preprocessed images, and the encode seconds.

        ``pixels``: (n, 3, H, W) from ``preprocess`` (normalised floats) or from
        ``preprocess_levels`` (uint8 levels, normalised on the worker).
        """
        batch = pixels if isinstance(pixels, torch.Tensor) else torch.stack(list(pixels))
        if len(batch) == 0:
            return np.zeros((0, 0), np.float32), 0.0
        futures = [self._submit("image", batch[i:i + self.max_batch],
                                len(batch[i:i + self.max_batch]))
                   for i in range(0, len(batch), self.max_batch)]
        parts = await asyncio.gather(*futures)
        return np.concatenate([p[0] for p in parts]), sum(p[1] for p in parts)

    async def encode_prepared(self, prepare: Prepare, n: int) -> Prepared:
        """Run ``prepare`` on the worker, then encode the pixels it returns with the batch.

        ``n`` bounds the pixels ``prepare`` returns; it counts toward the batch size.
        """
        return await self._submit("image", prepare, n)

    def is_truncated(self, phrase: str) -> bool:
        loaded = self._need()
        return is_truncated(loaded.tokenizer, loaded.context_length, phrase)

    async def encode_text(self, phrase: str) -> TextVector:
        """The normalised embedding of ``phrase`` (LRU-cached), and whether it was cut."""
        cached = self._text_cache.get(phrase)
        if cached is not None:
            self._text_cache.move_to_end(phrase)
            return cached
        (vectors, _seconds) = await self._submit("text", [phrase], 1)
        result = TextVector(vectors[0], self.is_truncated(phrase))
        self._text_cache[phrase] = result
        while len(self._text_cache) > self._text_cache_size:
            self._text_cache.popitem(last=False)
        return result

    async def encode_texts_uncached(self, phrases: list[str]) -> np.ndarray:
        """The text tower on ``phrases``, bypassing the cache (the warm-up's call)."""
        (vectors, _seconds) = await self._submit("text", list(phrases), len(phrases))
        return vectors


def _figures(facts: dict[str, str]) -> str:
    if facts.get("int8_top1"):
        return (f" (int8 against fp32 on the probe photographs: top-1 {facts['int8_top1']}, "
                f"Spearman {facts.get('int8_spearman', '?')})")
    return ""


ExportProgress = Callable[[int, int, str], None]


def _timed(prepare: Prepare, device: str) -> tuple[tuple, Callable[[], float]]:
    """Run ``prepare``: what it returned, and a callable giving the seconds it took.

    On CUDA the time is read from two events after the batch's own synchronisation,
    so timing adds no host sync between the decode and the encode.
    """
    if device.startswith("cuda"):
        begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        begin.record()
        result = prepare()
        end.record()

        def seconds() -> float:
            end.synchronize()  # done already when pixels were encoded
            return begin.elapsed_time(end) / 1000.0
    else:
        t0 = time.perf_counter()
        result = prepare()
        spent = time.perf_counter() - t0

        def seconds() -> float:
            return spent
    return result, seconds


def _deliver(loop: asyncio.AbstractEventLoop, future: asyncio.Future, value: object,
             error: BaseException | None) -> None:
    """Hand a result to its caller's loop; a loop that has closed has no one to hand it to."""
    try:
        loop.call_soon_threadsafe(_settle, future, value, error)
    except RuntimeError:  # "Event loop is closed": the caller left; the worker goes on
        log.debug("dropped a result for a closed event loop")


def _settle(future: asyncio.Future | None, value: object, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
