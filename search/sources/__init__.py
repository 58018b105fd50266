"""The image sources: one adapter a source, behind one protocol (``base.Adapter``).

A source turns a tag into candidate ``Hit``s and answers what its hits mean. Pixabay
needs a key and serves sized webformat images from its CDN; Openverse needs no account
and serves a thumbnail of every result from its own API host. Everything else
(embedding, ranking, paging, sharing) is the same for all, keyed by ``Hit.source`` so
ids never meet.

A new source is one module here (``search/sources/<name>.py`` with an ``ADAPTER``) and
its name in ``search.models.SOURCES``, the registry that queries, settings and the CLI
check names against.
"""

from __future__ import annotations

from importlib import import_module

from ..config import Settings
from ..errors import ConfigError, InvalidQuery, LanguageUnsupported
from ..models import SOURCES, Hit
from .base import Adapter, Retriever

__all__ = ["ADAPTERS", "Adapter", "Retriever", "adapter", "check_language", "credit", "display_url", "label",
           "licence_label", "rank_url", "require", "share_urls", "short_credit", "tile_url"]

# Each name in SOURCES is the module of its adapter, imported once here.
ADAPTERS: dict[str, Adapter] = {name: import_module(f"{__name__}.{name}").ADAPTER
                                for name in SOURCES}


def adapter(source: str | Hit) -> Adapter:
    """The adapter of a source named, or of the source a hit came from."""
    name = source.source if isinstance(source, Hit) else source
    try:
        return ADAPTERS[name]
    except KeyError:
        raise InvalidQuery(f"source must be {' or '.join(ADAPTERS)}, not '{name}'.") from None


def require(settings: Settings, source: str) -> None:
    """Raise ConfigError naming the first setting ``source`` needs and lacks (Pixabay's key;
    Openverse needs nothing)."""
    found = adapter(source)
    for name in found.required:
        if not getattr(settings, name.lower()):
            raise ConfigError(found.missing(name) or f"{name} is not set; put it in the "
                              "environment or in .env (see .env.example).")


def check_language(source: str, lang: str) -> str:
    """``lang`` as ``source`` takes it (lower case), or InvalidQuery: a code it does not
    know, or LanguageUnsupported when the source has no language parameter (Openverse)."""
    found = adapter(source)
    if not found.languages:
        raise LanguageUnsupported(found.label)
    code = lang.strip().lower()
    if code not in found.languages:
        raise InvalidQuery(f"lang must be one of {found.label}'s language codes "
                           f"({', '.join(found.languages)}), not '{lang}'.")
    return code


def label(source: str) -> str:
    """The source's name in sentences: "Pixabay"."""
    found = ADAPTERS.get(source)
    return found.label if found is not None else source.title()


# What a hit means, asked of the adapter of the source it came from.
def rank_url(hit: Hit, variant: int) -> str:
    """The image the encoder sees."""
    return adapter(hit).rank_url(hit, variant)


def display_url(hit: Hit) -> str:
    """The image an embed shows."""
    return adapter(hit).display_url(hit)


def tile_url(hit: Hit) -> str:
    """A small image for contact sheets and lists (the ranked size: it is often cached)."""
    return rank_url(hit, 340)


def share_urls(hit: Hit) -> list[str]:
    """Where to fetch the image a pick attaches, best first."""
    return adapter(hit).share_urls(hit)


def licence_label(hit: Hit) -> str:
    return adapter(hit).licence_label(hit)


def credit(hit: Hit, max_name: int = 256) -> str:
    """The credit its source's terms ask for, as plain text."""
    return adapter(hit).credit(hit, max_name)


def short_credit(hit: Hit) -> str:
    return adapter(hit).short_credit(hit)
