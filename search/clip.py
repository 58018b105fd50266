"""The reader: an OpenCLIP encoder owned by one worker thread.

The model loads once, is warmed up and stays resident. Every forward pass runs on
the worker thread, never on the event loop. Concurrent callers are coalesced into
micro-batches (bounded size, a wait of a few milliseconds), and text requests are
served before the next image batch, so a warm query never waits behind a cold
query's two hundred images.

On CUDA, ``encode_jpegs`` takes raw JPEG bytes: the worker decodes the whole batch
with nvjpeg in one call, resizes, crops and normalises it on the GPU
(``search.preprocess``) and encodes it, so the pixels never cross the bus. Files
the batched decoder should not take come back as failures, for the PIL path.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .errors import ModelLoadError
from .preprocess import batch_decodable, jpeg_info, preprocess
from .store import FeatureVector
from .threads import lower_priority

log = logging.getLogger(__name__)


@dataclass
class _Job:
    kind: str  # "image" | "jpeg" | "text"
    payload: object  # a (n, 3, H, W) tensor, a list of JPEG bytes, or a list of phrases
    n: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TextVector:
    vector: FeatureVector
    truncated: bool


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
class BatchStats:
    batches: int = 0
    images: int = 0
    texts: int = 0
    largest_batch: int = 0
    sizes: list[int] = field(default_factory=list)  # images per forward pass, in order
    order: list[str] = field(default_factory=list)  # "image" / "text" per pass, in order
    jpegs_decoded: int = 0
    jpegs_refused: int = 0


def _load_malloc_trim():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _trim_heap() -> None:
    """Give the heap a CPU batch's activations freed back to the OS (glibc only).

    Freed blocks of a few MB stay in glibc's arenas, so without this the process keeps
    the largest batch's working set and some fragmentation for good: ~140 MB more
    resident after a cold ViT-B-32 query on CPU. It costs well under a millisecond
    against a batch's seconds.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_threads(device: str) -> int | None:
    """Intra-op threads for the worker: on CPU, leave a core to decoding and the loop.

    On a small box the decode threads, aiohttp and the event loop share the cores
    with the model; OpenMP threads that must wait at every barrier for a sibling the
    scheduler has parked make each small operator many times slower.
    """
    if not device.startswith("cpu"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


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
        # On CPU, throughput is flat from 8 to 32 images a batch (ViT-B-32, 1 thread:
        # 9-10 images/s), while the activations' memory and a text's wait behind the
        # batch in progress grow with it; 16 keeps both small.
        self.max_batch = max_batch or (256 if self.device.startswith("cuda") else 16)
        self.batch_wait = batch_wait
        self.threads = threads if threads is not None else default_threads(self.device)
        self.identity = ""
        self.stats = BatchStats()
        self.model = None
        self.preprocess = None  # PIL image -> normalised float tensor (open_clip's own)
        self.preprocess_levels = None  # PIL image -> uint8 tensor; the worker normalises
        self.tokenizer = None
        self.context_length = 77
        self.image_size: tuple[int, int] = (224, 224)
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.interpolation = "bicubic"
        self.resize_mode = "shortest"
        self.dtype = torch.float32
        self.short_text = False  # encode text only up to its end token (see _check_short_text)
        self._text_cache: OrderedDict[str, TextVector] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._cv = threading.Condition()
        self._texts: deque[_Job] = deque()
        self._images: deque[_Job] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ready: asyncio.Future | None = None

    @property
    def decodes_jpegs(self) -> bool:
        """Whether ``encode_jpegs`` is the fast path here (batched decode on the GPU)."""
        return self.device.startswith("cuda")

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
        # torch, open_clip and the tokenizer leave ~400k long-lived objects; a full
        # collection walks them all (200 ms on a small CPU) and, triggered by a busy
        # query's allocations, would stall the event loop that long. Freeze them once.
        gc.collect()
        gc.freeze()

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
        # torchvision 0.29 warns on every decode_jpeg call; the call is what we want.
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=".*image decoding and encoding capabilities of TorchVision")
        try:
            # A named checkpoint or a local/hub folder must bring weights: open_clip would
            # otherwise only warn and rank with a randomly initialised model.
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=self.pretrained, device=self.device,
                require_pretrained=self.pretrained is not None
                or self.model_name.startswith(("local-dir:", "hf-hub:")))
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
        self.preprocess_levels = self._levels_transform(preprocess)
        # Warm up: the first forward pass allocates and picks kernels.
        with torch.inference_mode():
            dummy = torch.zeros((1, 3, *self.image_size), device=self.device, dtype=self.dtype)
            model.encode_image(dummy)
            self.short_text = self._check_short_text()
            self._text_features(tokenizer(["warm up"]).to(self.device))
        log.info("CLIP %s loaded on %s (%s, %s threads)", self.model_name, self.device,
                 self.identity, self.threads or torch.get_num_threads())

    def _levels_transform(self, preprocess):
        """open_clip's eval transform without its last two steps (to float, normalise).

        Decoded images wait for the encoder as 8-bit levels, a quarter of the memory of
        floats, and the worker normalises a whole batch at once. Checked to give the
        very same tensor as ``preprocess``; anything else keeps the float transform.
        """
        from PIL import Image
        from torchvision.transforms import Compose, Normalize, PILToTensor

        steps = list(getattr(preprocess, "transforms", ()))
        if (len(steps) < 2 or not isinstance(steps[-1], Normalize)
                or "ToTensor" not in type(steps[-2]).__name__):
            return preprocess
        levels = Compose([*steps[:-2], PILToTensor()])
        probe = Image.merge("RGB", [Image.effect_noise((97, 61), s) for s in (24, 48, 96)])
        if not torch.equal(self._from_levels(levels(probe)[None])[0], preprocess(probe)):
            log.info("image preprocessing: float path (8-bit path differs)")
            return preprocess
        return levels

    def _from_levels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 levels to normalised floats, as ToTensor + Normalize compute them."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        return pixels.to(torch.float32).div(255).sub_(mean).div_(std)

    # -- worker thread ----------------------------------------------------------
    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        lower_priority()  # before torch starts its own threads, which inherit it
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
            try:
                if jobs[0].kind == "text":
                    results = self._forward_texts(jobs)
                else:
                    results = self._forward_images(jobs)
                error = None
            except BaseException as e:  # one bad batch fails its callers, not the worker
                log.exception("CLIP batch failed")
                results, error = [None] * len(jobs), e
            for job, result in zip(jobs, results, strict=True):
                _settle_from_thread(job, result, error)

    def _next_jobs(self) -> list[_Job] | None:
        with self._cv:
            while not (self._texts or self._images or self._closed):
                self._cv.wait()
            if self._closed:
                for job in (*self._texts, *self._images):
                    _settle_from_thread(job, None, RuntimeError("the CLIP encoder is closed"))
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

    def _decode_jpegs(self, job: _Job) -> tuple[torch.Tensor | None, list[int], list[int]]:
        """Decode and preprocess a job's JPEGs on the device: (pixels, encoded, failed)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        datas: list[bytes] = job.payload  # type: ignore[assignment]
        max_pixels = job.options.get("max_pixels", 20_000_000)
        take = [i for i, d in enumerate(datas)
                if batch_decodable(jpeg_info(d), max_pixels=max_pixels)]
        raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in take]
        decoded: list[torch.Tensor | None] = []
        try:
            if raw:
                decoded = list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:  # one bad file fails the whole call; find it
            decoded = []
            for tensor in raw:
                try:
                    decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB,
                                               device=self.device))
                except RuntimeError:
                    decoded.append(None)
        encoded = [i for i, img in zip(take, decoded, strict=True) if img is not None]
        kept = set(encoded)
        failed = [i for i in range(len(datas)) if i not in kept]
        self.stats.jpegs_decoded += len(encoded)
        self.stats.jpegs_refused += len(failed)
        if not encoded:
            return None, encoded, failed
        pixels = preprocess([img for img in decoded if img is not None], size=self.image_size,
                            mean=self.mean, std=self.std, interpolation=self.interpolation,
                            resize_mode=self.resize_mode, dtype=self.dtype)
        return pixels, encoded, failed

    def _forward_images(self, jobs: list[_Job]) -> list[tuple[object, float]]:
        parts: list[torch.Tensor] = []
        rows: list[int] = []
        decoded: dict[int, tuple[list[int], list[int], float]] = {}
        for k, job in enumerate(jobs):
            if job.kind == "jpeg":
                t0 = time.perf_counter()
                pixels, encoded, failed = self._decode_jpegs(job)
                if pixels is not None and pixels.is_cuda:
                    torch.cuda.synchronize(pixels.device)  # so the decode time is the decode's
                decoded[k] = (encoded, failed, time.perf_counter() - t0)
            else:
                pixels = job.payload  # type: ignore[assignment]
            if pixels is not None and len(pixels):
                parts.append(pixels)
            rows.append(0 if pixels is None else len(pixels))
        started = time.perf_counter()
        total = sum(rows)
        if total:
            # JPEG jobs arrive decoded on the device, pixel jobs on the host: one place first.
            batch = torch.cat([self._on_device(p) for p in parts])
            with torch.inference_mode():
                feats = self.model.encode_image(batch)
                feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            del batch, parts
            if not self.device.startswith("cuda"):
                _trim_heap()
            self.stats.batches += 1
            self.stats.images += total
            self.stats.largest_batch = max(self.stats.largest_batch, total)
            self.stats.sizes.append(total)
            metrics.ENCODER_BATCH_SIZE.observe(total)
            self.stats.order.append("image")
        else:
            feats = np.zeros((0, 0), np.float32)
        elapsed = time.perf_counter() - started
        out: list[tuple[object, float]] = []
        start = 0
        for k, (job, n) in enumerate(zip(jobs, rows, strict=True)):
            vectors = feats[start:start + n]
            start += n
            share = elapsed * n / max(total, 1)
            if job.kind == "jpeg":
                encoded, failed, decode_s = decoded[k]
                out.append((EncodedJpegs(vectors, encoded, failed, decode_s, share), share))
            else:
                out.append((vectors, share))
        return out

    def _on_device(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            pixels = self._from_levels(pixels)
        return pixels.to(self.dtype)

    def _check_short_text(self) -> bool:
        """Whether text may be encoded only up to its end token, and gives the same vector.

        CLIP's text tower is causal and pools at the end token, so the padding after
        it cannot change the result: for a five-word phrase that is a tenth of the
        work. Checked against the model's own encode_text before it is trusted.
        """
        m = self.model
        mask = getattr(m, "attn_mask", None)
        if (getattr(m, "text_pool_type", None) not in ("argmax", "eos")
                or not all(hasattr(m, a) for a in ("token_embedding", "positional_embedding",
                                                   "transformer", "ln_final",
                                                   "text_projection"))
                or not isinstance(mask, torch.Tensor) or mask.dim() != 2):
            return False
        upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
        if not (bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())):
            return False  # not causal: every token sees the padding
        tokens = self.tokenizer(["a photo of a tiger playing in the snow", "snow"]).to(self.device)
        full = torch.nn.functional.normalize(m.encode_text(tokens).float(), dim=-1)
        try:
            short = torch.nn.functional.normalize(self._short_text_features(tokens).float(),
                                                  dim=-1)
        except Exception:  # a tower laid out differently: use encode_text as it is
            log.info("text encoder: full-length path (short path failed)", exc_info=True)
            return False
        same = bool((full * short).sum(-1).min() > 0.9999)
        if not same:
            log.info("text encoder: full-length path (short path differs)")
        return same

    def _short_text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        if m.text_pool_type == "eos":
            ends = (tokens == m.text_eos_id).int().argmax(dim=-1)
        else:
            ends = tokens.argmax(dim=-1)
        length = int(ends.max()) + 1
        tokens = tokens[:, :length]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), ends]
        if m.text_projection is not None:
            x = (m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear)
                 else x @ m.text_projection)
        return x

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.short_text:
            return self._short_text_features(tokens)
        return self.model.encode_text(tokens)

    def _forward_texts(self, jobs: list[_Job]) -> list[tuple[object, float]]:
        started = time.perf_counter()
        phrases = [p for j in jobs for p in j.payload]
        tokens = self.tokenizer(phrases).to(self.device)
        with torch.inference_mode():
            feats = self._text_features(tokens)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        self.stats.texts += len(phrases)
        self.stats.order.append("text")
        elapsed = time.perf_counter() - started
        out, start = [], 0
        for job in jobs:
            out.append((feats[start:start + job.n], elapsed * job.n / len(phrases)))
            start += job.n
        return out

    def _submit(self, kind: str, payload: object, n: int, **options: object) -> asyncio.Future:
        if self._thread is None:
            raise RuntimeError("the CLIP encoder is not started")
        loop = asyncio.get_running_loop()
        job = _Job(kind, payload, n, loop, loop.create_future(), options=options)
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

    async def encode_jpegs(self, data: Sequence[bytes], *, max_pixels: int = 20_000_000
                           ) -> EncodedJpegs:
        """Decode, preprocess and encode JPEG files on the worker, in batches.

        Meant for CUDA, where decoding is one nvjpeg call; it works on CPU too. Files
        that are not plain JPEGs (CMYK, EXIF-rotated, truncated, too large, other
        formats) or that the decoder refuses are listed in ``failed``.
        """
        if not data:
            return EncodedJpegs(np.zeros((0, 0), np.float32), [], [], 0.0, 0.0)
        chunks = [list(data[i:i + self.max_batch]) for i in range(0, len(data), self.max_batch)]
        futures = [self._submit("jpeg", chunk, len(chunk), max_pixels=max_pixels)
                   for chunk in chunks]
        parts: list[EncodedJpegs] = [p[0] for p in await asyncio.gather(*futures)]
        encoded, failed, vectors = [], [], []
        for k, part in enumerate(parts):
            base = k * self.max_batch
            encoded += [base + i for i in part.encoded]
            failed += [base + i for i in part.failed]
            if len(part.vectors):
                vectors.append(part.vectors)
        return EncodedJpegs(
            np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
            encoded, failed, sum(p.decode_seconds for p in parts),
            sum(p.encode_seconds for p in parts))

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


def _settle_from_thread(job, value: object, error: BaseException | None) -> None:
    """Hand a result to its caller's loop. A caller that gave up (a search past its
    deadline, a cancelled text) may have a loop that is closed by now: nobody waits."""
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, value, error)
    except RuntimeError:  # the loop is closed
        pass


def _settle(future: asyncio.Future | None, value: object, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
