"""What runs the two towers: torch, or ONNX Runtime on CPU, behind one small interface.

A backend takes a batch of normalised pixels (or tokens) and gives L2-normalised
float32 vectors. ``choose`` resolves ``CLIP_BACKEND`` and ``CLIP_PRECISION``. On CPU the
towers are exported to ONNX (``search.clip.export``, in a child process), checked
against torch on a fixed batch and, for int8, on the bundled probe photographs
(``search.clip.quality``), and published under ``MODELS/<model>-<precision>-<digest>/``
with their digest; ``from_cache`` serves files whose digest still matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ModelLoadError
from .model import LoadedModel
from .text import PROBE, cut, text_module

log = logging.getLogger(__name__)

OPSET = 18
# Cosine between an exported tower's vectors and torch's on the probe batch below
# which the file is refused. fp32 must be the same function; for dynamic int8 this is
# a sanity bound (a broken file gives ~0): its ranking is judged on the probe
# photographs (``search.clip.quality``).
AGREEMENT = {"fp32": 0.999, "int8": 0.95}
# What ``auto`` asks for on CPU: int8 through ONNX Runtime, the fastest (bench/reference);
# each export keeps it only if it ranks the probe photographs as fp32 does.
AUTO_CPU_PRECISION = "int8"


class Backend(Protocol):
    name: str  # "torch" | "onnx"
    precision: str  # "fp32" | "fp16" | "int8"
    input_dtype: torch.dtype  # what encode_image wants its pixels as
    short_text: bool  # whether tokens are cut after the end token first

    def encode_image(self, pixels: torch.Tensor) -> np.ndarray: ...

    def encode_text(self, tokens: torch.Tensor) -> np.ndarray: ...


class ImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m: Any = self.m  # open_clip's CLIP: its attributes are not typed
        return torch.nn.functional.normalize(m.encode_image(pixels).float(), dim=-1)


class TorchBackend:
    name = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        assert loaded.model is not None
        self.precision = "fp16" if loaded.dtype == torch.float16 else "fp32"
        self.input_dtype = loaded.dtype
        self.image = ImageTower(loaded.model).eval()
        self.text, self.short_text = text_module(loaded.model, loaded.tokenizer, loaded.device)
        self._model = loaded.model

    def encode_image(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.image(pixels).cpu().numpy()

    def encode_text(self, tokens: torch.Tensor) -> np.ndarray:
        if self.short_text:
            tokens = cut(self._model, tokens)
        with torch.inference_mode():
            return self.text(tokens).cpu().numpy()


class OnnxBackend:
    """Both towers on ONNX Runtime's CPU provider, ``threads`` intra-op threads each."""

    name = "onnx"
    input_dtype = torch.float32

    def __init__(self, files: ExportedFiles, threads: int | None) -> None:
        import onnxruntime as ort

        self.precision = files.precision
        self.short_text = files.short_text
        self._eos_argmax = files.eos_id  # None: the end token is the largest id
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads keep a core busy between calls: on a small shared host
        # that core belongs to the decode threads and the event loop.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # Without the arena a batch's activations go back to the heap (and to the OS
        # with the heap trim after each batch): ~75 MB less resident for ViT-B-32.
        options.enable_cpu_mem_arena = False
        providers = ["CPUExecutionProvider"]
        self.image = ort.InferenceSession(str(files.image), options, providers=providers)
        self.text = ort.InferenceSession(str(files.text), options, providers=providers)

    def encode_image(self, pixels: torch.Tensor) -> np.ndarray:
        x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.image.run(None, {"pixels": x})[0]

    def encode_text(self, tokens: torch.Tensor) -> np.ndarray:
        tokens = tokens.to("cpu")
        if self.short_text:
            ends = ((tokens == self._eos_argmax).int().argmax(-1) if self._eos_argmax is not None
                    else tokens.argmax(-1))
            tokens = tokens[:, :int(ends.max()) + 1]
        return self.text.run(None, {"tokens": tokens.to(torch.int64).numpy()})[0]


@dataclass(frozen=True)
class ExportedFiles:
    image: Path
    text: Path
    precision: str
    short_text: bool
    eos_id: int | None


class _OnlyErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters and the quantiser print progress, notes and a line per tensor (on
    stdout and the root logger); none of it is for our users, and the CLI's stdout is
    its JSON. Errors still pass."""
    quiet = _OnlyErrors()
    root = logging.getLogger()  # the quantiser logs there; a filter spares child loggers
    root.addFilter(quiet)
    named = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx",
                                            "torch.export", "torch._dynamo")]
    levels = [logger.level for logger in named]
    for logger in named:  # a level, unlike a filter, holds for their child loggers too
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(quiet)
        for logger, level in zip(named, levels, strict=True):
            logger.setLevel(level)


def cache_key(loaded: LoadedModel, precision: str, opset: int = OPSET) -> str:
    """The cache folder's name: the model's identity, image size, opset and precision."""
    facts = f"{loaded.identity}|{loaded.image_size}|opset{opset}|{precision}|torch{torch.__version__}"
    digest = hashlib.sha256(facts.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", loaded.name.split("/")[-1])[:40].strip("-")
    return f"{name}-{precision}-{digest}"


def _probe(loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch: pixels in the range normalised photos take, and a few phrases."""
    g = torch.Generator().manual_seed(11)
    pixels = torch.rand((4, 3, *loaded.image_size), generator=g)
    mean = torch.tensor(loaded.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.std).view(1, -1, 1, 1)
    tokens = loaded.tokenizer([*PROBE, "a red circle on snow", "two dogs"])
    return (pixels - mean) / std, tokens


def export_towers(loaded: LoadedModel, staging: Path,
                  on_tower: Callable[[str], None] | None = None) -> ExportedFiles:
    """Write the fp32 image.onnx and text.onnx into ``staging``."""
    model = loaded.model
    assert model is not None
    staging.mkdir(parents=True, exist_ok=True)
    pixels, tokens = _probe(loaded)
    text, short = text_module(model, loaded.tokenizer, "cpu")
    if short:
        tokens = cut(model, tokens)
    image_out, text_out = staging / "image.onnx", staging / "text.onnx"
    try:
        # Not under no_grad: there nn.MultiheadAttention takes its fused fast path,
        # which has no ONNX form.
        with _quiet_exporters(), torch.inference_mode(False):
            # The image tower through the TorchScript exporter: 4x faster to export than
            # the dynamo one, and its batch axis stays dynamic (checked below).
            torch.onnx.export(ImageTower(model).eval(), (pixels[:2],), str(image_out),
                              dynamo=False, opset_version=OPSET, input_names=["pixels"],
                              output_names=["vectors"], do_constant_folding=True,
                              dynamic_axes={"pixels": {0: "n"}, "vectors": {0: "n"}})
            if on_tower:
                on_tower("image")
            # The text tower through the dynamo exporter: the only one that keeps the
            # sequence axis dynamic through the attention, which the short path needs.
            n = torch.export.Dim("n", min=1, max=4096)
            shapes = {0: n}
            if short:
                shapes[1] = torch.export.Dim("length", min=2, max=loaded.context_length)
            torch.onnx.export(text.eval(), (tokens,), str(text_out), dynamo=True,
                              opset_version=OPSET, input_names=["tokens"],
                              output_names=["vectors"], dynamic_shapes=(shapes,),
                              external_data=False, verbose=False)
            if on_tower:
                on_tower("text")
    finally:
        torch._dynamo.reset()  # its caches hold the traced model, weights and all
    return ExportedFiles(image_out, text_out, "fp32", short, _eos(model))


def _eos(model: torch.nn.Module) -> int | None:
    if getattr(model, "text_pool_type", "") == "eos":
        return getattr(model, "text_eos_id", None)
    return None


def quantise(fp32: ExportedFiles, folder: Path) -> ExportedFiles:
    """Dynamic int8 copies of the fp32 files, quantised from the files on disk."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True, exist_ok=True)
    out = replace(fp32, image=folder / "image.onnx", text=folder / "text.onnx", precision="int8")
    with _quiet_exporters():
        for src, dst in ((fp32.image, out.image), (fp32.text, out.text)):
            # per channel: one scale per output row keeps ViT-B-32's top 10
            # (9.0 of 10 against 8.5 with one scale per matrix, docs/performance.md)
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])
    return out


@dataclass(frozen=True)
class Probe:
    """What an export is checked on: a fixed random batch (cosine with torch) and the
    bundled photographs with their phrases (the ranking, ``quality``)."""

    pixels: torch.Tensor
    tokens: torch.Tensor
    photos: torch.Tensor
    phrases: list[torch.Tensor]

    @classmethod
    def of(cls, loaded: LoadedModel) -> Probe:
        from PIL import Image

        from .quality import probe_set

        pixels, tokens = _probe(loaded)
        paths, phrases = probe_set()
        photos = []
        for path in paths:
            with Image.open(path) as im:
                photos.append(loaded.preprocess(im.convert("RGB")))
        return cls(pixels, tokens, torch.stack(photos), [loaded.tokenizer([p]) for p in phrases])

    def _scores(self, backend: Backend) -> np.ndarray:
        images = backend.encode_image(self.photos)
        texts = np.concatenate([backend.encode_text(t) for t in self.phrases])
        return texts @ images.T

    def torch_scores(self, loaded: LoadedModel) -> np.ndarray:
        return self._scores(TorchBackend(loaded))

    def check(self, loaded: LoadedModel, files: ExportedFiles) -> tuple[float, np.ndarray]:
        """The smallest cosine with torch fp32 on the random batch, and the photographs'
        scores (phrases x photographs), from ONNX Runtime on ``files``."""
        served = OnnxBackend(files, None)
        return agreement(served, loaded, (self.pixels, self.tokens)), self._scores(served)


def agreement(backend: Backend, loaded: LoadedModel,
              probe: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """The smallest cosine between ``backend``'s vectors and torch fp32's on the probe."""
    model = loaded.model
    assert model is not None
    pixels, tokens = probe or _probe(loaded)
    with torch.inference_mode():
        want_image = ImageTower(model)(pixels.to(loaded.device, loaded.dtype)).cpu().numpy()
        want_text = text_module(model, loaded.tokenizer, loaded.device)[0](
            tokens.to(loaded.device)).cpu().numpy()
    got_image = backend.encode_image(pixels)
    # one phrase at a time: each is cut to its own length, as a query's phrase is
    got_text = np.concatenate([backend.encode_text(tokens[i:i + 1]) for i in range(len(tokens))])
    return float(min((want_image * got_image).sum(-1).min(),
                     (want_text * got_text).sum(-1).min()))


def _facts(folder: Path) -> dict[str, str]:
    meta = folder / "export.txt"
    try:
        return dict(line.split("=", 1) for line in meta.read_text().splitlines() if "=" in line)
    except OSError:
        return {}


def _read_meta(folder: Path) -> ExportedFiles | None:
    facts = _facts(folder)
    if not (facts and (folder / "image.onnx").is_file() and (folder / "text.onnx").is_file()):
        return None
    eos = facts.get("eos_id", "")
    return ExportedFiles(folder / "image.onnx", folder / "text.onnx", facts.get("precision", ""),
                         facts.get("short_text") == "1", int(eos) if eos.isdigit() else None)


def _digest(files: ExportedFiles) -> str:
    digest = hashlib.sha256()
    for path in (files.image, files.text):
        whole = hashlib.sha256()  # hashlib.file_digest is Python 3.11+
        with path.open("rb") as f:
            for block in iter(partial(f.read, 1 << 20), b""):
                whole.update(block)
        digest.update(whole.digest())
    return digest.hexdigest()


def _meta_text(facts: dict[str, str]) -> str:
    return "".join(f"{k}={' '.join(str(v).split())}\n" for k, v in facts.items())


def _publish_folder(staged: Path, folder: Path) -> None:
    """Swap a complete folder in: readers see the old one or the new one, never half."""
    old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
    if folder.exists():
        folder.replace(old)
    staged.replace(folder)
    shutil.rmtree(old, ignore_errors=True)


def publish(loaded: LoadedModel, root: Path, files: ExportedFiles, precision: str, *,
            extra: dict[str, str] | None = None) -> Path:
    """Move checked files into their cache folder, with what they are and their digest."""
    folder = root / cache_key(loaded, precision)
    staged = files.image.parent / f"publish-{precision}"
    staged.mkdir()
    files.image.replace(staged / "image.onnx")
    files.text.replace(staged / "text.onnx")
    moved = replace(files, image=staged / "image.onnx", text=staged / "text.onnx")
    facts = {"identity": loaded.identity, "precision": precision,
             "short_text": str(int(files.short_text)),
             "eos_id": "" if files.eos_id is None else str(files.eos_id),
             "image_size": str(loaded.image_size), "opset": str(OPSET),
             **(extra or {}), "checked": _digest(moved)}
    (staged / "export.txt").write_text(_meta_text(facts))
    _publish_folder(staged, folder)
    return folder


def refuse_int8(loaded: LoadedModel, root: Path, why: str, extra: dict[str, str]) -> None:
    """The int8 folder says int8 was refused, why, and that the fp32 folder serves."""
    folder = root / cache_key(loaded, "int8")
    staged = Path(tempfile.mkdtemp(prefix=".export-refused-", dir=root))
    facts = {"identity": loaded.identity, "precision": "int8", **extra, "int8_kept": "0",
             "int8_why": why, "serve": cache_key(loaded, "fp32")}
    (staged / "export.txt").write_text(_meta_text(facts))
    _publish_folder(staged, folder)


def record_failure(skeleton: LoadedModel, root: Path, precision: str, why: str) -> None:
    """Remember a failed export, so later starts serve torch without trying again until
    someone asks (``python -m search.export``)."""
    folder = root / cache_key(skeleton, precision)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "export.txt").write_text(_meta_text(
        {"identity": skeleton.identity, "precision": precision, "failed": why,
         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))


def failure(skeleton: LoadedModel, root: Path, precision: str) -> str | None:
    """Why the export failed at an earlier start, or None."""
    return _facts(root / cache_key(skeleton, precision)).get("failed") or None


def forget_failure(skeleton: LoadedModel, root: Path, precision: str) -> None:
    folder = root / cache_key(skeleton, precision)
    if _facts(folder).get("failed"):
        shutil.rmtree(folder, ignore_errors=True)


def published(skeleton: LoadedModel, root: Path, precision: str
              ) -> tuple[str, Path, str] | None:
    """(precision that serves, its folder, why not the asked one) if checked files exist."""
    folder = root / cache_key(skeleton, precision)
    facts = _facts(folder)
    if precision == "int8" and facts.get("int8_kept") == "0" and facts.get("serve"):
        target = root / facts["serve"]
        if _facts(target).get("checked") and _read_meta(target) is not None:
            return "fp32", target, facts.get("int8_why", "")
        return None
    if facts.get("checked") and _read_meta(folder) is not None:
        return precision, folder, ""
    return None


@dataclass(frozen=True)
class Cached:
    backend: OnnxBackend
    note: str  # why the asked precision does not serve; "" when it does
    facts: dict[str, str]


def from_cache(skeleton: LoadedModel, cache_dir: Path, precision: str, threads: int | None
               ) -> Cached | None:
    """ONNX Runtime on files checked against torch when they were exported, unchanged
    since (same digest): no torch weights are loaded at all. None: none are ready."""
    found = published(skeleton, cache_dir, precision)
    if found is None:
        return None
    serves, folder, note = found
    files = _read_meta(folder)
    facts = _facts(folder)
    if files is None or files.precision != serves:
        return None
    try:
        if _digest(files) != facts.get("checked"):
            log.warning("CLIP %s: the ONNX files in %s changed since they were checked; "
                        "exporting them again", skeleton.name, folder)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        served = OnnxBackend(files, threads)
    except Exception as e:  # unreadable: exported again
        log.warning("CLIP %s: cannot load the ONNX files in %s (%s: %s); exporting them "
                    "again", skeleton.name, folder, type(e).__name__, e)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if note:
        note = f"int8 was refused at export ({note}); fp32 ONNX serves"
        facts = {**_facts(cache_dir / cache_key(skeleton, precision)), **facts}
    return Cached(served, note, facts)


def choose(device: str, backend: str, precision: str) -> tuple[str, str]:
    """The backend and precision that ``auto`` means here; a clear sentence if impossible."""
    cuda = device.startswith("cuda")
    if cuda:
        if backend == "onnx":
            raise ModelLoadError("CLIP_BACKEND=onnx serves on CPU only; use auto or torch "
                                 "with CLIP_DEVICE=cuda.")
        if precision == "int8":
            raise ModelLoadError("CLIP_PRECISION=int8 is for the CPU (ONNX Runtime); use "
                                 "auto, fp16 or fp32 on CUDA.")
        return "torch", "fp16" if precision in ("auto", "fp16") else "fp32"
    if precision == "fp16":
        raise ModelLoadError("CLIP_PRECISION=fp16 needs CUDA; on CPU use auto, fp32 or int8.")
    if backend == "auto":
        backend = "onnx" if _onnxruntime_available() else "torch"
    if backend == "torch":
        if precision == "int8":
            raise ModelLoadError("CLIP_PRECISION=int8 runs on ONNX Runtime; set CLIP_BACKEND "
                                 "to auto or onnx.")
        return "torch", "fp32"
    return "onnx", AUTO_CPU_PRECISION if precision == "auto" else precision


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
