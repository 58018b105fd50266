"""The reader: an OpenCLIP encoder owned by one worker thread.

The model loads once, is warmed up and stays resident. Every forward pass runs on
the worker thread, never on the event loop. Concurrent callers are coalesced into
micro-batches (bounded size, a wait of a few milliseconds), and text requests are
served before the next image batch, so a warm query never waits behind a cold
query's two hundred images.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ModelLoadError
from .store import FeatureVector

log = logging.getLogger(__name__)


@dataclass
class _Job:
    kind: str  # "image" | "text"
    payload: object  # a (n, 3, H, W) tensor, or a list of phrases
    n: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class TextVector:
    vector: FeatureVector
    truncated: bool


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    texts: int = 0
    largest_batch: int = 0
    sizes: list[int] = field(default_factory=list)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_identity(model_name: str, pretrained: str | None) -> str:
    """A string that changes whenever the weights do; it keys the embedding cache."""
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):])
        digest = hashlib.sha256()
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.startswith("open_clip"):
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
        return f"local-dir:{folder.name}@{digest.hexdigest()[:16]}"
    if pretrained and Path(pretrained).is_file():
        stat = Path(pretrained).stat()
        return f"{model_name}/{Path(pretrained).name}@{stat.st_size}-{int(stat.st_mtime)}"
    return f"{model_name}/{pretrained or ''}"


class ClipEncoder:
    def __init__(self, model_name: str, pretrained: str | None = None, device: str = "auto", *,
                 max_batch: int | None = None, batch_wait: float = 0.003,
                 text_cache_size: int = 1024, threads: int | None = None) -> None:
        self.model_name = model_name
        self.pretrained = None if model_name.startswith(("local-dir:", "hf-hub:")) else pretrained
        self.device = resolve_device(device)
        self.max_batch = max_batch or (256 if self.device.startswith("cuda") else 32)
        self.batch_wait = batch_wait
        self.threads = threads
        self.identity = ""
        self.stats = BatchStats()
        self.model = None
        self.preprocess = None
        self.tokenizer = None
        self.context_length = 77
        self.image_size: tuple[int, int] = (224, 224)
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.interpolation = "bicubic"
        self.resize_mode = "shortest"
        self.dtype = torch.float32
        self._text_cache: OrderedDict[str, TextVector] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._cv = threading.Condition()
        self._texts: deque[_Job] = deque()
        self._images: deque[_Job] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ready: asyncio.Future | None = None

    # -- life cycle -------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm the model on the worker thread; returns when it is ready."""
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="clip-worker",
                                        daemon=True)
        self._thread.start()
        await self._ready

    async def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    async def __aenter__(self) -> ClipEncoder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _load(self) -> None:
        import open_clip  # deferred: a heavy import, needed only on the worker

        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=self.pretrained, device=self.device)
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as e:  # open_clip raises many kinds; all mean "cannot load"
            raise ModelLoadError(f"The CLIP model '{self.model_name}' could not be loaded: "
                                 f"{e}") from e
        model.eval()
        if self.device.startswith("cuda"):
            model = model.half()
            self.dtype = torch.float16
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.context_length = int(getattr(tokenizer, "context_length", None)
                                  or getattr(model, "context_length", 77))
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.identity = model_identity(self.model_name, self.pretrained)
        # Warm up: the first forward pass allocates and picks kernels.
        with torch.inference_mode():
            dummy = torch.zeros((1, 3, *self.image_size), device=self.device, dtype=self.dtype)
            model.encode_image(dummy)
            model.encode_text(tokenizer(["warm up"]).to(self.device))
        log.info("CLIP %s loaded on %s (%s)", self.model_name, self.device, self.identity)

    # -- worker thread ----------------------------------------------------------
    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._load()
        except BaseException as e:  # handed to start()'s caller
            loop.call_soon_threadsafe(_settle, self._ready, None, e)
            return
        loop.call_soon_threadsafe(_settle, self._ready, None, None)
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            kind = jobs[0].kind
            started = time.perf_counter()
            try:
                results = self._forward_texts(jobs) if kind == "text" else self._forward_images(jobs)
                error = None
            except BaseException as e:  # one bad batch fails its callers, not the worker
                log.exception("CLIP batch failed")
                results, error = [None] * len(jobs), e
            elapsed = time.perf_counter() - started
            total = sum(j.n for j in jobs)
            for job, result in zip(jobs, results, strict=True):
                share = elapsed * job.n / max(total, 1)
                job.loop.call_soon_threadsafe(_settle, job.future, (result, share), error)

    def _next_jobs(self) -> list[_Job] | None:
        with self._cv:
            while not (self._texts or self._images or self._closed):
                self._cv.wait()
            if self._closed:
                for job in (*self._texts, *self._images):
                    job.loop.call_soon_threadsafe(
                        _settle, job.future, None, RuntimeError("the CLIP encoder is closed"))
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
            jobs, count = [], 0
            while self._images and count + self._images[0].n <= self.max_batch:
                job = self._images.popleft()
                jobs.append(job)
                count += job.n
            return jobs

    def _forward_images(self, jobs: list[_Job]) -> list[np.ndarray]:
        batch = torch.cat([j.payload for j in jobs]).to(self.device, self.dtype,
                                                        non_blocking=True)
        with torch.inference_mode():
            feats = self.model.encode_image(batch)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.sizes.append(len(batch))
        out, start = [], 0
        for job in jobs:
            out.append(feats[start:start + job.n])
            start += job.n
        return out

    def _forward_texts(self, jobs: list[_Job]) -> list[np.ndarray]:
        phrases = [p for j in jobs for p in j.payload]
        tokens = self.tokenizer(phrases).to(self.device)
        with torch.inference_mode():
            feats = self.model.encode_text(tokens)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        self.stats.texts += len(phrases)
        out, start = [], 0
        for job in jobs:
            out.append(feats[start:start + job.n])
            start += job.n
        return out

    def _submit(self, kind: str, payload: object, n: int) -> asyncio.Future:
        if self._thread is None:
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
        """Normalised embeddings (n, d) for preprocessed images, and the encode seconds."""
        batch = pixels if isinstance(pixels, torch.Tensor) else torch.stack(list(pixels))
        if len(batch) == 0:
            return np.zeros((0, 0), np.float32), 0.0
        futures = [self._submit("image", batch[i:i + self.max_batch],
                                len(batch[i:i + self.max_batch]))
                   for i in range(0, len(batch), self.max_batch)]
        parts = await asyncio.gather(*futures)
        return np.concatenate([p[0] for p in parts]), sum(p[1] for p in parts)

    def is_truncated(self, phrase: str) -> bool:
        tok = self.tokenizer
        try:
            if hasattr(tok, "encode") and hasattr(tok, "sot_token_id"):
                return len(tok.encode(phrase)) + 2 > self.context_length
            if hasattr(tok, "tokenizer"):
                ids = tok.tokenizer(phrase)["input_ids"]
                return len(ids) > self.context_length
        except Exception:  # a tokenizer we do not know: assume it fits
            return False
        return False

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


def _settle(future: asyncio.Future | None, value: object, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
