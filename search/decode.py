"""Bytes to pixels, on the CPU or on the encoder's device: every decoding rule in one place.

- CPU: ``Decoder`` runs Pillow on a few low-priority decode threads (``decode_image``):
  JPEGs at reduced size (``draft``), every mode made upright RGB, and bombs and broken
  files refused with a reason. Formats Pillow must decode at full size (PNG, GIF, WebP)
  have a lower pixel cap. ``Decoder.for_encoder`` then applies the encoder's transform,
  so only the forward pass is left.
- GPU: ``decode_on_device`` takes the plain JPEGs (read from their header by
  ``jpeg_info``, chosen by ``batch_decodable``), decodes them in one nvjpeg call on the
  encoder's worker and preprocesses them there as tensor arithmetic (``preprocess``,
  open_clip's eval transform), so the pixels never cross the bus. Anything unusual
  (CMYK, EXIF rotation, a missing end marker, arithmetic coding, a bomb) is left to PIL,
  which knows how to handle it or to say why not.

The encoder's counters for both paths are kept here: ``decode:pil``, ``decode:batched``,
``preprocess:tensor``, ``jpegs_decoded`` and ``jpegs_refused``.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageSkipped
from .threads import lower_priority

if TYPE_CHECKING:
    from .clip import ClipEncoder

MAX_PIXELS = 20_000_000  # JPEG: decoded at 1/2 to 1/8 size with draft, so cheap per pixel
# Formats Pillow can only decode at full size: ~0.2 s of a decode thread at 4 MP, ~1 s
# at 20 MP. Pixabay's webformat and large images are at most 1280 px (1.6 MP).
MAX_FULL_DECODE_PIXELS = 4_000_000
DECODE_THREADS = 2


# -- the CPU path: Pillow ----------------------------------------------------------
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
                 max_pixels: int = MAX_PIXELS,
                 max_full_pixels: int = MAX_FULL_DECODE_PIXELS) -> Image.Image:
    """Bytes to an upright RGB image, refusing bombs and unreadable files.

    JPEGs up to ``max_pixels`` are decoded at reduced size (DCT scaling) when
    ``min_side`` allows; other formats decode at full size, so their cap is
    ``max_full_pixels``.
    """
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageSkipped("not an image") from None
    except Image.DecompressionBombError:
        raise ImageSkipped("too large") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise _broken(e) from None
    width, height = img.size
    reducible = img.format == "JPEG" and bool(min_side)
    if width * height > (max_pixels if reducible else min(max_pixels, max_full_pixels)):
        raise ImageSkipped("too large", f"{width}x{height} {img.format}")
    if reducible and min_side:
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


class Decoder:
    """The decode threads, and the caps every decode obeys.

    Threads start on first use, at a lower priority than the event loop's (see
    ``search.threads``); ``close`` waits for the decodes in progress.
    """

    def __init__(self, *, threads: int = DECODE_THREADS, max_pixels: int = MAX_PIXELS,
                 max_full_pixels: int = MAX_FULL_DECODE_PIXELS) -> None:
        self.threads = threads
        self.max_pixels = max_pixels
        self.max_full_pixels = max_full_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode",
                                        initializer=lower_priority)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)

    def _decode(self, data: bytes, min_side: int | None) -> Image.Image:
        return decode_image(data, min_side=min_side, max_pixels=self.max_pixels,
                            max_full_pixels=self.max_full_pixels)

    async def image(self, data: bytes, *, min_side: int | None = None) -> Image.Image:
        """The bytes as an upright RGB image (at least ``min_side`` px where a JPEG is
        reduced), decoded on a decode thread; ImageSkipped with the reason if not."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self._decode(data, min_side))

    async def prepare(self, data: bytes, transform: Callable[[Image.Image], object],
                      *, min_side: int | None = None):
        """Decode and ``transform`` on a decode thread.

        Returns the transformed image and the seconds a decode thread spent on it (not
        the time it waited for a free thread, which is the downloads' doing).
        """
        loop = asyncio.get_running_loop()

        def work():
            t0 = time.perf_counter()
            pixels = transform(self._decode(data, min_side))
            return pixels, time.perf_counter() - t0

        return await loop.run_in_executor(self._pool, work)

    async def for_encoder(self, data: bytes, encoder: ClipEncoder):
        """The image as the encoder's 8-bit levels (decode and preprocess on a decode
        thread, so only the forward pass is left), and the thread's seconds.

        8-bit levels: on CPU the encoder lags the downloads, so most of the decoded images
        wait in its queue; levels take a quarter of floats' room.
        """
        pixels, seconds = await self.prepare(data, encoder.preprocess_levels,
                                             min_side=min(encoder.image_size))
        encoder.stats.stages["decode:pil"] += 1
        return pixels, seconds


# -- the GPU path: headers, one batched decode, tensor preprocessing ---------------
# SOF markers the batched decoders handle: baseline, extended and progressive Huffman.
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2}
_OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int
    progressive: bool
    huffman: bool  # False: arithmetic coding or lossless, which the batched decoders refuse
    orientation: int  # EXIF orientation, 1 when absent
    complete: bool  # ends with the EOI marker


def jpeg_info(data: bytes) -> JpegInfo | None:
    """The facts in a JPEG's header, or None when ``data`` is not a readable JPEG."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    orientation = 1
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            return None
        segment = data[i + 4:i + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            orientation = _exif_orientation(segment[6:])
        elif marker in _HUFFMAN_SOF or marker in _OTHER_SOF:
            if len(segment) < 6:
                return None
            height = (segment[1] << 8) | segment[2]
            width = (segment[3] << 8) | segment[4]
            tail = data[-16:].rstrip(b"\x00")  # some encoders pad after EOI
            return JpegInfo(width=width, height=height, components=segment[5],
                            progressive=marker == 0xC2, huffman=marker in _HUFFMAN_SOF,
                            orientation=orientation, complete=tail.endswith(b"\xff\xd9"))
        elif marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            return None
        i += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 if absent."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            break
        if int.from_bytes(tiff[entry:entry + 2], order) == 0x0112:
            return int.from_bytes(tiff[entry + 8:entry + 10], order) or 1
    return 1


def batch_decodable(info: JpegInfo | None, *, max_pixels: int = MAX_PIXELS) -> bool:
    """Whether a batched decoder may take this JPEG and give what PIL would.

    Others go the PIL way: it handles CMYK, EXIF rotation and the odd codings, and
    turns truncated files and bombs into the same skip reasons as everywhere else.
    """
    return (info is not None and info.huffman and info.complete and info.orientation == 1
            and info.components in (1, 3) and 0 < info.width * info.height <= max_pixels)


def resized_size(height: int, width: int, size: tuple[int, int], resize_mode: str
                 ) -> tuple[int, int]:
    """The (h, w) that open_clip's eval resize gives, before the crop."""
    th, tw = size
    if resize_mode == "squash":
        return th, tw
    if resize_mode == "shortest" and th == tw:
        # torchvision Resize(int): the short side becomes th, the long side is truncated.
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(th * long / short)
        return (new_long, th) if width <= height else (th, new_long)
    # open_clip ResizeKeepRatio: shortest (ratio = min) or longest (ratio = max).
    rh, rw = height / th, width / tw
    ratio = max(rh, rw) if resize_mode == "longest" else min(rh, rw)
    return round(height / ratio), round(width / ratio)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's centre crop on (..., H, W), zero-padding a side that is too short."""
    th, tw = size
    h, w = x.shape[-2:]
    if th > h or tw > w:
        left = (tw - w) // 2 if tw > w else 0
        top = (th - h) // 2 if th > h else 0
        right = (tw - w + 1) // 2 if tw > w else 0
        bottom = (th - h + 1) // 2 if th > h else 0
        x = F.pad(x, (left, right, top, bottom), value=0.0)
        h, w = x.shape[-2:]
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return x[..., top:top + th, left:left + tw]


def preprocess(images: Sequence[torch.Tensor], *, size: tuple[int, int],
               mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic",
               resize_mode: str = "shortest", dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """open_clip's eval transform on decoded images: (3, H, W) uint8 in, (n, 3, h, w) out.

    Images of the same size are resized together, so a page of photos of a few
    shapes costs a few kernel launches. The resize runs in float32 and is rounded
    to whole levels as PIL's 8-bit resize is; the output is on the images' device.
    """
    if not images:
        return torch.empty((0, 3, *size), dtype=dtype)
    device = images[0].device
    mode = "bilinear" if interpolation == "bilinear" else "bicubic"
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"image {i} has shape {tuple(img.shape)}, not (3, H, W)")
        groups[tuple(img.shape)].append(i)
    out = torch.empty((len(images), 3, *size), dtype=torch.float32, device=device)
    for shape, members in groups.items():
        batch = torch.stack([images[i] for i in members]).float()
        if shape[0] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        target = resized_size(shape[1], shape[2], size, resize_mode)
        if target != (shape[1], shape[2]):
            batch = F.interpolate(batch, size=target, mode=mode, align_corners=False,
                                  antialias=True).clamp_(0.0, 255.0).round_()
        out[members] = center_crop(batch, size)
    scale = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
    shift = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
    return out.sub_(shift).div_(scale).to(dtype)


def decode_on_device(encoder: ClipEncoder, datas: Sequence[bytes], max_pixels: int = MAX_PIXELS
                     ) -> tuple[torch.Tensor | None, tuple[list[int], list[int]]]:
    """Decode and preprocess JPEGs on the encoder's device, in one decoder call.

    Runs on the encoder's worker thread (as a ``prepare`` job). Returns the pixels
    and ``(encoded, failed)`` indices into ``datas``.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    loaded = encoder.loaded
    stats = encoder.stats
    take = [i for i, d in enumerate(datas) if batch_decodable(jpeg_info(d), max_pixels=max_pixels)]
    raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in take]
    decoded: list[torch.Tensor | None] = []
    try:
        if raw:
            decoded = list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=encoder.device))
    except RuntimeError:  # one bad file fails the whole call; find it
        decoded = []
        for tensor in raw:
            try:
                decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB,
                                           device=encoder.device))
            except RuntimeError:
                decoded.append(None)
    encoded = [i for i, img in zip(take, decoded, strict=True) if img is not None]
    kept = set(encoded)
    failed = [i for i in range(len(datas)) if i not in kept]
    stats.jpegs_decoded += len(encoded)
    stats.jpegs_refused += len(failed)
    if not encoded:
        return None, (encoded, failed)
    assert loaded is not None  # a prepare job runs on the started encoder's thread
    stats.stages["decode:batched"] += 1
    pixels = preprocess([img for img in decoded if img is not None], size=loaded.image_size,
                        mean=loaded.mean, std=loaded.std, interpolation=loaded.interpolation,
                        resize_mode=loaded.resize_mode, dtype=encoder.dtype)
    stats.stages["preprocess:tensor"] += 1
    return pixels, (encoded, failed)
