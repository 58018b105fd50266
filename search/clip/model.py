"""Loading an OpenCLIP model: ``load_model()`` returns a frozen ``LoadedModel``.

The preprocessing facts (size, mean, std, interpolation, resize mode) come from
open_clip's own ``get_model_preprocess_cfg``, so a model with its own config is
served as it was trained. A model that loaded no weights is refused: its rankings
would be noise. Only the benchmark asks for random weights, explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    pretrained: str | None
    identity: str  # changes whenever the weights do: keys the caches
    device: str
    dtype: torch.dtype
    model: torch.nn.Module | None  # None once another backend serves and torch's copy is freed
    tokenizer: Callable
    preprocess: Callable  # PIL image -> normalised float tensor (open_clip's own)
    preprocess_levels: Callable  # PIL image -> uint8 levels; the worker normalises
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    resize_mode: str
    context_length: int
    random_weights: bool = False


def resolve_device(device: str) -> str:
    """``auto`` made concrete; ConfigError when CLIP_DEVICE names a GPU torch cannot see."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device[5:]) if device.startswith("cuda:") else 0
        if index >= count:
            seen = ("no CUDA GPU (no driver, or a CPU-only torch)" if count == 0
                    else f"only cuda:0 to cuda:{count - 1}")
            raise ConfigError(f"CLIP_DEVICE={device}, but torch sees {seen} here; use "
                              "CLIP_DEVICE=auto or cpu.")
    return device


def default_threads(device: str) -> int | None:
    """Intra-op threads for the encoder: on CPU, leave a core to decoding and the loop.

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
                with path.open("rb") as f:
                    for block in iter(partial(f.read, 1 << 20), b""):
                        digest.update(block)
        return f"local-dir:{folder.name}@{digest.hexdigest()[:16]}"
    if pretrained and Path(pretrained).is_file():
        stat = Path(pretrained).stat()
        return f"{model_name}/{Path(pretrained).name}@{stat.st_size}-{int(stat.st_mtime)}"
    return f"{model_name}/{pretrained or ''}"


def _where(model_name: str, pretrained: str | None) -> str:
    """The folder or tag a user would look at when weights are missing."""
    if model_name.startswith("local-dir:"):
        return f"the folder {model_name[len('local-dir:'):]}"
    if model_name.startswith("hf-hub:"):
        return f"the hub repository {model_name[len('hf-hub:'):]}"
    return f"CLIP_PRETRAINED '{pretrained}'" if pretrained else "no CLIP_PRETRAINED tag"


def identity(model_name: str, pretrained: str | None, random_weights: bool = False) -> str:
    if model_name.startswith(("local-dir:", "hf-hub:")) or random_weights:
        pretrained = None
    if random_weights:
        return f"{model_name}/random-seed0"
    return model_identity(model_name, pretrained)


def _not_random_init(record: logging.LogRecord) -> bool:
    """False for open_clip's warning that a model was built with no weights (it logs on
    the root logger)."""
    return not ("open_clip" in record.pathname and record.levelno == logging.WARNING
                and "initialized randomly" in record.getMessage())


@contextlib.contextmanager
def _architecture_only() -> Iterator[None]:
    """Building the architecture alone is what was asked: open_clip's "Model initialized
    randomly" would tell an operator the install is broken, while a backend with its own
    checked weights serves. A model that should have weights and has none still raises."""
    root = logging.getLogger()
    root.addFilter(_not_random_init)
    try:
        yield
    finally:
        root.removeFilter(_not_random_init)


def load_model(model_name: str, pretrained: str | None = None, device: str = "cpu", *,
               random_weights: bool = False, weights: bool = True) -> LoadedModel:
    """Create the model, its tokenizer and its eval transforms; fp16 on CUDA.

    ``random_weights``: for the benchmark only (speed does not depend on weights);
    otherwise a model for which open_clip found no weights raises ``ModelLoadError``.
    ``weights=False``: the architecture only, on the meta device (no memory, no time),
    with ``model`` None: for a backend that brings its own weights (cached ONNX files).
    """
    import open_clip  # deferred: a heavy import, needed only where the model loads
    from open_clip.transform import PreprocessCfg, image_transform_v2

    if model_name.startswith(("local-dir:", "hf-hub:")):
        pretrained = None  # open_clip ignores it with a schema; so do our keys
    if random_weights:
        pretrained = None
        torch.manual_seed(0)  # the same random weights at every load: backends compare alike
    try:
        if weights:
            model = open_clip.create_model(model_name, pretrained=pretrained, device=device,
                                           require_pretrained=not random_weights)
        else:
            with torch.device("meta"), _architecture_only():
                model = open_clip.create_model(model_name, pretrained=pretrained,
                                               device="meta", load_weights=False)
        tokenizer = open_clip.get_tokenizer(model_name)
    except RuntimeError as e:
        if "could not be loaded" in str(e) and not random_weights:
            raise ModelLoadError(
                f"The CLIP model '{model_name}' has no weights in "
                f"{_where(model_name, pretrained)}; without them every ranking is noise. "
                "Put open_clip_model.safetensors there or choose a pretrained tag.") from e
        raise ModelLoadError(f"The CLIP model '{model_name}' could not be loaded: {e}") from e
    except Exception as e:  # open_clip raises many kinds; all mean "cannot load"
        raise ModelLoadError(f"The CLIP model '{model_name}' could not be loaded: {e}") from e
    model.eval()
    dtype = torch.float32
    if device.startswith("cuda") and weights:
        model = model.half()
        dtype = torch.float16
    cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    preprocess = image_transform_v2(cfg, is_train=False)
    size = cfg.size if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
    context_length: Any = (getattr(tokenizer, "context_length", None)
                           or getattr(model, "context_length", 77))
    loaded = LoadedModel(
        name=model_name, pretrained=pretrained,
        identity=identity(model_name, pretrained, random_weights), device=device, dtype=dtype,
        model=model if weights else None, tokenizer=tokenizer, preprocess=preprocess, preprocess_levels=preprocess,
        image_size=(int(size[0]), int(size[1])), mean=tuple(cfg.mean), std=tuple(cfg.std),
        interpolation=cfg.interpolation, resize_mode=cfg.resize_mode,
        context_length=int(context_length), random_weights=random_weights)
    return replace(loaded, preprocess_levels=levels_transform(loaded))


def from_levels(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
                ) -> torch.Tensor:
    """uint8 levels to normalised floats, as ToTensor + Normalize compute them."""
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    return pixels.to(torch.float32).div(255).sub_(m).div_(s)


def levels_transform(loaded: LoadedModel) -> Callable:
    """open_clip's eval transform without its last two steps (to float, normalise).

    Decoded images wait for the encoder as 8-bit levels, a quarter of the memory of
    floats, and the worker normalises a whole batch at once. Checked to give the
    very same tensor as ``preprocess``; anything else keeps the float transform.
    """
    from PIL import Image
    from torchvision.transforms import Compose, Normalize, PILToTensor

    preprocess = loaded.preprocess
    steps = list(getattr(preprocess, "transforms", ()))
    if (len(steps) < 2 or not isinstance(steps[-1], Normalize)
            or "ToTensor" not in type(steps[-2]).__name__):
        return preprocess
    levels = Compose([*steps[:-2], PILToTensor()])
    probe = Image.merge("RGB", [Image.effect_noise((97, 61), s) for s in (24, 48, 96)])
    if not torch.equal(from_levels(levels(probe)[None], loaded.mean, loaded.std)[0],
                       preprocess(probe)):
        log.info("image preprocessing: float path (8-bit path differs)")
        return preprocess
    return levels
