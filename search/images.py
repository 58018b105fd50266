"""Download and decode: the allow-list, the caps, and the decode threads.

A hostile or broken API response cannot make us fetch an internal address: every
URL (and every redirect) must be https on a host in IMAGE_HOSTS, or plain http on
a loopback host that is itself listed. Each failure becomes an ``ImageSkipped``
with a short reason; the caller counts them.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from PIL import Image, ImageOps, UnidentifiedImageError
from yarl import URL

from .config import LOOPBACK_HOSTS
from .errors import ImageSkipped
from .threads import lower_priority

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3


def check_url(url: str | URL, hosts: Iterable[str]) -> URL:
    """The parsed URL if it may be fetched, else ImageSkipped('host not allowed')."""
    try:
        u = URL(url) if isinstance(url, str) else url
    except (ValueError, TypeError):
        raise ImageSkipped("bad url") from None
    host = (u.host or "").lower()
    allowed = {h.lower() for h in hosts}
    if host not in allowed:
        raise ImageSkipped("host not allowed", host)
    if u.scheme == "https" or (u.scheme == "http" and host in LOOPBACK_HOSTS):
        return u
    raise ImageSkipped("host not allowed", f"{u.scheme} on {host}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Every mode made RGB; transparency is composited on white."""
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "LA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def decode_image(data: bytes, *, min_side: int | None = None,
                 max_pixels: int = 20_000_000) -> Image.Image:
    """Bytes to an upright RGB image, refusing bombs and unreadable files."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageSkipped("not an image") from None
    except Image.DecompressionBombError:
        raise ImageSkipped("too large") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise _broken(e) from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageSkipped("too large", f"{width}x{height}")
    if img.format == "JPEG" and min_side:
        # DCT scaling: decode at 1/2, 1/4 or 1/8 size while staying >= min_side.
        img.draft("RGB", (min_side, min_side))
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise _broken(e) from None


def _broken(error: Exception) -> ImageSkipped:
    reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
    return ImageSkipped(reason, str(error))


class ImageFetcher:
    """Bounded concurrent downloads on one session, and a small pool for decoding."""

    def __init__(self, session: aiohttp.ClientSession, hosts: Iterable[str], *,
                 max_bytes: int = 5_000_000, timeout: float = 10.0, concurrency: int = 16,
                 decode_threads: int = 2, max_pixels: int = 20_000_000) -> None:
        self.session = session
        self.hosts = tuple(hosts)
        self.max_bytes = max_bytes
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_pixels = max_pixels
        self._sem = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=decode_threads,
                                        thread_name_prefix="decode",
                                        initializer=lower_priority)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)

    async def fetch(self, url: str, *, max_bytes: int | None = None) -> bytes:
        """The image's bytes, or ImageSkipped with a reason."""
        cap = max_bytes or self.max_bytes
        target = check_url(url, self.hosts)
        async with self._sem:
            try:
                for _ in range(MAX_REDIRECTS + 1):
                    async with self.session.get(target, timeout=self.timeout,
                                                allow_redirects=False) as resp:
                        if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                            target = check_url(target.join(URL(resp.headers["Location"])),
                                               self.hosts)
                            continue
                        if resp.status != 200:
                            raise ImageSkipped(f"http {resp.status}")
                        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
                        if not ctype.startswith("image/"):
                            raise ImageSkipped("not an image", ctype or "no content type")
                        if resp.content_length is not None and resp.content_length > cap:
                            raise ImageSkipped("too large", f"{resp.content_length} bytes")
                        data = bytearray()
                        async for chunk in resp.content.iter_chunked(65536):
                            data += chunk
                            if len(data) > cap:
                                raise ImageSkipped("too large", f"over {cap} bytes")
                        return bytes(data)
                raise ImageSkipped("too many redirects")
            except TimeoutError:
                raise ImageSkipped("timeout") from None
            except aiohttp.ClientPayloadError:
                raise ImageSkipped("truncated") from None
            except aiohttp.ClientError as e:
                raise ImageSkipped("download failed", type(e).__name__) from None

    async def decode(self, data: bytes, *, min_side: int | None = None) -> Image.Image:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: decode_image(data, min_side=min_side, max_pixels=self.max_pixels))

    async def prepare(self, data: bytes, transform: Callable[[Image.Image], object],
                      *, min_side: int | None = None):
        """Decode and preprocess on the decode threads: only the forward pass is left.

        Returns the transformed image and the seconds a decode thread spent on it (not
        the time it waited for a free thread, which is the downloads' doing).
        """
        loop = asyncio.get_running_loop()

        def work():
            t0 = time.perf_counter()
            pixels = transform(decode_image(data, min_side=min_side, max_pixels=self.max_pixels))
            return pixels, time.perf_counter() - t0

        return await loop.run_in_executor(self._pool, work)
