"""Image sources: the shape both retrievers share, and what each source's hits mean.

A source turns a tag into candidate ``Hit``s. Pixabay needs a key and serves sized
webformat images from its CDN; Openverse needs no account and serves a thumbnail of
every result from its own API host. Everything else (embedding, ranking, paging,
sharing) is the same for both, keyed by ``Hit.source`` so ids never meet.
"""

from __future__ import annotations

from typing import Protocol

from yarl import URL

from .models import Filters, Source
from .pixabay import Candidates, Hit

LABELS = {"pixabay": "Pixabay", "openverse": "Openverse"}
HOMES = {"pixabay": "https://pixabay.com", "openverse": "https://openverse.org"}


class Retriever(Protocol):
    """A source's client: up to ``limit`` candidate hits for a tag, cached and budgeted."""

    name: str  # one of SOURCES
    source: Source  # its endpoint (and key fingerprint): what the caches are keyed by

    async def candidates(self, tag: str, filters: Filters | None = None, limit: int = 200
                         ) -> Candidates: ...


def label(source: str) -> str:
    return LABELS.get(source, source.title())


def rank_url(hit: Hit, variant: int) -> str:
    """The image the encoder sees: Pixabay's webformat at ``variant``, Openverse's thumbnail."""
    if hit.source == "openverse":
        return hit.preview_url
    return hit.variant_url(variant)


def display_url(hit: Hit) -> str:
    """The image an embed shows: Pixabay's webformat, Openverse's thumbnail (its own host)."""
    return hit.preview_url if hit.source == "openverse" else hit.image_url


def tile_url(hit: Hit) -> str:
    """A small image for contact sheets and lists (the ranked size: it is often cached)."""
    return rank_url(hit, 340)


def share_urls(hit: Hit) -> list[str]:
    """Where to fetch the image a pick attaches, best first.

    Openverse's originals live on many foreign hosts; its API host serves the same
    thumbnail at full size, so the allow-list needs only that one host.
    """
    if hit.source == "openverse":
        if not hit.preview_url:
            return []
        return [str(URL(hit.preview_url).update_query(full_size="true")), hit.preview_url]
    return list(dict.fromkeys(u for u in (hit.large_url, hit.image_url) if u))


def licence_label(hit: Hit) -> str:
    """``CC BY-SA 2.0``, ``CC0 1.0``, ``Public Domain Mark 1.0``; empty for Pixabay."""
    code = hit.license.strip().lower()
    if not code:
        return ""
    version = f" {hit.license_version}" if hit.license_version else ""
    if code == "cc0":
        return f"CC0{version}"
    if code == "pdm":
        return f"Public Domain Mark{version}"
    return f"CC {code.upper()}{version}"


def credit(hit: Hit, max_name: int = 256) -> str:
    """The credit each licence asks for, as plain text (the name clipped to ``max_name``)."""
    user = " ".join(hit.user.split()) or "unknown"
    if len(user) > max_name:
        user = user[:max_name - 1] + "…"
    if hit.source == "openverse":
        licence = licence_label(hit)
        via = f" via {hit.provider}" if hit.provider else ""
        return f"Image by {user}{via} · {licence}" if licence else f"Image by {user}{via}"
    return f"Image by {user} on Pixabay"


def short_credit(hit: Hit) -> str:
    """A tile's caption: the creator, and the licence or the source."""
    if hit.source == "openverse":
        return f"{hit.user} · {licence_label(hit) or 'Openverse'}"
    return f"{hit.user} · Pixabay"
