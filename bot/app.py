"""The Bot subclass: holds the shared resources, loads the cogs, syncs commands when asked."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from search.config import Settings
from search.storage import Unavailable

from .shards import IdentifyTurns
from .state import State

if TYPE_CHECKING:  # the service imports torch, which loads last (see bot/__main__.py)
    from search.service import SearchService
    from search.shared import SharedRedis

log = logging.getLogger(__name__)

COGS = ("bot.cogs.findimage", "bot.cogs.picks", "bot.cogs.similar", "bot.cogs.apps")

# What the invite link asks for (the README quotes its value).
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, embed_links=True, attach_files=True,
    add_reactions=True, read_message_history=True, manage_messages=True)


def point_at(settings: Settings) -> None:
    """Send REST and the gateway where the settings say (a proxy, or the tests' fake)."""
    discord.http.Route.BASE = settings.discord_api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def intents() -> discord.Intents:
    """The defaults (guilds, reactions, …) without the privileged message-content intent."""
    value = discord.Intents.default()
    value.message_content = False
    return value


INTERACTION_CLAIM = 15 * 60.0  # seconds: an interaction's token lives 15 minutes


class OnceTree(discord.app_commands.CommandTree):
    """With Redis, one process handles each interaction: in a zero-downtime hand-off two
    processes hold the same shard, and Discord sends both of them every event."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        shared = getattr(self.client, "shared", None)
        if shared is None:
            return True
        first = await shared.claim(INTERACTION_CLAIM, "interaction", interaction.id)
        if first is False:
            log.debug("interaction %s is handled by another process", interaction.id)
        return first is not False  # None: Redis cannot say, so this process answers


class FindImageBot(commands.AutoShardedBot):
    """The bot: SHARD_IDS of SHARD_COUNT shards, or all of them when those are unset (and
    then discord.py asks Discord how many)."""

    def __init__(self, settings: Settings, service: SearchService | None, state: State,
                 shared: SharedRedis | None = None, **options) -> None:
        # Nothing the bot sends pings anyone unless that message says otherwise: tags,
        # phrases and Pixabay's text can carry @everyone, role or user mentions.
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        if settings.shard_count is not None:
            options.setdefault("shard_count", settings.shard_count)
            if settings.shard_ids is not None:
                options.setdefault("shard_ids", list(settings.shard_ids))
        super().__init__(command_prefix=commands.when_mentioned, intents=intents(),
                         help_command=None, tree_cls=OnceTree, **options)
        self.shared = shared  # Redis, when REDIS_URL is set: claims, locks, IDENTIFY turns
        self.identify_turns = IdentifyTurns(self, shared)
        self.settings = settings
        self._service = service  # set once the model has loaded, before the gateway connects
        self.state = state
        self.synced: list[discord.app_commands.AppCommand] = []
        self.metrics_url: str | None = None  # where /metrics is served, when it is
        self._down_notices: dict[int, float] = {}  # message id -> when we last said so

    async def say_database_down(self, payload: discord.RawReactionActionEvent) -> None:
        """A press on one of our messages met a database that is down: say so in one public
        sentence that pings nobody and removes itself (a reaction has no private reply),
        at most once a minute a message."""
        me = self.user
        if me is None or payload.user_id == me.id or payload.message_author_id != me.id:
            return
        now = time.monotonic()
        self._down_notices = {k: t for k, t in self._down_notices.items() if now - t < 60}
        if payload.message_id in self._down_notices:
            return
        self._down_notices[payload.message_id] = now
        channel = self.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        try:
            await channel.send(f"<@{payload.user_id}> {Unavailable.SENTENCE}", delete_after=60,
                               allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as e:
            log.info("could not say the database is down: %s", e)

    @property
    def service(self) -> SearchService:
        """The search service; commands arrive only after it is open (see bot/__main__.py)."""
        if self._service is None:
            raise RuntimeError("the search service is not open yet")
        return self._service

    @service.setter
    def service(self, service: SearchService) -> None:
        self._service = service

    async def setup_hook(self) -> None:
        for name in COGS:
            await self.load_extension(name)

    async def sync_commands(self) -> None:
        """Publish the commands; start-up calls it once the model serves, not at login."""
        guild_id = self.settings.discord_guild_id
        if guild_id:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            self.synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to server %s", len(self.synced), guild_id)
        else:
            self.synced = await self.tree.sync()
            log.info("synced %d commands globally (may take up to an hour to appear)",
                     len(self.synced))

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False
                                   ) -> None:
        await self.identify_turns.wait(shard_id)

    async def on_ready(self) -> None:
        shards = ",".join(map(str, sorted(self.shards))) or "0"
        log.info("online as %s in %d servers (shards %s of %s)", self.user, len(self.guilds),
                 shards, self.shard_count)
