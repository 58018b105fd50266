"""A contact sheet of hits: one tile per image, rank and score drawn on each."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps


def contact_sheet(images: Sequence[Image.Image | None], labels: Sequence[str], *,
                  tile: int = 256, columns: int | None = None) -> Image.Image:
    """Tiles of ``tile`` px in a grid; a missing image gets a grey tile with its label."""
    n = len(labels)
    cols = columns or min(5, max(1, n))
    rows = max(1, math.ceil(n / cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (32, 32, 32))
    font = ImageFont.load_default(size=max(12, tile // 12))
    for i, label in enumerate(labels):
        x, y = (i % cols) * tile, (i // cols) * tile
        img = images[i] if i < len(images) else None
        if img is not None:
            sheet.paste(ImageOps.fit(img.convert("RGB"), (tile, tile)), (x, y))
        draw = ImageDraw.Draw(sheet)
        box = draw.textbbox((x + 6, y + 4), label, font=font)
        draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
        draw.text((x + 6, y + 4), label, fill=(255, 255, 255), font=font)
    return sheet
