"""Pictures members give (an ``image:`` attachment, a message's image): fetched as candidates
are, from DISCORD_CDN_HOSTS only, streamed under the same byte and time caps.

A payload names the URL, and a proxied or hostile gateway can name any URL or declare any
size: the host is checked before a connection is made, the body is read in chunks and cut
at the cap, and each way it can fail is one sentence for the member.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ImageSkipped, InvalidQuery
from .images import ImageFetcher
from .models import MAX_QUERY_IMAGE_BYTES

MB = MAX_QUERY_IMAGE_BYTES // (1024 * 1024)
AGAIN = "I could not download {whose} from Discord; attach it again."


def too_large(size: int, whose: str = "your image") -> InvalidQuery:
    return InvalidQuery(f"{_cap(whose)} is {size / 1e6:.1f} MB; attach one of at most "
                        f"{MB} MB.")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


async def fetch_attachment(fetcher: ImageFetcher, url: str, hosts: Iterable[str], *,
                           declared_size: int | None = None, whose: str = "your image"
                           ) -> bytes:
    """The picture's bytes, or InvalidQuery with the sentence for what went wrong."""
    if declared_size is not None and declared_size > MAX_QUERY_IMAGE_BYTES:
        raise too_large(declared_size, whose)
    try:
        return await fetcher.fetch(url, max_bytes=MAX_QUERY_IMAGE_BYTES, hosts=hosts)
    except ImageSkipped as e:
        raise InvalidQuery(_sentence(e.reason, whose)) from None


def _sentence(reason: str, whose: str) -> str:
    if reason in ("host not allowed", "bad url"):
        return (f"I only download pictures from Discord's own servers, and {whose} is "
                "somewhere else; attach the picture itself.")
    if reason == "too large":
        return f"{_cap(whose)} is over {MB} MB; attach one of at most {MB} MB."
    if reason == "not an image":
        shown = "The picture is not one" if whose == "your image" else f"{_cap(whose)} is not one"
        return f"{shown} I can read (not an image); use a JPEG, PNG, GIF or WebP picture."
    if reason in ("http 403", "http 404", "http 410"):
        return f"Discord no longer has {whose} (it may have been deleted); attach it again."
    if reason == "too many redirects":
        return f"Discord kept redirecting me while fetching {whose}; attach it again."
    # timeout, connection reset, a body cut short, another status
    return AGAIN.format(whose=whose)
