"""Sharing picks: 1️⃣…🔟 on a results message posts that image, attached, for the team."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from search import metrics
from search.storage import Unavailable

from ..discord_text import inline
from ..embeds import MAGNIFIER, number_index, pick_embed, picks_embeds
from ..errors import reply_error

if TYPE_CHECKING:
    from ..app import FindImageBot

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
PICK_WINDOW = 60.0  # seconds in which the same image is shared once per server


class Picks(commands.Cog):
    setup_group = app_commands.Group(
        name="findimage-setup", description="Server settings for /findimage.",
        default_permissions=discord.Permissions(manage_guild=True), guild_only=True)

    def __init__(self, bot: FindImageBot) -> None:
        self.bot = bot

    async def cog_app_command_error(self, interaction: discord.Interaction,
                                    error: app_commands.AppCommandError) -> None:
        await reply_error(interaction, error)

    # -- sharing ------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        try:
            await self._pressed(payload)
        except Unavailable:  # the database is down: one sentence, never silence
            await self.bot.say_database_down(payload)

    async def _pressed(self, payload: discord.RawReactionActionEvent) -> None:
        me = self.bot.user
        index = number_index(str(payload.emoji))
        if me is None or payload.user_id == me.id or index is None or payload.guild_id is None:
            return
        state = await self.bot.state.get_results(payload.message_id)
        if state is None or index >= state.per_page:
            return
        items = state.ranking.page(state.page * state.per_page + index, 1)
        if not items:
            return
        item = items[0]
        # Two processes on one shard (a hand-off) both see this press: Redis lets one post.
        claim = ("pick", payload.guild_id, item.hit.source, item.hit.id)
        shared = self.bot.shared
        if shared is not None and await shared.claim(PICK_WINDOW, *claim) is False:
            log.info("pick %s in %s was shared within the last minute", item.hit.id,
                     payload.guild_id)
            return
        pick_id = await self.bot.state.claim_pick(
            payload.guild_id, item.hit.id, payload.user_id, state.phrase, item.hit.page_url,
            payload.message_id, window=PICK_WINDOW)
        if pick_id is None:
            log.info("pick %s in %s was shared within the last minute", item.hit.id,
                     payload.guild_id)
            return
        guild = self.bot.get_guild(payload.guild_id)
        limit = min(guild.filesize_limit if guild else DEFAULT_UPLOAD_LIMIT, DEFAULT_UPLOAD_LIMIT)
        file = await self._download(item.hit, limit)
        embed = pick_embed(item, phrase=state.phrase, filename=file.filename if file else None)
        content = f"Shared by <@{payload.user_id}> · {MAGNIFIER} more like this"
        picks_channel = await self.bot.state.picks_channel(payload.guild_id)
        targets = [c for c in (picks_channel, payload.channel_id) if c]
        for channel_id in dict.fromkeys(targets):
            # Noted before posting: a crash after the post is found there at the next start.
            await self.bot.state.posting_pick(pick_id, channel_id)
            try:
                if file is not None:
                    file.reset()
                message = await self.bot.get_partial_messageable(
                    channel_id, guild_id=payload.guild_id).send(
                    content=content, embed=embed, file=file if file else discord.utils.MISSING,
                    allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as e:
                log.warning("could not post pick in channel %s: %s", channel_id, e)
                continue
            await self.bot.state.posted_pick(pick_id, channel_id, message.id)
            metrics.SHARES.inc()
            log.debug("share guild=%s channel=%s member=%s image=%s rank=%d attached=%s",
                      payload.guild_id, channel_id, payload.user_id, item.hit.id, item.rank,
                      file is not None)
            await self.bot.state.save_shared_pick(message.id, pick_id, payload.message_id,
                                                  item.hit)
            try:
                await message.add_reaction(MAGNIFIER)
            except discord.HTTPException as e:
                log.info("could not offer more-like on pick %s: %s", message.id, e)
            return
        await self.bot.state.drop_pick(pick_id)
        if shared is not None:  # nothing was posted: the image may be shared again at once
            await shared.unclaim(*claim)

    async def _download(self, hit, limit: int) -> discord.File | None:
        """The image as an attachment, within the upload limit; None if it cannot be had."""
        found = await self.bot.service.pick_file(hit, limit)
        return None if found is None else discord.File(io.BytesIO(found.data),
                                                        filename=found.filename)

    # -- /picks ------------------------------------------------------------------
    @app_commands.command(name="picks", description="This server's latest shared picks.")
    @app_commands.describe(member="Only picks shared by this member")
    @app_commands.guild_only()
    async def picks(self, interaction: discord.Interaction,
                    member: discord.Member | None = None) -> None:
        assert interaction.guild_id is not None  # guild_only
        rows = await self.bot.state.latest_picks(interaction.guild_id,
                                                 member.id if member else None)
        lines = [
            f"• [{inline(p.phrase, 80)}](https://discord.com/channels/{p.guild_id}/{p.channel_id}/"
            f"{p.message_id}) · <@{p.member_id}> · <t:{int(p.created_at)}:R>"
            for p in rows
        ]
        title = f"Latest picks by {inline(member.display_name, 200)}" if member else "Latest picks"
        shared = await self.bot.state.shared_picks([p.message_id for p in rows if p.message_id])
        hits = [shared[p.message_id].hit if p.message_id in shared else None for p in rows]
        await interaction.response.send_message(embeds=picks_embeds(lines, hits, title=title),
                                                ephemeral=True)

    # -- /findimage-setup picks-channel --------------------------------------------
    @setup_group.command(name="picks-channel",
                         description="Where shared picks are posted (empty: the same channel).")
    @app_commands.describe(channel="The channel for picks; leave empty to post where shared")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def picks_channel(self, interaction: discord.Interaction,
                            channel: discord.TextChannel | None = None) -> None:
        assert interaction.guild_id is not None  # guild_only
        await self.bot.state.set_picks_channel(interaction.guild_id,
                                               channel.id if channel else None)
        text = (f"Picks will be posted in {channel.mention}." if channel
                else "Picks will be posted in the channel where they are shared.")
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: FindImageBot) -> None:
    await bot.add_cog(Picks(bot))
