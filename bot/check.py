"""``python -m bot --check``: is everything right before going live?

One row per item, ✔ or ✘ and one line of detail; every ✘ says what to do. What it
contacts: Discord over REST only (a login, never the gateway: the bot does not appear
online), Pixabay once (counted in the budget, its answer cached for searches), and the
model hub when the weights are not cached (they download into this user's cache); then
the model is loaded and encodes one image.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp
import discord

from search import logs
from search.config import Settings
from search.errors import (
    ConfigError,
    DataDirError,
    InvalidApiKey,
    PixabayError,
    PixabayUnavailable,
    PixabayUnreachable,
    SearchError,
)

from .app import INVITE_PERMISSIONS, intents, point_at

OK, FAIL, SKIP = "✔", "✘", "–"
TIMEOUT = 60.0  # seconds any one remote item may take
MODEL_TIMEOUT = 600.0  # a first start may download ~600 MB of weights


@dataclass
class Row:
    item: str
    ok: bool | None  # None: not checked, because an item it needs failed
    detail: str

    def __str__(self) -> str:
        mark = SKIP if self.ok is None else OK if self.ok else FAIL
        return f"{mark} {self.item:<9} {self.detail}"


def load_settings(env_file: Path | None) -> tuple[Row, Settings | None]:
    try:
        settings = Settings.for_entry_point(env_file)
    except ConfigError as e:
        return Row("settings", False, str(e)), None
    source = env_file if env_file is not None else Path(".env")
    read = (f"the environment and {source.absolute()}" if source.is_file()
            else "the environment (no .env here; --env-file PATH names one)")
    return Row("settings", True, f"valid, read from {read}"), settings


async def data_dir(settings: Settings) -> Row:
    """The start-up's own DATA_DIR check, and its SQLite files sound and not too new."""
    from search.storage import Corrupt, Database, StorageError, check_data_dir

    try:
        path = check_data_dir(settings.data_dir).absolute()
        free = shutil.disk_usage(path).free
    except (DataDirError, OSError) as e:
        said = str(e)  # start-up's own sentence; give it a remedy where it has none
        if ";" not in said:
            said = (f"{said.rstrip('.')}; create it or point DATA_DIR at a folder this user "
                    "may write.")
        return Row("data dir", False, said)
    notes = []
    files = () if settings.database_url else (("bot.sqlite3", "state", "the bot's state"),
                                              ("search.sqlite3", "cache", "the search cache"))
    for name, branch, what in files:
        file = path / name
        if not file.exists():
            continue
        db = Database(file, branch=branch, what=what)
        try:  # quick_check and the schema version, as start-up does; nothing written
            await asyncio.to_thread(db.precheck)
        except Corrupt as e:
            if name == "search.sqlite3":  # a cache: start-up moves it aside and rebuilds it
                notes.append(f"{name} is corrupt and will be rebuilt")
                continue
            return Row("data dir", False, f"DATA_DIR file {file} is corrupt ({e}); restore it "
                                          "from a backup (see docs/operations.md) or move it aside.")
        except (StorageError, DataDirError) as e:  # busy, unreadable, or from a newer release
            return Row("data dir", False, str(e))
    held = ", ".join([f"{p.name} {_size(p.stat().st_size)}"
                      for p in sorted(path.glob("*.sqlite3"))] + notes) or "no databases yet"
    return Row("data dir", True, f"{path} is writable, {_size(free)} free ({held})")


async def database(settings: Settings) -> Row:
    """DATABASE_URL: connect, and compare its schema with this release's."""
    from search.storage import DatabaseUrlError, Unavailable
    from search.storage.database import inspect_server

    if not settings.database_url:
        return Row("database", True, "SQLite files in DATA_DIR (DATABASE_URL is empty: one "
                                     "process a DATA_DIR)")
    try:
        return Row("database", True, await asyncio.wait_for(
            inspect_server(settings.database_url), TIMEOUT))
    except DatabaseUrlError as e:
        return Row("database", False, str(e))
    except (Unavailable, asyncio.TimeoutError) as e:
        detail = getattr(e, "detail", "") or "no answer in time"
        return Row("database", False, f"{detail}; start PostgreSQL, or check DATABASE_URL.")


async def discord_login(settings: Settings) -> Row:
    if not settings.discord_token:
        return Row("discord", False, "DISCORD_TOKEN is not set; put it in the environment or "
                                     "in the env file (Developer Portal → Bot → Reset Token).")
    point_at(settings)
    client = discord.Client(intents=intents())
    try:
        await asyncio.wait_for(client.login(settings.discord_token), TIMEOUT)
        user, app_id = client.user, client.application_id
        assert user is not None  # login() sets it
        guild_id = settings.discord_guild_id
        invite = discord.utils.oauth_url(
            app_id or 0, permissions=INVITE_PERMISSIONS, scopes=("bot", "applications.commands"),
            guild=discord.Object(guild_id) if guild_id else discord.utils.MISSING)
        who = f"{user.name} (application {app_id})"
        if guild_id is None:
            return Row("discord", True, f"{who}; commands sync globally (DISCORD_GUILD_ID is "
                                        f"empty); invite: {invite}")
        try:
            await asyncio.wait_for(client.http.get_member(guild_id, user.id), TIMEOUT)
        except (discord.Forbidden, discord.NotFound):
            return Row("discord", False, f"{who} is not in server {guild_id}; invite it with "
                                         f"{invite}")
        return Row("discord", True, f"{who}, in server {guild_id}")
    except discord.LoginFailure:
        return Row("discord", False, "Discord refused DISCORD_TOKEN; copy the token again from "
                                     "the Developer Portal (Bot → Reset Token).")
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        return Row("discord", False, f"cannot reach Discord at {settings.discord_api_base} "
                                     f"({type(e).__name__}); check the network or "
                                     "DISCORD_API_BASE.")
    except discord.HTTPException as e:
        return Row("discord", False, f"Discord answered HTTP {e.status} ({e.text or 'no text'})"
                                     "; try again in a minute.")
    finally:
        await client.close()


async def redis(settings: Settings) -> Row:
    """One round trip to REDIS_URL, as start-up makes before the model loads."""
    from search.shared import RedisUnavailable, SharedRedis, unreachable_sentence

    if not settings.redis_url:
        return Row("redis", True, "REDIS_URL is empty: budgets, pick claims and page-turn "
                                  "locks live in this process")
    async with SharedRedis(settings.redis_url, prefix=settings.redis_key_prefix) as shared:
        try:
            seconds, version = await shared.round_trip()
        except RedisUnavailable as e:
            return Row("redis", False, unreachable_sentence(settings.redis_shown, str(e)))
    shards = (f"shards {','.join(map(str, settings.shard_ids))} of {settings.shard_count}"
              if settings.shard_ids else
              f"all {settings.shard_count} shards" if settings.shard_count else "every shard")
    return Row("redis", True, f"{settings.redis_shown} (Redis {version}) answered in "
                              f"{seconds * 1000:.1f} ms; this process runs {shards}, and "
                              f"takes 1/{settings.processes} of each source budget if Redis "
                              "goes away")


async def pixabay_key(settings: Settings, *, cache: bool) -> Row:
    from search.sources import adapter
    from search.sources.pixabay import PixabayClient
    from search.store import Store

    if not settings.pixabay_api_key and \
            "PIXABAY_API_KEY" not in adapter(settings.search_source).required:
        return Row("pixabay", True, "PIXABAY_API_KEY is not set: only Openverse is offered "
                                    f"(SEARCH_SOURCE={settings.search_source})")
    if not settings.pixabay_api_key:
        return Row("pixabay", False, "PIXABAY_API_KEY is not set; put it in the environment or "
                                     "in the env file (https://pixabay.com/api/docs/).")
    store = (await asyncio.to_thread(Store, settings.cache_target, **settings.database_pool)
             if cache else None)
    try:
        async with aiohttp.ClientSession() as session:
            client = PixabayClient(session, api_url=settings.pixabay_api_url,
                                   key=settings.pixabay_api_key, store=store,
                                   rate_limit=settings.pixabay_rate_limit, retries=0)
            total = await asyncio.wait_for(client.check_key(), TIMEOUT)
            budget = client.budget
            return Row("pixabay", True, f"key accepted ({total} hits for 'nature'); "
                                        f"{budget.remaining()} of {budget.limit} requests left "
                                        f"in this {budget.window:.0f} s window")
    except InvalidApiKey:
        return Row("pixabay", False, "Pixabay rejected PIXABAY_API_KEY; copy your key again "
                                     "from https://pixabay.com/api/docs/ (logged in).")
    except PixabayUnreachable as e:
        return Row("pixabay", False, str(e))
    except (PixabayUnavailable, asyncio.TimeoutError) as e:
        why = e.why if isinstance(e, PixabayUnavailable) else "no answer in time"
        return Row("pixabay", False, f"cannot reach Pixabay at {settings.pixabay_api_url} "
                                     f"({why}); check the network or PIXABAY_API_URL.")
    except PixabayError as e:  # rate limited, refused, unreadable: each says what to do
        return Row("pixabay", False, str(e))
    finally:
        if store is not None:
            await store.aclose()


async def model(settings: Settings, *, cache: bool):
    """The model row, and the loaded encoder (None when it failed); the caller closes it."""
    from search.service import load_encoder  # deferred: it imports torch

    t0 = time.perf_counter()
    try:
        # export="off": --check reports the ONNX files' state; a start exports them
        encoder = await load_encoder(settings, cache=cache, timeout=MODEL_TIMEOUT,
                                     export="off")
    except Exception as e:  # every way a model fails to load is this row's ✘
        if isinstance(e, asyncio.TimeoutError):
            said = f"the model did not load within {MODEL_TIMEOUT:.0f} s"
        else:
            said = " ".join(str(e).split())
        if ";" not in said:  # the loader's own sentences say what to do; others get a hint
            said = (f"{said.rstrip('. ')}; check CLIP_MODEL, CLIP_PRETRAINED and CLIP_DEVICE "
                    "(a first start downloads the weights: check the network, or fetch them "
                    "ahead as docs/operations.md shows).")
        return Row("model", False, said), None
    name = settings.clip_model
    weights = (f"weights {settings.clip_pretrained}" if encoder.pretrained
               else "weights from the folder" if name.startswith("local-dir:")
               else "weights from the hub")
    assert encoder.backend is not None  # a started encoder has one
    backend, precision = encoder.backend.name, encoder.backend.precision
    n = encoder.threads
    threads = f", {n} thread{'s' if n != 1 else ''}" if n else ""
    said = (f"{name} with {weights}, on {encoder.device} ({backend}, {precision}{threads}), "
            f"loaded in {time.perf_counter() - t0:.1f} s")
    facts = encoder.export_facts
    if facts.get("int8_top1"):
        said += (f"; int8 against fp32 on the probe photographs at export: top-1 "
                 f"{facts['int8_top1']}, Spearman {facts.get('int8_spearman', '?')}")
    if encoder.note:
        said += f"; {encoder.note}"
    return Row("model", True, said), encoder


async def inference_service(settings: Settings, session: aiohttp.ClientSession):
    """INFERENCE_URL's row: the service answers and serves the model the settings name.
    Returns the row and the connected client (None when it failed)."""
    from search.service import connect_encoder

    t0 = time.perf_counter()
    try:
        remote = await connect_encoder(settings, session, timeout=TIMEOUT)
    except SearchError as e:
        return Row("service", False, str(e)), None
    ident = remote.service
    assert ident is not None
    return Row("service", True, f"{settings.inference_url} serves {ident.identity} "
                                f"({ident.backend} {ident.precision} on {ident.device}), "
                                f"answered in {(time.perf_counter() - t0) * 1000:.0f} ms"), remote


async def encode_remote(remote) -> Row:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buf, "JPEG")
    t0 = time.perf_counter()
    try:
        got = await asyncio.wait_for(remote.encode_images([buf.getvalue()]), TIMEOUT)
    except Exception as e:
        return Row("encode", False, " ".join(str(e).split()))
    if got.failed:
        return Row("encode", False, f"the service could not read a plain JPEG "
                                    f"({got.failed[0]}); read its log.")
    return Row("encode", True, f"one image through the service in "
                               f"{(time.perf_counter() - t0) * 1000:.0f} ms")


async def encode_one(encoder) -> Row:
    import numpy as np
    from PIL import Image

    image = Image.radial_gradient("L").convert("RGB")
    pixels = encoder.preprocess(image)
    t0 = time.perf_counter()
    try:
        vectors, seconds = await asyncio.wait_for(encoder.encode_images(pixels[None]), TIMEOUT)
    except Exception as e:
        return Row("encode", False, f"one image failed ({type(e).__name__}: {e}); check "
                                    "CLIP_DEVICE and the GPU driver, or try CLIP_DEVICE=cpu.")
    wall = time.perf_counter() - t0
    if not np.isfinite(vectors).all():
        return Row("encode", False, "the model's vector is not finite; the weights are broken: "
                                    "download them again.")
    return Row("encode", True, f"one image in {seconds * 1000:.0f} ms "
                               f"({wall * 1000:.0f} ms with the hand-off)")


async def run(env_file: Path | None, out: TextIO = sys.stdout, *, setup_logs: bool = False
              ) -> int:
    """Print one row per item as it is checked; 0 when every row is ✔, else 1.

    With ``setup_logs`` (the entry point), log lines go to stderr at WARNING (DEBUG when
    LOG_LEVEL says so), so they do not bury the rows.
    """
    rows: list[Row] = []

    def show(row: Row) -> None:
        rows.append(row)
        print(row, file=out, flush=True)

    row, settings = load_settings(env_file)
    show(row)
    if settings is None:
        for item in ("data dir", "database", "redis", "discord", "pixabay", "model", "encode"):
            show(Row(item, None, "not checked: the settings must be valid first"))
        return 1
    if setup_logs:
        logs.setup("DEBUG" if settings.log_level == "DEBUG" else "WARNING", settings.log_format,
                   secrets=(settings.discord_token or "", settings.pixabay_api_key or ""))
    show(await data_dir(settings))
    writable = bool(rows[-1].ok)
    show(await database(settings))
    writable = writable and bool(rows[-1].ok)
    show(await redis(settings))
    show(await discord_login(settings))
    show(await pixabay_key(settings, cache=writable))  # no cache where DATA_DIR fails
    if settings.inference_url:
        async with aiohttp.ClientSession() as session:
            row, remote = await inference_service(settings, session)
            show(row)
            show(Row("encode", None, "not checked: the service must answer first")
                 if remote is None else await encode_remote(remote))
        return 0 if all(r.ok for r in rows) else 1
    row, encoder = await model(settings, cache=writable)
    show(row)
    if encoder is not None:
        try:
            show(await encode_one(encoder))
        finally:
            await encoder.close()
    else:
        show(Row("encode", None, "not checked: the model must load first"))
    return 0 if all(r.ok for r in rows) else 1


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
