"""The encoder's life cycle: loading, refusing a model without weights, and a worker that
outlives its callers, with the tiny model loaded through local-dir: as the product loads it."""

import asyncio
import logging
import shutil
from pathlib import Path

import pytest
import torch

from search.clip import ClipEncoder, load_model
from search.config import Settings
from search.errors import ModelLoadError
from search.service import SearchService
from tests.conftest import engine_env
from tests.test_cli import cli

TINY_CLIP = Path(__file__).parent / "fixtures" / "tiny-clip"


def without_weights(tmp_path: Path) -> Path:
    """A model folder as a half-finished copy leaves it: the config, no weights."""
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(TINY_CLIP / "open_clip_config.json", folder)
    return folder


async def test_a_caller_whose_event_loop_closed_does_not_stop_the_worker():
    async with ClipEncoder(f"local-dir:{TINY_CLIP}", None, "cpu", backend="torch") as enc:
        pixels = torch.zeros((1, 3, *enc.image_size))

        def submit_then_close_the_loop() -> None:
            async def submit_and_leave() -> None:
                asyncio.ensure_future(enc.encode_images(pixels))
                await asyncio.sleep(0)  # the job is queued

            with enc._cv:  # the worker takes it only once this loop has closed
                asyncio.run(submit_and_leave())

        await asyncio.to_thread(submit_then_close_the_loop)
        vector = await asyncio.wait_for(enc.encode_text("a red circle on snow"), 10)
        assert vector.vector.shape == (64,)
        vectors, _ = await asyncio.wait_for(enc.encode_images(pixels), 10)
        assert vectors.shape == (1, 64)


async def test_a_failed_load_raises_at_every_start_and_never_hands_back_a_dead_encoder(
        tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(TINY_CLIP / "open_clip_config.json", folder)
    (folder / "open_clip_model.safetensors").write_bytes(b"these are not weights")
    enc = ClipEncoder(f"local-dir:{folder}", None, "cpu", backend="torch")
    for _ in range(2):
        with pytest.raises(ModelLoadError, match="could not be loaded"):
            await asyncio.wait_for(enc.start(), 60)
    with pytest.raises(RuntimeError, match="not started"):
        await asyncio.wait_for(enc.encode_text("a red circle on snow"), 10)


async def test_a_model_folder_without_weights_is_a_start_up_error_naming_the_folder(
        tmp_path, fake_pixabay):
    folder = without_weights(tmp_path)
    settings = Settings.from_mapping(engine_env(fake_pixabay, tmp_path / "data",
                                                CLIP_MODEL=f"local-dir:{folder}"))
    with pytest.raises(ModelLoadError) as caught:
        async with SearchService.open(settings):
            pass
    assert f"no weights in the folder {folder}" in str(caught.value)
    assert fake_pixabay.api_requests == 0


async def test_the_cli_says_so_in_one_line_and_exits_2(tmp_path, fake_pixabay):
    folder = without_weights(tmp_path)
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle on snow",
                               CLIP_MODEL=f"local-dir:{folder}")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0], err


def test_only_an_explicit_request_loads_random_weights(tmp_path):
    folder = without_weights(tmp_path)
    loaded = load_model(f"local-dir:{folder}", random_weights=True)
    assert loaded.random_weights and loaded.model is not None


def test_preprocessing_comes_from_open_clips_own_config():
    import open_clip

    loaded = load_model(f"local-dir:{TINY_CLIP}")
    cfg = open_clip.get_model_preprocess_cfg(loaded.model)
    size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"],) * 2
    assert loaded.image_size == tuple(size)
    assert (loaded.mean, loaded.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    assert (loaded.interpolation, loaded.resize_mode) == (cfg["interpolation"],
                                                          cfg["resize_mode"])


async def test_onnx_runtime_refuses_a_folder_without_weights_too(tmp_path, fake_pixabay):
    # ONNX Runtime builds the architecture quietly first; the weights are still required.
    folder = without_weights(tmp_path)
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle on snow",
                               CLIP_MODEL=f"local-dir:{folder}", CLIP_BACKEND="onnx")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"no weights in the folder {folder}" in lines[0], err
    assert fake_pixabay.api_requests == 0


def test_only_an_architecture_without_weights_is_quiet_random_weights_still_warn(
        tmp_path, caplog):
    folder = without_weights(tmp_path)
    caplog.set_level(logging.WARNING)
    filters = list(logging.getLogger().filters)
    load_model(f"local-dir:{folder}", None, "cpu", weights=False)  # what ONNX Runtime asks
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    assert logging.getLogger().filters == filters  # the quiet ends with the call
    load_model(f"local-dir:{folder}", None, "cpu", random_weights=True)  # the bench's
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]
