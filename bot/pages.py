"""One page of a results message: a list of embeds, or one contact sheet (``layout:grid``).

The first answer, every page turn and every "more like this" message are drawn here,
so they look the same.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from search.grid import encode, hits_sheet
from search.ranking import ScoredHit
from search.sources import short_credit

from .embeds import grid_embed, results_embeds, summary_line
from .state import ResultsState, View

if TYPE_CHECKING:
    from search.service import SearchService

GRID_FILE = "results.jpg"
# The bot answers with one embed per hit (page link, image, score, credit), and the
# default count is 5; above that a list page is several screens of stacked embeds, and
# one contact sheet shows them all at once.
AUTO_GRID_ABOVE = 5


def resolve_layout(layout: str, count: int) -> str:
    """``auto`` becomes ``grid`` above AUTO_GRID_ABOVE hits a page, else ``list``."""
    if layout == "auto":
        return "grid" if count > AUTO_GRID_ABOVE else "list"
    return layout


@dataclass
class Page:
    content: str
    embeds: list[discord.Embed]
    file: discord.File | None

    def send(self) -> dict:
        kw: dict = {"content": self.content, "embeds": self.embeds,
                    "allowed_mentions": discord.AllowedMentions.none()}
        if self.file is not None:
            kw["file"] = self.file
        return kw

    def edit(self) -> dict:
        kw: dict = {"content": self.content, "embeds": self.embeds,
                    "allowed_mentions": discord.AllowedMentions.none()}
        if self.file is not None:
            kw["attachments"] = [self.file]  # the new sheet replaces the old one
        return kw


async def render_page(service: SearchService, state: ResultsState, view: View, page: int,
                      note: str = "") -> Page:
    hits = state.ranking.page(page * state.per_page, state.per_page)
    content = summary_line(tag=state.tag, phrase=state.phrase, candidates=len(state.ranking) + state.ranking.folded,
                           seconds=state.seconds, page=page, pages=state.pages, note=note,
                           source=view.source, link=view.link,
                           folded=state.ranking.folded)
    return await render_hits(service, hits, view, content)


async def render_hits(service: SearchService, hits: list[ScoredHit], view: View,
                      content: str) -> Page:
    """``hits`` in the view's layout under ``content`` (the provisional page draws here too,
    so it looks as the final page will)."""
    if view.layout != "grid":
        return Page(content, results_embeds(hits), None)
    # Tiles are numbered as the reactions are: 1️⃣ shares the first tile of this page.
    labels = [f"{n} · {item.display:.1f}" for n, item in enumerate(hits, 1)]
    captions = [short_credit(item.hit) for item in hits]
    sheet = await hits_sheet(service.fetcher, hits, labels, captions)
    data = await asyncio.to_thread(encode, sheet)
    return Page(content, [grid_embed(hits, GRID_FILE, view.source)],
                discord.File(io.BytesIO(data), filename=GRID_FILE))
