"""Every failure a member can meet, mapped to one ephemeral sentence."""

from __future__ import annotations

import logging

import aiohttp
import discord
from discord import app_commands

from search.errors import SearchError

from .discord_text import CONTENT, clip, escape

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on my side; it has been logged for the admins."


class Refusal(app_commands.AppCommandError):
    """A request refused on purpose; ``str()`` is the sentence the member sees."""


class Busy(Refusal):
    """Refused because the search queue is full."""


def message_for(error: BaseException) -> str:
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, (Refusal, SearchError)):
        return str(error)
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: you can search again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.MissingPermissions):
        needed = ", ".join(p.replace("_", " ").replace("guild", "server").title()
                           for p in error.missing_permissions)
        return f"You need the {needed} permission to do that."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command works only in a server."
    if isinstance(error, app_commands.TransformerError):
        return f"'{error.value}' is not a valid value for that option."
    return APOLOGY


async def reply_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the member in one ephemeral sentence; log what they should not see."""
    if interaction.client.is_closed():  # shutting down: nobody can be answered any more
        log.info("command %s interrupted by shutdown", getattr(interaction.command, "name", "?"))
        return
    text = message_for(error)
    quiet = discord.AllowedMentions.none()
    if text == APOLOGY:
        original = getattr(error, "original", error)
        log.error("command %s failed (interaction %s)",
                  getattr(interaction.command, "qualified_name", "?"), interaction.id,
                  exc_info=(type(original), original, original.__traceback__))
    # Sentences may echo a member's tag or value: shown as typed, never pinging anyone,
    # even if it lands in the public "thinking…" message below.
    text = clip(escape(text), CONTENT)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=quiet)
            return
        if interaction.extras.get("deferred_public") and not interaction.extras.get("answered"):
            # The public "thinking…" message would turn the first followup public: drop it,
            # so the sentence reaches only the member who asked.
            try:
                await interaction.delete_original_response()
            except discord.HTTPException:
                pass
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=quiet)
    except (discord.HTTPException, aiohttp.ClientError):
        log.warning("could not deliver an error reply to %s", interaction.user.id)
