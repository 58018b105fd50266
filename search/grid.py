"""A contact sheet of hits: one tile per image, a label on top and a caption below.

The CLI's ``--grid`` and the bot's ``layout:grid`` both draw with ``hits_sheet``.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .decode import Decoder
from .errors import ImageSkipped
from .images import ImageFetcher
from .ranking import ScoredHit
from .sources import tile_url

TILE = 256
MAX_COLUMNS = 5


def contact_sheet(images: Sequence[Image.Image | None], labels: Sequence[str], *,
                  captions: Sequence[str] = (), tile: int = TILE,
                  columns: int | None = None) -> Image.Image:
    """Tiles of ``tile`` px in a grid; a missing image gets a grey tile with its label."""
    n = len(labels)
    cols = columns or min(MAX_COLUMNS, max(1, n))
    rows = max(1, math.ceil(n / cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (32, 32, 32))
    font = ImageFont.load_default(size=max(12, tile // 12))
    small = ImageFont.load_default(size=max(10, tile // 18))
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(labels):
        x, y = (i % cols) * tile, (i // cols) * tile
        img = images[i] if i < len(images) else None
        if img is not None:
            sheet.paste(ImageOps.fit(img.convert("RGB"), (tile, tile)), (x, y))
        box = draw.textbbox((x + 6, y + 4), label, font=font)
        draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
        draw.text((x + 6, y + 4), label, fill=(255, 255, 255), font=font)
        caption = captions[i] if i < len(captions) else ""
        if caption:
            caption = _fit(draw, caption, small, tile - 12)
            box = draw.textbbox((x + 6, 0), caption, font=small)
            top = y + tile - (box[3] - box[1]) - 8
            draw.rectangle((x, top - 3, x + tile, y + tile), fill=(0, 0, 0))
            draw.text((x + 6, top - box[1] + 1), caption, fill=(230, 230, 230), font=small)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


async def hits_sheet(fetcher: ImageFetcher, decoder: Decoder, items: Sequence[ScoredHit],
                     labels: Sequence[str], captions: Sequence[str] = ()) -> Image.Image:
    """Download each hit's small image (from allow-listed hosts) and draw the sheet."""
    async def load(item: ScoredHit) -> Image.Image | None:
        try:
            # The ranked size: the ranking downloaded it, so a page turn fetches nothing.
            data = await fetcher.fetch(tile_url(item.hit), reuse=True)
            return await decoder.image(data, min_side=TILE)
        except ImageSkipped:
            return None  # a grey tile still carries its number

    images = await asyncio.gather(*(load(item) for item in items))
    return await asyncio.to_thread(contact_sheet, images, labels, captions=captions)


def encode(sheet: Image.Image, fmt: str = "JPEG") -> bytes:
    """The sheet as file bytes (JPEG for Discord: a fifth of a PNG's size for photos)."""
    buf = io.BytesIO()
    sheet.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()
