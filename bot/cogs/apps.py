"""Apps → Find similar images: a message's picture as the query, with a tag (and a phrase)
asked in a modal; the answer is a results message like /findimage's.

Our own results and picks are ranked by the vector the caches already hold (nothing is
downloaded); an attachment or an image embed is fetched from DISCORD_CDN_HOSTS only,
under the caps of an ``image:`` attachment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from search.errors import ImageSkipped, InvalidQuery
from search.images import check_url
from search.models import MAX_PHRASE_CHARS, MAX_TAG_CHARS, Filters, Hit, check_negatives

from .. import activity
from ..errors import Refusal, reply_error
from .findimage import _language

if TYPE_CHECKING:
    from ..app import FindImageBot
    from .findimage import FindImage

log = logging.getLogger(__name__)

NAME = "Find similar images"
WHOSE = "that message's image"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")


@dataclass(frozen=True)
class Target:
    """What the query picture is: one of our hits (its cached vector), or a URL."""

    label: str
    hit: Hit | None = None
    url: str = ""
    size: int | None = None


class SimilarModal(discord.ui.Modal, title=NAME):
    tag: discord.ui.TextInput = discord.ui.TextInput(
        custom_id="tag", label="Tag", placeholder="One tag that fetches candidates, e.g. tiger",
        min_length=1, max_length=MAX_TAG_CHARS)
    phrase: discord.ui.TextInput = discord.ui.TextInput(
        custom_id="phrase", label="Phrase (optional)", placeholder='e.g. "in the snow" (with -word to avoid one)',
        required=False, max_length=MAX_PHRASE_CHARS)

    def __init__(self, apps: Apps, target: Target) -> None:
        super().__init__(timeout=600)
        self.apps, self.target = apps, target

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.apps.submitted(interaction, self.target, self.tag.value,
                                  self.phrase.value or None)

    # discord.py's Modal.on_error takes no item (its View's does)
    async def on_error(self, interaction: discord.Interaction,  # type: ignore[override]
                       error: Exception, /) -> None:
        activity.failed(interaction, error)
        await reply_error(interaction, error)


class Apps(commands.Cog):
    def __init__(self, bot: FindImageBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name=NAME, callback=self.find_similar)
        self.menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def find_similar(self, interaction: discord.Interaction,
                           message: discord.Message) -> None:
        try:
            target = await self.target_of(message)
            await interaction.response.send_modal(SimilarModal(self, target))
        except Exception as e:  # noqa: BLE001 - every failure is one ephemeral sentence
            await reply_error(interaction, e)

    async def target_of(self, message: discord.Message) -> Target:
        """The message's picture, checked before the modal opens; a sentence if none."""
        state = self.bot.state
        shared = (await state.shared_picks([message.id])).get(message.id)
        if shared is not None:
            return Target(f"more like #{shared.hit.id}", hit=shared.hit)
        results = await state.get_results(message.id)
        if results is not None and not results.expired:
            # The first hit of the page it shows: what the member is looking at.
            shown = results.ranking.page(results.page * results.per_page, 1)
            if shown:
                return Target(f"more like #{shown[0].hit.id}", hit=shown[0].hit)
        for attachment in message.attachments:
            if _is_image(attachment.content_type, attachment.filename):
                return self._checked(Target(f"image {_name(attachment.filename)}",
                                            url=attachment.url, size=attachment.size))
        for embed in message.embeds:
            for media in (embed.image, embed.thumbnail):
                url = media.proxy_url or media.url
                if url:
                    return self._checked(Target("image from a message", url=url))
        raise Refusal(f"That message has no picture; use {NAME} on a message with an attached "
                      "image or an image embed.")

    def _checked(self, target: Target) -> Target:
        try:
            check_url(target.url, self.bot.settings.discord_cdn_hosts)
        except ImageSkipped:
            raise Refusal("That picture is not on Discord's own servers, so I will not download "
                          "it; attach the picture to a message instead.") from None
        return target

    async def submitted(self, interaction: discord.Interaction, target: Target, tag: str,
                        phrase: str | None) -> None:
        finder: FindImage | None = self.bot.get_cog("FindImage")  # type: ignore[assignment]
        if finder is None or self.bot.service is None:
            raise Refusal("Searching is not available right now; try again in a minute.")
        record = activity.begin(interaction, tag, phrase or "")
        source = self.bot.settings.search_source
        if target.hit is not None:
            source = target.hit.source if target.hit.source in self.bot.service.sources \
                else source
        retriever = self.bot.service.source(source)
        check_negatives(phrase or "", by_image=True)
        filters = Filters(lang=_language(None, retriever.name,
                                         self.bot.settings.search_language))
        label = f"{target.label} + {phrase}" if phrase else target.label
        refund = finder.take_turn(interaction.user.id)  # one cooldown for both ways in

        async def picture() -> dict:
            service = self.bot.service
            assert service is not None
            if target.hit is not None:
                vector = await service.cached_vector(target.hit)
                if vector is None:
                    raise InvalidQuery("I no longer have the image behind that message; run "
                                       "the search again, or use a message with a picture.")
                return {"vector": vector}
            return {"image": await service.picture(target.url, declared_size=target.size,
                                                   whose=WHOSE)}

        await finder.search(interaction, record, tag=tag, phrase=phrase, count=5,
                            filters=filters, source=retriever.name, picture=picture,
                            layout=None, label=label, final_label=lambda _result: label,
                            refund=refund)


def _is_image(content_type: str | None, filename: str) -> bool:
    if content_type:
        return content_type.split(";")[0].strip().lower() in IMAGE_TYPES
    return filename.lower().endswith(IMAGE_SUFFIXES)


def _name(filename: str) -> str:
    return " ".join(filename.split())[:40]


async def setup(bot: FindImageBot) -> None:
    await bot.add_cog(Apps(bot))
