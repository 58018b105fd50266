"""``python -m search.serve``: the CLIP reader as a Ray Serve application.

One deployment, ``Reader``, holds the encoder that a bot process would otherwise load
itself (the same settings: ``CLIP_MODEL``, ``CLIP_PRETRAINED``, ``CLIP_DEVICE``,
``CLIP_BACKEND``, ``CLIP_PRECISION``), on ``SERVE_HOST``:``SERVE_PORT`` with
``SERVE_REPLICAS`` replicas. Clients send single files and phrases; ``@serve.batch``
gathers them across requests and clients into the encoder's batches. On a GPU the
files are decoded by nvjpeg on the device, as in-process; elsewhere by PIL on the
replica's decode threads. The wire is in ``search.inference``.

On a cluster: ``ray start --head --port 6380`` on the first machine, ``ray start
--address HEAD:6380`` on each other one, then this same command on the head with
``RAY_ADDRESS=HEAD:6380``; replicas spread over the machines' GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import ray
from ray import serve

from . import logs
from .config import Settings
from .errors import ImageSkipped, SearchError
from .hub import check_weights_reachable
from .inference import (
    API,
    MAX_IMAGE_BYTES,
    MAX_IMAGES_PER_REQUEST,
    MAX_PHRASE_CHARS,
    MAX_PHRASES_PER_REQUEST,
    MAX_REQUEST_BYTES,
    ServiceIdentity,
    WireError,
    pack_vectors,
    unpack_images,
)

log = logging.getLogger("search.serve")

# Files gathered into one encoder call across every client. The encoder's own worker
# splits them into its micro-batches (16 on CPU, 256 on CUDA); waiting a few ms lets
# concurrent clients' files meet in one batch without delaying a lone one much.
IMAGE_BATCH = 256
IMAGE_BATCH_WAIT = 0.005
TEXT_BATCH = 64
TEXT_BATCH_WAIT = 0.002


class BytesReader:
    """Image files to vectors, decoded as in-process: nvjpeg batches on CUDA (what that
    decoder should not take goes to Pillow), Pillow on the decode threads elsewhere."""

    def __init__(self, encoder: Any) -> None:
        from .decode import Decoder
        from .embed import Embedder

        self.encoder = encoder
        self.decoder = Decoder()
        self.embedder = Embedder(encoder, self.decoder, variant=340)

    async def close(self) -> None:
        await self.decoder.close()

    async def vectors(self, datas: list[bytes]) -> list[Any]:
        """A unit vector (numpy) or the reason it was skipped (str), for each file."""
        out: list[Any] = [None] * len(datas)
        todo = list(range(len(datas)))
        if self.embedder.on_device:
            jpegs = [i for i in todo if datas[i].startswith(b"\xff\xd8")]
            if jpegs:
                got = await self.embedder.encode_jpegs([datas[i] for i in jpegs],
                                                       max_pixels=self.decoder.max_pixels)
                for row, k in enumerate(got.encoded):
                    out[jpegs[k]] = got.vectors[row]
                todo = [i for i in todo if out[i] is None]
        if todo:
            pixels = await asyncio.gather(
                *(self.decoder.for_encoder(datas[i], self.encoder) for i in todo),
                return_exceptions=True)
            keep = []
            for i, p in zip(todo, pixels, strict=True):
                if isinstance(p, ImageSkipped):
                    out[i] = p.reason
                elif isinstance(p, BaseException):
                    raise p
                else:
                    keep.append((i, p[0]))
            if keep:
                import torch

                vecs, _seconds = await self.encoder.encode_images(
                    torch.stack([p for _, p in keep]))
                for row, (i, _) in enumerate(keep):
                    out[i] = vecs[row]
        return out


def identity_of(encoder: Any, settings: Settings, dim: int) -> ServiceIdentity:
    backend = getattr(encoder, "backend", None)
    return ServiceIdentity(
        identity=encoder.identity, model=settings.clip_model,
        pretrained=encoder.pretrained, backend=getattr(backend, "name", "torch"),
        precision=getattr(backend, "precision", "fp32"), device=encoder.device, dim=dim,
        image_size=(int(encoder.image_size[0]), int(encoder.image_size[1])))


class Reader:
    """The deployment's class (wrapped by ``serve.deployment`` in ``build_app``)."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
            self, settings: Settings, random_weights: bool = False) -> None:
        from .service import load_encoder

        logs.setup(settings.log_level, settings.log_format)
        self.settings = settings
        if random_weights:  # the bench's: seeded random weights, for speed figures only
            from .clip import ClipEncoder

            self.encoder = ClipEncoder(settings.clip_model, settings.clip_pretrained,
                                       settings.clip_device, backend=settings.clip_backend,
                                       precision=settings.clip_precision,
                                       cache_dir=settings.data_dir / "models",
                                       random_weights=True)
            await self.encoder.start()
        else:
            self.encoder = await load_encoder(settings)
        self.reader = BytesReader(self.encoder)
        probe = await self.encoder.encode_texts_uncached(["a photo"])
        self.identity = identity_of(self.encoder, settings, int(probe.shape[1]))
        # The first query meets no first-call costs: every stage runs once now.
        from .embed import warm_jpegs

        await self.reader.vectors(warm_jpegs(2))
        log.info("reader ready: %s", self.identity.identity)

    # -- batched across requests and clients ----------------------------------------
    @serve.batch(max_batch_size=IMAGE_BATCH, batch_wait_timeout_s=IMAGE_BATCH_WAIT)
    async def _images_batch(self, datas: list[bytes]) -> list[Any]:
        return await self.reader.vectors(datas)

    @serve.batch(max_batch_size=TEXT_BATCH, batch_wait_timeout_s=TEXT_BATCH_WAIT)
    async def _texts_batch(self, phrases: list[str]) -> list[Any]:
        vectors = await self.encoder.encode_texts_uncached(phrases)
        return [(vectors[i], self.encoder.is_truncated(p)) for i, p in enumerate(phrases)]

    # -- HTTP ---------------------------------------------------------------------------
    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        path = request.url.path
        try:
            if request.method == "GET" and path == f"{API}/identity":
                return JSONResponse(self.identity.to_json())
            if request.method == "POST" and path == f"{API}/images":
                return JSONResponse(await self._post_images(request))
            if request.method == "POST" and path == f"{API}/texts":
                return JSONResponse(await self._post_texts(request))
            return Response("no such endpoint", status_code=404)
        except WireError as e:
            return Response(str(e), status_code=e.status)

    async def _post_images(self, request: Any) -> dict:
        body = await _read_body(request, MAX_REQUEST_BYTES)
        datas = unpack_images(body, max_images=MAX_IMAGES_PER_REQUEST,
                              max_image_bytes=MAX_IMAGE_BYTES)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(self._images_batch(d) for d in datas))
        ok = [i for i, r in enumerate(results) if not isinstance(r, str)]
        failed = {str(i): r for i, r in enumerate(results) if isinstance(r, str)}
        import numpy as np

        dim = self.identity.dim
        vectors = (np.stack([results[i] for i in ok]) if ok
                   else np.zeros((0, dim), np.float32))
        return {"ok": ok, "failed": failed, "dim": dim, "vectors": pack_vectors(vectors),
                "seconds": {"decode": 0.0, "encode": time.perf_counter() - t0}}

    async def _post_texts(self, request: Any) -> dict:
        body = await _read_body(request, 1 << 20)
        try:
            phrases = json.loads(body)["phrases"]
        except (ValueError, KeyError, TypeError):
            raise WireError("the body is not {\"phrases\": [...]}") from None
        if (not isinstance(phrases, list) or not phrases
                or not all(isinstance(p, str) for p in phrases)):
            raise WireError("phrases must be a non-empty list of strings")
        if len(phrases) > MAX_PHRASES_PER_REQUEST or \
                any(len(p) > MAX_PHRASE_CHARS for p in phrases):
            raise WireError(f"at most {MAX_PHRASES_PER_REQUEST} phrases of at most "
                            f"{MAX_PHRASE_CHARS} characters", 413)
        results = await asyncio.gather(*(self._texts_batch(p) for p in phrases))
        import numpy as np

        return {"dim": self.identity.dim,
                "vectors": pack_vectors(np.stack([v for v, _ in results])),
                "truncated": [bool(t) for _, t in results]}


async def _read_body(request: Any, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > cap:
                raise WireError(f"the body is over the cap of {cap} bytes", 413)
        except ValueError:
            raise WireError("Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise WireError(f"the body is over the cap of {cap} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(settings: Settings, *, random_weights: bool = False) -> Any:
    """The Ray Serve application: ``Reader`` with its batch methods, as many replicas as
    SERVE_REPLICAS, one GPU each when CLIP_DEVICE asks for CUDA."""
    gpus = 1 if settings.clip_device == "cuda" else 0
    deployment: Any = serve.deployment(
        Reader, name="Reader", num_replicas=settings.serve_replicas,
        ray_actor_options={"num_gpus": gpus, "num_cpus": 0},
        max_ongoing_requests=64, health_check_period_s=2, health_check_timeout_s=30)
    return deployment.bind(settings, random_weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m search.serve",
        description="Serve the CLIP reader over HTTP with Ray Serve (clients set "
                    "INFERENCE_URL=http://SERVE_HOST:SERVE_PORT). On a cluster, set "
                    "RAY_ADDRESS=HEAD:PORT (see docs/scaling.md).")
    parser.add_argument("--env-file", default=None,
                        help="a file of NAME=value settings (default ./.env)")
    parser.add_argument("--random-weights", action="store_true",
                        help="for benchmarks only: seeded random weights (rankings are noise)")
    args = parser.parse_args(argv)
    try:
        # The cheap checks first, in this process, before Ray starts (tens of seconds).
        settings = Settings.for_entry_point(args.env_file)
        settings.check_model()
        if not args.random_weights:
            check_weights_reachable(settings.clip_model, settings.clip_pretrained)
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port})
        serve.run(build_app(settings, random_weights=args.random_weights), name="findimage-reader", route_prefix="/",
                  blocking=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: the reader did not start ({first[:300]}); the replicas' logs are in "
              "Ray's session folder, logs/serve/ (by default /tmp/ray/session_latest).",
              file=sys.stderr)
        _shutdown()
        return 1
    print(f"serving {settings.clip_model} on http://{settings.serve_host}:{settings.serve_port}"
          f" ({settings.serve_replicas} replica(s)); clients set INFERENCE_URL=http://"
          f"{settings.serve_host}:{settings.serve_port}", flush=True)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        _shutdown()
        loop.close()
    return 0


def _shutdown() -> None:
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
