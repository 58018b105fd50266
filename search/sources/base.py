"""The protocol every image source implements: one retriever, and the answers that differ.

An ``Adapter`` is stateless: it knows what a source's hits mean (which URL to rank, to
show, to attach; the credit and licence its terms ask for; how the CLI prints them),
and opens the source's ``Retriever``, the client that turns a tag into candidates on
one shared session, cached and budgeted. Nothing outside ``search.sources`` tests a
source's name: it asks the hit's adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..models import Candidates, Filters, Hit, Source

if TYPE_CHECKING:
    import aiohttp

    from ..config import Settings
    from ..store import Store


class Retriever(Protocol):
    """A source's client: up to ``limit`` candidate hits for a tag, cached and budgeted."""

    name: str  # its adapter's name, one of SOURCES
    source: Source  # its endpoint (and key fingerprint): what the caches are keyed by

    async def candidates(self, tag: str, filters: Filters | None = None, limit: int = 200
                         ) -> Candidates: ...


class Adapter(Protocol):
    """Everything that differs per source. Subclass it: the defaults suit most sources."""

    name: ClassVar[str]  # in queries, hits, caches and metrics
    label: ClassVar[str]  # in sentences: "Pixabay"
    home: ClassVar[str]  # the site members are pointed to
    colour: ClassVar[int]  # of its embeds, 0xRRGGBB
    required: ClassVar[tuple[str, ...]] = ()  # settings it cannot run without
    languages: ClassVar[tuple[str, ...]] = ()  # the lang codes it takes; () when it has none

    def open(self, session: aiohttp.ClientSession, settings: Settings, store: Store | None,
             **options: Any) -> Retriever | None:
        """Its client, or None when it is not set up here (see ``not_set_up``).
        ``options``: timeout, retries, backoff, clock; a source ignores what it lacks."""
        ...

    def endpoint(self, settings: Settings) -> str:
        """Its API's URL from the settings (cached vectors are keyed by it)."""
        ...

    def missing(self, name: str) -> str | None:
        """The start-up sentence when the required setting ``name`` is unset, or None for
        the settings' own ("NAME is not set; put it in the environment ...")."""
        return None

    def not_set_up(self, offered: Sequence[str]) -> str:
        """The sentence for a member who asks for it while ``open`` gave None."""
        missing = " and ".join(self.required) or "its settings"
        choose = f"; choose source {' or '.join(offered)}" if offered else ""
        return f"{self.label} is not set up here ({missing} is not set){choose}."

    def image_hosts(self, settings: Settings) -> tuple[str, ...]:
        """Hosts its images are fetched from, beyond IMAGE_HOSTS (the download allow-list)."""
        return ()

    def vectors_source(self, settings: Settings) -> Source:
        """What its cached vectors are keyed by, even when it is not offered now."""
        return Source(self.name, self.endpoint(settings))

    # -- what its hits mean -----------------------------------------------------------
    def rank_url(self, hit: Hit, variant: int) -> str:
        """The image the encoder sees, at about ``variant`` pixels where the source sizes."""
        return hit.preview_url or hit.image_url

    def display_url(self, hit: Hit) -> str:
        """The image an embed shows."""
        return hit.image_url

    def share_urls(self, hit: Hit) -> list[str]:
        """Where to fetch the image a pick attaches, best first."""
        return list(dict.fromkeys(u for u in (hit.large_url, hit.image_url) if u))

    def licence_label(self, hit: Hit) -> str:
        """``CC BY-SA 2.0``, ``CC0 1.0``, ``Public Domain Mark 1.0``; '' when it has none."""
        return cc_label(hit.license, hit.license_version)

    def credit(self, hit: Hit, max_name: int = 256) -> str:
        """The credit its terms ask for, as plain text (the name clipped to ``max_name``)."""
        licence = self.licence_label(hit)
        via = f" via {hit.provider}" if hit.provider else ""
        by = f"Image by {creator(hit, max_name)}{via}"
        return f"{by} · {licence}" if licence else by

    def short_credit(self, hit: Hit) -> str:
        """A tile's caption: the creator, and the licence or the source."""
        return f"{hit.user} · {self.licence_label(hit) or self.label}"

    # -- the CLI ------------------------------------------------------------------------
    table_column: ClassVar[str] = "credit"  # the heading of the table's fourth column

    def table_text(self, hit: Hit) -> str:
        """The table's fourth column for one hit."""
        return f"{self.licence_label(hit) or '?'} · {hit.user}"

    def json_fields(self, hit: Hit) -> Mapping[str, object]:
        """What ``--json`` adds to the common fields of a hit."""
        return {"license": self.licence_label(hit), "license_url": hit.license_url,
                "provider": hit.provider}

    def cli_footer(self) -> str:
        """The table's last line: where the images come from, and on what terms."""
        return (f"Images from {self.label} ({self.home}); each under the licence shown "
                "(--json: license_url).")


def cc_label(code: str, version: str = "") -> str:
    """A Creative Commons code as people write it: ``by-sa`` 2.0 → ``CC BY-SA 2.0``."""
    code = code.strip().lower()
    if not code:
        return ""
    version = f" {version}" if version else ""
    if code == "cc0":
        return f"CC0{version}"
    if code == "pdm":
        return f"Public Domain Mark{version}"
    return f"CC {code.upper()}{version}"


def creator(hit: Hit, max_name: int = 256) -> str:
    """The creator's name, whitespace collapsed, clipped to ``max_name`` characters."""
    user = " ".join(hit.user.split()) or "unknown"
    return user if len(user) <= max_name else user[:max_name - 1] + "…"
