"""Query vectors beyond a phrase: an image, an image with a phrase, or a shared pick.

CLIP puts images and texts in one space, so an image's embedding ranks candidates as
a phrase's does. With both, the query is the normalised mean of the two unit vectors:
the direction halfway between "looks like this" and "shows this", so each counts as
much as the other whatever their norms were.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .decode import Decoder
from .errors import ImageSkipped, InvalidQuery
from .models import MAX_QUERY_IMAGE_BYTES, Hit
from .ranking import Ranking, rank


def unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def blend(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """The normalised mean of the image's and the text's unit vectors."""
    return unit(unit(image) + unit(text))


async def image_pixels(decoder: Decoder | None, encoder, data: bytes, *,
                       size_only: bool = False):
    """An image a user gave, decoded and preprocessed for the encoder (on the decode
    threads); InvalidQuery when it cannot serve as a query. Cheap, so a bad file is
    refused before any candidate is fetched. ``size_only``: the size check alone."""
    if len(data) > MAX_QUERY_IMAGE_BYTES:
        raise InvalidQuery(f"The image is {len(data) / 1e6:.1f} MB; attach one of at most "
                           f"{MAX_QUERY_IMAGE_BYTES // (1024 * 1024)} MB.")
    if size_only or decoder is None:
        return None
    try:
        pixels, _seconds = await decoder.for_encoder(data, encoder)
    except ImageSkipped as e:
        # The bot and the CLI both say this: words for neither Discord nor a terminal.
        raise InvalidQuery(f"The picture is not one I can read ({e.reason}); use a JPEG, "
                           "PNG, GIF or WebP picture.") from None
    return pixels


def more_like(hits: Sequence[Hit], vectors: dict, pick: Hit) -> Ranking:
    """The hits ranked by cosine to ``pick``'s own vector; the pick itself left out.

    ``vectors`` maps ids to cached embeddings; hits without one are left out too.
    """
    query = vectors[pick.id]
    others = [h for h in hits if h.id != pick.id and h.id in vectors]
    if not others:
        return Ranking(())
    return rank(others, np.stack([vectors[h.id] for h in others]), query)
