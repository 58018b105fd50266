"""`python -m bot --check`, `--help` and `--env-file`, run as an operator runs them: the real
entry point in a child process, against the fake Discord, the fake Pixabay and the tiny model."""

import asyncio
import shutil
import sqlite3
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import torch
from safetensors.torch import load_file, save_file

from search.settings_doc import SETTINGS
from search.sources.pixabay import PixabayClient
from search.store import Store
from tests.conftest import TINY_CLIP, bot_env

ITEMS = ["settings", "data dir", "database", "redis", "discord", "pixabay", "model", "encode"]


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return bot_env(fake_discord, fake_pixabay, tmp_path / "data")


async def run_bot(env: dict[str, str], *args: str, cwd: Path | None = None
                  ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=cwd, env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out.decode(), err.decode()


def rows(out: str) -> dict[str, tuple[str, str]]:
    """{item: (mark, detail)} from the check's rows, which must come in ITEMS' order."""
    parsed = {}
    for line in out.splitlines():
        mark, rest = line.split(" ", 1)
        item = next(i for i in ITEMS if rest.startswith(i + " "))
        parsed[item] = (mark, rest[len(item):].strip())
    assert list(parsed) == ITEMS, out
    return parsed


async def test_check_passes_every_item_and_stays_offline(env, fake_discord, fake_pixabay,
                                                         tmp_path):
    code, out, err = await run_bot(env, "--check", cwd=tmp_path)
    assert code == 0, out + err
    got = rows(out)
    assert {mark for mark, _ in got.values()} == {"✔"}, out
    assert got["data dir"][1].startswith(f"{tmp_path / 'data'} is writable, ")
    assert " free " in got["data dir"][1]
    assert got["discord"][1] == (f"{fake_discord.bot_user.username} (application "
                                 f"{fake_discord.app_id}), in server {fake_discord.guild_id}")
    assert got["redis"][1] == ("REDIS_URL is empty: budgets, pick claims and page-turn locks "
                               "live in this process")
    assert got["pixabay"][1].startswith("key accepted")
    assert "99 of 100 requests left" in got["pixabay"][1]
    assert got["model"][1].startswith(f"local-dir:{TINY_CLIP} with weights from the folder, "
                                      "on cpu (torch, fp32")
    assert got["encode"][1].startswith("one image in ")
    assert err == ""  # no log line at the default level: no voice warnings, no root lines
    # It never went online, and Pixabay got exactly one request ...
    assert fake_discord.gateway_connections == 0 and not fake_discord.synced_commands
    assert fake_pixabay.api_requests == 1
    # ... whose answer is cached for searches: the same query sends nothing.
    store = Store(Path(env["DATA_DIR"]) / "search.sqlite3")
    try:
        async with aiohttp.ClientSession() as session:
            client = PixabayClient(session, api_url=fake_pixabay.api_url, key=fake_pixabay.key,
                                   store=store)
            await client.candidates("nature", limit=1)
    finally:
        await store.aclose()
    assert fake_pixabay.api_requests == 1


def _weights_without_vision(folder: Path) -> None:
    folder.mkdir()
    shutil.copy(TINY_CLIP / "open_clip_config.json", folder)
    weights = load_file(TINY_CLIP / "open_clip_model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if k.startswith("visual.")
               and v.is_floating_point() else v for k, v in weights.items()},
              folder / "open_clip_model.safetensors")


def _config_only(folder: Path) -> None:
    folder.mkdir()
    shutil.copy(TINY_CLIP / "open_clip_config.json", folder)


# (what is wrong, the env change, the item that fails, how its detail starts)
WRONG = [
    ("invalid setting", {"CLIP_DEVICE": "tpu"}, "settings",
     "CLIP_DEVICE must be auto, cpu, cuda or cuda:N, not 'tpu'."),
    ("data dir is under a file", {"DATA_DIR": "{tmp}/a-file/data"}, "data dir",
     "DATA_DIR '{tmp}/a-file/data' cannot be created: '{tmp}/a-file' is a file, not a "
     "folder; point DATA_DIR at a folder elsewhere, or move that file aside."),
    ("state file from a newer release", {"DATA_DIR": "{tmp}/newer"}, "data dir",
     "{tmp}/newer/bot.sqlite3 was written by a newer findimage (schema 99; "),
    ("redis unreachable", {"REDIS_URL": "redis://127.0.0.1:9/0"}, "redis",
     "REDIS_URL redis://127.0.0.1:9/0 does not answer (ConnectionError); start Redis there "
     "or fix REDIS_URL (empty keeps everything in this process)."),
    ("shard ids out of range", {"SHARD_COUNT": "2", "SHARD_IDS": "1,2"}, "settings",
     "SHARD_IDS must be distinct numbers from 0 to 1 (SHARD_COUNT=2), not '1,2'."),
    ("database unreachable", {"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/findimage"},
     "database", "PostgreSQL at 127.0.0.1:9/findimage is not answering ("),
    ("token refused", {"DISCORD_TOKEN": "not-the-token"}, "discord",
     "Discord refused DISCORD_TOKEN; copy the token again from the Developer Portal "
     "(Bot → Reset Token)."),
    ("token missing", {"DISCORD_TOKEN": None}, "discord",
     "DISCORD_TOKEN is not set; put it in the environment or in the env file"),
    ("bot not in the server", {"DISCORD_GUILD_ID": "42"}, "discord",
     "FindImage (application {app}) is not in server 42; invite it with "
     "https://discord.com/oauth2/authorize?client_id={app}&scope=bot+applications.commands"
     "&permissions=126016&guild_id=42"),
    ("key refused", {"PIXABAY_API_KEY": "not-the-key"}, "pixabay",
     "Pixabay rejected PIXABAY_API_KEY; copy your key again from https://pixabay.com/api/docs/"
     " (logged in)."),
    ("pixabay unreachable", {"PIXABAY_API_URL": "http://127.0.0.1:9/api/"}, "pixabay",
     "Cannot reach Pixabay at http://127.0.0.1:9/api/ (ClientConnectorError); check the "
     "network or PIXABAY_API_URL."),
    ("model without weights", {"CLIP_MODEL": "local-dir:{tmp}/config-only"}, "model",
     "The CLIP model 'local-dir:{tmp}/config-only' has no weights in the folder "
     "{tmp}/config-only; "),
    ("broken weights", {"CLIP_MODEL": "local-dir:{tmp}/nan-vision"}, "encode",
     "the model's vector is not finite; the weights are broken: download them again."),
]


@pytest.mark.parametrize(("change", "item", "expected"), [w[1:] for w in WRONG],
                         ids=[w[0] for w in WRONG])
async def test_check_fails_the_wrong_item_and_says_what_to_do(env, fake_discord, tmp_path,
                                                              change, item, expected):
    (tmp_path / "a-file").write_text("")
    _config_only(tmp_path / "config-only")
    _weights_without_vision(tmp_path / "nan-vision")
    (tmp_path / "newer").mkdir()
    with sqlite3.connect(tmp_path / "newer" / "bot.sqlite3") as db:
        db.execute("PRAGMA user_version = 99")
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value.format(tmp=tmp_path)
    code, out, err = await run_bot(env, "--check", cwd=tmp_path)
    assert code == 1, out + err
    got = rows(out)
    mark, detail = got[item]
    assert mark == "✘"
    assert detail.startswith(expected.format(tmp=tmp_path, app=fake_discord.app_id)), detail
    for other in ITEMS:
        if other == item:
            continue
        if item == "settings" or (item == "model" and other == "encode"):
            assert got[other][0] == "–" and "not checked" in got[other][1], out
        else:
            assert got[other][0] == "✔", out


async def test_help_prints_usage_and_every_setting_without_starting(env, fake_discord,
                                                                    tmp_path):
    code, out, err = await run_bot(env, "--help", cwd=tmp_path)
    assert code == 0 and err == ""
    assert out.startswith("usage: python -m bot [-h] [--check] [--env-file PATH]")
    for s in SETTINGS:
        assert f"\n  {s.name} " in out, s.name
    assert "[default: ViT-B-32-256]" in out
    assert fake_discord.requests == []


async def test_env_file_is_read_from_any_working_directory(env, tmp_path):
    env_file = tmp_path / "etc" / "findimage.env"
    env_file.parent.mkdir()
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, err = await run_bot({}, "--check", "--env-file", str(env_file), cwd=elsewhere)
    assert code == 0, out + err
    assert rows(out)["settings"] == ("✔", f"valid, read from the environment and {env_file}")


async def test_env_file_that_does_not_exist_stops_with_one_line(env, tmp_path):
    code, out, err = await run_bot(env, "--env-file", str(tmp_path / "nope.env"), cwd=tmp_path)
    assert code == 2 and out == ""
    assert err == (f"error: --env-file {tmp_path / 'nope.env'} is not a readable file; give the "
                   "path of a file of NAME=value lines.\n")


async def test_search_cli_reads_env_file(fake_pixabay, tmp_path):
    from tests.conftest import engine_env

    env_file = tmp_path / "search.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in
                                engine_env(fake_pixabay, tmp_path / "data").items()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search", "--env-file", str(env_file), "--candidates", "20",
        "--json", "circle", "a red circle on snow", cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()
    assert '"candidates": 20' in out.decode()
    assert (tmp_path / "data" / "search.sqlite3").is_file()



def test_help_lists_every_setting():
    from dataclasses import fields

    from search.config import Settings

    assert {f.name.upper() for f in fields(Settings)} == {s.name for s in SETTINGS}


async def test_check_connects_to_database_url_and_reports_its_schema(env, pg_url, tmp_path):
    code, out, err = await run_bot({**env, "DATABASE_URL": pg_url}, "--check", cwd=tmp_path)
    assert code == 0, out + err
    where = pg_url.split("@", 1)[1]
    mark, detail = rows(out)["database"]
    assert mark == "✔" and detail.startswith("PostgreSQL 1") and detail.endswith(
        f"at {where}, empty: start-up creates the schema (cache3, state4)"), detail
    # the Pixabay row's answer was cached where searches will read it: in PostgreSQL
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM api_cache") == 1
    finally:
        await conn.close()


async def test_check_makes_a_redis_round_trip_and_names_the_shards(env, tmp_path):
    from tests.redis_server import SHARED_URL, redis_answers

    assert redis_answers(), "Redis is not answering on 127.0.0.1:6379; start it (see .ci/run)"
    env.update(REDIS_URL=SHARED_URL, SHARD_COUNT="4", SHARD_IDS="2,3")
    code, out, err = await run_bot(env, "--check", cwd=tmp_path)
    assert code == 0, out + err
    detail = rows(out)["redis"][1]
    assert detail.startswith(f"{SHARED_URL} (Redis ")
    assert detail.endswith("; this process runs shards 2,3 of 4, and takes 1/2 of each "
                           "source budget if Redis goes away")
