"""The reader as a Ray Serve application (``python -m search.serve``), driven over HTTP.

One real service, with the tiny model on CPU, serves the whole test session (Ray takes
tens of seconds to start on two cores); the test that kills a service starts its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from search.inference import (
    MAX_IMAGE_BYTES,
    InferenceMismatch,
    InferenceRefused,
    InferenceUnavailable,
    RemoteEncoder,
    model_label,
    pack_images,
)
from tests.conftest import TINY_CLIP

SERVICE_START_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``python -m search.serve`` in its own process group, on a free loopback port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        # Ray's sockets live under its temp folder: a unix socket path has 107 bytes at most.
        self.ray_tmp = tempfile.mkdtemp(prefix="fi-ray-", dir="/tmp")

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp),
            "CLIP_MODEL": f"local-dir:{TINY_CLIP}", "CLIP_DEVICE": "cpu",
            "CLIP_BACKEND": "torch", "DATA_DIR": str(self.tmp / "data"),
            "SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(self.port),
            "RAY_TMPDIR": self.ray_tmp,
        }

    async def start(self) -> Service:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "search.serve", cwd=self.tmp,
            env=self.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        assert self.proc.stdout is not None
        async def ready() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError("the service exited:\n" + "".join(self.output[-40:]))
                text = line.decode(errors="replace")
                self.output.append(text)
                if text.startswith("serving "):
                    return
        await asyncio.wait_for(ready(), SERVICE_START_TIMEOUT)
        asyncio.ensure_future(self._drain())
        return self

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.output.append(line.decode(errors="replace"))

    def kill(self) -> None:
        """kill -9 of the service's whole process group (Ray's workers included)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                await asyncio.wait_for(self.proc.wait(), 60)
            except (ProcessLookupError, TimeoutError):
                pass
        self.kill()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def reader_service(tmp_path_factory):
    """One real service for the session (its own event loop: each test has its own)."""
    service = Service(tmp_path_factory.mktemp("serve"))
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(service.start())
        yield service
    finally:
        loop.run_until_complete(service.stop())
        loop.close()


def scene_jpegs(catalogue, n: int) -> list[bytes]:
    from bench.fakes.pixabay import _render

    return [_render(e, 340, None, (1, 1))[0] for e in catalogue[:n]]


async def test_vectors_over_the_service_match_in_process_ones(reader_service, tiny_encoder,
                                                             catalogue):
    from search.serve import BytesReader

    datas = scene_jpegs(catalogue, 60)
    async with aiohttp.ClientSession() as session:
        remote = RemoteEncoder(session, reader_service.url, expect=model_label(
            f"local-dir:{TINY_CLIP}", None))
        ident = await remote.start()
        over = await remote.encode_images(datas)
        phrase = await remote.encode_text("a red circle on snow")
    assert ident.identity == tiny_encoder.identity
    local = await BytesReader(tiny_encoder).vectors(datas)
    here = np.stack(local)
    assert over.ok == list(range(60)) and not over.failed
    assert float((here * over.vectors).sum(1).min()) >= 0.9999
    text = (await tiny_encoder.encode_text("a red circle on snow")).vector
    assert float(text @ phrase.vector) >= 0.9999
    assert list(np.argsort(-(here @ text))[:10]) == list(np.argsort(-(over.vectors
                                                                      @ phrase.vector))[:10])


async def test_files_that_are_not_images_come_back_as_reasons_not_errors(reader_service,
                                                                        catalogue):
    datas = [b"<html>not an image</html>", *scene_jpegs(catalogue, 2)]
    async with aiohttp.ClientSession() as session:
        remote = RemoteEncoder(session, reader_service.url)
        await remote.start()
        got = await remote.encode_images(datas)
    assert got.ok == [1, 2]
    assert got.failed == {0: "not an image"}


async def test_an_image_over_the_cap_is_refused_by_the_service_with_413(reader_service):
    body = pack_images([b"\xff\xd8" + b"\0" * (MAX_IMAGE_BYTES + 1)])
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{reader_service.url}/v1/images", data=body) as resp:
            assert resp.status == 413
            assert "over the cap" in await resp.text()
        async with session.post(f"{reader_service.url}/v1/texts",
                                json={"phrases": ["x" * 5000]}) as resp:
            assert resp.status == 413
        async with session.post(f"{reader_service.url}/v1/images",
                                data=b"\0\0\0\x09short") as resp:
            assert resp.status == 400


async def test_the_client_maps_a_refused_request_to_one_sentence(reader_service):
    async with aiohttp.ClientSession() as session:
        remote = RemoteEncoder(session, reader_service.url)
        await remote.start()
        with pytest.raises(InferenceRefused) as refused:
            await remote._call("POST", "/texts", json_body={"phrases": ["x" * 5000]})
    assert refused.value.status == 413
    assert str(refused.value).startswith(f"The image model service at {reader_service.url} "
                                         "refused the images")


async def test_a_service_of_another_model_is_refused_at_start(reader_service):
    async with aiohttp.ClientSession() as session:
        remote = RemoteEncoder(session, reader_service.url, expect="ViT-B-32/laion2b_s34b_b79k")
        with pytest.raises(InferenceMismatch) as mismatch:
            await remote.start()
    assert "serves local-dir:tiny-clip" in str(mismatch.value)
    assert "ViT-B-32/laion2b_s34b_b79k" in str(mismatch.value)


async def test_an_unreachable_service_is_one_sentence_naming_it():
    url = f"http://127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        remote = RemoteEncoder(session, url, retry_wait=0.01)
        with pytest.raises(InferenceUnavailable) as down:
            await remote.start(timeout=2)
    assert str(down.value) == (f"The image model service at {url} is not answering right now "
                               "(connection refused); try again in a minute.")


# -- the clients: the CLI and a bot process with INFERENCE_URL ---------------------------
async def test_the_cli_over_the_service_ranks_as_in_process_and_imports_no_torch(
        reader_service, fake_pixabay, tmp_path):
    from tests.test_cli import cli

    args = ("circle", "a red circle on snow", "--top", "10", "--candidates", "60", "--json")
    (tmp_path / "here").mkdir()
    (tmp_path / "thin").mkdir()
    code, out, err = await cli(fake_pixabay, tmp_path / "here", *args)
    assert code == 0, err
    code, over, err = await cli(fake_pixabay, tmp_path / "thin", *args,
                                INFERENCE_URL=reader_service.url, CLIP_BACKEND="auto",
                                PYTHONVERBOSE="1")
    assert code == 0, err[-2000:]
    import json

    assert [h["id"] for h in json.loads(over)["hits"]] == [h["id"]
                                                         for h in json.loads(out)["hits"]]
    imported = [line for line in err.splitlines() if line.startswith("import ")]
    assert imported, "python -v lists every import"
    assert not [m for m in imported if m.split()[1].split(".")[0] in ("torch", "onnxruntime",
                                                                     "open_clip")]


async def test_the_cli_with_an_unreachable_service_exits_3_with_one_line(fake_pixabay,
                                                                       tmp_path):
    from tests.test_cli import cli

    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle",
                               INFERENCE_URL=url)
    assert code == 3
    assert err == (f"error: The image model service at {url} is not answering right now "
                   "(connection refused); try again in a minute.\n")


def mapped_libraries(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1].rsplit("/", 1)[-1] for line in maps if "/" in line}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024


async def test_a_thin_bot_answers_through_the_service_with_no_torch_mapped(
        reader_service, fake_discord, fake_pixabay, tmp_path):
    from tests.conftest import bot_env
    from tests.test_bot import search
    from tests.test_crash_recovery import bot_process

    env = bot_env(fake_discord, fake_pixabay, tmp_path / "data",
                  INFERENCE_URL=reader_service.url, CLIP_BACKEND="auto")
    async with bot_process(env, fake_discord, tmp_path) as proc:
        _, reply = await search(fake_discord, tag="circle", phrase="a red circle on snow")
        assert len(reply.embeds) == 5
        assert fake_pixabay.truth[int(reply.embeds[0]["url"].rstrip("/").rsplit("-", 1)[1])
                                  ].caption == "a red circle on snow"
        libraries = mapped_libraries(proc.pid)
        assert not [name for name in libraries if "torch" in name or "onnxruntime" in name]
        assert rss_mb(proc.pid) < 400  # the in-process encoder's bot is over 1 GB


async def test_a_killed_service_is_one_sentence_and_cached_phrases_still_answer(
        fake_discord, fake_pixabay, tmp_path):
    from tests.conftest import bot_env
    from tests.test_bot import ephemeral_error, search
    from tests.test_crash_recovery import bot_process, until

    service = await Service(tmp_path / "serve").start()
    try:
        env = bot_env(fake_discord, fake_pixabay, tmp_path / "data",
                      INFERENCE_URL=service.url, SEARCH_DEADLINE_SECONDS="20")
        async with bot_process(env, fake_discord, tmp_path):
            _, first = await search(fake_discord, tag="circle", phrase="a red circle on snow")
            # kill -9 of the service's process group mid-search: downloads are on their way
            fake_pixabay.latency = 0.2
            before = fake_pixabay.image_requests
            inter = await fake_discord.invoke("findimage", {"tag": "square",
                                                            "phrase": "a blue square"})
            await until(lambda: fake_pixabay.image_requests > before, 60,
                        "the search's downloads")
            service.kill()
            await fake_discord.wait_for(lambda: any(m.ephemeral for m in inter.followups),
                                        60, what="the member's sentence")
            sentence = next(m for m in inter.followups if m.ephemeral).content
            assert sentence.startswith(f"The image model service at {service.url} is not "
                                       "answering right now (")
            assert sentence.endswith("); try again in a minute.") and "\n" not in sentence
            fake_pixabay.latency = 0.0
            # the tag the bot has cached, with a phrase it has asked before: answered
            _, again = await search(fake_discord, tag="circle", phrase="a red circle on snow")
            assert [e["url"] for e in again.embeds] == [e["url"] for e in first.embeds]
            # a new phrase needs the service: one sentence, never silence
            assert (await ephemeral_error(fake_discord, tag="circle",
                                          phrase="a green circle")).startswith(
                f"The image model service at {service.url} is not answering right now")
    finally:
        await service.stop()


async def test_check_has_a_service_row_instead_of_loading_the_model(reader_service,
                                                                     fake_discord, fake_pixabay,
                                                                     tmp_path):
    from tests.conftest import bot_env
    from tests.test_check import run_bot

    env = bot_env(fake_discord, fake_pixabay, tmp_path / "data",
                  INFERENCE_URL=reader_service.url)
    code, out, err = await run_bot(env, "--check", cwd=tmp_path)
    assert code == 0, out + err
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["settings", "data", "database", "redis",
                                                   "discord", "pixabay", "service", "encode"]
    assert lines[6].startswith(f"✔ service   {reader_service.url} serves local-dir:tiny-clip@")
    assert lines[7].startswith("✔ encode    one image through the service in ")

    down = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_bot({**env, "INFERENCE_URL": down}, "--check", cwd=tmp_path)
    assert code == 1
    assert f"✘ service   The image model service at {down} is not answering" in out
    assert "– encode    not checked: the service must answer first" in out
