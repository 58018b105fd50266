"""What a newcomer meets first: the demo with no account, the fakes as a service, `make
clean` that keeps the data, the score scale explained, and messages that name the right
thing and say what to do."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.fakes.pixabay import default_catalogue
from tests.test_cli import cli

ROOT = Path(__file__).parent.parent
# Run as a member would from a shell: under `make test` the outer make's MAKEFLAGS and
# MAKELEVEL would make this one print "Entering/Leaving directory" lines.
MAKE = ("make", "--no-print-directory")
CATALOGUE = {e.id: e.scene for e in default_catalogue(10)}


def table_ids(block: str) -> list[int]:
    return [int(m[1]) for m in re.finditer(r"^\s+\d+\s+[\d.]+\s+(\d+)\s", block, re.M)]


# -- make demo --------------------------------------------------------------------------
def test_make_demo_runs_the_demo_module():
    done = subprocess.run([*MAKE, "-n", "demo"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines()[-1].endswith("-m bench.demo")


async def test_the_demo_runs_a_cold_a_warm_and_a_sheet_query_from_a_fresh_data_dir(tmp_path):
    data = tmp_path / "fresh" / "demo"  # does not exist yet, as on a fresh clone
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.demo", "--data-dir", str(data), cwd=ROOT,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    out = out.decode()
    assert proc.returncode == 0, out + err.decode()
    _, cold, warm, sheet = re.split(r"^\$ python -m search ", out, flags=re.M)
    assert cold.startswith("circle 'a red circle on snow'")
    assert "200 candidates ranked;" in cold and "from cache" not in cold
    assert "from cache" in warm
    captions = [CATALOGUE[i].caption for i in table_ids(cold)]
    assert captions == ["a red circle on snow"] * 5, captions
    assert {CATALOGUE[i].caption for i in table_ids(warm)} == {"a blue circle on grass"}
    grid = data / "grid.png"
    assert out.rstrip().endswith(f"contact sheet: {grid.resolve()}")
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.width > 300
    assert len(table_ids(sheet)) == 9


def test_the_demo_never_empties_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "bot.sqlite3").write_bytes(b"members' picks")
    done = subprocess.run([sys.executable, "-m", "bench.demo", "--data-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip() == (f"error: {tmp_path} exists and is not the demo's own "
                                   "folder; give another with --data-dir.")
    assert (tmp_path / "bot.sqlite3").read_bytes() == b"members' picks"


# -- python -m bench.fakes ----------------------------------------------------------------
def free_ports(n: int) -> int:
    """A base port with the n ports from it free now (the fakes bind them at once)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            socks = [socket.create_server(("127.0.0.1", base + i)) for i in range(n)]
        except OSError:
            continue
        for s in socks:
            s.close()
        return base
    raise RuntimeError("no free ports")


async def read_env_lines(stdout: asyncio.StreamReader) -> dict[str, str]:
    env: dict[str, str] = {}
    while "CLIP_BACKEND" not in env:
        line = (await asyncio.wait_for(stdout.readline(), 120)).decode()
        assert line, "the fakes ended before printing their settings"
        if not line.startswith("#"):
            name, _, value = line.strip().partition("=")
            env[name] = value
    return env


async def test_the_fakes_serve_on_fixed_ports_and_print_the_settings_for_the_cli_and_bot(
        tmp_path):
    base = free_ports(3)
    fakes = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fakes", "--port", str(base), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    bot = None
    try:
        env = await read_env_lines(fakes.stdout)
        assert env["PIXABAY_API_URL"] == f"http://127.0.0.1:{base}/api/"
        assert env["OPENVERSE_API_URL"] == f"http://127.0.0.1:{base + 1}/v1/"
        assert env["DISCORD_API_BASE"] == f"http://127.0.0.1:{base + 2}/api/v10"
        env_file = tmp_path / "fakes.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items())
                            + f"DATA_DIR={tmp_path / 'data'}\n")
        # the CLI, pointed at them by that file alone
        cli_run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "search", "--env-file", str(env_file), "--json", "--top", "3",
            "square", "a green square on grass", cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli_run.communicate(), 300)
        assert cli_run.returncode == 0, err.decode()
        hits = json.loads(out)["hits"]
        assert {CATALOGUE[h["id"]].caption for h in hits} == {"a green square on grass"}
        # the bot, and a member's command typed into the fakes' console
        bot = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--env-file", str(env_file), cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"}, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        while b"online as" not in (line := await asyncio.wait_for(bot.stderr.readline(), 300)):
            assert line, "the bot stopped before it was online"
        fakes.stdin.write(b'/findimage tag:circle phrase:"a red circle on snow" '
                          b'layout:list count:3\n')
        await fakes.stdin.drain()
        reply = []  # each version the member sees, the last one final
        while not (line := (await asyncio.wait_for(fakes.stdout.readline(), 300)).decode()
                   ).startswith("(the bot added its reactions"):
            assert line, "the fakes ended before the reply"
            reply = [] if line.startswith("**") else reply  # a new version of the page
            reply.append(line)
        titles = [line.split() for line in reply if line.startswith("  #")]
        assert [t[0] for t in titles] == ["#1", "#2", "#3"], reply
        ids = [int(t[-1].rstrip("/").rsplit("-", 1)[1]) for t in titles]
        assert {CATALOGUE[i].caption for i in ids} == {"a red circle on snow"}, reply
    finally:
        for proc in (bot, fakes):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
    assert fakes.returncode == 0


# -- make clean / make clean-data ---------------------------------------------------------
def project_copy(tmp_path: Path) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copy(ROOT / "Makefile", work)
    (work / "data").mkdir()
    (work / "data" / "bot.sqlite3").write_bytes(b"the members' picks")
    (work / "data" / "search.sqlite3").write_bytes(b"caches")
    for folder in (".pytest_cache", ".ruff_cache", "search/__pycache__", "x.egg-info"):
        (work / folder).mkdir(parents=True)
    return work


def test_make_clean_removes_build_outputs_and_keeps_the_members_picks(tmp_path):
    work = project_copy(tmp_path)
    subprocess.run([*MAKE, "clean"], cwd=work, check=True, capture_output=True)
    assert (work / "data" / "bot.sqlite3").read_bytes() == b"the members' picks"
    assert not any((work / f).exists() for f in (".pytest_cache", ".ruff_cache",
                                                 "search/__pycache__", "x.egg-info"))


def test_make_clean_data_says_what_it_removes_then_removes_data_dir(tmp_path):
    work = project_copy(tmp_path)
    done = subprocess.run([*MAKE, "clean-data"], cwd=work, capture_output=True, text=True,
                          check=True)
    assert "bot.sqlite3 (the members' picks" in done.stdout
    assert "back it up first" in done.stdout
    assert "search.sqlite3" in done.stdout.splitlines()[-1]  # the listing of what it held
    assert not (work / "data").exists()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    refused = subprocess.run([*MAKE, "clean-data", f"DATA_DIR={other}"], cwd=work,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and (other / "holiday.jpg").exists()
    assert "holds none of /findimage's files: left alone." in refused.stdout


# -- the score scale ----------------------------------------------------------------------
async def test_cli_help_explains_the_table_and_json_score_scales(fake_pixabay, tmp_path):
    code, out, _ = await cli(fake_pixabay, tmp_path, "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "score: the cosine similarity" in text
    assert "100 x cosine, floored at 0, with one decimal (75.0)" in text
    assert "--json gives the cosine itself (0.749622)" in text
    # and that is what the two outputs show for the same hits
    code, table, _ = await cli(fake_pixabay, tmp_path, "circle", "a red circle", "--top", "3")
    code, raw, _ = await cli(fake_pixabay, tmp_path, "circle", "a red circle", "--top", "3",
                             "--json")
    shown = [float(m[1]) for m in re.finditer(r"^\s+\d+\s+([\d.]+)\s", table, re.M)]
    assert shown == [round(max(0.0, h["score"]) * 100, 1) for h in json.loads(raw)["hits"]]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`--json` the cosine itself (`0.749622`)" in readme


# -- what --check contacts ----------------------------------------------------------------
def test_check_help_says_what_it_contacts():
    done = subprocess.run([sys.executable, "-m", "bot", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    text = " ".join(done.stdout.split())
    assert "never goes online" not in text
    assert ("It logs in to Discord over REST (never the gateway: the bot does not appear "
            "online), sends Pixabay one search, and asks the model hub when the weights are "
            "not cached") in text
    operations = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert "sudo sh deploy/check-as-service.sh" in operations


# -- messages that name the right thing ---------------------------------------------------
async def test_an_overlong_tag_for_openverse_does_not_mention_pixabay(fake_pixabay, tmp_path):
    code, out, err = await cli(fake_pixabay, tmp_path, "t" * 500, "x", "--source", "openverse")
    assert code == 2
    assert err == "error: The tag is 500 characters; use one of at most 100.\n"


async def test_cli_image_that_is_not_a_picture_is_told_in_the_cli_words(fake_pixabay,
                                                                       tmp_path):
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "--image", str(ROOT /
                                                                               "README.md"))
    assert code == 2 and out == ""
    assert err == (f"error: --image {ROOT / 'README.md'} is not a picture I can read; give a "
                   "JPEG, PNG, GIF or WebP file.\n")
    assert fake_pixabay.api_requests == 0  # refused before any search


async def test_cuda_without_a_gpu_says_to_use_auto_or_cpu(fake_pixabay, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle",
                             CLIP_DEVICE="cuda")
    assert code == 2
    assert err == ("error: CLIP_DEVICE=cuda, but torch sees no CUDA GPU (no driver, or a "
                   "CPU-only torch) here; use CLIP_DEVICE=auto or cpu.\n")


async def test_a_line_the_env_file_cannot_parse_is_named_with_its_file(fake_pixabay, tmp_path):
    env_file = tmp_path / "findimage.env"
    env_file.write_text('SEARCH_CANDIDATES=40\n"DISCORD_TOKEN secret-token\nUSER_COOLDOWN_SECONDS=0\n')
    code, _, err = await cli(fake_pixabay, tmp_path, "--env-file", str(env_file), "circle", "x")
    assert code == 2
    assert err == (f"error: The env file {env_file}, line 2, is not NAME=value; fix it or "
                   "remove it (# starts a comment).\n")
    assert "secret-token" not in err


async def test_a_mistyped_setting_is_warned_about_once_naming_the_close_match(fake_pixabay,
                                                                            tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SEARCH_CANDIDATE=40\nCLIP_THREADS=2\nHF_TOKEN=x\n")
    code, out, err = await cli(fake_pixabay, tmp_path, "--json", "circle", "a red circle",
                               USER_COOLDOWN_SECOND="5", SOME_OTHER_TOOL="1")
    assert code == 0, err
    assert sorted(err.splitlines()) == sorted([
        "SEARCH_CANDIDATE (in .env) is not a setting /findimage reads, so it is ignored; "
        "did you mean SEARCH_CANDIDATES?",
        "CLIP_THREADS (in .env) is not a setting /findimage reads, so it is ignored; "
        "python -m bot --help lists the settings.",
        "USER_COOLDOWN_SECOND (in the environment) is not a setting /findimage reads, so it "
        "is ignored; did you mean USER_COOLDOWN_SECONDS?",
    ])
    assert json.loads(out)["candidates"] == 200  # the typo changed nothing

