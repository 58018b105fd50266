"""A first start on a small host: torch serves at once while the ONNX export runs in a child
process beside it; the switch waits for a moment no search holds; an export that fails or
is killed leaves torch serving, says so, and is tried again only when asked
(``python -m search.export``); a killed export's staging folders go at the next start.
The tiny model loads through local-dir: and the export child is the real one."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from search.clip import ClipEncoder
from tests.conftest import TINY_CLIP

# Each export is a child interpreter: minutes when other jobs share the two cores.
pytestmark = pytest.mark.timeout(900)

TINY = f"local-dir:{TINY_CLIP}"
EXPORT_TIMEOUT = 800.0  # a whole export of the tiny model, on a 2-core host at load 15


async def until(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` (an event another process causes) until true, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def process_state(pid: int) -> str:
    """R, S, D, T (stopped), Z: the third field of /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]


async def test_first_start_serves_with_torch_at_once_and_switches_once_no_search_holds_it(
        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="search.clip")
    models = tmp_path / "models"
    enc = ClipEncoder(TINY, None, "cpu", cache_dir=models)  # export="beside", the default
    try:
        await asyncio.wait_for(enc.start(), 300)
        assert (enc.backend.name, enc.backend.precision) == ("torch", "fp32")
        assert enc.exporting and "torch serves while the ONNX export runs" in enc.note
        # a search that holds the encoder keeps torch, even once the files are ready
        with enc.held():
            child = enc._child
            before = (await enc.encode_text("a red circle")).vector
            # the export was stopped while that batch ran, and goes on now the encoder idles
            assert child is not None and child.paused_seconds > 0 and not child.paused
            assert process_state(child.process.pid) != "T"  # not stopped
            await until(lambda: not enc.exporting, EXPORT_TIMEOUT, "the export to finish")
            await until(lambda: enc._swap_ready, 30, "the worker to see the files")
            again = await enc.encode_text("a blue square")
            assert enc.backend.name == "torch"
            assert again.vector.shape == before.shape
        await until(lambda: enc.backend.name == "onnx", 60, "the switch to ONNX Runtime")
        assert enc.backend.precision == "int8" and enc.model is None  # torch's copy freed
        assert enc.note == ""
        after = await enc.encode_text("a red circle")  # the text cache was torch's: emptied
        assert float(after.vector @ before) > 0.95 and not (after.vector == before).all()
    finally:
        await enc.close()
    said = messages(caplog)
    steps = [m for m in said if ": ONNX export " in m and "/5:" in m]
    assert [m.split("ONNX export ")[1][:3] for m in steps] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert any("switched from torch to ONNX Runtime (int8) between batches" in m for m in said)
    # the next start serves the checked files without loading torch weights
    caplog.clear()
    enc = ClipEncoder(TINY, None, "cpu", cache_dir=models)
    try:
        await asyncio.wait_for(enc.start(), 300)
        assert (enc.backend.name, enc.backend.precision) == ("onnx", "int8")
        assert not enc.exporting
    finally:
        await enc.close()
    assert any("files checked at export" in m for m in messages(caplog))


async def test_an_export_killed_by_a_signal_leaves_torch_serving_and_is_not_retried(
        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="search.clip")
    models = tmp_path / "models"
    enc = ClipEncoder(TINY, None, "cpu", cache_dir=models)
    try:
        await asyncio.wait_for(enc.start(), 300)
        assert enc.exporting
        staging_seen = []

        def staging() -> bool:
            staging_seen.extend(models.glob(".export-*"))
            return bool(staging_seen)

        await until(staging, 120, "the export's staging folder")
        os.kill(enc._child.process.pid, signal.SIGKILL)  # what the OOM killer sends
        await until(lambda: "failed" in enc.note, 30, "the encoder to notice")
        assert enc.backend.name == "torch"
        assert (await enc.encode_text("still serving")).vector.shape[0] > 0
    finally:
        await enc.close()
    (line,) = [m for m in messages(caplog) if "the ONNX export failed" in m]
    assert "killed by SIGKILL" in line and "torch serves" in line
    assert "python -m search.export" in line
    assert any(p.exists() for p in staging_seen)  # a killed export leaves its staging ...
    caplog.clear()
    enc = ClipEncoder(TINY, None, "cpu", cache_dir=models)
    try:
        await asyncio.wait_for(enc.start(), 300)
        assert enc.backend.name == "torch" and not enc.exporting  # ... not retried
        assert "failed at an earlier start (the export process was killed by SIGKILL" in enc.note
    finally:
        await enc.close()
    assert not list(models.glob(".export-*"))  # ... and the next start removed it
    said = messages(caplog)
    assert any("removed 1 staging folder(s) left by an interrupted ONNX export" in m
               for m in said)
    assert any("the ONNX export failed at an earlier start" in m for m in said)


async def test_a_start_without_the_memory_an_export_needs_serves_torch_and_says_why(
        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="search.clip")
    models = tmp_path / "models"
    enc = ClipEncoder(TINY, None, "cpu", cache_dir=models, export_memory_mb=500)
    try:
        await asyncio.wait_for(enc.start(), 300)
        assert enc.backend.name == "torch" and not enc.exporting
    finally:
        await enc.close()
    (line,) = [m for m in messages(caplog) if "the ONNX export was not started" in m]
    assert "it needs about 11" in line and "its ceiling is 500 MB" in line
    assert line.endswith("torch serves. Run `python -m search.export` (make model) to try again")
    enc = ClipEncoder(TINY, None, "cpu", cache_dir=models)  # no ceiling now: still not retried
    try:
        await asyncio.wait_for(enc.start(), 300)
        assert enc.backend.name == "torch" and not enc.exporting
        assert enc.note.startswith("the ONNX export failed at an earlier start (it needs about")
    finally:
        await enc.close()


async def test_export_cli_writes_model_cache_dir_and_a_start_serves_from_it(tmp_path):
    cache = tmp_path / "shared-models"
    env = {"PATH": "/usr/bin:/bin", "CLIP_MODEL": TINY, "CLIP_DEVICE": "cpu",
           "DATA_DIR": str(tmp_path / "data"), "MODEL_CACHE_DIR": str(cache)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search.export", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), EXPORT_TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith(f"int8 ONNX files in {cache}/tiny-clip-int8-")
    progress = [line for line in err.decode().splitlines() if line.startswith("ONNX export ")]
    assert progress[0] == "ONNX export 1/5: weights loaded" and progress[-1].startswith(
        "ONNX export 5/5: checked: int8 serves (top-1 ")
    assert not (tmp_path / "data" / "models").exists()
    from search.config import Settings
    from search.service import load_encoder

    settings = Settings.from_mapping(env)
    enc = await load_encoder(settings)
    try:
        assert (enc.backend.name, enc.backend.precision) == ("onnx", "int8")
        assert not enc.exporting
    finally:
        await enc.close()


async def test_export_cli_tries_again_after_a_failure_a_start_recorded(tmp_path):
    from search.clip.backends import failure, record_failure
    from search.clip.model import load_model

    cache = tmp_path / "models"
    skeleton = load_model(TINY, None, "cpu", weights=False)
    record_failure(skeleton, cache, "fp32", "the export process was killed by SIGKILL")
    env = {"PATH": "/usr/bin:/bin", "CLIP_MODEL": TINY, "CLIP_DEVICE": "cpu",
           "CLIP_PRECISION": "fp32", "MODEL_CACHE_DIR": str(cache)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search.export", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), EXPORT_TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert "an earlier export failed (the export process was killed by SIGKILL); trying again" \
        in err.decode()
    assert failure(skeleton, cache, "fp32") is None
    assert out.decode().startswith("fp32 ONNX files in ")


async def test_leftover_staging_folders_go_at_the_next_start_but_a_live_exports_stays(
        tmp_path):
    models = tmp_path / "models"
    old = models / ".export-k1ll3d"  # what main's exporter left after SIGTERM: no lock file
    old.mkdir(parents=True)
    (old / "image.fp32.onnx").write_bytes(b"\0" * 1000)
    dead = models / ".export-d34d"  # a lock file nobody holds
    dead.mkdir()
    (dead / ".lock").touch()
    live = models / ".export-l1v3"  # another process's export, writing now
    live.mkdir()
    held = (live / ".lock").open("a")
    fcntl.flock(held, fcntl.LOCK_EX)
    nested = models / "tiny-clip-int8-0123456789abcdef" / ".export-abc"  # main's layout
    nested.mkdir(parents=True)
    try:
        enc = ClipEncoder(TINY, None, "cpu", cache_dir=models, export="off")
        await asyncio.wait_for(enc.start(), 300)
        await enc.close()
        assert not old.exists() and not dead.exists() and not nested.exists()
        assert live.exists()
    finally:
        held.close()


@pytest.mark.parametrize("mode", ["off"])
async def test_check_mode_reports_that_no_onnx_files_exist_yet(tmp_path, mode):
    enc = ClipEncoder(TINY, None, "cpu", cache_dir=tmp_path / "models", export=mode)
    try:
        await asyncio.wait_for(enc.start(), 300)
        assert enc.backend.name == "torch" and not enc.exporting
        assert enc.note.startswith("no ONNX files exported yet; torch serves")
    finally:
        await enc.close()
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("*/"))


def test_export_memory_setting_is_read(tmp_path):
    from search.config import Settings

    s = Settings.from_mapping({"DATA_DIR": str(tmp_path), "MODEL_CACHE_DIR": str(tmp_path / "m")})
    assert s.models_dir == tmp_path / "m"
    assert Settings.from_mapping({"DATA_DIR": str(tmp_path)}).models_dir == tmp_path / "models"
    assert Path(s.models_dir).name == "m"


async def test_check_says_a_failed_export_left_torch_serving(fake_discord, fake_pixabay,
                                                             tmp_path):
    from search.clip.backends import record_failure
    from search.clip.model import load_model
    from tests.conftest import bot_env
    from tests.test_check import rows, run_bot

    models = tmp_path / "data" / "models"
    record_failure(load_model(TINY, None, "cpu", weights=False), models, "int8",
                   "the export process was killed by SIGKILL")
    env = bot_env(fake_discord, fake_pixabay, tmp_path / "data", CLIP_BACKEND="auto")
    code, out, err = await run_bot(env, "--check", cwd=tmp_path)
    assert code == 0, out + err
    model = rows(out)["model"][1]
    assert "(torch, fp32" in model
    assert model.endswith("the ONNX export failed at an earlier start (the export process was "
                          "killed by SIGKILL); torch serves. Run `python -m search.export` "
                          "(make model) to try again")


def test_searches_that_never_stop_leave_the_export_half_the_time_after_a_grace():
    """The pause policy under batches back to back for 20 minutes: the first minute is the
    searches' own, then the export runs at least half the time, so it always finishes."""
    from search.clip.export import PAUSE_GRACE_S, pause_allowed

    paused = ran = 0.0
    step = 0.1
    for _ in range(12_000):  # 20 minutes of encoder batches, each 0.1 s
        if pause_allowed(paused, paused + ran):
            paused += step
        else:
            ran += step
        if paused + ran <= PAUSE_GRACE_S:
            assert ran == 0.0  # a first member's cold query is not slowed by the export
    assert ran >= (paused + ran) / 2 - 1.0
    assert pause_allowed(0.0, 0.0) and not pause_allowed(PAUSE_GRACE_S, 10.0)
