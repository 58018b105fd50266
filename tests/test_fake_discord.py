"""The fake Discord (bench/fakes/discord.py) against the real, unmodified discord.py client."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord.ext import commands

from bench.fakes.discord import INTENT_GUILD_MESSAGE_REACTIONS, INTENT_MESSAGE_CONTENT, FakeDiscord

pytestmark = pytest.mark.timeout(60)

PNG = b"\x89PNG\r\n\x1a\n" + b"fake-image-bytes" * 4


class Probe(commands.Cog):
    """A tiny cog: what the bot saw, and a few commands shaped like the real bot's."""

    setup = app_commands.Group(name="setup", description="Configure the bot",
                               default_permissions=discord.Permissions(manage_guild=True))

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.interactions: list[discord.Interaction] = []
        self._changed = asyncio.Event()

    def _record(self, name: str, value: Any) -> None:
        self.events.append((name, value))
        self._changed.set()

    def seen(self, name: str) -> list[Any]:
        return [v for n, v in self.events if n == name]

    async def wait(self, predicate: Callable[[], Any], timeout: float = 10) -> None:
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(loop(), timeout)

    @app_commands.command(name="ping", description="Defer, then answer with an embed and a file")
    async def ping(self, interaction: discord.Interaction) -> None:
        self.interactions.append(interaction)
        await interaction.response.defer(thinking=True)
        embed = discord.Embed(title="pong", description="the fake works")
        embed.set_image(url="attachment://ping.png")
        await interaction.followup.send(embed=embed, file=discord.File(io.BytesIO(PNG), "ping.png"))

    @app_commands.command(name="secret", description="Ephemeral deferral, then two followups")
    async def secret(self, interaction: discord.Interaction) -> None:
        self.interactions.append(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send("first")
        await interaction.followup.send("second")

    @app_commands.command(name="setchannel", description="Pick the channel for picks")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def setchannel(self, interaction: discord.Interaction, channel: discord.TextChannel,
                         note: str | None = None) -> None:
        self._record("setchannel", (channel.id, channel.name, channel.nsfw, note))
        await interaction.response.send_message(f"picks go to {channel.mention}", ephemeral=True)

    @setchannel.error
    async def setchannel_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self._record("setchannel_error", error)
        await interaction.response.send_message("You need Manage Server.", ephemeral=True)

    @setup.command(name="picks-channel", description="Where picks go")
    async def picks_channel(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        self._record("picks-channel", channel.id)
        await interaction.response.send_message(f"ok {channel.name}")

    @app_commands.command(name="whois", description="A user option")
    async def whois(self, interaction: discord.Interaction, who: discord.Member, count: int = 1) -> None:
        self._record("whois", (who.id, who.name, count))
        await interaction.response.send_message(f"{who.name} x{count}")

    @app_commands.command(name="vote", description="A message with a button")
    async def vote(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=30)
        button = discord.ui.Button(label="Vote", custom_id="vote-button")

        async def pressed(press: discord.Interaction) -> None:
            self._record("pressed", press.user.id)
            await press.response.edit_message(content=f"voted by {press.user.name}", view=None)

        button.callback = pressed
        view.add_item(button)
        await interaction.response.send_message("vote?", view=view)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        self._record("reaction_add", payload)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        self._record("reaction_remove", payload)

    @commands.Cog.listener()
    async def on_guild_channel_update(self, before: discord.abc.GuildChannel, after: discord.abc.GuildChannel) -> None:
        self._record("channel_update", after)

    @commands.Cog.listener()
    async def on_resumed(self) -> None:
        self._record("resumed", None)


@pytest.fixture
async def fake():
    f = FakeDiscord()
    await f.start()
    yield f
    await f.close()
    assert not f.server_errors, f.server_errors


@pytest.fixture
def pointed(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> FakeDiscord:
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    return fake


class QuickBot(commands.Bot):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        pass  # discord.py sleeps 5 s before every non-initial IDENTIFY; not needed against the fake


def make_bot() -> commands.Bot:
    intents = discord.Intents.default()
    intents.message_content = False
    return QuickBot(command_prefix="!", intents=intents, guild_ready_timeout=0.1)


@pytest.fixture
async def bot(pointed: FakeDiscord):
    b = make_bot()
    probe = Probe()
    await b.add_cog(probe)
    await b.login(pointed.token)
    b.probe = probe  # type: ignore[attr-defined]
    task = asyncio.create_task(b.connect(reconnect=True))
    try:
        await asyncio.wait_for(b.wait_until_ready(), 10)
        yield b
    finally:
        await b.close()
        await asyncio.wait_for(task, 10)
    assert not pointed.unknown_routes, pointed.unknown_routes


async def synced(bot: commands.Bot, fake: FakeDiscord) -> Probe:
    bot.tree.copy_global_to(guild=discord.Object(fake.guild_id))
    await bot.tree.sync(guild=discord.Object(fake.guild_id))
    return bot.probe  # type: ignore[attr-defined]


async def test_bad_token_is_a_login_failure(pointed: FakeDiscord) -> None:
    b = make_bot()
    try:
        with pytest.raises(discord.LoginFailure):
            await b.login("not-the-token")
    finally:
        await b.close()
    assert [(r.method, r.path, r.status) for r in pointed.requests] == [("GET", "/users/@me", 401)]
    assert not pointed.unknown_routes


async def test_ready_identify_and_guild(bot: commands.Bot, fake: FakeDiscord) -> None:
    (identify,) = fake.identify_payloads
    assert identify["token"] == fake.token
    assert identify["intents"] & INTENT_GUILD_MESSAGE_REACTIONS
    assert not identify["intents"] & INTENT_MESSAGE_CONTENT
    assert bot.user is not None and bot.user.id == fake.bot_user_id and bot.user.bot
    assert bot.application_id == fake.app_id
    guild = bot.get_guild(fake.guild_id)
    assert guild is not None and guild.owner_id == fake.members["owner"].id
    assert {c.name for c in guild.text_channels} >= {"general", "nsfw", "picks"}
    assert guild.get_channel(fake.channels["nsfw"].id).is_nsfw()
    assert guild.member_count == len(fake.members) + 1
    assert guild.me.id == fake.bot_user_id and not guild.me.guild_permissions.manage_messages
    assert guild.get_channel(fake.channels["general"].id).permissions_for(guild.me).manage_messages
    assert fake.connected


async def test_privileged_intent_not_granted_closes_with_4014(pointed: FakeDiscord) -> None:
    intents = discord.Intents.default()
    intents.message_content = True
    b = commands.Bot(command_prefix="!", intents=intents)
    await b.login(pointed.token)
    with pytest.raises(discord.PrivilegedIntentsRequired):
        await asyncio.wait_for(b.connect(reconnect=True), 10)
    await b.close()


async def test_sync_is_recorded_per_guild(bot: commands.Bot, fake: FakeDiscord) -> None:
    bot.tree.copy_global_to(guild=discord.Object(fake.guild_id))
    result = await bot.tree.sync(guild=discord.Object(fake.guild_id))
    assert None not in fake.synced_commands
    cmds = {c["name"]: c for c in fake.synced_commands[fake.guild_id]}
    assert set(cmds) == {"ping", "secret", "setchannel", "setup", "whois", "vote"}
    assert cmds["setchannel"]["default_member_permissions"] == str(1 << 5)
    assert {c.name: c.id for c in result} == {n: int(c["id"]) for n, c in cmds.items()}
    # re-syncing keeps the ids, as Discord does for an overwrite with the same names
    await bot.tree.sync(guild=discord.Object(fake.guild_id))
    assert {c["name"]: c["id"] for c in fake.synced_commands[fake.guild_id]} == {n: c["id"] for n, c in cmds.items()}
    fetched = await bot.tree.fetch_commands(guild=discord.Object(fake.guild_id))
    assert sorted(c.name for c in fetched) == sorted(cmds)
    bot.tree.clear_commands(guild=None)
    await bot.tree.sync()
    assert fake.synced_commands[None] == []
    with pytest.raises(LookupError, match="never synced"):
        await fake.invoke("nope")


async def test_global_commands_are_invoked_without_guild_id(bot: commands.Bot, fake: FakeDiscord) -> None:
    await bot.tree.sync()
    assert fake.synced_commands[None] and fake.guild_id not in fake.synced_commands
    inter = await fake.invoke("whois", {"who": fake.members["alice"].id})
    assert "guild_id" not in inter.payload["data"]
    assert (await inter.wait_reply()).content == "alice x1"


async def test_ping_defers_then_followup_edits_the_thinking_message(bot: commands.Bot, fake: FakeDiscord) -> None:
    await synced(bot, fake)
    inter = await fake.invoke("ping", user="bob")
    response = await inter.wait_response()
    assert response["type"] == 5
    msg = await inter.wait_followup(1)
    assert msg.id == inter.original.id  # the first followup after a deferral edits the original
    assert not msg.loading and not msg.ephemeral and not inter.is_ephemeral_reply()
    assert msg.embeds[0]["title"] == "pong"
    assert msg.embeds[0]["image"]["url"] == "attachment://ping.png"
    (att,) = msg.attachments
    assert (att.filename, att.content_type, att.data) == ("ping.png", "image/png", PNG)
    assert fake.messages[msg.id] is msg and msg.channel_id == fake.channels["general"].id
    # the bot can fetch the attachment back from the fake CDN
    fetched = await bot.get_channel(msg.channel_id).fetch_message(msg.id)
    assert await fetched.attachments[0].read() == PNG
    assert fetched.interaction_metadata.user.id == fake.members["bob"].id


async def test_ephemeral_deferral_is_inherited_by_the_first_followup_only(bot: commands.Bot, fake: FakeDiscord) -> None:
    await synced(bot, fake)
    inter = await fake.invoke("secret")
    first = await inter.wait_followup(1)
    second = await inter.wait_followup(2)
    assert inter.is_ephemeral_reply()
    assert first.id == inter.original.id and first.ephemeral and first.content == "first"
    assert second.id != first.id and not second.ephemeral and second.content == "second"
    # ephemeral messages are invisible to the channel API
    channel = bot.get_channel(fake.channels["general"].id)
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(first.id)
    assert (await channel.fetch_message(second.id)).content == "second"


async def test_channel_option_and_permission_checks(bot: commands.Bot, fake: FakeDiscord) -> None:
    probe = await synced(bot, fake)
    inter = await fake.invoke("setchannel", {"channel": "#nsfw", "note": "hi"}, user="admin")
    reply = await inter.wait_reply()
    assert probe.seen("setchannel") == [(fake.channels["nsfw"].id, "nsfw", True, "hi")]
    assert reply.ephemeral and reply.content == f"picks go to <#{fake.channels['nsfw'].id}>"
    assert inter.is_ephemeral_reply() and inter.callbacks[0]["type"] == 4
    # Discord hides the command from alice; the fake refuses unless an admin override is modelled
    with pytest.raises(PermissionError):
        await fake.invoke("setchannel", {"channel": "picks"}, user="alice")
    inter = await fake.invoke("setchannel", {"channel": "picks"}, user="alice", override_permissions=True)
    reply = await inter.wait_reply()
    assert reply.content == "You need Manage Server."
    assert isinstance(probe.seen("setchannel_error")[0], app_commands.MissingPermissions)
    with pytest.raises(ValueError, match="required"):
        await fake.invoke("setchannel", {}, user="admin")


async def test_subcommand_and_user_option(bot: commands.Bot, fake: FakeDiscord) -> None:
    probe = await synced(bot, fake)
    inter = await fake.invoke("setup", {"channel": "picks"}, user="admin", subcommand="picks-channel")
    assert (await inter.wait_reply()).content == "ok picks"
    assert probe.seen("picks-channel") == [fake.channels["picks"].id]
    inter = await fake.invoke("whois", {"who": "bob", "count": 3})
    assert (await inter.wait_reply()).content == "bob x3"
    assert probe.seen("whois") == [(fake.members["bob"].id, "bob", 3)]


async def test_reactions_round_trip_and_manage_messages(bot: commands.Bot, fake: FakeDiscord) -> None:
    probe = await synced(bot, fake)
    inter = await fake.invoke("ping")
    msg = await inter.wait_followup(1)
    alice = fake.members["alice"].id

    await fake.react(msg.id, "👍", user="alice")
    await probe.wait(lambda: probe.seen("reaction_add"))
    raw = probe.seen("reaction_add")[0]
    assert (raw.user_id, raw.message_id, str(raw.emoji)) == (alice, msg.id, "👍")
    assert raw.member is not None and raw.member.name == "alice" and raw.message_author_id == fake.bot_user_id

    channel = bot.get_channel(msg.channel_id)
    partial = channel.get_partial_message(msg.id)
    await partial.add_reaction("⭐")
    assert ("⭐", fake.bot_user_id) in fake.reactions[msg.id]
    assert any(r.route == "PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{user}"
               for r in fake.requests)
    await probe.wait(lambda: any(p.user_id == fake.bot_user_id for p in probe.seen("reaction_add")))

    fake.set_bot_can_manage_messages("general", False)
    await probe.wait(lambda: probe.seen("channel_update"))
    assert not channel.permissions_for(channel.guild.me).manage_messages
    with pytest.raises(discord.Forbidden) as excinfo:
        await partial.remove_reaction("👍", discord.Object(alice))
    assert excinfo.value.code == 50013
    assert ("👍", alice) in fake.reactions[msg.id]
    await partial.remove_reaction("⭐", bot.user)  # own reaction: no permission needed

    fake.set_bot_can_manage_messages("general", True)
    await partial.remove_reaction("👍", discord.Object(alice))
    assert fake.reactions[msg.id] == set()
    await probe.wait(lambda: len(probe.seen("reaction_remove")) == 2)
    assert {p.user_id for p in probe.seen("reaction_remove")} == {alice, fake.bot_user_id}

    await fake.react(msg.id, "blob:123456789012345678", user="bob")
    await probe.wait(lambda: len(probe.seen("reaction_add")) == 3)
    assert probe.seen("reaction_add")[-1].emoji.id == 123456789012345678


async def test_edit_via_partial_message_and_channel_send(bot: commands.Bot, fake: FakeDiscord) -> None:
    await synced(bot, fake)
    inter = await fake.invoke("ping")
    msg = await inter.wait_followup(1)
    channel = bot.get_channel(msg.channel_id)
    edited = await channel.get_partial_message(msg.id).edit(content="edited", attachments=[])
    assert edited.content == "edited"
    assert fake.messages[msg.id].content == "edited" and fake.messages[msg.id].edited
    assert fake.messages[msg.id].attachments == []
    assert fake.messages[msg.id].embeds[0]["title"] == "pong"  # untouched fields stay

    picks = bot.get_channel(fake.channels["picks"].id)
    sent = await picks.send("a pick", file=discord.File(io.BytesIO(b"jpeg"), "p.jpg"))
    stored = fake.messages[sent.id]
    assert stored.content == "a pick" and stored.attachments[0].data == b"jpeg"
    assert stored.attachments[0].content_type == "image/jpeg"
    await sent.delete()
    assert sent.id in fake.deleted_messages and sent.id not in fake.messages
    # Discord's documented limits
    with pytest.raises(discord.HTTPException) as excinfo:
        await picks.send("x" * 2001)
    assert (excinfo.value.status, excinfo.value.code) == (400, 50035)
    with pytest.raises(discord.HTTPException) as excinfo:
        await picks.send(file=discord.File(io.BytesIO(b"\0" * (10 * 1024 * 1024 + 1)), "big.png"))
    assert (excinfo.value.status, excinfo.value.code) == (413, 40005)


async def test_expired_interaction_token_then_channel_edit(bot: commands.Bot, fake: FakeDiscord) -> None:
    probe = await synced(bot, fake)
    inter = await fake.invoke("ping")
    msg = await inter.wait_followup(1)
    fake.expire_interaction(inter)
    with pytest.raises(discord.HTTPException) as excinfo:
        await probe.interactions[0].edit_original_response(content="late")
    assert (excinfo.value.status, excinfo.value.code) == (401, 50027)
    await bot.get_channel(msg.channel_id).get_partial_message(msg.id).edit(content="late")
    assert fake.messages[msg.id].content == "late"


async def test_gateway_drop_resumes_and_replays(bot: commands.Bot, fake: FakeDiscord) -> None:
    probe = await synced(bot, fake)
    inter = await fake.invoke("ping")
    msg = await inter.wait_followup(1)

    await fake.drop_gateway()
    await fake.react(msg.id, "🔥", user="bob")  # dispatched while the bot is away
    await fake.wait_for(lambda: fake.resume_payloads and fake.connected, what="RESUME")
    await probe.wait(lambda: probe.seen("resumed") and probe.seen("reaction_add"))
    assert len(fake.identify_payloads) == 1
    assert fake.resume_payloads[0]["session_id"]
    assert str(probe.seen("reaction_add")[0].emoji) == "🔥"
    (reaction_event,) = [e for e in fake.dispatched if e["t"] == "MESSAGE_REACTION_ADD"]
    assert reaction_event["s"] > fake.resume_payloads[0]["seq"]  # it was replayed after RESUME

    inter = await fake.invoke("ping")
    assert (await inter.wait_followup(1)).attachments[0].data == PNG

    # an invalidated session makes discord.py IDENTIFY afresh, and commands still work
    await fake.drop_gateway(invalidate=True)
    await fake.wait_for(lambda: len(fake.identify_payloads) == 2 and fake.connected, what="re-IDENTIFY")
    await asyncio.wait_for(bot.wait_until_ready(), 10)
    inter = await fake.invoke("ping")
    assert (await inter.wait_followup(1)).embeds[0]["title"] == "pong"


async def test_gateway_drop_while_a_followup_is_held(bot: commands.Bot, fake: FakeDiscord) -> None:
    probe = await synced(bot, fake)
    gate = fake.set_pause_before("POST", "/webhooks/*")
    inter = await fake.invoke("ping")
    await gate.wait_reached()
    assert inter.callbacks[0]["type"] == 5 and not inter.followups
    await fake.drop_gateway()
    await probe.wait(lambda: probe.seen("resumed"))
    gate.release()
    msg = await inter.wait_followup(1)
    assert msg.id == inter.original.id and msg.attachments[0].data == PNG
    assert gate.hits == 1


async def test_double_acknowledge_and_unknown_routes_answer_like_discord(bot: commands.Bot, fake: FakeDiscord) -> None:
    await synced(bot, fake)
    inter = await fake.invoke("ping")
    await inter.wait_followup(1)
    async with aiohttp.ClientSession() as session:
        url = f"{fake.api_base}/interactions/{inter.id}/{inter.token}/callback"
        async with session.post(url, json={"type": 4, "data": {"content": "again"}}) as resp:
            assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["code"] == 40060
        async with session.get(f"{fake.api_base}/nowhere") as resp:
            assert resp.status == 404 and (await resp.json()) == {"message": "404: Not Found", "code": 0}
    assert [r.path for r in fake.unknown_routes] == ["/nowhere"]
    fake.unknown_routes.clear()  # the bot fixture asserts the bot itself hit none


async def test_button_click_updates_the_message(bot: commands.Bot, fake: FakeDiscord) -> None:
    probe = await synced(bot, fake)
    inter = await fake.invoke("vote")
    msg = await inter.wait_reply()
    assert msg.components[0]["components"][0]["custom_id"] == "vote-button"
    click = await fake.click(msg.id, "vote-button", user="bob")
    assert (await click.wait_response())["type"] == 7
    assert probe.seen("pressed") == [fake.members["bob"].id]
    assert fake.messages[msg.id].content == "voted by bob" and fake.messages[msg.id].components == []


async def test_invalid_commands_are_refused_and_wait_for_times_out_clearly(fake: FakeDiscord) -> None:
    headers = {"Authorization": f"Bot {fake.token}"}
    bad = [{"name": "Find Image", "description": "", "type": 1,
            "options": [{"name": "q", "description": "x", "type": 3},
                        {"name": "n", "description": "y", "type": 4, "required": True}]},
           {"name": "Find similar", "type": 3}]  # a message context menu may have spaces and capitals
    async with aiohttp.ClientSession(headers=headers) as session:
        url = f"{fake.api_base}/applications/{fake.app_id}/commands"
        async with session.put(url, json=bad) as resp:
            body = await resp.json()
    assert resp.status == 400 and body["code"] == 50035
    assert set(body["errors"]["0"]) == {"name", "description", "options"}
    assert set(body["errors"]["0"]["options"]["1"]) == {"required"} and "1" not in body["errors"]
    assert fake.synced_commands == {}
    with pytest.raises(TimeoutError, match="never true"):
        await fake.wait_for(lambda: False, timeout=0.05, what="never true")
