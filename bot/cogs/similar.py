"""More like this: 🔍 on a shared pick posts a new results message ranked by the pick's image.

The candidates are the ranking the pick came from, and every vector comes from the
embedding cache: no source call, no download, no encode. It works on pick messages
posted before a restart, since the pick, its ranking and the vectors are all on disk.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from search.errors import PickForgotten
from search.storage import Unavailable

from ..embeds import MAGNIFIER
from ..pages import post_results
from ..state import ResultsState, View

if TYPE_CHECKING:
    from ..app import FindImageBot

log = logging.getLogger(__name__)

REPEAT_WINDOW = 60.0  # one more-like message per pick message a minute, however many press


class Similar(commands.Cog):
    def __init__(self, bot: FindImageBot) -> None:
        self.bot = bot
        self._recent: dict[int, float] = {}

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        try:
            await self._pressed(payload)
        except Unavailable:  # the database is down: one sentence, never silence
            await self.bot.say_database_down(payload)

    async def _pressed(self, payload: discord.RawReactionActionEvent) -> None:
        me = self.bot.user
        if (me is None or payload.user_id == me.id or str(payload.emoji) != MAGNIFIER
                or payload.guild_id is None):
            return
        shared = (await self.bot.state.shared_picks([payload.message_id])).get(
            payload.message_id)
        if shared is None:
            return
        now = time.monotonic()
        self._recent = {k: t for k, t in self._recent.items() if now - t < REPEAT_WINDOW}
        if payload.message_id in self._recent:
            log.info("more like pick %s was asked within the last minute", payload.message_id)
            return
        self._recent[payload.message_id] = now
        try:
            await self.more_like(payload, shared.hit, shared.results_message_id)
        except discord.HTTPException as e:
            log.warning("could not post more like %s: %s", payload.message_id, e)

    async def more_like(self, payload: discord.RawReactionActionEvent, pick,
                        results_message_id: int) -> None:
        started = time.perf_counter()
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        origin = await self.bot.state.get_results(results_message_id)
        try:
            if origin is None:  # pruned, or never recorded
                raise PickForgotten()
            ranking = await self.bot.service.more_like(pick, origin.ranking)
        except PickForgotten as e:
            # A reaction cannot be answered privately: a short notice that removes itself.
            await channel.send(f"<@{payload.user_id}> {e}", delete_after=60,
                               allowed_mentions=discord.AllowedMentions.none())
            return
        seconds = time.perf_counter() - started
        link = (f"https://discord.com/channels/{payload.guild_id}/{payload.channel_id}/"
                f"{payload.message_id}")
        state = ResultsState(
            message_id=0, channel_id=payload.channel_id, guild_id=payload.guild_id,
            requester_id=payload.user_id, tag=origin.tag, phrase=f"more like #{pick.id}",
            filters=origin.filters, per_page=origin.per_page, page=0, seconds=seconds,
            ranking=ranking)
        view = await self.bot.state.get_view(results_message_id)
        view = View(layout=view.layout, source=pick.source, link=link)
        await post_results(self.bot, state, view, lambda page: channel.send(**page.send()))

async def setup(bot: FindImageBot) -> None:
    await bot.add_cog(Similar(bot))
