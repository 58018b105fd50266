"""/findimage and its results pages: ◀️ ▶️ edit the same message from the stored ranking."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from search import metrics
from search.config import LAYOUTS
from search.errors import InvalidQuery
from search.models import (
    COLORS,
    IMAGE_TYPES,
    LANGS,
    MAX_PHRASE_CHARS,
    MAX_QUERY_IMAGE_BYTES,
    MAX_TAG_CHARS,
    ORIENTATIONS,
    SOURCES,
    Filters,
    check_negatives,
)
from search.sources import check_language, label
from search.storage import Unavailable

from .. import activity
from ..cooldown import MemberCooldown
from ..embeds import NEXT, PREV, provisional_line
from ..errors import Busy, Refusal, reply_error
from ..pages import Page, post_results, render_hits, render_page, resolve_layout
from ..state import ResultsState, View

if TYPE_CHECKING:
    from ..app import FindImageBot

log = logging.getLogger(__name__)


def _choices(values: tuple[str, ...]) -> list[app_commands.Choice[str]]:
    """Slash-command choices from search.models' vocabulary ("all" is the option left out)."""
    return [app_commands.Choice(name=v, value=v) for v in values if v != "all"]


IMAGE_TYPE_CHOICES = _choices(IMAGE_TYPES)
ORIENTATION_CHOICES = _choices(ORIENTATIONS)
COLOUR_CHOICES = _choices(COLORS)
SOURCE_CHOICES = [app_commands.Choice(name=label(n), value=n) for n in SOURCES]
LAYOUT_CHOICES = [app_commands.Choice(name=v, value=v) for v in LAYOUTS if v != "auto"]
SHOWN_PAGE = re.compile(r"· page (\d+)/\d+")


class FindImage(commands.Cog):
    def __init__(self, bot: FindImageBot) -> None:
        self.bot = bot
        limit = bot.settings.max_concurrent_searches
        self.slots = asyncio.Semaphore(limit)
        self.queue_limit = limit * 2  # searches waiting for a slot before we say "busy"
        self.pending = 0
        # One lock per message being turned; a lock nobody holds or waits for goes away.
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = \
            weakref.WeakValueDictionary()
        self.cannot_remove: set[int] = set()  # channels where we may not remove reactions
        self.cooldown = MemberCooldown(bot.settings.user_cooldown_seconds)

    async def cog_app_command_error(self, interaction: discord.Interaction,
                                    error: app_commands.AppCommandError) -> None:
        if interaction.command is not None and interaction.command.name == "findimage":
            activity.failed(interaction, error)
        await reply_error(interaction, error)

    @app_commands.command(name="findimage",
                          description="Find images for a tag, ranked by a phrase, an image, "
                                      "or both.")
    @app_commands.describe(
        tag="One tag that fetches candidates, e.g. tiger",
        phrase='What the picture should show, e.g. "tiger playing in the snow"',
        count="Images per page (1-10)",
        image_type="Only this kind of image",
        orientation="Only this orientation",
        colors="Only images with this colour (Pixabay only)",
        safe="Safe search (can be turned off only in age-restricted channels)",
        image="A picture to find more like (with a phrase: both count equally)",
        source="Where candidates come from (Openverse: openly licensed, no account)",
        layout="A list of embeds, or one contact sheet of numbered tiles",
        lang="The language the tag is typed in, e.g. de (Pixabay only)",
    )
    @app_commands.choices(image_type=IMAGE_TYPE_CHOICES, orientation=ORIENTATION_CHOICES,
                          colors=COLOUR_CHOICES, source=SOURCE_CHOICES, layout=LAYOUT_CHOICES)
    async def findimage(self, interaction: discord.Interaction,
                        tag: app_commands.Range[str, 1, MAX_TAG_CHARS],
                        phrase: app_commands.Range[str, 1, MAX_PHRASE_CHARS] | None = None,
                        count: app_commands.Range[int, 1, 10] = 5,
                        image_type: app_commands.Choice[str] | None = None,
                        orientation: app_commands.Choice[str] | None = None,
                        colors: app_commands.Choice[str] | None = None,
                        safe: bool = True,
                        image: discord.Attachment | None = None,
                        source: app_commands.Choice[str] | None = None,
                        layout: app_commands.Choice[str] | None = None,
                        lang: app_commands.Range[str, 2, 2] | None = None) -> None:
        record = activity.begin(interaction, tag, phrase or "")
        if phrase is None and image is None:
            raise Refusal("Give a phrase, an image, or both: for example phrase:\"a tiger in "
                          "the snow\" or an image attachment.")
        if image is not None and image.size > MAX_QUERY_IMAGE_BYTES:
            raise Refusal(f"Your image is {image.size / 1e6:.1f} MB; attach one of at most "
                          f"{MAX_QUERY_IMAGE_BYTES // (1024 * 1024)} MB.")
        if not safe and not _age_restricted(interaction.channel):
            raise Refusal("Safe search can be turned off only in age-restricted channels; "
                          "this channel is not marked age-restricted.")
        retriever = self.bot.service.source(source.value if source else None)
        language = _language(lang, retriever.name, self.bot.settings.search_language)
        filters = Filters(image_type=image_type.value if image_type else "all",
                          orientation=orientation.value if orientation else "all",
                          colors=(colors.value,) if colors else (), safesearch=safe,
                          lang=language)
        label = _query_label(phrase or "", image)
        check_negatives(phrase or "", by_image=image is not None)
        # The member's turn is taken only now that nothing above refused the command.
        refund = self.take_turn(interaction.user.id)

        async def picture() -> dict:
            if image is None:
                return {}
            return {"image": await self.bot.service.picture(image.url,
                                                            declared_size=image.size)}

        await self.search(interaction, record, tag=tag, phrase=phrase, count=count,
                          filters=filters, source=retriever.name, picture=picture,
                          layout=layout.value if layout else None, label=label,
                          final_label=lambda result: _query_label(result.phrase, image),
                          refund=refund)

    def take_turn(self, member: int) -> Callable[[], None]:
        """The member's search turn (CommandOnCooldown: "Slow down" when it is not back
        yet), taken once a request has passed its checks; call what it returns to hand
        the turn back when the search refuses the query."""
        self.cooldown.check(member)
        before = self.cooldown.charge(member)
        return lambda: self.cooldown.refund(member, before)

    async def search(self, interaction: discord.Interaction, record, *, tag: str,
                     phrase: str | None, count: int, filters: Filters, source: str,
                     picture: Callable[[], Awaitable[dict]], layout: str | None, label: str,
                     final_label: Callable[[Any], str],
                     refund: Callable[[], None] | None = None) -> None:
        """Defer, find (showing a provisional page), answer: /findimage and Apps → Find
        similar images both end here. ``picture`` gives the query's image (bytes or a
        cached vector) once the interaction is deferred."""
        if self.pending >= self.bot.settings.max_concurrent_searches + self.queue_limit:
            if refund is not None:  # turned away: the member's turn is still theirs
                refund()
            raise Busy("I'm busy with other searches right now; try again in a few seconds.")
        view = View(layout=resolve_layout(layout or self.bot.settings.results_layout, count),
                    source=source)
        record.source = source
        # The slot is taken before the first await: commands arriving together all see it.
        self.pending += 1
        metrics.QUEUE_DEPTH.inc()
        try:
            await interaction.response.defer(thinking=True)
            interaction.extras["deferred_public"] = True
            # Noted until answered: if the process dies now, the next start answers it.
            await self.bot.state.add_pending(interaction.id, interaction.application_id,
                                             interaction.token)
            interaction.extras["pending_noted"] = True
            started = time.perf_counter()
            query_picture = await picture()
            async with self.slots:
                result, provisional = await self._find_progressively(
                    interaction, tag, phrase, count, filters, source, query_picture, label,
                    view)
        except BaseException as e:
            if isinstance(e, InvalidQuery) and refund is not None:  # refused for its text
                refund()
            await self._done_pending(interaction)
            raise
        finally:
            self.pending -= 1
            metrics.QUEUE_DEPTH.dec()
        record.took(result)
        try:
            await self._answer(interaction, result, filters, count,
                               time.perf_counter() - started, view, final_label(result),
                               provisional)
        finally:
            await self._done_pending(interaction)

    @findimage.autocomplete("tag")
    async def tag_suggestions(self, interaction: discord.Interaction, current: str
                              ) -> list[app_commands.Choice[str]]:
        """This server's recent tags, then the catalogue's words in cached answers: local
        data only, well inside Discord's 3 s (an empty list if the disk is slower)."""
        try:
            tags = await asyncio.wait_for(
                suggest_tags(self.bot.state, self.bot.service.store, interaction.guild_id,
                             current), SUGGEST_SECONDS)
        except TimeoutError:
            log.info("tag suggestions took over %.1f s; none offered", SUGGEST_SECONDS)
            return []
        return [app_commands.Choice(name=t, value=t) for t in tags]

    @findimage.autocomplete("lang")
    async def lang_suggestions(self, interaction: discord.Interaction, current: str
                               ) -> list[app_commands.Choice[str]]:
        typed = current.strip().lower()
        return [app_commands.Choice(name=f"{code} · {LANGUAGE_NAMES[code]}", value=code)
                for code in LANGS if code.startswith(typed[:2])
                or LANGUAGE_NAMES[code].lower().startswith(typed)][:25]

    async def _done_pending(self, interaction: discord.Interaction) -> None:
        if interaction.extras.pop("pending_noted", False):
            await self.bot.state.done_pending(interaction.id)

    async def _answer(self, interaction: discord.Interaction, result, filters: Filters,
                      count: int, seconds: float, view: View, phrase: str,
                      provisional: discord.WebhookMessage | None = None) -> None:
        state = ResultsState(
            message_id=0, channel_id=interaction.channel_id or 0, guild_id=interaction.guild_id,
            requester_id=interaction.user.id, tag=result.tag, phrase=phrase,
            filters=filters, per_page=count, page=0, seconds=seconds, ranking=result.ranking)

        async def send(page: Page) -> discord.Message:
            message = await self._replace(provisional, page) if provisional else None
            if message is None:
                if provisional is not None and page.file is not None:  # its bytes were read
                    page.file.reset()
                message = await interaction.followup.send(wait=True, **page.send())
            interaction.extras["answered"] = True
            activity.answered(interaction)
            return message

        async def note_truncated() -> None:
            if result.truncated:
                await interaction.followup.send(
                    "Your phrase was longer than the model reads; only its beginning was used.",
                    ephemeral=True)

        await post_results(self.bot, state, view, send,
                           note=left_out_note(result.left_out, self.bot.settings),
                           before_reactions=note_truncated)

    # -- the provisional page ---------------------------------------------------
    # A cold query on a small CPU takes seconds: past ``provisional_after`` the member
    # sees the first page of what is ranked so far, edited at most once every
    # ``edit_interval`` (Discord allows about five edits in five seconds per channel);
    # the final ranking replaces it, and only then come the reactions.
    provisional_after = 1.5
    edit_interval = 2.0

    async def _find_progressively(self, interaction: discord.Interaction, tag: str,
                                  phrase: str | None, count: int, filters: Filters,
                                  source: str, picture: dict, shown: str, view: View):
        """``(result, provisional message or None)``; the provisional page as it goes."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        latest = None
        fresh = asyncio.Event()
        finished = asyncio.Event()

        def on_partial(partial) -> None:
            nonlocal latest
            latest = partial
            fresh.set()

        async def pause(seconds: float) -> bool:
            """Wait up to ``seconds``; False when the search has finished meanwhile."""
            try:
                await asyncio.wait_for(finished.wait(), max(0.0, seconds))
            except TimeoutError:
                return True
            return False

        async def show() -> discord.WebhookMessage | None:
            message, last = None, 0.0
            while True:
                await fresh.wait()
                wait = (started + self.provisional_after if message is None
                        else last + self.edit_interval) - loop.time()
                if finished.is_set() or not await pause(wait):
                    return message
                fresh.clear()
                partial = latest
                if partial is None or partial.ranked < min(count, partial.total):
                    continue
                # In the final page's layout: a grid stays a grid (its tiles are the files
                # being ranked, so drawing it downloads nothing).
                page = await render_hits(
                    self.bot.service, partial.ranking.page(0, count), view,
                    provisional_line(tag=tag, phrase=shown, ranked=partial.ranked,
                                     total=partial.total, source=source))
                try:
                    if message is None:
                        message = await interaction.followup.send(**page.send(), wait=True)
                    else:
                        await message.edit(**page.edit())
                except discord.HTTPException as e:  # the final answer still comes
                    log.info("could not show a provisional page: %s", e)
                    return message
                last = loop.time()

        shower = asyncio.ensure_future(show())
        try:
            result = await self.bot.service.find(tag, phrase, top=count, filters=filters,
                                                 partial=on_partial,
                                                 partial_interval=self.edit_interval / 4,
                                                 source=source, **picture)
        except BaseException:
            shower.cancel()
            raise
        finally:
            finished.set()
            fresh.set()
        return result, await shower

    async def _replace(self, message: discord.WebhookMessage, final: Page
                       ) -> discord.WebhookMessage | None:
        """The provisional message with the final page (a grid's sheet attached); None if it
        cannot be edited."""
        try:
            return await message.edit(**final.edit())
        except discord.HTTPException as e:
            log.warning("could not replace the provisional page %s: %s", message.id, e)
            return None

    # -- paging ---------------------------------------------------------------
    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        try:
            await self._pressed(payload)
        except Unavailable:  # the database is down: one sentence, never silence
            await self.bot.say_database_down(payload)

    async def _pressed(self, payload: discord.RawReactionActionEvent) -> None:
        if not self._is_page_press(payload):
            return
        if not await self.bot.state.is_results(payload.message_id):
            return
        await self.turn(payload)
        await self._remove_press(payload)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        # Where we may not remove a member's reaction, taking it off is the next press.
        if self._may_remove(payload) or not self._is_page_press(payload):
            return
        if await self.bot.state.is_results(payload.message_id):
            await self.turn(payload)

    def _is_page_press(self, payload: discord.RawReactionActionEvent) -> bool:
        me = self.bot.user
        return (me is not None and payload.user_id != me.id
                and str(payload.emoji) in (PREV, NEXT))

    async def turn(self, payload: discord.RawReactionActionEvent) -> None:
        step = 1 if str(payload.emoji) == NEXT else -1
        lock = self._locks.get(payload.message_id)
        if lock is None:
            lock = self._locks[payload.message_id] = asyncio.Lock()
        shared = self.bot.shared
        if shared is None:
            async with lock:
                await self._turn(payload, step)
            return
        # Every process that may turn this message (a shard's two holders in a hand-off,
        # or any process once the state is shared) takes Redis's lock first.
        try:
            async with shared.lock(f"turn:{payload.message_id}", fallback=lock):
                await self._turn(payload, step)
        except TimeoutError:
            log.warning("page turn of %s skipped: another process held it for 15 s",
                        payload.message_id)

    async def _turn(self, payload: discord.RawReactionActionEvent, step: int) -> None:
        state = await self.bot.state.get_results(payload.message_id)
        if state is None:
            return
        message = (self.bot.get_partial_messageable(payload.channel_id)
                   .get_partial_message(payload.message_id))
        if state.expired:
            await self._say_expired(message, state)
            return
        current = state.page
        if state.turning:  # the last turn may or may not have reached Discord: look
            current = await self._shown_page(message, state)
        page = current + step
        note = ""
        if page >= state.pages:
            page, note = current, (f"That was the last page: all {len(state.ranking)} "
                                   "candidates are shown.")
        elif page < 0:
            page, note = 0, "This is the first page."
        view = await self.bot.state.get_view(payload.message_id)
        rendered = await render_page(self.bot.service, state, view, page, note)
        # Recorded before the edit, so a crash in between is noticed on the next press.
        await self.bot.state.set_page(state, page, turning=True)
        try:
            await message.edit(**rendered.edit())
        except discord.HTTPException as e:
            log.warning("could not turn page of %s: %s", payload.message_id, e)
            await self.bot.state.set_page(state, current, turning=False)
            return
        await self.bot.state.set_page(state, page, turning=False)
        log.debug("page turn message=%s member=%s page=%d/%d", payload.message_id,
                  payload.user_id, page + 1, state.pages)

    async def _shown_page(self, message: discord.PartialMessage, state: ResultsState) -> int:
        """The page the message shows (its summary line says "page N/M"), else the record."""
        try:
            shown = await message.fetch()
        except discord.HTTPException as e:
            log.info("could not read message %s back: %s", message.id, e)
            return state.page
        found = SHOWN_PAGE.search(shown.content or "")
        if found is None:
            return state.page
        return min(max(int(found.group(1)) - 1, 0), state.pages - 1)

    async def _say_expired(self, message: discord.PartialMessage, state: ResultsState) -> None:
        days = self.bot.settings.results_keep_days
        content = (f"**{state.phrase}** · tag `{state.tag}`\n"
                   f"These results expired after {days} days; search again with /findimage.")
        try:
            await message.edit(content=content, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as e:
            log.info("could not mark %s as expired: %s", message.id, e)

    def _may_remove(self, payload: discord.RawReactionActionEvent) -> bool:
        """Whether we may take a member's reaction off (Manage Messages in that channel)."""
        if payload.channel_id in self.cannot_remove:
            return False
        guild = self.bot.get_guild(payload.guild_id) if payload.guild_id else None
        channel = guild.get_channel(payload.channel_id) if guild else None
        if guild is None or channel is None or guild.me is None:
            return payload.guild_id is not None
        return channel.permissions_for(guild.me).manage_messages

    async def _remove_press(self, payload: discord.RawReactionActionEvent) -> None:
        if not self._may_remove(payload):
            return
        message = (self.bot.get_partial_messageable(payload.channel_id)
                   .get_partial_message(payload.message_id))
        try:
            await message.remove_reaction(payload.emoji, discord.Object(payload.user_id))
        except discord.Forbidden:
            self.cannot_remove.add(payload.channel_id)
        except discord.HTTPException as e:
            log.info("could not remove a reaction: %s", e)


SUGGEST_SECONDS = 2.0  # Discord drops an autocomplete answer after 3 s
LANGUAGE_NAMES = {
    "cs": "Čeština", "da": "Dansk", "de": "Deutsch", "en": "English", "es": "Español",
    "fr": "Français", "id": "Indonesia", "it": "Italiano", "hu": "Magyar",
    "nl": "Nederlands", "no": "Norsk", "pl": "Polski", "pt": "Português", "ro": "Română",
    "sk": "Slovenčina", "fi": "Suomi", "sv": "Svenska", "tr": "Türkçe", "vi": "Việt",
    "th": "ไทย", "bg": "Български", "ru": "Русский", "el": "Ελληνικά", "ja": "日本語",
    "ko": "한국어", "zh": "简体中文"}


async def suggest_tags(state, store, guild_id: int | None, current: str,
                       limit: int = 25) -> list[str]:
    """Up to ``limit`` tags starting with what was typed: this server's first."""
    recent, cached = await asyncio.gather(state.recent_tags(guild_id, current, limit),
                                          store.cached_tags(current, limit))
    return list(dict.fromkeys([*recent, *cached]))[:limit]


def _language(lang: str | None, source: str, default: str) -> str:
    """The member's lang (checked), else SEARCH_LANGUAGE; Openverse takes none."""
    if lang is None:
        return default
    return check_language(source, lang)


def _query_label(phrase: str, image: discord.Attachment | None) -> str:
    """What the results message calls the query (the attachment's name is the member's)."""
    if image is None:
        return phrase
    name = " ".join(image.filename.split())[:40]  # escaped where it is shown
    return f"image {name} + {phrase}" if phrase else f"image {name}"


def left_out_note(left_out: int, settings) -> str:
    if not left_out:
        return ""
    return (f"{left_out} image{'s were' if left_out != 1 else ' was'} still downloading after "
            f"{settings.search_deadline_seconds:.0f} s and left out.")


def _age_restricted(channel: object) -> bool:
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


async def setup(bot: FindImageBot) -> None:
    await bot.add_cog(FindImage(bot))
