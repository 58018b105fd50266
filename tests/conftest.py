"""Shared fixtures: the stock catalogue and a running fake Pixabay."""

from __future__ import annotations

import pytest

from bench.fakes.pixabay import FakePixabay, default_catalogue


@pytest.fixture(scope="session")
def catalogue():
    """The default stock library (``bench.fakes.scenes.catalogue(per_scene=10)``), as a tuple."""
    return default_catalogue(10)


@pytest.fixture
async def fake_pixabay(catalogue):
    """A FakePixabay with the default catalogue on 127.0.0.1:<random port>."""
    async with FakePixabay(catalogue) as fake:
        yield fake


@pytest.fixture
async def fake_openverse(catalogue):
    """A FakeOpenverse with the same catalogue; one registered client app-id/app-secret."""
    from bench.fakes.openverse import FakeOpenverse

    async with FakeOpenverse(catalogue, clients={"app-id": "app-secret"}) as fake:
        yield fake


# -- the engine against the fake, with the tiny model ------------------------------
import asyncio  # noqa: E402
from pathlib import Path  # noqa: E402

from search.clip import ClipEncoder  # noqa: E402
from search.config import Settings  # noqa: E402
from search.tuning import tune_process  # noqa: E402

tune_process()  # as the entry points do: the tests run the product as its programs run it

TINY_CLIP = Path(__file__).parent / "fixtures" / "tiny-clip"


def engine_env(fake, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment that points the product at the fakes and the tiny model."""
    env = {
        "PIXABAY_API_URL": fake.api_url,
        "PIXABAY_API_KEY": fake.key,
        "IMAGE_HOSTS": "127.0.0.1",
        "CLIP_MODEL": f"local-dir:{TINY_CLIP}",
        "CLIP_DEVICE": "cpu",
        # torch: starts in a second and is exact; tests/test_backends.py proves ONNX
        # Runtime (the CPU default) against it, and test_bot runs the default once.
        "CLIP_BACKEND": "torch",
        "DATA_DIR": str(data_dir),
        "USER_COOLDOWN_SECONDS": "0",
    }
    env.update(extra)
    return env


@pytest.fixture
def settings(fake_pixabay, tmp_path) -> Settings:
    return Settings.from_mapping(engine_env(fake_pixabay, tmp_path / "data"))


@pytest.fixture(scope="session")
def tiny_encoder():
    """The tiny model, loaded once through local-dir: exactly as the product loads it.

    Each job carries its own event loop, so one encoder serves every test's loop.
    """
    encoder = ClipEncoder(f"local-dir:{TINY_CLIP}", None, "cpu", backend="torch")
    asyncio.run(encoder.start())
    yield encoder
    asyncio.run(encoder.close())


@pytest.fixture
async def service(settings, tiny_encoder):
    from search.service import SearchService

    async with SearchService.open(settings, encoder=tiny_encoder, timeout=2.0,
                                  backoff=0.01) as svc:
        yield svc


# -- the bot against the fake Discord ------------------------------------------------
@pytest.fixture
async def fake_discord(monkeypatch):
    """A FakeDiscord on loopback; discord.py's endpoints are restored after the test."""
    import discord.gateway
    import discord.http

    from bench.fakes.discord import FakeDiscord

    # The bot points these at the fake itself; monkeypatch restores the real ones after.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.close()
    assert not fake.server_errors, fake.server_errors
    assert not fake.unknown_routes, fake.unknown_routes


def bot_env(fake_discord, fake_pixabay, data_dir: Path, **extra: str) -> dict[str, str]:
    env = engine_env(fake_pixabay, data_dir)
    env.update({
        "DISCORD_TOKEN": fake_discord.token,
        "DISCORD_GUILD_ID": str(fake_discord.guild_id),
        "DISCORD_API_BASE": fake_discord.api_base,
        "DISCORD_GATEWAY_URL": fake_discord.gateway_url,
        "SEARCH_CANDIDATES": "60",
        # The fake's CDN is the fake itself: its port alone, as Discord's CDN hosts.
        "DISCORD_CDN_HOSTS": f"127.0.0.1:{fake_discord.port}",
        # The embed list, whose fields the older tests read; grid tests set layout:grid.
        "RESULTS_LAYOUT": "list",
    })
    env.update(extra)
    return env


# -- no secret in any captured log line of the suite ------------------------------------
from tests.log_guard import pytest_runtest_makereport  # noqa: E402,F401


# -- PostgreSQL: each test its own database -------------------------------------------
@pytest.fixture
async def pg_url():
    """A fresh database on the project's PostgreSQL, dropped after the test."""
    from tests.pg import create_database, drop_database

    url = await create_database()
    yield url
    await drop_database(url)


@pytest.fixture(scope="module")
def pg_cluster():
    """A private PostgreSQL cluster on a random port, that the test may stop and start."""
    from tests.pg import PrivateCluster

    cluster = PrivateCluster().init()
    cluster.start()
    yield cluster
    cluster.remove()
