"""python -m search: the JSON shape, the contact sheet, and one stderr line per failure."""

import asyncio
import json
import sys

import pytest
from PIL import Image

from tests.conftest import engine_env


async def cli(fake, tmp_path, *args: str, **env: str) -> tuple[int, str, str]:
    """Run the CLI in a subprocess (its own process, like a user's shell) against the fake."""
    full_env = {"PATH": "/usr/bin:/bin", **engine_env(fake, tmp_path / "data"), **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search", *args, cwd=tmp_path, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode, out.decode(), err.decode()


async def test_json_is_one_object_of_the_documented_shape(fake_pixabay, tmp_path):
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle on snow",
                               "--top", "3", "--candidates", "60", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {"tag", "phrase", "candidates", "hits", "timings"} <= set(data)
    assert data["tag"] == "circle" and data["candidates"] == 60
    assert [h["rank"] for h in data["hits"]] == [1, 2, 3]
    for hit in data["hits"]:
        assert set(hit) == {"rank", "id", "score", "page_url", "image_url", "preview_url",
                            "tags", "user"}
    assert fake_pixabay.truth[data["hits"][0]["id"]].caption == "a red circle on snow"
    assert {"api", "download", "decode", "encode", "rank"} <= set(data["timings"])


async def test_table_and_grid_with_one_tile_per_hit(fake_pixabay, tmp_path):
    grid = tmp_path / "sheet.png"
    code, out, err = await cli(fake_pixabay, tmp_path, "star", "a blue star on grass",
                               "--top", "7", "--offset", "2", "--candidates", "40",
                               "--grid", str(grid))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["rank", "score", "id"]
    assert [line.split()[0] for line in lines[1:8]] == [str(r) for r in range(3, 10)]
    assert "Pixabay" in out
    with Image.open(grid) as sheet:
        assert sheet.format == "PNG"
        assert sheet.size == (5 * 256, 2 * 256)  # 7 tiles: a row of 5 and a row of 2


@pytest.mark.parametrize(("args", "env", "code", "message"), [
    (["circle", ""], {}, 2, "error: The phrase is empty"),
    (["circle", "x", "--top", "0"], {}, 2, "error: top must be from 1 to 50."),
    (["circle", "a red circle"], {"PIXABAY_API_KEY": "wrong"}, 3,
     "error: Pixabay rejected the API key; check PIXABAY_API_KEY."),
    (["zebra", "a zebra"], {}, 5, "error: Pixabay has no images tagged 'zebra'"),
    (["circle", "a red circle"], {"CLIP_DEVICE": "tpu"}, 2, "error: CLIP_DEVICE must be"),
    (["circle", "a red circle"], {"PIXABAY_API_KEY": ""}, 2, "error: PIXABAY_API_KEY is not set"),
])
async def test_failure_is_one_line_on_stderr_and_a_nonzero_exit(fake_pixabay, tmp_path, args,
                                                                env, code, message):
    got, out, err = await cli(fake_pixabay, tmp_path, *args, **env)
    assert got == code
    assert out == ""
    assert err.startswith(message) and err.count("\n") == 1


async def test_rate_limited_exit_4_says_when_to_retry(fake_pixabay, tmp_path):
    fake_pixabay.rate_limit = 0
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle")
    assert code == 4
    assert err.startswith("error: Pixabay's rate limit is reached; try again in ")
    assert err.count("\n") == 1


async def test_progress_bar_only_on_a_terminal(fake_pixabay, tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {"PATH": "/usr/bin:/bin", **engine_env(fake_pixabay, tmp_path / "data")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "search", "circle", "a red circle", "--candidates", "30",
        cwd=tmp_path, env=env, stdout=slave, stderr=slave)
    os.close(slave)
    assert await asyncio.wait_for(proc.wait(), 120) == 0
    await asyncio.to_thread(reader.join, 10)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert "download + encode:" in screen and "/30 [" in screen
    # piped, the same command prints the table alone
    code, out, _ = await cli(fake_pixabay, tmp_path, "circle", "a red circle", "--candidates",
                             "30")
    assert code == 0 and "download + encode" not in out


async def test_a_start_on_onnx_runtime_shows_no_random_weights_warning(fake_pixabay, tmp_path):
    # ONNX Runtime (the CPU default) builds the model's architecture without weights first,
    # for its preprocessing facts; open_clip then warns "Model initialized randomly", which
    # an operator reads as a broken install. The weights come from the folder (first start,
    # exported) or from the files checked at that start (second start).
    args = ("circle", "a red circle on snow", "--candidates", "20", "--top", "1", "--json",
            "-v")  # -v: the CLI logs at INFO, as the bot does by default
    env = {"CLIP_BACKEND": "onnx", "CLIP_PRECISION": "fp32"}
    for start in ("first", "second"):
        if start == "second":  # the files made ahead, as `make model` does
            export = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "search.export", "--precision", "fp32", cwd=tmp_path,
                env={"PATH": "/usr/bin:/bin", **engine_env(fake_pixabay, tmp_path / "data"),
                     **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, export_err = await asyncio.wait_for(export.communicate(), 300)
            assert export.returncode == 0, export_err.decode()
        code, out, err = await cli(fake_pixabay, tmp_path, *args, **env)
        assert code == 0, err
        assert "initialized randomly" not in err, f"{start} start: {err}"
        assert " WARNING " not in err, f"{start} start: {err}"
        hit = json.loads(out)["hits"][0]
        assert "circle" in fake_pixabay.truth[hit["id"]].caption  # real weights rank it
    assert "files checked at export" in err  # the second start served the cached files
