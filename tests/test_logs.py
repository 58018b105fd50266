"""What an operator reads: one INFO line per search, DEBUG lines for shares and page turns,
LOG_LEVEL / LOG_FORMAT, quiet libraries, no `root`, one traceback with the interaction id,
and never a token or key."""

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.embeds import NEXT, NUMBERS
from search import logs
from search.config import Settings
from tests.conftest import TINY_CLIP
from tests.test_bot import (
    answered,
    ephemeral_error,
    image_id,
    press,
    reactions_added,
    running_bot,
    search,
    search_in_a_bot_process,
)

ROOT = Path(__file__).parent.parent


@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    from tests.conftest import bot_env

    return bot_env(fake_discord, fake_pixabay, tmp_path / "data")


def search_lines(caplog) -> list[dict]:
    return [r.search for r in caplog.records if r.name == "bot.searches"]


# -- formatters and set-up ---------------------------------------------------------------
def _record_with_traceback(message: str, error: str) -> logging.LogRecord:
    try:
        raise RuntimeError(error)
    except RuntimeError:
        return logging.LogRecord("search.pixabay", logging.ERROR, __file__, 1, message, (),
                                 sys.exc_info())


def test_text_and_json_lines_mask_secrets_and_key_parameters():
    record = _record_with_traceback(
        "token s3cret-token-value", "GET https://pixabay.com/api/?key=abc123&q=tiger failed")
    text = logs.TextFormatter(["s3cret-token-value"]).format(record)
    assert "s3cret" not in text and "abc123" not in text
    assert "token ***" in text and "?key=***&q=tiger" in text and "Traceback" in text
    record = _record_with_traceback("token s3cret-token-value", "?key=abc123")
    record.search = {"tag": "tiger"}
    entry = json.loads(logs.JsonFormatter(["s3cret-token-value"]).format(record))
    assert entry["level"] == "ERROR" and entry["logger"] == "search.pixabay"
    assert entry["message"] == "token ***" and entry["search"] == {"tag": "tiger"}
    assert "?key=***" in entry["exception"] and "abc123" not in entry["exception"]


SETUP_SCRIPT = textwrap.dedent("""
    import logging, sys
    from search import logs
    logs.setup(sys.argv[1], "json")
    import discord, open_clip
    discord.Client(intents=discord.Intents.default())  # warns that voice is missing
    open_clip.create_model_and_transforms(sys.argv[2])  # logs INFO on the root logger
    logging.getLogger("discord.http").info("a library's info")
    logging.getLogger("discord.http").warning("a library's warning")
    logging.getLogger("search.x").info("our info")
    logging.getLogger("bot.x").debug("our debug")
""")


def _setup_lines(level: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", SETUP_SCRIPT, level, f"local-dir:{TINY_CLIP}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=180, check=True)
    return [json.loads(line) for line in out.stderr.splitlines()]


def test_libraries_log_warnings_only_and_nothing_logs_under_root():
    lines = _setup_lines("INFO")
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("WARNING", "discord.http", "a library's warning"),
        ("INFO", "search.x", "our info"),
    ]


def test_debug_shows_libraries_with_their_own_names():
    lines = _setup_lines("DEBUG")
    names = {e["logger"] for e in lines}
    assert "root" not in names
    assert "open_clip.factory" in names  # routed: open_clip logs on the root logger
    assert {"discord.http", "bot.x", "search.x"} <= names
    assert not any("voice will NOT be supported" in e["message"] for e in lines)


# -- the per-search line -------------------------------------------------------------------
async def test_one_info_line_per_search_with_ids_counts_and_timings(env, fake_discord,
                                                                    fake_pixabay, caplog):
    caplog.set_level(logging.INFO, logger="bot.searches")
    phrase = "a red circle on snow, private words"
    faulty = [e.id for e in fake_pixabay.entries if e.scene.shape == "circle"
              and e.scene.colour == "blue"]
    for i in faulty:
        fake_pixabay.set_image_fault(i, "missing")
    async with running_bot(Settings.from_mapping(env)):
        inter, reply = await search(fake_discord, tag="circle", phrase=phrase)
        missing = sum(1 for i in faulty if fake_pixabay.requests_for_image(i))
        assert missing  # some faulty images were among the candidates
        (line,) = search_lines(caplog)
        assert line["outcome"] == "results"
        assert (line["guild"], line["channel"], line["member"], line["interaction"]) == (
            fake_discord.guild_id, fake_discord.channels["general"].id,
            fake_discord.members["alice"].id, inter.id)
        assert (line["source"], line["tag"], line["phrase_chars"]) == ("pixabay", "circle",
                                                                       len(phrase))
        assert line["candidates"] == 60 and line["ranked"] == 60 - missing
        assert (line["cache"], line["api_cached"], line["downloaded"]) == ("cold", False,
                                                                           60 - missing)
        assert line["skipped"] == {"http 404": missing}
        assert {"api_ms", "download_ms", "decode_ms", "encode_ms", "rank_ms",
                "total_ms", "seconds"} <= set(line)
        (text,) = [r.getMessage() for r in caplog.records if r.name == "bot.searches"]
        assert text.startswith('search outcome=results guild=')
        assert ' tag="circle" phrase_chars=35 ' in text
        assert f' skipped={{"http 404":{missing}}} ' in text

        await search(fake_discord, tag="circle", phrase="a green circle")
        warm = search_lines(caplog)[-1]
        assert (warm["cache"], warm["api_cached"], warm["downloaded"]) == ("warm", True, 0)
    # the phrase's words appear in no line at all, at any level
    assert not any("private words" in r.getMessage() for r in caplog.records)
    assert len(search_lines(caplog)) == 2


async def test_refusals_and_failures_are_one_line_each_with_their_outcome(
        env, fake_discord, fake_pixabay, caplog):
    caplog.set_level(logging.INFO, logger="bot.searches")
    env["USER_COOLDOWN_SECONDS"] = "60"
    async with running_bot(Settings.from_mapping(env)):
        await ephemeral_error(fake_discord, tag="zebra", phrase="a zebra")  # no images
        await ephemeral_error(fake_discord, tag="circle", phrase="again")  # cooldown
        fake_pixabay.rate_limit = 0
        for user, options in (("bob", {"safe": False}), ("admin", {})):
            inter = await fake_discord.invoke(
                "findimage", {"tag": "circle", "phrase": "a red circle", **options}, user=user)
            await fake_discord.wait_for(
                lambda i=inter: any(m.ephemeral for m in i.followups) or (
                    i.original is not None and i.original.ephemeral and not i.original.loading),
                30, what="an ephemeral reply")
    outcomes = [(line["member"], line["outcome"], line["tag"]) for line in search_lines(caplog)]
    ids = fake_discord.members
    assert outcomes == [(ids["alice"].id, "no_results", "zebra"),
                        (ids["alice"].id, "cooldown", "circle"),
                        (ids["bob"].id, "refused", "circle"),
                        (ids["admin"].id, "rate_limited", "circle")]


async def test_busy_is_logged_as_busy(env, fake_discord, fake_pixabay, caplog):
    caplog.set_level(logging.INFO, logger="bot.searches")
    env["MAX_CONCURRENT_SEARCHES"] = "1"
    async with running_bot(Settings.from_mapping(env)):
        fake_pixabay.hang_next(1)
        waiting = [await fake_discord.invoke("findimage", {"tag": t, "phrase": "x"}, user=u)
                   for t, u in (("circle", "alice"), ("square", "bob"), ("star", "admin"))]
        await fake_pixabay.wait_for_hung(1, timeout=20)
        await fake_discord.wait_for(lambda: all(i.callbacks for i in waiting), 20)
        turned_away = await fake_discord.invoke("findimage", {"tag": "cross", "phrase": "x"},
                                                user="owner")
        assert (await turned_away.wait_reply()).ephemeral
        fake_pixabay.release_hung()
        for i in waiting:
            await answered(fake_discord, i)
    by_id = {line["interaction"]: line["outcome"] for line in search_lines(caplog)}
    assert by_id == {turned_away.id: "busy", **{i.id: "results" for i in waiting}}


async def test_unexpected_error_logs_one_traceback_with_the_interaction_id(
        env, fake_discord, caplog):
    caplog.set_level(logging.INFO, logger="bot")
    async with running_bot(Settings.from_mapping(env)):
        gate = fake_discord.set_pause_before("POST", "/webhooks/*")
        inter = await fake_discord.invoke("findimage", {"tag": "circle", "phrase": "a circle"})
        await gate.wait_reached(60)
        fake_discord.expire_interaction(inter)  # the answer can no longer be sent
        gate.release()
        await fake_discord.wait_for(  # the apology cannot be delivered either
            lambda: any(r.getMessage().startswith("could not deliver an error reply")
                        for r in caplog.records), 30, what="the apology's failure")
    tracebacks = [r for r in caplog.records if r.exc_info]
    (error,) = tracebacks
    assert error.getMessage() == f"command findimage failed (interaction {inter.id})"
    assert error.exc_info[0].__name__ in ("HTTPException", "Forbidden", "NotFound")
    (line,) = search_lines(caplog)
    assert (line["interaction"], line["outcome"]) == (inter.id, "error")


async def test_shares_and_page_turns_are_debug_lines(env, fake_discord, caplog):
    caplog.set_level(logging.DEBUG, logger="bot")
    async with running_bot(Settings.from_mapping(env)):
        _, reply = await search(fake_discord, tag="square", phrase="a green square")
        await reactions_added(fake_discord, reply.id, (NEXT, *NUMBERS[:5]))
        shared = image_id(reply.embeds[0])
        before = len(fake_discord.messages)
        await fake_discord.react(reply.id, NUMBERS[0], user="bob")
        await fake_discord.wait_for(lambda: len(fake_discord.messages) > before, 30)
        await press(fake_discord, reply.id, NEXT, user="alice")
        await fake_discord.wait_for(lambda: "page 2/" in fake_discord.messages[reply.id].content,
                                    20)
        await fake_discord.wait_for(
            lambda: any(r.getMessage().startswith("page turn") for r in caplog.records), 10)
    lines = {r.getMessage().split(" ")[0]: r for r in caplog.records
             if r.name.startswith("bot.cogs")}
    share, turn = lines["share"], lines["page"]
    assert share.levelno == turn.levelno == logging.DEBUG
    bob = fake_discord.members["bob"].id
    assert f"member={bob} image={shared} rank=1 attached=True" in share.getMessage()
    alice = fake_discord.members["alice"].id
    assert turn.getMessage() == f"page turn message={reply.id} member={alice} page=2/12"


# -- the real entry point --------------------------------------------------------------------
async def test_bot_process_logs_json_lines_with_the_search_and_no_secret(env, fake_discord,
                                                                         tmp_path):
    env.update(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    returncode, out = await search_in_a_bot_process(env, fake_discord, tmp_path)
    assert returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    assert "root" not in {e["logger"] for e in lines}
    assert any(e["logger"].startswith("open_clip") for e in lines)  # DEBUG shows libraries
    (found,) = [e for e in lines if e["logger"] == "bot.searches"]
    assert found["level"] == "INFO" and found["search"]["outcome"] == "results"
    assert found["search"]["phrase_chars"] == len("a red circle on snow")
    # our lines never carry the phrase (discord.py's own DEBUG lines dump gateway events)
    assert not any("a red circle on snow" in json.dumps(e) for e in lines
                   if e["logger"].startswith(("bot", "search")))
    assert fake_discord.token not in out and env["PIXABAY_API_KEY"] not in out


def test_log_guard_fails_a_test_whose_log_shows_the_fakes_token(tmp_path):
    (tmp_path / "test_leak.py").write_text(textwrap.dedent("""
        import logging
        from tests.log_guard import SECRETS

        def test_leaks():
            logging.getLogger("bot").debug("logging in with %s", SECRETS[0])

        def test_leaks_key_in_a_traceback():
            try:
                raise ValueError("GET /api/?key=" + SECRETS[1])
            except ValueError:
                logging.getLogger("search").exception("failed")

        def test_clean():
            logging.getLogger("bot").info("nothing secret")
    """))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.log_guard", "-o", "log_level=DEBUG",
         "-p", "no:cacheprovider", "-q", str(tmp_path / "test_leak.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert "2 failed, 1 passed" in out.stdout, out.stdout + out.stderr
    assert "a captured log line shows the fakes' token or key" in out.stdout


async def test_search_cli_verbose_logs_through_the_same_set_up(fake_pixabay, tmp_path):
    from tests.conftest import engine_env

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search", "-v", "--candidates", "5", "circle", "a red circle",
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin",
                           **engine_env(fake_pixabay, tmp_path / "data")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0
    text = err.decode()
    assert " INFO search.clip.worker: CLIP " in text  # our INFO lines: the model loaded
    assert " root: " not in text and " open_clip" not in text  # open_clip's INFO is dropped
