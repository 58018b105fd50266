"""One page of a results message: a list of embeds, or one contact sheet (``layout:grid``).

The first answer, every page turn and every "more like this" message are drawn here,
so they look the same; ``post_results`` is the one way a new results message is sent
and recorded.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from search.ranking import ScoredHit

from .embeds import NEXT, NUMBERS, PREV, grid_embed, results_embeds, summary_line
from .state import ResultsState, View

if TYPE_CHECKING:
    from search.service import SearchService

    from .app import FindImageBot

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
    content = summary_line(tag=state.tag, phrase=state.phrase,
                           candidates=len(state.ranking) + state.ranking.folded, seconds=state.seconds, page=page, pages=state.pages, note=note,
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
    data = await service.contact_sheet(hits, labels)
    return Page(content, [grid_embed(hits, GRID_FILE, view.source)],
                discord.File(io.BytesIO(data), filename=GRID_FILE))


async def post_results(bot: FindImageBot, state: ResultsState, view: View,
                       send: Callable[[Page], Awaitable[discord.Message]], *, note: str = "",
                       before_reactions: Callable[[], Awaitable[object]] | None = None
                       ) -> discord.Message:
    """Send a new results message and record it, for /findimage and "more like this" alike.

    The first page is drawn and handed to ``send``; the message's view, then its results,
    are saved (a refused write keeps them in memory: paging still works); last come the
    reactions, ◀️ ▶️ and one number for each hit shown, so a press always finds a record.
    """
    page = await render_page(bot.service, state, view, 0, note)
    message = await send(page)
    state.message_id = message.id
    state.channel_id = message.channel.id if message.channel else state.channel_id
    await bot.state.save_view(message.id, view)
    await bot.state.save_results(state)
    if before_reactions is not None:
        await before_reactions()
    target = bot.get_partial_messageable(state.channel_id).get_partial_message(message.id)
    shown = len(state.ranking.page(0, state.per_page))
    for emoji in (PREV, NEXT, *NUMBERS[:shown]):
        await target.add_reaction(emoji)
    return message
