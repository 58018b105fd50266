"""The reader as a Ray Serve application (``python -m search.serve``), driven over HTTP.

One real service, with the tiny model on CPU, serves the whole test session (Ray takes
tens of seconds to start on two cores); the test that kills a service starts its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
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

pytest.importorskip("ray.serve", reason="Ray Serve is installed by make test ('serve' extra)")

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

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp),
            "CLIP_MODEL": f"local-dir:{TINY_CLIP}", "CLIP_DEVICE": "cpu",
            "CLIP_BACKEND": "torch", "DATA_DIR": str(self.tmp / "data"),
            "SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(self.port),
            "RAY_TMPDIR": str(self.tmp / "ray"),
        }

    async def start(self) -> Service:
        (self.tmp / "ray").mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "search.serve", "--env-file", "/dev/null", cwd=self.tmp,
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
        if self.proc is None or self.proc.returncode is not None:
            self.kill()
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            pass
        self.kill()


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
    from tests.fakes.pixabay import _render

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
