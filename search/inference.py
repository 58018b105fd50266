"""The reader over HTTP: the client of ``python -m search.serve`` (``INFERENCE_URL``).

A thin bot or CLI process imports this module instead of ``search.clip``: it needs
neither torch nor ONNX Runtime. Downloads, the allow-list, the byte budget and the
deadline stay in the client; the service receives bytes the client has already
bounded, and bounds them again (``unpack_images``).

The wire, versioned under ``/v1``:

- ``GET /v1/identity``: what the service serves (``ServiceIdentity``, JSON).
- ``POST /v1/images``: ``application/octet-stream``, the images as frames (a 4-byte
  big-endian length, then the bytes). Answers JSON: ``ok`` (the indices encoded, in
  the order of the rows of ``vectors``), ``failed`` (index → the reason it was
  skipped), ``vectors`` (base64 of little-endian float32 rows), ``dim``, ``seconds``.
- ``POST /v1/texts``: JSON ``{"phrases": [...]}``; answers ``vectors``, ``dim`` and
  ``truncated`` (one flag a phrase).

Over the caps a request is answered 413; a malformed one 400; a service still
loading 503.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import aiohttp
import numpy as np

from .errors import ConfigError, SearchError

log = logging.getLogger(__name__)

API = "/v1"
MAX_IMAGES_PER_REQUEST = 64
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # the client's own caps: a candidate or a query picture
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # the client's byte budget (search.images.HELD_BYTES)
MAX_PHRASES_PER_REQUEST = 64
MAX_PHRASE_CHARS = 2000
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # 64 vectors of 4096 floats, base64, with room
MAX_DIM = 4096
_FRAME = struct.Struct(">I")


class WireError(ValueError):
    """A request or an answer that breaks the wire format; the message says how."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class InferenceUnavailable(SearchError):
    """The service did not answer (down, timed out, restarting)."""

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        self.why = why
        super().__init__(f"The image model service at {url} is not answering right now "
                         f"({why}); try again in a minute.")


class InferenceRefused(SearchError):
    """The service refused a request (a 4xx): over its caps, or malformed."""

    def __init__(self, url: str, status: int, detail: str = "") -> None:
        self.status = status
        self.detail = detail[:300]
        what = "the images were over its size limits" if status == 413 else "the request"
        super().__init__(f"The image model service at {url} refused {what} "
                         f"(HTTP {status}); try fewer or smaller images.")


class InferenceMismatch(ConfigError):
    """The service serves another model than this process's settings name."""


# -- the wire --------------------------------------------------------------------------
def pack_images(datas: Sequence[bytes]) -> bytes:
    return b"".join(_FRAME.pack(len(d)) + bytes(d) for d in datas)


def unpack_images(body: bytes, *, max_images: int = MAX_IMAGES_PER_REQUEST,
                  max_image_bytes: int = MAX_IMAGE_BYTES) -> list[bytes]:
    """The frames of a request body, each checked against the caps before it is sliced."""
    out: list[bytes] = []
    view = memoryview(body)
    at = 0
    while at < len(view):
        if len(out) >= max_images:
            raise WireError(f"more than {max_images} images in one request", 413)
        if at + _FRAME.size > len(view):
            raise WireError("a frame's length is cut short")
        (n,) = _FRAME.unpack_from(view, at)
        at += _FRAME.size
        if n > max_image_bytes:
            raise WireError(f"an image of {n} bytes is over the cap of {max_image_bytes}", 413)
        if at + n > len(view):
            raise WireError("a frame is shorter than its length says")
        out.append(bytes(view[at:at + n]))
        at += n
    return out


def pack_vectors(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()


def unpack_vectors(text: object, rows: int, dim: object) -> np.ndarray:
    """Rows of unit vectors from an answer, refused unless every figure is sane."""
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= MAX_DIM:
        raise WireError("the answer's dim is not a sane size")
    if not isinstance(text, str):
        raise WireError("the answer's vectors are not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireError("the answer's vectors are not base64") from None
    if len(raw) != rows * dim * 4:
        raise WireError("the answer holds another number of vectors than it lists")
    vectors = np.frombuffer(raw, dtype="<f4").reshape(rows, dim).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise WireError("the answer's vectors are not finite")
    norms = np.linalg.norm(vectors, axis=1) if rows else np.ones(0)
    if not np.all(np.abs(norms - 1.0) < 1e-2):
        raise WireError("the answer's vectors are not unit vectors")
    return vectors


@dataclass(frozen=True)
class ServiceIdentity:
    """What a service serves. ``identity`` keys the embedding cache, as in-process."""

    identity: str
    model: str
    pretrained: str | None
    backend: str
    precision: str
    device: str
    dim: int
    image_size: tuple[int, int]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> ServiceIdentity:
        if not isinstance(data, dict):
            raise WireError("the identity is not a JSON object")
        try:
            size = data["image_size"]
            ident = cls(
                identity=_text(data["identity"]), model=_text(data["model"]),
                pretrained=None if data.get("pretrained") is None else _text(data["pretrained"]),
                backend=_text(data["backend"]), precision=_text(data["precision"]),
                device=_text(data["device"]), dim=int(data["dim"]),
                image_size=(int(size[0]), int(size[1])))
        except (KeyError, TypeError, ValueError, IndexError):
            raise WireError("the identity lacks a field or has one of the wrong type") from None
        if not ident.identity or not 0 < ident.dim <= MAX_DIM or min(ident.image_size) <= 0:
            raise WireError("the identity's figures are not sane")
        return ident

    def names(self) -> str:
        return model_label(self.model, self.pretrained)


def _text(value: object, cap: int = 512) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value[:cap]


def model_label(model: str, pretrained: str | None) -> str:
    """The model a setting names, comparable across machines: a local folder by its name."""
    if model.startswith("local-dir:"):
        path = model[len("local-dir:"):].rstrip("/")
        return "local-dir:" + path.rsplit("/", 1)[-1]
    if model.startswith("hf-hub:"):
        return model
    return f"{model}/{pretrained or ''}"


@dataclass(frozen=True)
class RemoteText:
    vector: np.ndarray
    truncated: bool


@dataclass(frozen=True)
class RemoteImages:
    """``vectors[k]`` belongs to ``datas[ok[k]]``; ``failed`` maps indices to reasons."""

    vectors: np.ndarray
    ok: list[int]
    failed: dict[int, str]
    decode_seconds: float
    encode_seconds: float


# -- the client --------------------------------------------------------------------------
class RemoteEncoder:
    """The encoder's calls, answered by the service at ``url``.

    A request that finds the service gone (a refused connection, a reset, a 502/503/504
    while a replica restarts) is sent once more; then ``InferenceUnavailable``. A 4xx is
    ``InferenceRefused`` at once. Phrases already asked are answered from a small cache,
    so a tag the bot has cached keeps answering its members' repeat phrases while the
    service is away.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, *, timeout: float = 30.0,
                 retries: int = 1, retry_wait: float = 1.0, text_cache_size: int = 1024,
                 expect: str | None = None) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.retry_wait = retry_wait
        self.expect = expect
        self.service: ServiceIdentity | None = None
        self._texts: OrderedDict[str, RemoteText] = OrderedDict()
        self._text_cache_size = text_cache_size
        self.device = "remote"
        # The in-process encoder's export, which has no counterpart here: the service
        # exports (or not) on its own machine.
        self.exporting = False
        self.on_export_progress: Callable[[int, int, str], None] | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """One search, one model: the service serves one identity, so nothing to hold."""
        yield

    @property
    def identity(self) -> str:
        return self.service.identity if self.service else ""

    @property
    def image_size(self) -> tuple[int, int]:
        return self.service.image_size if self.service else (224, 224)

    async def start(self, timeout: float = 10.0) -> ServiceIdentity:
        """Ask the service what it serves; refuse one that serves another model."""
        body = await self._call("GET", "/identity", timeout=timeout, retries=0)
        try:
            ident = ServiceIdentity.from_json(body)
        except WireError as e:
            raise InferenceUnavailable(self.url, f"its identity cannot be read: {e}") from None
        if self.expect is not None and ident.names() != self.expect:
            raise InferenceMismatch(
                f"The image model service at {self.url} serves {ident.names()}, but this "
                f"process's CLIP_MODEL/CLIP_PRETRAINED name {self.expect}; point INFERENCE_URL "
                "at a service of the same model, or change the settings to match.")
        self.service = ident
        log.info("inference service at %s serves %s (%s %s on %s)", self.url, ident.identity,
                 ident.backend, ident.precision, ident.device)
        return ident

    async def close(self) -> None:
        return None

    async def encode_text(self, phrase: str) -> RemoteText:
        hit = self._texts.get(phrase)
        if hit is not None:
            self._texts.move_to_end(phrase)
            return hit
        (text,) = await self.encode_texts([phrase])
        self._texts[phrase] = text
        while len(self._texts) > self._text_cache_size:
            self._texts.popitem(last=False)
        return text

    async def encode_texts(self, phrases: list[str]) -> list[RemoteText]:
        body = await self._call("POST", "/texts", json_body={"phrases": phrases})
        try:
            truncated = body["truncated"]
            if not isinstance(truncated, list) or len(truncated) != len(phrases):
                raise WireError("the answer has another number of phrases")
            vectors = unpack_vectors(body.get("vectors"), len(phrases), body.get("dim"))
        except (WireError, KeyError, TypeError) as e:
            raise InferenceUnavailable(self.url, f"its answer cannot be read: {e}") from None
        return [RemoteText(vectors[i], bool(truncated[i])) for i in range(len(phrases))]

    async def encode_images(self, datas: Sequence[bytes]) -> RemoteImages:
        """Vectors for image files (any format the service decodes), in requests of at
        most ``MAX_IMAGES_PER_REQUEST`` files and ``MAX_REQUEST_BYTES``, sent at once."""
        chunks: list[list[int]] = []
        size = 0
        for i, data in enumerate(datas):
            if len(data) > MAX_IMAGE_BYTES:
                raise InferenceRefused(self.url, 413, "an image over the cap")
            if not chunks or len(chunks[-1]) >= MAX_IMAGES_PER_REQUEST or \
                    size + len(data) > MAX_REQUEST_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += len(data) + _FRAME.size
        parts = await asyncio.gather(*(self._images([datas[i] for i in c]) for c in chunks))
        ok: list[int] = []
        failed: dict[int, str] = {}
        rows: list[np.ndarray] = []
        decode = encode = 0.0
        for chunk, part in zip(chunks, parts, strict=True):
            ok += [chunk[i] for i in part.ok]
            failed.update({chunk[i]: why for i, why in part.failed.items()})
            if len(part.ok):
                rows.append(part.vectors)
            decode += part.decode_seconds
            encode += part.encode_seconds
        dim = self.service.dim if self.service else 0
        vectors = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
        return RemoteImages(vectors, ok, failed, decode, encode)

    async def _images(self, datas: list[bytes]) -> RemoteImages:
        body = await self._call("POST", "/images", data=pack_images(datas))
        try:
            ok = body["ok"]
            failed_raw = body["failed"]
            if not isinstance(ok, list) or not isinstance(failed_raw, dict):
                raise WireError("ok or failed has the wrong type")
            ok = [int(i) for i in ok]
            failed = {int(k): str(v)[:100] for k, v in failed_raw.items()}
            if sorted(ok + list(failed)) != list(range(len(datas))):
                raise WireError("the answer does not account for every image once")
            vectors = unpack_vectors(body.get("vectors"), len(ok), body.get("dim"))
            seconds = body.get("seconds") or {}
            decode = _seconds(seconds.get("decode"))
            encode = _seconds(seconds.get("encode"))
        except (WireError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise InferenceUnavailable(self.url, f"its answer cannot be read: {e}") from None
        return RemoteImages(vectors, ok, failed, decode, encode)

    async def _call(self, method: str, path: str, *, json_body: object = None,
                    data: bytes | None = None, timeout: float | None = None,
                    retries: int | None = None) -> dict:
        url = f"{self.url}{API}{path}"
        tries = 1 + (self.retries if retries is None else retries)
        why = ""
        for attempt in range(tries):
            if attempt:
                await asyncio.sleep(self.retry_wait)
            try:
                async with self.session.request(
                        method, url, json=json_body, data=data,
                        headers={"Content-Type": "application/octet-stream"} if data else None,
                        timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as resp:
                    raw = await _read_capped(resp, MAX_RESPONSE_BYTES)
                    if resp.status in (502, 503, 504):
                        why = f"HTTP {resp.status}"
                        continue
                    if 400 <= resp.status < 500:
                        raise InferenceRefused(self.url, resp.status,
                                               raw.decode("utf-8", "replace"))
                    if resp.status != 200:
                        why = f"HTTP {resp.status}"
                        continue
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise InferenceUnavailable(self.url, "its answer is not JSON") from None
                    if not isinstance(body, dict):
                        raise InferenceUnavailable(self.url, "its answer is not a JSON object")
                    return body
            except TimeoutError:
                why = f"no answer within {timeout or self.timeout:.0f} s"
            except aiohttp.ClientConnectorError:
                why = "connection refused"
            except (aiohttp.ClientError, ConnectionError) as e:
                why = type(e).__name__
        raise InferenceUnavailable(self.url, why)


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > cap:
        raise InferenceUnavailable(str(resp.url.origin()), "its answer is over the size cap")
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > cap:
            raise InferenceUnavailable(str(resp.url.origin()), "its answer is over the size cap")
        chunks.append(chunk)
    return b"".join(chunks)


def _seconds(value: object) -> float:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) and 0 <= f < 3600 else 0.0

