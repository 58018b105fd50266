"""What runs the two towers: torch, or ONNX Runtime on CPU, behind one small interface.

A backend takes a batch of normalised pixels (or tokens) and gives L2-normalised
float32 vectors. ``open_backend`` chooses one from ``CLIP_BACKEND`` and
``CLIP_PRECISION``: on CPU the towers are exported to ONNX once, cached under
``DATA_DIR/models/`` by the model's identity, checked against torch on a fixed
batch, and served by ONNX Runtime; a file that disagrees is refused, and torch
serves instead, with the reason in the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ModelLoadError
from .model import LoadedModel
from .text import PROBE, cut, text_module

log = logging.getLogger(__name__)

OPSET = 18
# Cosine between an exported tower's vectors and torch's on the probe batch below
# which the file is refused. fp32 must be the same function; dynamic int8 is only
# checked for sanity here (a broken file gives ~0): its ranking quality is what the
# docs/performance.md's measurement of top-10 overlap is about.
AGREEMENT = {"fp32": 0.999, "int8": 0.95}
# What ``auto`` picks on CPU: int8 through ONNX Runtime. Measured on this project's
# 2-core machine (bench/reference, docs/performance.md): int8 keeps >= 9 of the
# fp32 top 10 on the tiny model and on ViT-B-32, and is the fastest.
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
        return torch.nn.functional.normalize(self.m.encode_image(pixels).float(), dim=-1)


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


def _export(loaded: LoadedModel, folder: Path, precision: str) -> ExportedFiles:
    """Write image.onnx and text.onnx into ``folder`` (fp32, then int8 if asked)."""
    model = loaded.model
    assert model is not None
    folder.mkdir(parents=True, exist_ok=True)
    pixels, tokens = _probe(loaded)
    text, short = text_module(model, loaded.tokenizer, "cpu")
    if short:
        tokens = cut(model, tokens)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        image_fp32, text_fp32 = staging / "image.fp32.onnx", staging / "text.fp32.onnx"
        # Not under no_grad: there nn.MultiheadAttention takes its fused fast path,
        # which has no ONNX form.
        with _quiet_exporters(), torch.inference_mode(False):
            # The image tower through the TorchScript exporter: 4x faster to export than
            # the dynamo one, and its batch axis stays dynamic (checked below).
            torch.onnx.export(ImageTower(model).eval(), (pixels[:2],), str(image_fp32),
                              dynamo=False, opset_version=OPSET, input_names=["pixels"],
                              output_names=["vectors"],
                              dynamic_axes={"pixels": {0: "n"}, "vectors": {0: "n"}})
            # The text tower through the dynamo exporter: the only one that keeps the
            # sequence axis dynamic through the attention, which the short path needs.
            n = torch.export.Dim("n", min=1, max=4096)
            shapes = {0: n}
            if short:
                shapes[1] = torch.export.Dim("length", min=2, max=loaded.context_length)
            torch.onnx.export(text.eval(), (tokens,), str(text_fp32), dynamo=True,
                              opset_version=OPSET, input_names=["tokens"],
                              output_names=["vectors"], dynamic_shapes=(shapes,),
                              external_data=False, verbose=False)
        image_out, text_out = staging / "image.onnx", staging / "text.onnx"
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quiet_exporters():
                for src, dst in ((image_fp32, image_out), (text_fp32, text_out)):
                    # per channel: one scale per output row keeps ViT-B-32's top 10
                    # (9.0 of 10 against 8.5 with one scale per matrix, docs/performance.md)
                    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                                     per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])
                    src.unlink()
        else:
            image_fp32.replace(image_out)
            text_fp32.replace(text_out)
        for name in ("image.onnx", "text.onnx"):  # complete files only, never half-written
            (staging / name).replace(folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        torch._dynamo.reset()  # its caches hold the traced model, weights and all
    eos = getattr(model, "text_eos_id", None) if getattr(model, "text_pool_type", "") == "eos" \
        else None
    return ExportedFiles(folder / "image.onnx", folder / "text.onnx", precision, short, eos)


def agreement(backend: Backend, loaded: LoadedModel) -> float:
    """The smallest cosine between ``backend``'s vectors and torch fp32's on the probe."""
    model = loaded.model
    assert model is not None
    pixels, tokens = _probe(loaded)
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
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def _write_meta(folder: Path, files: ExportedFiles, loaded: LoadedModel,
                checked: str = "") -> None:
    """What the files are; ``checked``: their digest once they agreed with torch."""
    (folder / "export.txt").write_text(
        f"identity={loaded.identity}\nprecision={files.precision}\n"
        f"short_text={int(files.short_text)}\neos_id={'' if files.eos_id is None else files.eos_id}\n"
        f"image_size={loaded.image_size}\nopset={OPSET}\nchecked={checked}\n")


def from_cache(skeleton: LoadedModel, cache_dir: Path, precision: str, threads: int | None
               ) -> OnnxBackend | None:
    """ONNX Runtime on files checked against torch at an earlier start, unchanged since
    (same digest): no torch weights are loaded at all. None: the caller loads the
    weights, and ``open_backend`` checks (or exports) the files against them."""
    folder = cache_dir / cache_key(skeleton, precision)
    files = _read_meta(folder)
    checked = _facts(folder).get("checked", "")
    if files is None or files.precision != precision or not checked:
        return None
    try:
        if _digest(files) != checked:
            log.warning("CLIP %s: the ONNX files in %s changed since they were checked; "
                        "checking them again", skeleton.name, folder)
            return None
        served = OnnxBackend(files, threads)
    except Exception as e:  # unreadable: the full path checks and replaces them
        log.warning("CLIP %s: cannot load the ONNX files in %s (%s: %s)", skeleton.name,
                    folder, type(e).__name__, e)
        return None
    log.info("CLIP %s: ONNX Runtime serves (%s) the files checked at an earlier start",
             skeleton.name, precision)
    return served


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


def open_backend(loaded: LoadedModel, *, backend: str = "auto", precision: str = "auto",
                 cache_dir: Path | None = None, threads: int | None = None
                 ) -> tuple[Backend, LoadedModel]:
    """The backend that serves ``loaded``, and ``loaded`` itself, without its torch model
    when ONNX Runtime serves (so it is not held twice in memory)."""
    name, precision = choose(loaded.device, backend, precision)
    if name == "torch":
        return TorchBackend(loaded), loaded
    temporary = cache_dir is None
    root = Path(tempfile.mkdtemp(prefix="clip-onnx-")) if temporary else cache_dir
    folder = root / cache_key(loaded, precision)
    try:
        served = _onnx(loaded, folder, precision, threads)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    if served is None:
        return TorchBackend(loaded), loaded
    return served, replace(loaded, model=None)


def _onnx(loaded: LoadedModel, folder: Path, precision: str, threads: int | None
          ) -> OnnxBackend | None:
    files = _read_meta(folder)
    cached = files is not None and files.precision == precision
    if not cached:
        t0 = time.perf_counter()
        try:
            files = _export(loaded, folder, precision)
        except Exception as e:  # the exporter raises many kinds; torch still serves
            log.warning("CLIP %s: ONNX export failed (%s: %s); serving with torch",
                        loaded.name, type(e).__name__, e)
            return None
        _write_meta(folder, files, loaded)
        log.info("CLIP %s: exported to ONNX (%s) in %.1f s: %s", loaded.name, precision,
                 time.perf_counter() - t0, folder)
    assert files is not None
    try:
        served = OnnxBackend(files, threads)
        cosine = agreement(served, loaded)
    except Exception as e:  # a truncated or foreign file: ONNX Runtime cannot load it
        cosine, served = None, None
        why = f"{type(e).__name__}: {e}"
    else:
        why = f"cosine {cosine:.5f} with torch, below {AGREEMENT[precision]}"
    if served is not None and cosine is not None and cosine >= AGREEMENT[precision]:
        _write_meta(folder, files, loaded, checked=_digest(files))
        log.info("CLIP %s: ONNX Runtime serves (%s, cosine %.5f with torch)", loaded.name,
                 precision, cosine)
        return served
    log.warning("CLIP %s: refused the ONNX files in %s (%s); removed them, serving with "
                "torch; the next start exports them again", loaded.name, folder, why)
    shutil.rmtree(folder, ignore_errors=True)
    return None
