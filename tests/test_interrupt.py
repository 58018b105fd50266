"""Start-up that answers: Ctrl-C and SIGTERM stop a real process within 2 s at any stage,
saying so, with exit 130 / 143; a remote that may come back is a restartable exit (75),
not a setting to fix (2); commands reach Discord only once the model serves."""

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_CLIP, bot_env, engine_env

STOP_WITHIN = 2.0  # seconds, the bound, from the signal to the process's exit


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return {"PATH": "/usr/bin:/bin", **bot_env(fake_discord, fake_pixabay, tmp_path / "data")}


async def start(module: str, env: dict[str, str], cwd: Path, *args: str):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def stop(proc, sig: int) -> tuple[float, str]:
    """Send ``sig``; (seconds until the process exited, its stderr)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return time.monotonic() - t0, err.decode()


def answers_sigterm(pid: int) -> bool:
    """The process has its SIGTERM handler (``SigCgt`` in /proc): the entry point is running."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


class HangingHub:
    """A model hub (HF_ENDPOINT) that accepts connections and never answers: a download
    stuck on a dead network. ``requests`` counts connections that sent a request."""

    def __init__(self) -> None:
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None
        self.held: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        async def handle(reader, writer):
            self.held.append(writer)
            if await reader.read(1):
                self.requests += 1
            await asyncio.Event().wait()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        for writer in self.held:
            writer.close()
        self.server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_env(env: dict[str, str], endpoint: str, tmp_path: Path) -> dict[str, str]:
    return {**env, "CLIP_MODEL": "hf-hub:laion/not-downloaded-here", "HF_ENDPOINT": endpoint,
            "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "120",
            "HF_HUB_DOWNLOAD_TIMEOUT": "120"}


# -- Ctrl-C / SIGTERM ----------------------------------------------------------------------
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_signal_as_soon_as_the_bot_runs_stops_it_at_once(env, tmp_path, sig, code):
    proc = await start("bot", env, tmp_path)
    await until(lambda: answers_sigterm(proc.pid), 60, "the entry point to start")
    took, err = await stop(proc, sig)  # during its imports and settings
    assert proc.returncode == code, err
    assert err.splitlines()[-1] == f"error: interrupted ({signal.Signals(sig).name})."
    assert took < STOP_WITHIN


async def test_ctrl_c_while_discord_login_hangs_stops_the_bot_within_2_s(env, fake_discord,
                                                                         tmp_path):
    gate = fake_discord.set_pause_before("GET", "/users/@me")
    proc = await start("bot", env, tmp_path)
    await gate.wait_reached(timeout=120)
    took, err = await stop(proc, signal.SIGINT)
    gate.release()
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "error: interrupted (SIGINT)."
    assert "Traceback" not in err
    assert took < STOP_WITHIN, took
    assert fake_discord.synced_commands == {}


async def test_sigterm_while_the_model_download_hangs_stops_the_bot_within_2_s(env, fake_discord,
                                                                              tmp_path):
    hub = HangingHub()
    async with hub as endpoint:
        proc = await start("bot", hub_env(env, endpoint, tmp_path), tmp_path)
        await until(lambda: hub.requests > 0 or proc.returncode is not None, 180,
                    "the model download to begin")
        assert proc.returncode is None, (await proc.communicate())[1].decode()
        took, err = await stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == "error: interrupted (SIGTERM)."
    assert "Traceback" not in err
    assert took < STOP_WITHIN, took
    assert fake_discord.synced_commands == {}  # never offered: the model never served


async def test_ctrl_c_while_the_cli_waits_for_the_model_stops_it_within_2_s(fake_pixabay,
                                                                           tmp_path):
    env = {"PATH": "/usr/bin:/bin", **engine_env(fake_pixabay, tmp_path / "data")}
    hub = HangingHub()
    async with hub as endpoint:
        proc = await start("search", hub_env(env, endpoint, tmp_path), tmp_path,
                           "circle", "a red circle")
        await until(lambda: hub.requests > 0 or proc.returncode is not None, 180,
                    "the model download to begin")
        took, err = await stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert err == "error: interrupted (SIGINT).\n"
    assert took < STOP_WITHIN, took


# -- exit codes: what a restart can fix, and what it cannot ---------------------------------
async def test_an_unreachable_model_hub_is_a_restartable_exit(env, fake_discord, tmp_path):
    proc = await start("bot", hub_env(env, f"http://127.0.0.1:{closed_port()}", tmp_path),
                       tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 75, err.decode()
    assert err.decode().splitlines()[-1].startswith(
        "error: The CLIP weights for 'hf-hub:laion/not-downloaded-here' are not downloaded yet "
        "and the model hub at http://127.0.0.1 cannot be reached (Connection refused)")
    assert fake_discord.synced_commands == {}


async def test_an_unreachable_discord_is_a_restartable_exit(env, tmp_path):
    env["DISCORD_API_BASE"] = f"http://127.0.0.1:{closed_port()}/api/v10"
    proc = await start("bot", env, tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 75, err.decode()
    assert err.decode().splitlines()[-1].startswith("error: cannot reach Discord at ")


async def test_a_model_that_fails_to_load_never_syncs_commands(env, fake_discord, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_bytes(
        (TINY_CLIP / "open_clip_config.json").read_bytes())  # a config, and no weights
    env["CLIP_MODEL"] = f"local-dir:{folder}"
    proc = await start("bot", env, tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 2, err.decode()
    assert "has no weights" in err.decode().splitlines()[-1]
    assert [r.path for r in fake_discord.requests][:1] == ["/users/@me"]  # it did log in
    assert fake_discord.synced_commands == {}
