"""Image preprocessing as tensor arithmetic, for the GPU path (and CPU tensors too).

``preprocess`` reproduces open_clip's eval transform (resize, centre crop,
normalise) on decoded ``uint8`` tensors wherever they live, so JPEGs decoded by
nvjpeg never come back to the host. ``jpeg_info`` reads a JPEG's header to decide
whether the batched decoder may take it; anything unusual (CMYK, EXIF rotation, a
missing end marker, arithmetic coding, a decompression bomb) is left to PIL, which
knows how to handle it or to say why not.

Pure functions: no threads, no executors, no model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

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


def batch_decodable(info: JpegInfo | None, *, max_pixels: int = 20_000_000) -> bool:
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
