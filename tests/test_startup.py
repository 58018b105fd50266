"""Start-up order: settings, inputs and DATA_DIR are checked before torch is imported, and
each mistake is one line on stderr with exit 2, in the CLI and in the bot alike."""

import asyncio
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.conftest import bot_env, engine_env

# Runs an entry point's main() in a fresh process, then says whether torch got imported.
PROBE = """
import sys
from {package}.__main__ import main
code = main({args})
print("torch imported" if "torch" in sys.modules else "torch not imported")
sys.exit(code)
"""


def read_only(cmd: list[str], folder: Path) -> list[str]:
    """``cmd`` run where ``folder`` is read-only (a read-only volume, a foreign owner).

    A normal user gets mode 555; root ignores modes, so root's child gets a private
    read-only bind mount of the folder instead.
    """
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return cmd
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a folder read-only")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(folder), *cmd]


async def probe(package: str, env: dict[str, str], cwd: Path, args: list[str] | None = None,
                wrap=None) -> tuple[int, str, str]:
    cmd = [sys.executable, "-c", PROBE.format(package=package,
                                              args=repr(args) if args is not None else "")]
    if wrap is not None:
        cmd = wrap(cmd)
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=cwd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd()), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


def make_data_dir(data: Path, *, state: bytes | None = None, state_version: int | None = None
                  ) -> Path:
    data.mkdir()
    if state is not None:
        (data / "bot.sqlite3").write_bytes(state)
    if state_version is not None:
        with sqlite3.connect(data / "bot.sqlite3") as conn:
            conn.execute(f"PRAGMA user_version = {state_version}")
    return data


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: "):-1]


# -- the CLI --------------------------------------------------------------------------
DEFAULT_MODEL_ENV = {"PIXABAY_API_KEY": "k"}  # the default zoo model: it would need the hub


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["circle", ""], {}, "The phrase is empty; describe the picture you want, such as "
                         "'tiger playing in the snow'."),
    (["", "a red circle"], {}, "The tag is empty; give one word such as 'tiger'."),
    (["t" * 101, "x"], {}, "The tag is 101 characters; use one of at most 100."),
    (["circle", "x" * 301], {}, "The phrase is 301 characters; keep it under 300."),
    (["circle", "x", "--candidates", "501"], {},
     "candidates must be from 1 to 500; Pixabay serves at most 500."),
    (["circle", "x", "--top", "51"], {}, "top must be from 1 to 50."),
    (["circle", "x", "--colors", "mauve"], {}, "colors must be one of grayscale, transparent, "
     "red, orange, yellow, green, turquoise, blue, lilac, pink, white, gray, black, brown, "
     "not 'mauve'."),
    (["circle", "x"], {"CLIP_DEVICE": "tpu"}, "CLIP_DEVICE must be auto, cpu, cuda or cuda:N, "
                                             "not 'tpu'."),
    (["circle", "x"], {"PIXABAY_API_KEY": ""}, "PIXABAY_API_KEY is not set; put your key from "
     "https://pixabay.com/api/docs/ in the environment or in .env (see .env.example), or "
     "search Openverse, which needs no key: SEARCH_SOURCE=openverse (the CLI: --source "
     "openverse)."),
])
async def test_cli_input_and_settings_errors_come_before_torch(tmp_path, args, env, expected):
    code, out, err = await probe("search", {**DEFAULT_MODEL_ENV, "DATA_DIR": str(tmp_path / "d"),
                                            **env}, tmp_path, args)
    assert (code, one_line(err)) == (2, expected)
    assert out == "torch not imported\n"


async def test_cli_data_dir_that_is_a_file_is_one_line_before_torch(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    code, out, err = await probe("search", {**DEFAULT_MODEL_ENV, "DATA_DIR": str(tmp_path / "data")},
                                 tmp_path, ["circle", "a red circle"])
    assert (code, one_line(err)) == (
        2, f"DATA_DIR '{tmp_path / 'data'}' is a file, not a folder; point DATA_DIR at a folder.")
    assert out == "torch not imported\n"


async def test_cli_read_only_data_dir_is_one_line_before_torch(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    code, out, err = await probe("search", {**DEFAULT_MODEL_ENV, "DATA_DIR": str(data)},
                                 tmp_path, ["circle", "a red circle"],
                                 wrap=lambda cmd: read_only(cmd, data))
    assert code == 2
    assert one_line(err).startswith(f"DATA_DIR '{data}' cannot be written (read-only file system"
                                    if os.geteuid() == 0 else
                                    f"DATA_DIR '{data}' cannot be written (permission denied")
    assert out == "torch not imported\n"


async def test_cli_missing_data_dir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    code, out, err = await probe("search", {**DEFAULT_MODEL_ENV,
                                            "DATA_DIR": str(tmp_path / "file" / "data")},
                                 tmp_path, ["circle", "a red circle"])
    assert (code, one_line(err)) == (
        2, f"DATA_DIR '{tmp_path / 'file' / 'data'}' cannot be created: '{tmp_path / 'file'}' "
           "is a file, not a folder; point DATA_DIR at a folder elsewhere, or move that file "
           "aside.")


async def test_cli_unreachable_pixabay_names_the_url_and_the_setting(fake_pixabay, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/"
    env = {"PATH": "/usr/bin:/bin", **engine_env(fake_pixabay, tmp_path / "data"),
           "PIXABAY_API_URL": url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search", "circle", "a red circle", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 3
    assert one_line(err.decode()) == (f"Cannot reach Pixabay at {url} (ClientConnectorError); "
                                      "check the network or PIXABAY_API_URL.")


async def test_cli_refuses_a_cache_from_a_newer_release(fake_pixabay, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "search.sqlite3") as conn:
        conn.execute("PRAGMA user_version = 9")
    env = {"PATH": "/usr/bin:/bin", **engine_env(fake_pixabay, data)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search", "circle", "a red circle", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2
    assert one_line(err.decode()).startswith(f"{data / 'search.sqlite3'} was written by a newer "
                                             "findimage (schema 9; this one reads up to 3)")


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


# -- the bot --------------------------------------------------------------------------
@pytest.fixture
def env(fake_discord, fake_pixabay, tmp_path):
    return bot_env(fake_discord, fake_pixabay, tmp_path / "data")


async def test_bot_missing_token_is_one_line_before_torch(tmp_path):
    code, out, err = await probe("bot", {"PIXABAY_API_KEY": "k", "DATA_DIR": str(tmp_path)},
                                 tmp_path)
    assert (code, one_line(err)) == (2, "DISCORD_TOKEN is not set; put it in the environment "
                                        "or in .env (see .env.example).")
    assert out == "torch not imported\n"


async def test_bot_wrong_token_is_refused_before_the_model_loads(env, tmp_path):
    env["DISCORD_TOKEN"] = "not-the-token"
    env.pop("CLIP_MODEL")  # the default zoo model: loading it would need the hub
    code, out, err = await probe("bot", env, tmp_path)
    # the bot's log is on by now; its last line is the one sentence, and no traceback
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == ("error: Discord refused DISCORD_TOKEN; copy the token again "
                                    "from the Developer Portal (Bot → Reset Token).")
    assert out == "torch not imported\n"


async def test_bot_read_only_data_dir_is_one_line_before_torch(env, tmp_path):
    data = make_data_dir(Path(env["DATA_DIR"]))
    code, out, err = await probe("bot", env, tmp_path, wrap=lambda cmd: read_only(cmd, data))
    assert code == 2
    assert one_line(err).startswith(f"DATA_DIR '{data}' cannot be written (")
    assert out == "torch not imported\n"


async def test_bot_data_dir_that_is_a_file_is_one_line(env, tmp_path):
    (tmp_path / "data").write_text("oops")
    code, out, err = await probe("bot", env, tmp_path)
    assert (code, one_line(err)) == (2, f"DATA_DIR '{env['DATA_DIR']}' is a file, not a "
                                        "folder; point DATA_DIR at a folder.")


async def test_bot_corrupt_state_file_is_one_line_naming_it(env, tmp_path):
    data = make_data_dir(Path(env["DATA_DIR"]), state=b"not a database at all " * 200)
    code, out, err = await probe("bot", env, tmp_path)
    assert code == 2
    assert one_line(err).startswith(f"DATA_DIR file {data / 'bot.sqlite3'} is corrupt (")
    assert "restore it from a backup" in err
    assert out == "torch not imported\n"
    assert read_bytes(data / "bot.sqlite3") == b"not a database at all " * 200  # untouched


async def test_bot_state_from_a_newer_release_is_refused(env, tmp_path):
    from search.storage.database import head_number

    newer = head_number("state") + 1
    data = make_data_dir(Path(env["DATA_DIR"]), state_version=newer)
    code, out, err = await probe("bot", env, tmp_path)
    assert (code, one_line(err)) == (
        2, f"{data / 'bot.sqlite3'} was written by a newer findimage (schema {newer}; this one "
           f"reads up to {head_number('state')}); upgrade findimage or point DATA_DIR at another folder.")



async def test_cli_without_the_hub_and_without_cached_weights_is_one_line(fake_pixabay,
                                                                          tmp_path):
    import socket

    with socket.socket() as s:  # a hub endpoint nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", **engine_env(fake_pixabay, tmp_path / "data"),
           "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")}
    env.pop("CLIP_MODEL")  # the default zoo model, not downloaded in this empty HF_HOME
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search", "circle", "a red circle", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 75  # the hub may come back: a temporary failure, not a setting
    assert one_line(err.decode()) == (
        "The CLIP weights for 'ViT-B-32-256' are not downloaded yet and the model hub at "
        "http://127.0.0.1 cannot be reached (Connection refused); connect this machine once, "
        "or set CLIP_MODEL=local-dir:/path to a saved model.")
    assert fake_pixabay.api_requests == 0


async def test_a_malformed_database_url_is_one_line_with_exit_2_and_no_password(env, tmp_path):
    env = {**env, "DATABASE_URL": "mysql://me:hunter2@db.example/findimage"}
    code, out, err = await probe("bot", env, tmp_path)
    assert (code, one_line(err), out) == (
        2, "DATABASE_URL must look like postgresql://user@host:5432/database (leave it empty "
           "for SQLite in DATA_DIR), not 'mysql://…@db.example/findimage'.",
        "torch not imported\n")


async def test_a_database_that_does_not_exist_is_one_line_with_exit_2_before_the_model(
        env, tmp_path, pg_url):
    missing = pg_url + "_missing"
    code, out, err = await probe("bot", {**env, "DATABASE_URL": missing}, tmp_path)
    assert code == 2 and out == "torch not imported\n"
    assert one_line(err).startswith(f"PostgreSQL at {missing.split('@', 1)[1]} refused the "
                                    "connection (")


async def test_an_unreachable_database_server_is_one_line_with_a_restartable_exit(env, tmp_path):
    from tests.pg import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/findimage"
    code, out, err = await probe("bot", {**env, "DATABASE_URL": url}, tmp_path)
    assert code == 1 and out == "torch not imported\n"  # systemd restarts on 1, not on 2
    line = one_line(err)
    assert line.startswith(f"PostgreSQL at 127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}"
                           "/findimage is not answering (")
    assert line.endswith("; start it, or check DATABASE_URL.")
