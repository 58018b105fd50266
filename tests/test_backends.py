"""ONNX Runtime on CPU: the exported towers give torch's vectors and rankings, the files are
cached by the model's identity, a file changed since its check is exported again, and int8
keeps the fp32 top 10. The tiny model loads through local-dir: as the product loads it;
``export="wait"`` makes start() return once the export child's files serve."""

import asyncio
import logging
import random
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from bench.fakes.scenes import ALL_SCENES, jpeg_bytes, render
from search.clip import ClipEncoder
from search.config import Settings
from search.decode import decode_image
from search.errors import ConfigError, ModelLoadError
from search.models import Hit
from search.ranking import rank

# Each export is a child interpreter: minutes when other jobs share the two cores.
pytestmark = pytest.mark.timeout(900)

TINY = f"local-dir:{Path(__file__).parent / 'fixtures' / 'tiny-clip'}"
HITS = [Hit(id=i, page_url="", image_url="") for i in range(200)]
PHRASES = [s.caption for s in ALL_SCENES[::9]]  # 16 phrases across colours, shapes, grounds


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """One DATA_DIR/models for the module: the first encoder exports, the others reuse."""
    return tmp_path_factory.mktemp("data") / "models"


@pytest.fixture(scope="module")
def candidates():
    """200 thumbnails of held-out scenes at assorted sizes, as JPEG bytes (ids 0..199)."""
    rng = random.Random("backends")
    out = []
    for k in range(200):
        scene = ALL_SCENES[rng.randrange(len(ALL_SCENES))]
        w, h = rng.choice([(340, 227), (227, 340), (340, 340), (340, 191)])
        out.append(jpeg_bytes(render(scene, 3_000_000 + k, w, h), rng.randint(60, 90)))
    return out


async def vectors(enc: ClipEncoder, datas: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors the CPU path gives (PIL, 8-bit levels, batches of 16), and text vectors."""
    levels = torch.stack([enc.preprocess_levels(decode_image(d, min_side=min(enc.image_size)))
                          for d in datas])
    images, _ = await enc.encode_images(levels)
    texts = np.stack([(await enc.encode_text(p)).vector for p in PHRASES])
    return images, texts


def top10(images: np.ndarray, text: np.ndarray) -> list[int]:
    return rank(HITS, images, text).ids[:10]


async def encoder(models: Path, **options) -> ClipEncoder:
    enc = ClipEncoder(TINY, None, "cpu", cache_dir=models, export="wait", **options)
    await asyncio.wait_for(enc.start(), 400)
    return enc


async def fp32_folder(models: Path) -> Path:
    """The fp32 export's folder, made by a first start unless an earlier test left one."""
    def found() -> list[Path]:
        return ([p for p in models.iterdir() if "fp32" in p.name and not p.name.startswith(".")]
                if models.exists() else [])

    if not found():
        enc = await encoder(models, backend="onnx", precision="fp32")
        await enc.close()
    folders = found()
    assert len(folders) == 1, folders  # keyed by the model's identity and the precision
    return folders[0]


async def test_onnx_fp32_gives_torchs_vectors_and_ranking_and_frees_the_torch_model(
        models, candidates):
    torch_enc = await encoder(models, backend="torch")
    onnx_enc = await encoder(models, backend="onnx", precision="fp32")
    try:
        assert (onnx_enc.backend.name, onnx_enc.backend.precision) == ("onnx", "fp32")
        assert onnx_enc.model is None  # not held twice in memory
        assert torch_enc.identity == onnx_enc.identity  # same vectors: one cache
        want_images, want_texts = await vectors(torch_enc, candidates)
        got_images, got_texts = await vectors(onnx_enc, candidates)
        assert (want_images * got_images).sum(1).min() >= 0.999
        assert (want_texts * got_texts).sum(1).min() >= 0.999
        for w, g in zip(want_texts, got_texts, strict=True):
            assert top10(got_images, g) == top10(want_images, w)
        # a phrase longer than the export's probe: the text length axis is dynamic
        long = "a photo of a small yellow star on the grass next to a river"
        w, g = await torch_enc.encode_text(long), await onnx_enc.encode_text(long)
        assert float(w.vector @ g.vector) >= 0.999 and g.truncated == w.truncated
    finally:
        await torch_enc.close()
        await onnx_enc.close()


async def test_a_later_start_loads_the_cached_files_without_exporting(models, caplog):
    folder = await fp32_folder(models)
    mtimes = {p: p.stat().st_mtime_ns for p in folder.glob("*.onnx")}
    caplog.clear()  # what the export (if this test made it) logged is not this start's
    caplog.set_level(logging.INFO, logger="search.clip")
    enc = await encoder(models, backend="onnx", precision="fp32")
    await enc.close()
    assert enc.backend.name == "onnx"
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.onnx")} == mtimes
    assert not any("exported" in r.getMessage() for r in caplog.records)
    # files checked against torch before, unchanged since: no torch weights loaded at all
    assert any("files checked at export" in r.getMessage() for r in caplog.records)


def tamper(path: Path) -> None:
    """A stale file from other weights: same graph, the largest weight matrix changed."""
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(biggest)
    biggest.CopyFrom(numpy_helper.from_array(
        np.random.default_rng(5).standard_normal(values.shape).astype(values.dtype),
        biggest.name))
    onnx.save(model, str(path))


@pytest.mark.parametrize("damage", ["other weights", "truncated"])
async def test_an_onnx_file_changed_since_its_check_is_exported_again(
        models, candidates, caplog, damage):
    folder = await fp32_folder(models)
    if damage == "other weights":
        tamper(folder / "image.onnx")
    else:
        data = (folder / "text.onnx").read_bytes()
        (folder / "text.onnx").write_bytes(data[:len(data) // 3])
    caplog.clear()
    caplog.set_level(logging.INFO, logger="search.clip")
    enc = await encoder(models, backend="onnx", precision="fp32")
    reference = await encoder(models, backend="torch")
    try:
        assert (enc.backend.name, enc.backend.precision) == ("onnx", "fp32")
        said = [r.getMessage() for r in caplog.records]
        assert any("changed since they were checked; exporting them again" in m for m in said)
        assert any("switched from torch to ONNX Runtime (fp32)" in m for m in said)
        got, _ = await vectors(enc, candidates[:8])
        want, _ = await vectors(reference, candidates[:8])
        assert (got * want).sum(1).min() >= 0.999
    finally:
        await enc.close()
        await reference.close()


async def test_int8_keeps_nine_of_the_fp32_top_ten_on_average(models, candidates):
    fp32 = await encoder(models, backend="torch")
    int8 = await encoder(models)  # auto on CPU
    try:
        assert (int8.backend.name, int8.backend.precision) == ("onnx", "int8")
        assert int8.identity != fp32.identity  # int8 vectors are cached apart
        want_images, want_texts = await vectors(fp32, candidates)
        got_images, got_texts = await vectors(int8, candidates)
        overlaps = [len(set(top10(want_images, w)) & set(top10(got_images, g)))
                    for w, g in zip(want_texts, got_texts, strict=True)]
        assert np.mean(overlaps) >= 9, overlaps
    finally:
        await fp32.close()
        await int8.close()


@pytest.mark.parametrize(("env", "needle"), [
    ({"CLIP_BACKEND": "tensorrt"}, "CLIP_BACKEND must be one of auto, torch, onnx"),
    ({"CLIP_PRECISION": "int4"}, "CLIP_PRECISION must be one of auto, fp32, fp16, int8"),
    ({"CLIP_BACKEND": "torch", "CLIP_PRECISION": "int8"}, "int8 runs on ONNX Runtime"),
])
def test_backend_settings_are_checked_with_one_sentence(env, needle):
    with pytest.raises(ConfigError, match=needle):
        Settings.from_mapping({"CLIP_MODEL": TINY, **env})


async def test_fp16_on_cpu_is_refused_at_start_with_one_sentence(models):
    with pytest.raises(ModelLoadError, match="fp16 needs CUDA"):
        await encoder(models, precision="fp16")
