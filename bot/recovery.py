"""What a crash left behind, finished at start-up (after login, before the model loads).

- A search that was "thinking…" when the process died is answered: its interaction token
  still works for 15 minutes, so the deferred message is edited through the interaction
  webhook, as Discord documents for a deferred response.
- A pick that was claimed but not recorded as posted is looked for in the channel it was
  being posted to: found, it is recorded (so /picks lists it); not found, the claim is
  dropped (so the next press posts it).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import TYPE_CHECKING

import aiohttp
import discord
from discord.webhook.async_ import async_context

if TYPE_CHECKING:
    from .app import FindImageBot

log = logging.getLogger(__name__)

RESTARTED = "The bot restarted; please search again."
PICK_SEARCH_SLACK = 120.0  # seconds before a claim in which its message may have been posted


async def answer_pending(bot: FindImageBot) -> int:
    """Edit every search left "thinking…" by a dead run; returns how many were answered."""
    pending = await bot.state.take_pending()
    if not pending:
        return 0
    answered = 0
    adapter = async_context.get()
    async with aiohttp.ClientSession() as session:
        for p in pending:
            try:
                await adapter.edit_original_interaction_response(
                    p.application_id, p.token, session=session,
                    payload={"content": RESTARTED, "embeds": [],
                             "allowed_mentions": {"parse": []}})
                answered += 1
            except discord.HTTPException as e:  # expired, or deleted by the member
                log.info("could not answer search %s left by the last run: %s",
                         p.interaction_id, e)
    log.info("answered %d searches left unanswered by the last run", answered)
    return answered


async def reconcile_picks(bot: FindImageBot) -> None:
    """Record picks a previous run posted but did not record; drop those it never posted."""
    me = bot.user
    for pick in await bot.state.unfinished_picks():
        found = None
        if pick.channel_id is not None and me is not None:
            after = datetime.datetime.fromtimestamp(pick.created_at - PICK_SEARCH_SLACK,
                                                    tz=datetime.timezone.utc)
            channel = bot.get_partial_messageable(pick.channel_id, guild_id=pick.guild_id)
            try:
                async for message in channel.history(limit=100, after=after):
                    if message.author.id == me.id and _is_pick_message(message, pick):
                        found = message
                        break
            except discord.HTTPException as e:
                log.info("could not look for pick %s in channel %s: %s", pick.id,
                         pick.channel_id, e)
                continue
        if found is not None:
            await bot.state.posted_pick(pick.id, found.channel.id, found.id)
            log.info("recorded pick %s, posted before the restart", pick.id)
        else:
            await bot.state.drop_pick(pick.id)
            log.info("dropped pick %s, claimed but never posted before the restart: the next "
                     "press posts it", pick.id)


async def sweep_forever(bot: FindImageBot, every: float) -> None:
    """With a shared database: finish, every ``every`` s, what processes that died left."""
    from search.storage import StorageError

    while True:
        await asyncio.sleep(every)
        try:
            await answer_pending(bot)
            await reconcile_picks(bot)
        except StorageError as e:  # the server is down: the next sweep tries again
            log.info("could not look for work left by dead processes (%s)", e)
        except Exception:
            log.exception("the sweep for work left by dead processes failed")


def _is_pick_message(message: discord.Message, pick) -> bool:
    return (f"<@{pick.member_id}>" in message.content
            and any(e.url == pick.page_url for e in message.embeds))
