"""A fake Discord (REST API v10 + gateway) for driving the real, unmodified discord.py client.

The fake speaks only HTTP/JSON and websocket JSON on 127.0.0.1 (random port); it never imports
``discord``.  Point the client at it before ``login()``::

    discord.http.Route.BASE = fake.api_base             # "http://127.0.0.1:PORT/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)  # "ws://.../gateway"

FakeDiscord(*, token="test-token", app_id, bot_user_id, guild_id, bot_name="FindImage",
            heartbeat_interval=45000, privileged_intents=0, bot_manage_messages=True)
  await start(port=0) / await close();  api_base, gateway_url, base_url, port (0: any free one)

World: one guild ``guild_id``; text channels ``channels["general"|"nsfw"|"picks"]`` (FakeChannel;
"nsfw" has nsfw=True); members ``members["owner"|"admin"|"alice"|"bob"]`` (FakeMember; "owner"
owns the guild, "admin" has a role with Manage Guild 1<<5, alice/bob are plain) and
``bot_member``.  Without the GUILD_MEMBERS intent GUILD_CREATE carries only the bot's member, as
on Discord (member_count is the full count).  The bot has Manage Messages through a per-channel
member overwrite; ``set_bot_can_manage_messages(channel, allowed)`` toggles it and dispatches
CHANNEL_UPDATE.  Privileged intents not in ``privileged_intents`` close the gateway with 4014.

Recorded state (every change wakes ``wait_for``):
  requests: list[RecordedRequest]     every REST call: method, path (below /api/v10, no query),
                                      route ("POST /webhooks/{app_id}/{token}"), query, json
                                      (payload_json for multipart), files, status, at
                                      (time.monotonic() on arrival)
  unknown_routes: list[RecordedRequest]  calls with no route here (answered 404, code 0)
  server_errors: list[str]            bugs in the fake (answered 400 so the client fails fast)
  identify_payloads / resume_payloads: list[dict]   the "d" of every IDENTIFY / RESUME
  identify_log: list[(time.monotonic(), shard id, shard count)]   every accepted IDENTIFY
  identify_too_soon: list[(shard id, seconds since the last in its bucket)]   IDENTIFYs that
                                      broke the session start limit (see Shards)
  dispatched: list[dict]              every op-0 payload ({"op", "t", "s", "d"}), all sessions
  gateway_connections: int;  connected: bool (a session is bound to a live websocket)
  synced_commands: dict[int | None, list[dict]]     last bulk overwrite per scope; None = global
  messages / deleted_messages: dict[int, FakeMessage]   (ephemeral ones too: flags & 64)
  reactions: dict[int, set[tuple[str, int]]]        message id -> {(emoji, user_id)}
  interactions: dict[int, FakeInteraction]

Driving the bot:
  await invoke(name, options=None, *, user="alice", channel="general", subcommand=None,
               override_permissions=False) -> FakeInteraction
      INTERACTION_CREATE (type 2) for a synced chat-input command (guild scope first, then
      global).  subcommand: "sub" or "group sub".  Values: str/int/float/bool; user options take
      a member key or id, channel options a channel key ("picks" or "#picks") or id,
      attachment options (type 11) a ``(filename, bytes)`` pair: as on Discord the member's
      file is uploaded first, the option's value is its id, and data.resolved.attachments
      describes it (id, filename, size, content_type guessed from the name, ephemeral, and
      a CDN url the fake serves at /ephemeral-attachments/...; ``uploads`` holds them,
      ``cdn_downloads`` counts the fetches).  data.resolved is filled.  LookupError: never synced.  ValueError: what Discord's client
      refuses (unknown/missing required option, choices, ranges, channel_types).
      PermissionError: Discord hides the command from this user (default_member_permissions, or
      an nsfw command outside an NSFW channel); override_permissions=True models an admin's
      per-command override in Server Settings > Integrations.
      An attachment may be ``(filename, bytes, overrides)``, as a hostile gateway would send
      it: overrides ``url`` (any URL), ``size`` (the declared size), ``serve_size`` (the CDN
      streams that many bytes, chunked, whatever was declared), ``reset`` (the CDN drops the
      connection mid-body).  ``cdn_bytes_sent`` counts the body bytes the CDN wrote.
  await post(channel="general", *, user="bob", content="", files=(), embeds=()) -> FakeMessage
      A member posts a message (MESSAGE_CREATE); files are ``(filename, bytes)`` pairs (or
      with overrides, as above) served at /attachments/...
  await invoke_message_command(name, message_id, *, user="alice") -> FakeInteraction
      Apps -> NAME on a message: INTERACTION_CREATE type 2 with data.type 3, target_id and
      data.resolved.messages (the message as the channel API shows it).
  await submit_modal(interaction, values, *, user=None) -> FakeInteraction
      The member fills the modal the bot answered ``interaction`` with (callback type 9,
      ``interaction.modal``) and presses Submit: type 5 MODAL_SUBMIT whose data has the
      modal's custom_id and its components with ``values`` (custom_id -> text).
      ValueError: what Discord's client refuses (a required input empty, a length outside
      min_length/max_length, an unknown input).
  await autocomplete(name, options, focused, *, user="alice", channel="general")
      -> FakeInteraction
      The member types into option ``focused``: APPLICATION_COMMAND_AUTOCOMPLETE (type 4)
      with the options typed so far (strings, as Discord sends them) and that option
      marked focused. The bot answers with callback type 8 ({"choices": [...]}, at most 25,
      names 1-100 characters); ``choices(interaction)`` reads them.
  await click(message_id, custom_id, *, user="alice", component_type=2, values=None)
      INTERACTION_CREATE type 3 for a component on a message.
  await react(message_id, emoji, *, user="alice") / await unreact(...)   ("👍" or "name:id")
  await drop_gateway(*, code=4000, invalidate=False)
      Close the websocket; discord.py reconnects and RESUMEs: dispatches it missed are replayed,
      then RESUMED.  invalidate=True forgets the session: RESUME gets op 9, and IDENTIFY follows.
  expire_interaction(interaction)   its webhook routes answer 401/50027 (the 15-minute expiry)
  set_pause_before(method, pattern) -> RouteGate
      Hold REST requests whose path (below /api/v10) fnmatches ``pattern`` ("/webhooks/*")
      until gate.release(); await gate.wait_reached(); gate.hits counts held requests.
      gate.drop() lets them go unhandled (503), as if they never reached Discord.
  await wait_for(predicate, timeout=10, what="")   TimeoutError naming ``what`` + recent traffic

Shards (https://discord.com/developers/docs/events/gateway#sharding):
  FakeDiscord(..., shards=1, max_concurrency=1, guilds=1, enforce_identify_limit=False)
  ``guilds`` > 1 adds guilds ``guild_ids[1:]`` on the following shards (guild k sits on shard
  ``(shard of guild 0 + k) % shards``), each with channels ``general@k`` and ``picks@k``
  (``channels`` holds them all), the same members, roles and bot; ``shard_of(guild_id)``
  is ``(guild_id >> 22) % shards``. GET /gateway/bot reports ``shards`` and
  ``session_start_limit`` (``max_concurrency``; ``remaining`` counts down per IDENTIFY).
  IDENTIFY's ``shard: [id, count]`` (absent: [0, 1]) binds the session to that shard; an id
  outside 0..count-1 closes the socket with 4010 Invalid shard. READY lists, and
  GUILD_CREATE is sent for, only the guilds of that shard; every guild event
  (INTERACTION_CREATE, MESSAGE_*, reactions, CHANNEL_UPDATE) goes only to the sessions of
  its guild's shard, other events to shard 0. Several sessions may hold one shard (as in
  a zero-downtime hand-off): each gets its events. Session start limit: one IDENTIFY per
  5 s per bucket ``shard_id % max_concurrency``; one sooner is recorded in
  ``identify_too_soon`` and, with ``enforce_identify_limit``, answered op 9 Invalid Session
  as Discord does. ``connected_shards()`` -> shard ids with a live session.

FakeInteraction: id, token, type, name, user_id, channel_id, payload, callbacks (list of
{"type", "data"}), followups (list[FakeMessage]), original (FakeMessage | None),
component_message;  await wait_response() -> first callback;  await wait_followup(n) -> n-th
followup (after a type-5 deferral the first followup *is* the edited original: same id,
the deferral's ephemerality);  await wait_reply() -> original once not "thinking";
is_ephemeral_reply().

FakeMessage: id, channel_id, author_id, content, embeds (as sent: "attachment://x.png" is not
rewritten), attachments (FakeAttachment: id, filename, content_type guessed from the name as
Discord does, data bytes, size), components, flags, type (20 for command replies), edited,
ephemeral, loading, interaction_id.  Attachment URLs are served by the fake at /attachments/...

GET /channels/{id}/messages honours limit (1-100), before and after as Discord does
(newest first; with after, the messages just after it).  An interaction's webhook routes
(followups, PATCH/GET/DELETE .../messages/@original) need no bot token, only the
interaction token, and work until expire_interaction() (Discord: 15 minutes), also from a
process other than the one that received the interaction.

Errors follow Discord: {"message", "code"} with 401/0, 403/50013 Missing Permissions,
403/50005 editing another user's message, 404/10008 Unknown Message (also for ephemeral
messages via the channel API), 404/10062 Unknown interaction, 404/10015 Unknown Webhook,
400/40060 already acknowledged, 400/50035 Invalid Form Body (command validation, content over
2000, embed limits incl. footer/author/fields, non-http(s) embed URLs), 413/40005 file over 10 MiB.  Gateway dispatches obey the IDENTIFY intents
(GUILD_MESSAGES 1<<9 for MESSAGE_*, GUILD_MESSAGE_REACTIONS 1<<10 for reactions).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import mimetypes
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"

# permission bits
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
USE_APPLICATION_COMMANDS = 1 << 31
ALL_PERMISSIONS = (1 << 51) - 1
EVERYONE_PERMISSIONS = (
    ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES
    | READ_MESSAGE_HISTORY | USE_EXTERNAL_EMOJIS | USE_APPLICATION_COMMANDS
)
# intents
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT
# message flags
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # per file, as the interaction's attachment_size_limit says

_CUSTOM_EMOJI = re.compile(r"^(a:)?([\w-]+):(\d+)$")
_COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _emoji_json(emoji: str) -> dict:
    m = _CUSTOM_EMOJI.match(emoji)
    if m:
        return {"id": m.group(3), "name": m.group(2), "animated": bool(m.group(1))}
    return {"id": None, "name": emoji}


def _embed_chars(e: dict) -> int:
    """Characters Discord counts toward the 6000 per-message embed limit."""
    fields = e.get("fields") or []
    return sum(len(x or "") for x in (
        e.get("title"), e.get("description"), (e.get("footer") or {}).get("text"),
        (e.get("author") or {}).get("name"), *(f.get("name") for f in fields), *(f.get("value") for f in fields)))


class FakeHTTPError(Exception):
    def __init__(self, status: int, message: str, code: int = 0, errors: dict | None = None):
        super().__init__(f"{status} {message}")
        self.status, self.message, self.code, self.errors = status, message, code, errors


def _not_found(what: str, code: int) -> FakeHTTPError:
    return FakeHTTPError(404, f"Unknown {what}", code)


@dataclass
class FakeUser:
    id: int
    username: str
    bot: bool = False

    def to_json(self) -> dict:
        return {
            "id": str(self.id), "username": self.username, "discriminator": "0" if not self.bot else "0001",
            "global_name": None if self.bot else self.username.title(), "avatar": None,
            "bot": self.bot, "public_flags": 0, "flags": 0,
        }


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    tags: dict | None = None

    def to_json(self) -> dict:
        data = {
            "id": str(self.id), "name": self.name, "permissions": str(self.permissions),
            "position": self.position, "color": 0, "colors": {"primary_color": 0},
            "hoist": False, "managed": self.managed, "mentionable": False, "icon": None,
            "unicode_emoji": None, "flags": 0,
        }
        if self.tags is not None:
            data["tags"] = self.tags
        return data


@dataclass
class FakeMember:
    key: str
    user: FakeUser
    role_ids: list[int]
    joined_at: str = field(default_factory=_now_iso)

    @property
    def id(self) -> int:
        return self.user.id

    def to_json(self, *, with_user: bool = True, permissions: int | None = None) -> dict:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.role_ids], "joined_at": self.joined_at, "nick": None,
            "avatar": None, "premium_since": None, "deaf": False, "mute": False, "flags": 0,
            "pending": False, "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.to_json()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeChannel:
    key: str
    id: int
    name: str
    guild_id: int
    position: int = 0
    nsfw: bool = False
    type: int = 0
    topic: str | None = None
    overwrites: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "id": str(self.id), "type": self.type, "guild_id": str(self.guild_id), "name": self.name,
            "position": self.position, "nsfw": self.nsfw, "topic": self.topic, "parent_id": None,
            "rate_limit_per_user": 0, "last_message_id": None, "flags": 0,
            "permission_overwrites": [dict(o) for o in self.overwrites],
        }


@dataclass
class FakeAttachment:
    id: int
    filename: str
    content_type: str | None
    data: bytes
    description: str | None = None
    serve_size: int | None = None  # the CDN streams this many bytes (data, then padding)
    reset: bool = False  # the CDN drops the connection after half the body

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    author_id: int
    content: str = ""
    embeds: list[dict] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    timestamp: str = field(default_factory=_now_iso)
    edited_timestamp: str | None = None
    interaction_id: int | None = None
    message_reference: dict | None = None

    @property
    def edited(self) -> bool:
        return self.edited_timestamp is not None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)


@dataclass
class RecordedRequest:
    method: str
    path: str  # below /api/v10, query string excluded
    query: dict[str, str]
    json: Any = None
    files: list[FakeAttachment] = field(default_factory=list)
    route: str | None = None  # e.g. "POST /webhooks/{app_id}/{token}"
    status: int | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} -> {self.status}>"


_RECORD: Any = web.RequestKey("record", RecordedRequest) if hasattr(web, "RequestKey") else "record"


class RouteGate:
    """Holds REST requests matching ``method``/``pattern`` until released."""

    def __init__(self, fake: FakeDiscord, method: str, pattern: str):
        self.fake, self.method, self.pattern = fake, method.upper(), pattern
        self.hits = 0
        self.dropped = False
        self._released = asyncio.Event()

    def matches(self, method: str, path: str) -> bool:
        return not self._released.is_set() and method == self.method and fnmatch.fnmatchcase(path, self.pattern)

    async def wait_reached(self, timeout: float = 10) -> None:
        await self.fake.wait_for(lambda: self.hits > 0, timeout, what=f"a request to {self.method} {self.pattern}")

    def release(self) -> None:
        self._released.set()

    def drop(self) -> None:
        """Let the held requests go without handling them (503), as if they never reached
        Discord: the connection died first. The client (if still alive) sees the 503."""
        self.dropped = True
        self._released.set()


@dataclass(eq=False)
class FakeInteraction:
    fake: FakeDiscord
    id: int
    token: str
    type: int
    name: str | None
    user_id: int
    channel_id: int
    payload: dict
    callbacks: list[dict] = field(default_factory=list)
    followups: list[FakeMessage] = field(default_factory=list)
    original: FakeMessage | None = None
    component_message: FakeMessage | None = None
    expired: bool = False
    modal: dict | None = None  # the modal the bot answered with (callback type 9)

    async def wait_response(self, timeout: float = 10) -> dict:
        await self.fake.wait_for(lambda: self.callbacks, timeout, what=f"a callback for interaction {self.name}")
        return self.callbacks[0]

    async def wait_followup(self, n: int = 1, timeout: float = 10) -> FakeMessage:
        await self.fake.wait_for(lambda: len(self.followups) >= n, timeout, what=f"followup #{n} of {self.name}")
        return self.followups[n - 1]

    async def wait_reply(self, timeout: float = 10) -> FakeMessage:
        def done() -> bool:
            return self.original is not None and not self.original.loading
        await self.fake.wait_for(done, timeout, what=f"a non-deferred reply to {self.name}")
        assert self.original is not None
        return self.original

    def is_ephemeral_reply(self) -> bool:
        if not self.callbacks:
            return False
        return bool((self.callbacks[0].get("data") or {}).get("flags", 0) & FLAG_EPHEMERAL)


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    session: _Session | None = None
    closed: bool = False

    def send(self, payload: dict) -> None:
        if not self.closed:
            self.queue.put_nowait(json.dumps(payload))


@dataclass(eq=False)
class _Session:
    id: str
    intents: int
    shard: tuple[int, int] = (0, 1)
    seq: int = 0
    log: list[dict] = field(default_factory=list)
    conn: _Conn | None = None


class FakeDiscord:
    def __init__(
        self, *, token: str = "test-token", app_id: int = 1100000000000000001,
        bot_user_id: int = 1100000000000000002, guild_id: int = 1100000000000000100,
        bot_name: str = "FindImage", heartbeat_interval: int = 45000,
        privileged_intents: int = 0, bot_manage_messages: bool = True,
        shards: int = 1, max_concurrency: int = 1, guilds: int = 1,
        enforce_identify_limit: bool = False,
    ):
        self.token, self.app_id, self.bot_user_id, self.guild_id = token, app_id, bot_user_id, guild_id
        self.heartbeat_interval, self.privileged_intents = heartbeat_interval, privileged_intents
        self._last_snowflake = 0
        self.bot_user = FakeUser(bot_user_id, bot_name, bot=True)
        everyone = FakeRole(guild_id, "@everyone", EVERYONE_PERMISSIONS)
        admins = FakeRole(self._snowflake(), "Admins", EVERYONE_PERMISSIONS | MANAGE_GUILD, position=2)
        bot_role = FakeRole(self._snowflake(), bot_name, EVERYONE_PERMISSIONS, position=1, managed=True,
                            tags={"bot_id": str(bot_user_id)})
        self.roles: dict[str, FakeRole] = {"everyone": everyone, "admins": admins, "bot": bot_role}
        self.members: dict[str, FakeMember] = {}
        for key, role_ids in (("owner", []), ("admin", [admins.id]), ("alice", []), ("bob", [])):
            self.members[key] = FakeMember(key, FakeUser(self._snowflake(), key), role_ids)
        self.owner_id = self.members["owner"].id
        self.bot_member = FakeMember("bot", self.bot_user, [bot_role.id])
        self.channels: dict[str, FakeChannel] = {}
        for pos, (key, nsfw) in enumerate((("general", False), ("nsfw", True), ("picks", False))):
            self.channels[key] = FakeChannel(key, self._snowflake(), key, guild_id, position=pos, nsfw=nsfw)
            self._set_manage_overwrite(self.channels[key], bot_manage_messages)
        self.shard_count, self.max_concurrency = shards, max_concurrency
        self.enforce_identify_limit = enforce_identify_limit
        # guild k on the shard after guild k-1's: its snowflake's timestamp one ms later
        low = guild_id & ((1 << 22) - 1)
        self.guild_ids = [(((guild_id >> 22) + k) << 22) | low for k in range(guilds)]
        for k, gid in enumerate(self.guild_ids[1:], start=1):
            for pos, name in enumerate(("general", "picks")):
                key = f"{name}@{k}"
                self.channels[key] = FakeChannel(key, self._snowflake(), name, gid, position=pos)
                self._set_manage_overwrite(self.channels[key], bot_manage_messages)
        self.identify_log: list[tuple[float, int, int]] = []
        self.identify_too_soon: list[tuple[int, float]] = []
        self.session_starts = 0

        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[RecordedRequest] = []
        self.server_errors: list[str] = []
        self.identify_payloads: list[dict] = []
        self.resume_payloads: list[dict] = []
        self.dispatched: list[dict] = []
        self.gateway_connections = 0
        self.synced_commands: dict[int | None, list[dict]] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.deleted_messages: dict[int, FakeMessage] = {}
        self.reactions: dict[int, set[tuple[str, int]]] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.uploads: dict[int, FakeAttachment] = {}
        self.cdn_downloads = 0
        self.cdn_bytes_sent = 0
        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self._attachment_overrides: dict[int, dict[int, dict]] = {}  # message -> attachment -> overrides
        self._gates: list[RouteGate] = []
        self._sessions: list[_Session] = []
        self._conns: set[_Conn] = set()
        self._tick: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ----------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def _session(self) -> _Session | None:
        """The newest session: the one of a single-process bot."""
        return self._sessions[-1] if self._sessions else None

    @property
    def connected(self) -> bool:
        s = self._session
        return s is not None and s.conn is not None and not s.conn.closed

    def connected_shards(self) -> set[int]:
        return {s.shard[0] for s in self._sessions if s.conn is not None and not s.conn.closed}

    def shard_of(self, guild_id: int) -> int:
        return (guild_id >> 22) % self.shard_count

    def _guild_of(self, channel_id: Any) -> int:
        ch = self._channel_by_id(channel_id)
        return ch.guild_id if ch is not None else self.guild_id

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        app.router.add_get("/ephemeral-attachments/{app_id}/{attachment_id}/{filename}",
                           self._ephemeral_cdn)
        p = API_PREFIX
        add = app.router.add_route
        for method, path, handler in (
            ("GET", "/users/@me", self._get_me),
            ("GET", "/users/{user_id}", self._get_user),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway),
            ("GET", "/applications/{app_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/commands", self._put_commands),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app_id}/{token}", self._followup),
            ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_message),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_message),
            ("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_message),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("GET", "/channels/{channel_id}/messages", self._list_messages),
            ("POST", "/channels/{channel_id}/messages", self._create_channel_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._channel_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._channel_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._channel_message),
            ("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{user}", self._put_reaction),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{user}", self._delete_reaction),
        ):
            add(method, p + path, handler)
        add("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for gate in self._gates:
            gate.release()
        for conn in list(self._conns):
            conn.closed = True
            await conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----------------------------------------------------------------- waiting
    def _notify(self) -> None:
        if self._tick is not None:
            self._tick.set()
            self._tick = None

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10, what: str = "") -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._tick is None:
                self._tick = asyncio.Event()
            tick = self._tick
            if predicate():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"FakeDiscord: timed out after {timeout}s waiting for {what or predicate!r}; "
                    f"last requests: {self.requests[-8:]}; unknown routes: {self.unknown_routes}; "
                    f"server errors: {self.server_errors}; gateway connected: {self.connected}"
                )
            try:
                await asyncio.wait_for(tick.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def set_pause_before(self, method: str, pattern: str) -> RouteGate:
        gate = RouteGate(self, method, pattern)
        self._gates.append(gate)
        return gate

    # ----------------------------------------------------------------- world helpers
    def _snowflake(self) -> int:
        value = ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (1 << 17)
        value = max(value, self._last_snowflake + 1)
        self._last_snowflake = value
        return value

    def _set_manage_overwrite(self, channel: FakeChannel, allowed: bool) -> None:
        channel.overwrites = [o for o in channel.overwrites if o["id"] != str(self.bot_user_id)]
        if allowed:
            channel.overwrites.append({"id": str(self.bot_user_id), "type": 1, "allow": str(MANAGE_MESSAGES), "deny": "0"})

    def set_bot_can_manage_messages(self, channel: str, allowed: bool) -> None:
        ch = self.channels[channel]
        self._set_manage_overwrite(ch, allowed)
        self._dispatch("CHANNEL_UPDATE", ch.to_json(), intent=INTENT_GUILDS, guild_id=ch.guild_id)
        self._notify()

    def expire_interaction(self, interaction: FakeInteraction) -> None:
        interaction.expired = True

    def _all_members(self) -> list[FakeMember]:
        return [*self.members.values(), self.bot_member]

    def _member_by_id(self, user_id: int) -> FakeMember | None:
        return next((m for m in self._all_members() if m.id == user_id), None)

    def _channel_by_id(self, channel_id: Any) -> FakeChannel | None:
        return next((c for c in self.channels.values() if str(c.id) == str(channel_id)), None)

    def _permissions(self, member: FakeMember, channel: FakeChannel | None = None) -> int:
        if member.id == self.owner_id:
            return ALL_PERMISSIONS
        roles = [r for r in self.roles.values() if r.id == self.guild_id or r.id in member.role_ids]
        perms = 0
        for role in roles:
            perms |= role.permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        if channel is None:
            return perms
        ows = {o["id"]: o for o in channel.overwrites}
        for ow in [ows.get(str(self.guild_id))] + [ows.get(str(r)) for r in member.role_ids] + [ows.get(str(member.id))]:
            if ow:
                perms = (perms & ~int(ow["deny"])) | int(ow["allow"])
        return perms

    def guild_json(self, guild_id: int | None = None, session: _Session | None = None) -> dict:
        gid = self.guild_id if guild_id is None else guild_id
        members = self._all_members()
        # like Discord: without GUILD_MEMBERS only the bot's own member comes with GUILD_CREATE
        s = session or self._session
        roles = [r.to_json() for r in self.roles.values()]
        if gid != self.guild_id:  # each guild's @everyone role has the guild's id
            roles = [{**r, "id": str(gid)} if r["id"] == str(self.guild_id) else r for r in roles]
        sent = members if s is not None and s.intents & INTENT_GUILD_MEMBERS else [self.bot_member]
        return {
            "id": str(gid), "name": "Fake Guild" if gid == self.guild_id else f"Fake Guild {self.guild_ids.index(gid)}", "icon": None, "splash": None,
            "discovery_splash": None, "banner": None, "description": None, "owner_id": str(self.owner_id),
            "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0,
            "nsfw_level": 0, "premium_tier": 0, "premium_subscription_count": 0,
            "preferred_locale": "en-US", "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "public_updates_channel_id": None, "vanity_url_code": None,
            "features": [], "roles": roles, "emojis": [],
            "stickers": [], "application_id": None, "max_members": 500000,
            "premium_progress_bar_enabled": False, "joined_at": self.bot_member.joined_at,
            "large": False, "unavailable": False, "member_count": len(members),
            "members": [m.to_json() for m in sent],
            "channels": [c.to_json() for c in self.channels.values() if c.guild_id == gid], "threads": [],
            "voice_states": [], "presences": [], "stage_instances": [],
            "guild_scheduled_events": [], "soundboard_sounds": [],
        }

    # ----------------------------------------------------------------- gateway
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = _Conn(ws)
        self._conns.add(conn)
        self.gateway_connections += 1
        writer = asyncio.create_task(self._writer(conn))
        conn.send({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    try:
                        await self._on_op(conn, json.loads(msg.data))
                    except Exception as exc:  # a bug in the fake must be visible
                        self.server_errors.append(f"gateway: {exc!r}")
                        raise
        finally:
            conn.closed = True
            self._conns.discard(conn)
            if conn.session is not None and conn.session.conn is conn:
                conn.session.conn = None
            writer.cancel()
            self._notify()
        return ws

    async def _writer(self, conn: _Conn) -> None:
        while True:
            text = await conn.queue.get()
            try:
                await conn.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def _on_op(self, conn: _Conn, msg: dict) -> None:
        op, d = msg.get("op"), msg.get("d")
        if op == 1:
            conn.send({"op": 11, "d": None, "s": None, "t": None})
            return
        if op == 2:
            self.identify_payloads.append(d)
            self._notify()
            if conn.session is not None:
                await conn.ws.close(code=4005, message=b"Already authenticated.")
            elif d.get("token") != self.token:
                await conn.ws.close(code=4004, message=b"Authentication failed.")
            elif "intents" not in d:
                await conn.ws.close(code=4013, message=b"Invalid intent(s).")
            elif d["intents"] & PRIVILEGED_INTENTS & ~self.privileged_intents:
                await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            elif not self._valid_shard(d.get("shard", [0, 1])):
                await conn.ws.close(code=4010, message=b"Invalid shard.")
            elif not self._identify_allowed(d.get("shard", [0, 1])):
                conn.send({"op": 9, "d": False, "s": None, "t": None})
            else:
                self._identify(conn, d["intents"], tuple(d.get("shard", [0, 1])))
        elif op == 6:
            self.resume_payloads.append(d)
            self._notify()
            s = next((x for x in self._sessions if x.id == d.get("session_id")), None)
            if d.get("token") != self.token:
                await conn.ws.close(code=4004, message=b"Authentication failed.")
            elif s is None or s.id != d.get("session_id") or d.get("seq") is None or d["seq"] > s.seq:
                conn.send({"op": 9, "d": False, "s": None, "t": None})
            else:
                if s.conn is not None and s.conn is not conn:  # a stale socket of this session
                    s.conn.closed = True
                conn.session, s.conn = s, conn
                for event in s.log:
                    if event["s"] > d["seq"]:
                        conn.send(event)
                self._dispatch("RESUMED", {}, session=s)
        elif op == 8 and conn.session is not None:
            members = self._all_members()
            self._dispatch("GUILD_MEMBERS_CHUNK", {
                "guild_id": str((d or {}).get("guild_id") or self.guild_id), "members": [m.to_json() for m in members],
                "chunk_index": 0, "chunk_count": 1, "not_found": [], "nonce": (d or {}).get("nonce"),
            }, session=conn.session)
        # op 3 (presence), op 4 (voice) and anything else: accepted silently

    @staticmethod
    def _valid_shard(shard: Any) -> bool:
        return (isinstance(shard, list) and len(shard) == 2 and all(isinstance(x, int) for x in shard)
                and 0 <= shard[0] < shard[1])

    def _identify_allowed(self, shard: list[int]) -> bool:
        """Discord's session start limit: one IDENTIFY per 5 s in each max_concurrency bucket."""
        now = time.monotonic()
        bucket = shard[0] % self.max_concurrency
        last = max((t for t, sid, _ in self.identify_log if sid % self.max_concurrency == bucket),
                   default=None)
        if last is not None and now - last < 5.0:
            self.identify_too_soon.append((shard[0], now - last))
            if self.enforce_identify_limit:
                return False
        self.identify_log.append((now, shard[0], shard[1]))
        return True

    def _identify(self, conn: _Conn, intents: int, shard: tuple[int, int] = (0, 1)) -> None:
        self.session_starts += 1
        # a socket of this shard's that was replaced without closing is stale (one process)
        self._sessions = [x for x in self._sessions if x.conn is not None and not x.conn.closed
                          or x.shard != shard]
        s = _Session(id=secrets.token_hex(16), intents=intents, conn=conn, shard=shard)
        self._sessions.append(s)
        conn.session = s
        mine = [g for g in self.guild_ids if (g >> 22) % shard[1] == shard[0]]
        self._dispatch("READY", {
            "v": 10, "user": {**self.bot_user.to_json(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g), "unavailable": True} for g in mine], "session_id": s.id,
            "resume_gateway_url": self.gateway_url, "session_type": "normal", "shard": list(shard),
            "private_channels": [], "relationships": [], "presences": [], "guild_join_requests": [],
            "application": {"id": str(self.app_id), "flags": 0}, "_trace": ["fake-discord"],
        }, session=s)
        for g in mine:
            self._dispatch("GUILD_CREATE", self.guild_json(g, s), session=s)

    def _dispatch(self, event: str, data: dict, *, intent: int = 0, guild_id: int | None = None,
                  session: _Session | None = None) -> None:
        """To ``session``; else to the sessions of ``guild_id``'s shard; else to shard 0's."""
        if session is not None:
            targets = [session]
        else:
            gid = guild_id if guild_id is not None else (int(data["guild_id"]) if data.get("guild_id") else None)
            targets = [x for x in self._sessions
                       if (gid >> 22) % x.shard[1] == x.shard[0]] if gid is not None else \
                [x for x in self._sessions if x.shard[0] == 0]
        for s in targets:
            if intent and not s.intents & intent:
                continue
            s.seq += 1
            payload = {"op": 0, "t": event, "s": s.seq, "d": data}
            s.log.append(payload)
            self.dispatched.append(payload)
            if s.conn is not None:
                s.conn.send(payload)

    async def drop_gateway(self, *, code: int = 4000, invalidate: bool = False) -> None:
        s = self._session
        if s is None or s.conn is None:
            raise RuntimeError("FakeDiscord.drop_gateway: no live gateway session")
        conn, s.conn = s.conn, None
        conn.closed = True
        if invalidate:
            self._sessions.remove(s)
        await conn.ws.close(code=code)
        self._notify()

    # ----------------------------------------------------------------- HTTP plumbing
    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        # exactly "application/json": discord.py treats "...; charset=utf-8" as text
        return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path == "/gateway" or request.path.startswith(("/attachments/", "/ephemeral-attachments/")):
            return await handler(request)
        path = request.path[len(API_PREFIX):] if request.path.startswith(API_PREFIX) else request.path
        info = request.match_info.route.resource
        route = None
        if info is not None and info.canonical.startswith(API_PREFIX):
            route = f"{request.method} {info.canonical[len(API_PREFIX):]}"
        rec = RecordedRequest(request.method, path, dict(request.query), route=route)
        try:
            rec.json, rec.files = await self._parse_body(request)
        except Exception as exc:  # malformed JSON or multipart
            rec.status = 400
            self.requests.append(rec)
            self._notify()
            return self._json({"message": f"Cannot parse body: {exc}", "code": 50109}, 400)
        self.requests.append(rec)
        request[_RECORD] = rec
        self._notify()
        for gate in list(self._gates):
            if gate.matches(request.method, path):
                gate.hits += 1
                self._notify()
                await gate._released.wait()
                if gate.dropped:
                    rec.status = 503
                    self._notify()
                    return self._json({"message": "upstream connect error", "code": 0}, 503)
        try:
            needs_auth = route is not None and not route.split(" ")[1].startswith(("/webhooks/", "/interactions/"))
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise FakeHTTPError(401, "401: Unauthorized", 0)
            response = await handler(request)
        except FakeHTTPError as exc:
            body = {"message": exc.message, "code": exc.code}
            if exc.errors:
                body["errors"] = exc.errors
            response = self._json(body, exc.status)
        except Exception as exc:
            self.server_errors.append(f"{request.method} {path}: {exc!r}")
            response = self._json({"message": f"fake discord bug: {exc!r}", "code": 0}, 400)
        rec.status = response.status
        self._notify()
        return response

    async def _parse_body(self, request: web.Request) -> tuple[Any, list[FakeAttachment]]:
        if not request.body_exists:
            return None, []
        ctype = request.content_type
        if ctype == "application/json":
            return json.loads(await request.text()), []
        if ctype != "multipart/form-data":
            return None, []
        payload: Any = None
        files: list[FakeAttachment] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            elif part.name and part.name.startswith("files["):
                idx = int(part.name[len("files["):-1])
                data = bytes(await part.read())
                filename = part.filename or f"file{idx}"
                # Discord sniffs the type; discord.py always sends application/octet-stream
                guessed = mimetypes.guess_type(filename)[0]
                files.append(FakeAttachment(idx, filename, guessed or part.headers.get("Content-Type"), data))
        return payload, files

    async def _unknown(self, request: web.Request) -> web.Response:
        rec = request.get(_RECORD)
        if rec is not None:
            self.unknown_routes.append(rec)
        return self._json({"message": "404: Not Found", "code": 0}, 404)

    # ----------------------------------------------------------------- users/app/guild
    async def _get_me(self, request: web.Request) -> web.Response:
        return self._json({**self.bot_user.to_json(), "verified": True, "mfa_enabled": False, "locale": "en-US"})

    async def _get_user(self, request: web.Request) -> web.Response:
        member = self._member_by_id(int(request.match_info["user_id"]))
        if member is None:
            raise _not_found("User", 10013)
        return self._json(member.user.to_json())

    async def _get_application(self, request: web.Request) -> web.Response:
        return self._json({
            "id": str(self.app_id), "name": self.bot_user.username, "description": "", "icon": None,
            "bot_public": False, "bot_require_code_grant": False, "verify_key": "0" * 64,
            "owner": self.members["owner"].user.to_json(), "team": None, "flags": 0,
            "bot": self.bot_user.to_json(), "summary": "", "rpc_origins": [], "tags": [],
            "redirect_uris": [], "interactions_endpoint_url": None,
        })

    async def _get_gateway(self, request: web.Request) -> web.Response:
        data: dict[str, Any] = {"url": self.gateway_url}
        if request.path.endswith("/bot"):
            data.update(shards=self.shard_count, session_start_limit={
                "total": 1000, "remaining": max(0, 1000 - self.session_starts),
                "reset_after": 86400000, "max_concurrency": self.max_concurrency})
        return self._json(data)

    def _check_guild(self, request: web.Request) -> None:
        if int(request.match_info["guild_id"]) not in self.guild_ids:
            raise FakeHTTPError(403, "Missing Access", 50001)

    async def _get_member(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        member = self._member_by_id(int(request.match_info["user_id"]))
        if member is None:
            raise _not_found("Member", 10007)
        return self._json(member.to_json())

    # ----------------------------------------------------------------- application commands
    def _scope(self, request: web.Request) -> int | None:
        if int(request.match_info["app_id"]) != self.app_id:
            raise FakeHTTPError(403, "Missing Access", 50001)
        if "guild_id" in request.match_info:
            self._check_guild(request)
            return int(request.match_info["guild_id"])
        return None

    async def _get_commands(self, request: web.Request) -> web.Response:
        return self._json(self.synced_commands.get(self._scope(request), []))

    def _validate(self, items: list[dict], where: str, errors: dict) -> None:
        """A few of Discord's 50035 checks on commands/options, reported as nested "errors"."""
        def err(path: str, message: str) -> None:
            node = errors
            for part in path.split("."):
                node = node.setdefault(part, {})
            node["_errors"] = [{"code": "BASE_TYPE_INVALID", "message": message}]

        if len(items) > 25:
            err(where or "_", "Must be 25 or fewer in length.")
        seen_optional = False
        for i, item in enumerate(items):
            path = f"{where}.{i}" if where else str(i)
            # top level: command type (1 chat input, 2/3 context menus); below: option types
            name, chat_input = item.get("name", ""), bool(where) or item.get("type", 1) == 1
            if not 1 <= len(name) <= 32 or (chat_input and not (_COMMAND_NAME.match(name) and name == name.lower())):
                err(f"{path}.name", "Invalid name")
            if chat_input and not 1 <= len(item.get("description", "")) <= 100:
                err(f"{path}.description", "Must be between 1 and 100 in length.")
            if where and item.get("required") and seen_optional:
                err(f"{path}.required", "Required options must be placed before non-required options")
            seen_optional = seen_optional or (bool(where) and not item.get("required"))
            self._validate(item.get("options") or [], f"{path}.options", errors)

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        body = request[_RECORD].json
        errors: dict = {}
        if not isinstance(body, list):
            errors["_errors"] = [{"code": "LIST_TYPE_CONVERT", "message": "Must be a list."}]
        else:
            self._validate(body, "", errors)
        if errors:
            raise FakeHTTPError(400, "Invalid Form Body", 50035, errors)
        version = self._snowflake()
        out = []
        for cmd in body:
            key = (scope, cmd["name"], cmd.get("type", 1))
            cid = self._command_ids.setdefault(key, self._snowflake())
            full = {
                "id": str(cid), "application_id": str(self.app_id), "version": str(version),
                "type": 1, "description": "", "options": [], "default_member_permissions": None,
                "dm_permission": True, "nsfw": False, "contexts": None, "integration_types": [0],
                "name_localizations": None, "description_localizations": None, **cmd,
            }
            full["id"], full["version"] = str(cid), str(version)
            if full["default_member_permissions"] is not None:  # Discord answers with a string
                full["default_member_permissions"] = str(int(full["default_member_permissions"]))
            if scope is not None:
                full["guild_id"] = str(scope)
            out.append(full)
        self.synced_commands[scope] = out
        return self._json(out)

    # ----------------------------------------------------------------- messages (shared)
    def _attachment_json(self, channel_id: int, a: FakeAttachment, overrides: dict | None = None) -> dict:
        overrides = overrides or {}
        url = overrides.get("url") or f"{self.base_url}/attachments/{channel_id}/{a.id}/{a.filename}"
        data = {"id": str(a.id), "filename": a.filename, "size": overrides.get("size", a.size),
                "url": url, "proxy_url": url, "content_type": a.content_type}
        if a.description is not None:
            data["description"] = a.description
        if a.content_type and a.content_type.startswith("image/"):
            data.update(width=None, height=None)
        return data

    def message_json(self, msg: FakeMessage) -> dict:
        author = self._member_by_id(msg.author_id)
        counts: dict[str, list[int]] = {}
        for emoji, uid in sorted(self.reactions.get(msg.id, set()), key=lambda t: (t[0], t[1])):
            counts.setdefault(emoji, []).append(uid)
        data: dict[str, Any] = {
            "id": str(msg.id), "channel_id": str(msg.channel_id), "guild_id": str(self._guild_of(msg.channel_id)),
            "author": author.user.to_json() if author else self.bot_user.to_json(),
            "content": msg.content, "timestamp": msg.timestamp, "edited_timestamp": msg.edited_timestamp,
            "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
            "mention_channels": [], "attachments": [self._attachment_json(msg.channel_id, a, self._attachment_overrides.get(msg.id, {}).get(a.id))
                            for a in msg.attachments],
            "embeds": msg.embeds, "components": msg.components, "pinned": False, "type": msg.type,
            "flags": msg.flags,
            "reactions": [
                {"emoji": _emoji_json(e), "count": len(uids), "count_details": {"burst": 0, "normal": len(uids)},
                 "me": self.bot_user_id in uids, "me_burst": False, "burst_colors": []}
                for e, uids in counts.items()
            ],
        }
        if msg.message_reference is not None:
            data["message_reference"] = msg.message_reference
        inter = self.interactions.get(msg.interaction_id) if msg.interaction_id else None
        if inter is not None:
            user = self._member_by_id(inter.user_id)
            data["webhook_id"] = str(self.app_id)
            data["application_id"] = str(self.app_id)
            data["interaction_metadata"] = {
                "id": str(inter.id), "type": inter.type, "name": inter.name,
                "user": user.user.to_json() if user else None,
                "authorizing_integration_owners": {"0": str(self._guild_of(msg.channel_id))},
            }
        return data

    def _message_event(self, event: str, msg: FakeMessage) -> None:
        if msg.ephemeral:
            return
        data = self.message_json(msg)
        author = self._member_by_id(msg.author_id)
        if author is not None:
            data["member"] = author.to_json(with_user=False)
        self._dispatch(event, data, intent=INTENT_GUILD_MESSAGES)

    def _new_message(self, channel_id: int, body: dict | None, files: list[FakeAttachment], *,
                     flags: int = 0, type: int = 0, interaction: FakeInteraction | None = None,
                     author_id: int | None = None) -> FakeMessage:
        body = body or {}
        msg = FakeMessage(
            id=self._snowflake(), channel_id=channel_id,
            author_id=self.bot_user_id if author_id is None else author_id,
            flags=flags | (body.get("flags", 0) & (FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS)),
            type=type, interaction_id=interaction.id if interaction else None,
            message_reference=body.get("message_reference"),
        )
        self._apply_content(msg, body, files)
        self.messages[msg.id] = msg
        self._message_event("MESSAGE_CREATE", msg)
        return msg

    @staticmethod
    def _require_content(body: dict, files: list[FakeAttachment]) -> None:
        if not (body.get("content") or body.get("embeds") or files or body.get("components")
                or body.get("sticker_ids") or body.get("poll")):
            raise FakeHTTPError(400, "Cannot send an empty message", 50006)

    def _apply_content(self, msg: FakeMessage, body: dict, files: list[FakeAttachment]) -> None:
        """Validate against Discord's documented limits first, then mutate ``msg``."""
        def invalid(key: str, message: str, status: int = 400, code: int = 50035) -> FakeHTTPError:
            return FakeHTTPError(status, "Invalid Form Body", code, {key: {"_errors": [
                {"code": "BASE_TYPE_BAD_LENGTH", "message": message}]}})

        if len(body.get("content") or "") > 2000:
            raise invalid("content", "Must be 2000 or fewer in length.")
        embeds = body.get("embeds") or []
        if len(embeds) > 10:
            raise invalid("embeds", "Must be 10 or fewer in length.")
        for e in embeds:
            if len(e.get("title") or "") > 256 or len(e.get("description") or "") > 4096 or len(e.get("fields") or []) > 25:
                raise invalid("embeds", "Embed title/description/fields over Discord's limits.")
            if (len((e.get("footer") or {}).get("text") or "") > 2048
                    or len((e.get("author") or {}).get("name") or "") > 256
                    or any(len(f.get("name") or "") > 256 or len(f.get("value") or "") > 1024
                           for f in e.get("fields") or [])):
                raise invalid("embeds", "Embed footer/author/field over Discord's limits.")
            for key in ("url", "image", "thumbnail"):
                url = e.get(key) if key == "url" else (e.get(key) or {}).get("url")
                if url and not re.match(r"(https?|attachment)://", url):
                    raise invalid("embeds", f"Scheme \"{url.split(':')[0]}\" is not supported. "
                                  "Scheme must be one of ('http', 'https').")
        if sum(_embed_chars(e) for e in embeds) > 6000:
            raise invalid("embeds", "Embed size exceeds maximum size of 6000")
        if len(files) > 10:
            raise invalid("files", "Must be 10 or fewer in length.")
        for f in files:
            if f.size > ATTACHMENT_SIZE_LIMIT:
                raise FakeHTTPError(413, "Request entity too large", 40005)

        def upload(f: FakeAttachment, description: str | None = None) -> FakeAttachment:
            return FakeAttachment(self._snowflake(), f.filename, f.content_type, f.data, description)

        if body.get("attachments") is None:  # new files are added to the existing ones
            attachments = msg.attachments + [upload(f) for f in files]
        else:  # the listed attachments are kept (existing ids) or uploaded (files[n] ids), others dropped
            existing, by_index = {a.id: a for a in msg.attachments}, {f.id: f for f in files}
            attachments = []
            for entry in body["attachments"]:
                aid = int(entry["id"])
                if aid not in existing and aid not in by_index:
                    raise invalid("attachments", f"Unknown attachment {aid}")
                attachments.append(existing.get(aid) or upload(by_index.pop(aid), entry.get("description")))
            attachments += [upload(f) for f in by_index.values()]
        msg.attachments = attachments
        if "content" in body:
            msg.content = body["content"] or ""
        if "embeds" in body:
            msg.embeds = [{"type": "rich", **e} for e in embeds]
        if "components" in body:
            msg.components = body["components"] or []

    def _edit_message(self, msg: FakeMessage, body: dict, files: list[FakeAttachment]) -> None:
        was_loading = msg.loading
        self._apply_content(msg, body or {}, files)
        if "flags" in (body or {}) and body["flags"] is not None:
            msg.flags = (msg.flags & ~FLAG_SUPPRESS_EMBEDS) | (body["flags"] & FLAG_SUPPRESS_EMBEDS)
        msg.flags &= ~FLAG_LOADING
        if not was_loading:
            msg.edited_timestamp = _now_iso()
        self._message_event("MESSAGE_UPDATE", msg)

    def _delete_message(self, msg: FakeMessage) -> None:
        self.messages.pop(msg.id, None)
        self.deleted_messages[msg.id] = msg
        if not msg.ephemeral:
            self._dispatch("MESSAGE_DELETE", {"id": str(msg.id), "channel_id": str(msg.channel_id),
                                              "guild_id": str(self._guild_of(msg.channel_id))}, intent=INTENT_GUILD_MESSAGES)

    # ----------------------------------------------------------------- interactions
    def _interaction_payload(self, itype: int, data: dict, member: FakeMember, channel: FakeChannel,
                             token: str, iid: int, message: FakeMessage | None = None) -> dict:
        gid = channel.guild_id
        payload = {
            "id": str(iid), "application_id": str(self.app_id), "type": itype, "token": token, "version": 1,
            "guild_id": str(gid), "guild": {"id": str(gid), "locale": "en-US", "features": []},
            "channel_id": str(channel.id),
            "channel": {**channel.to_json(), "permissions": str(self._permissions(member, channel))},
            "member": member.to_json(permissions=self._permissions(member, channel)),
            "app_permissions": str(self._permissions(self.bot_member, channel)),
            "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
            "authorizing_integration_owners": {"0": str(gid)}, "context": 0,
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT, "data": data,
        }
        if message is not None:
            payload["message"] = self.message_json(message)
        return payload

    def _find_command(self, name: str, guild_id: int | None = None) -> tuple[dict, int | None]:
        for scope in (self.guild_id if guild_id is None else guild_id, None):
            for cmd in self.synced_commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd, scope
        synced = {scope: [c["name"] for c in cmds] for scope, cmds in self.synced_commands.items()}
        raise LookupError(f"FakeDiscord.invoke: /{name} was never synced (synced so far: {synced})")

    def _option_value(self, odef: dict, value: Any, member: FakeMember, channel: FakeChannel,
                      resolved: dict) -> Any:
        otype, oname = odef["type"], odef["name"]
        if otype == 3:
            value = str(value)
            if not odef.get("min_length", 0) <= len(value) <= odef.get("max_length", 6000):
                raise ValueError(f"option {oname!r}: length {len(value)} outside Discord's limits")
        elif otype in (4, 10):
            value = int(value) if otype == 4 else float(value)
            if ("min_value" in odef and value < odef["min_value"]) or ("max_value" in odef and value > odef["max_value"]):
                raise ValueError(f"option {oname!r}: {value} outside [{odef.get('min_value')}, {odef.get('max_value')}]")
        elif otype == 5:
            value = bool(value)
        elif otype == 6:
            target = self.members.get(value) if isinstance(value, str) else self._member_by_id(int(value))
            if target is None:
                raise ValueError(f"option {oname!r}: unknown member {value!r}")
            resolved.setdefault("users", {})[str(target.id)] = target.user.to_json()
            resolved.setdefault("members", {})[str(target.id)] = target.to_json(
                with_user=False, permissions=self._permissions(target, channel))
            return str(target.id)
        elif otype == 7:
            ch = self.channels.get(value.lstrip("#")) if isinstance(value, str) else self._channel_by_id(value)
            if ch is None:
                raise ValueError(f"option {oname!r}: unknown channel {value!r}")
            if odef.get("channel_types") and ch.type not in odef["channel_types"]:
                raise ValueError(f"option {oname!r}: channel type {ch.type} not in {odef['channel_types']}")
            resolved.setdefault("channels", {})[str(ch.id)] = {
                "id": str(ch.id), "name": ch.name, "type": ch.type, "guild_id": str(ch.guild_id),
                "position": ch.position, "nsfw": ch.nsfw, "topic": ch.topic, "parent_id": None,
                "rate_limit_per_user": 0, "flags": 0, "permissions": str(self._permissions(member, ch)),
            }
            return str(ch.id)
        elif otype == 11:
            filename, data, overrides = self._file_spec(value, oname)
            upload = self._attachment(filename, data, overrides)
            self.uploads[upload.id] = upload
            url = overrides.get("url") or (
                f"{self.base_url}/ephemeral-attachments/{self.app_id}/{upload.id}/{filename}")
            info = {"id": str(upload.id), "filename": filename,
                    "size": overrides.get("size", upload.size), "url": url,
                    "proxy_url": url, "ephemeral": True}
            if upload.content_type:
                info["content_type"] = upload.content_type
            resolved.setdefault("attachments", {})[str(upload.id)] = info
            return str(upload.id)
        else:
            raise ValueError(f"option {oname!r}: option type {otype} is not supported by the fake")
        choices = odef.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise ValueError(f"option {oname!r}: {value!r} is not one of the choices {choices}")
        return value

    async def invoke(self, name: str, options: dict | None = None, *, user: str = "alice",
                     channel: str = "general", subcommand: str | None = None,
                     override_permissions: bool = False) -> FakeInteraction:
        member, ch = self.members[user], self.channels[channel]
        cmd, scope = self._find_command(name, ch.guild_id)
        perms = self._permissions(member, ch)
        needed = cmd.get("default_member_permissions")
        hidden = needed is not None and (int(needed) & ~perms or (int(needed) == 0 and not perms & ADMINISTRATOR))
        if hidden and not override_permissions:
            raise PermissionError(
                f"/{name} needs default_member_permissions={needed}; Discord hides it from {user!r} "
                f"(permissions {perms}). Pass override_permissions=True to model an admin's override.")
        if cmd.get("nsfw") and not ch.nsfw:
            raise PermissionError(f"/{name} is age-restricted; Discord only offers it in NSFW channels")
        defs = cmd.get("options") or []
        wrappers: list[dict] = []
        for part in (subcommand or "").split():
            sub = next((o for o in defs if o["name"] == part and o["type"] in (1, 2)), None)
            if sub is None:
                raise ValueError(f"/{name} has no subcommand (group) {part!r}")
            wrappers.append(sub)
            defs = sub.get("options") or []
        if any(o["type"] in (1, 2) for o in defs):
            raise ValueError(f"/{name} {subcommand or ''}: pick a subcommand, Discord cannot invoke a group")
        options = dict(options or {})
        unknown = set(options) - {o["name"] for o in defs}
        if unknown:
            raise ValueError(f"/{name}: unknown options {sorted(unknown)}")
        resolved: dict = {}
        built = []
        for odef in defs:
            if odef["name"] in options:
                value = self._option_value(odef, options[odef["name"]], member, ch, resolved)
                built.append({"name": odef["name"], "type": odef["type"], "value": value})
            elif odef.get("required"):
                raise ValueError(f"/{name}: required option {odef['name']!r} missing")
        for sub in reversed(wrappers):
            built = [{"name": sub["name"], "type": sub["type"], "options": built}]
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": built}
        if scope is not None:
            data["guild_id"] = str(scope)
        if resolved:
            data["resolved"] = resolved
        return self._start_interaction(2, name, data, member, ch)

    @staticmethod
    def _file_spec(value: Any, what: str) -> tuple[str, bytes, dict]:
        try:
            filename, data, *rest = value
        except (TypeError, ValueError):
            raise ValueError(f"{what}: give an attachment as (filename, bytes)") from None
        overrides = dict(rest[0]) if rest else {}
        unknown = set(overrides) - {"url", "size", "serve_size", "reset"}
        if unknown:
            raise ValueError(f"{what}: unknown attachment overrides {sorted(unknown)}")
        return filename, bytes(data), overrides

    def _attachment(self, filename: str, data: bytes, overrides: dict) -> FakeAttachment:
        return FakeAttachment(self._snowflake(), filename, mimetypes.guess_type(filename)[0], data,
                              serve_size=overrides.get("serve_size"),
                              reset=bool(overrides.get("reset")))

    async def post(self, channel: str = "general", *, user: str = "bob", content: str = "",
                   files: tuple | list = (), embeds: tuple | list = ()) -> FakeMessage:
        """A member's message (the bot cannot read its content: no message-content intent)."""
        ch, member = self.channels[channel], self.members[user]
        msg = FakeMessage(id=self._snowflake(), channel_id=ch.id, author_id=member.id,
                          content=content, embeds=[{"type": "rich", **e} for e in embeds])
        self._attachment_overrides.setdefault(msg.id, {})
        for spec in files:
            filename, data, overrides = self._file_spec(spec, "post")
            a = self._attachment(filename, data, overrides)
            msg.attachments.append(a)
            self._attachment_overrides[msg.id][a.id] = overrides
        self.messages[msg.id] = msg
        self._message_event("MESSAGE_CREATE", msg)
        self._notify()
        return msg

    async def invoke_message_command(self, name: str, message_id: int, *, user: str = "alice"
                                     ) -> FakeInteraction:
        cmd = next((c for scope in (self.guild_id, None) for c in self.synced_commands.get(scope, [])
                    if c["name"] == name and c.get("type", 1) == 3), None)
        if cmd is None:
            raise LookupError(f"FakeDiscord: no message command {name!r} was synced")
        msg = self._reactable(message_id)
        ch = self._channel_by_id(msg.channel_id)
        assert ch is not None
        member = self.members[user]
        needed = cmd.get("default_member_permissions")
        if needed is not None and int(needed) & ~self._permissions(member, ch):
            raise PermissionError(f"Apps > {name} is hidden from {user!r}")
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 3,
                                "target_id": str(msg.id),
                                "resolved": {"messages": {str(msg.id): self.message_json(msg)}}}
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return self._start_interaction(2, name, data, member, ch)

    async def submit_modal(self, interaction: FakeInteraction, values: dict[str, str], *,
                           user: str | None = None) -> FakeInteraction:
        modal = interaction.modal
        if modal is None:
            raise ValueError("the bot did not answer that interaction with a modal")
        inputs: dict[str, dict] = {}
        for row in modal.get("components") or []:
            for comp in ([row.get("component")] if row.get("type") == 18 else row.get("components") or []):
                if comp and comp.get("type") == 4:
                    inputs[comp["custom_id"]] = comp
        unknown = set(values) - set(inputs)
        if unknown:
            raise ValueError(f"the modal has no inputs {sorted(unknown)}")
        for cid, comp in inputs.items():
            text = values.get(cid, comp.get("value") or "")
            if comp.get("required", True) and not text:
                raise ValueError(f"the modal's {cid!r} is required")
            if text and not comp.get("min_length", 0) <= len(text) <= comp.get("max_length", 4000):
                raise ValueError(f"the modal's {cid!r}: length {len(text)} outside its limits")

        def filled(comp: dict) -> dict:
            out = {"type": 4, "custom_id": comp["custom_id"],
                   "value": values.get(comp["custom_id"], comp.get("value") or "")}
            if "id" in comp:
                out["id"] = comp["id"]
            return out

        components = []
        for row in modal.get("components") or []:
            if row.get("type") == 18:
                label = {"type": 18, "component": filled(row["component"])}
                if "id" in row:
                    label["id"] = row["id"]
                components.append(label)
            else:
                components.append({"type": 1, "components": [filled(c) for c in row.get("components") or []]})
        ch = self._channel_by_id(interaction.channel_id)
        assert ch is not None
        member = self.members[user] if user else self._member_by_id(interaction.user_id)
        assert member is not None
        return self._start_interaction(5, interaction.name, {"custom_id": modal["custom_id"],
                                                             "components": components}, member, ch)

    async def autocomplete(self, name: str, options: dict, focused: str, *, user: str = "alice",
                           channel: str = "general") -> FakeInteraction:
        cmd, scope = self._find_command(name)
        defs = {o["name"]: o for o in cmd.get("options") or []}
        if focused not in defs or not defs[focused].get("autocomplete"):
            raise ValueError(f"/{name}: option {focused!r} has no autocomplete")
        built = []
        for oname, value in options.items():
            if oname not in defs:
                raise ValueError(f"/{name}: unknown option {oname!r}")
            entry = {"name": oname, "type": defs[oname]["type"], "value": str(value)}
            if oname == focused:
                entry["focused"] = True
            built.append(entry)
        if focused not in options:
            built.append({"name": focused, "type": defs[focused]["type"], "value": "", "focused": True})
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": built}
        if scope is not None:
            data["guild_id"] = str(scope)
        return self._start_interaction(4, name, data, self.members[user], self.channels[channel])

    @staticmethod
    def choices(interaction: FakeInteraction) -> list[dict]:
        (callback,) = interaction.callbacks
        return callback["data"]["choices"]

    async def click(self, message_id: int, custom_id: str, *, user: str = "alice",
                    component_type: int = 2, values: list[str] | None = None) -> FakeInteraction:
        msg = self.messages[message_id]
        ch = self._channel_by_id(msg.channel_id)
        assert ch is not None
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        inter = self._start_interaction(3, None, data, self.members[user], ch, message=msg)
        return inter

    def _start_interaction(self, itype: int, name: str | None, data: dict, member: FakeMember,
                           channel: FakeChannel, message: FakeMessage | None = None) -> FakeInteraction:
        iid, token = self._snowflake(), "fake-interaction-" + secrets.token_urlsafe(24)
        payload = self._interaction_payload(itype, data, member, channel, token, iid, message)
        inter = FakeInteraction(self, iid, token, itype, name, member.id, channel.id, payload,
                                component_message=message)
        self.interactions[iid] = inter
        self._dispatch("INTERACTION_CREATE", payload)
        self._notify()
        return inter

    async def _callback(self, request: web.Request) -> web.Response:
        inter = self.interactions.get(int(request.match_info["interaction_id"]))
        if inter is None or inter.token != request.match_info["token"] or inter.expired:
            raise FakeHTTPError(404, "Unknown interaction", 10062)
        if inter.callbacks:
            raise FakeHTTPError(400, "Interaction has already been acknowledged.", 40060)
        rec: RecordedRequest = request[_RECORD]
        body = rec.json or {}
        ctype, data = body.get("type"), body.get("data") or {}
        if ctype not in (4, 5, 6, 7, 8, 9, 10, 12) or (ctype in (6, 7) and inter.type != 3):
            raise FakeHTTPError(400, "Invalid interaction response type", 50035)
        # autocomplete is answered with choices (8) and nothing else; a modal submit
        # cannot open another modal
        if (inter.type == 4) != (ctype == 8) or (ctype == 9 and inter.type == 5):
            raise FakeHTTPError(400, "Invalid interaction response type", 50035)
        if ctype == 8:
            self._check_choices(data)
        if ctype == 9:
            self._check_modal(data)
            inter.modal = data
        component_message = inter.component_message
        msg: FakeMessage | None = None
        mtype = 20 if inter.type == 2 else 0
        if ctype == 4:
            self._require_content(data, rec.files)
            msg = self._new_message(inter.channel_id, data, rec.files, flags=data.get("flags", 0) & FLAG_EPHEMERAL,
                                    type=mtype, interaction=inter)
        elif ctype == 5:
            msg = self._new_message(inter.channel_id, {}, [], type=mtype, interaction=inter,
                                    flags=FLAG_LOADING | (data.get("flags", 0) & FLAG_EPHEMERAL))
        elif ctype in (6, 7):
            msg = component_message
            if ctype == 7 and msg is not None:
                self._edit_message(msg, data, rec.files)
        inter.callbacks.append({"type": ctype, "data": data})  # only once the response is valid
        inter.original = msg
        self._notify()
        result: dict[str, Any] = {
            "interaction": {
                "id": str(inter.id), "type": inter.type, "activity_instance_id": None,
                "response_message_id": str(msg.id) if msg else None,
                "response_message_loading": ctype == 5,
                "response_message_ephemeral": bool(msg and msg.ephemeral),
            },
            "resource": {"type": ctype},
        }
        if msg is not None and ctype in (4, 5, 7):
            result["resource"]["message"] = self.message_json(msg)
        return self._json(result)

    @staticmethod
    def _check_choices(data: dict) -> None:
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) > 25:
            raise FakeHTTPError(400, "Invalid Form Body", 50035, {"choices": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 25 or fewer in length."}]}})
        for c in choices:
            if not 1 <= len(str(c.get("name", ""))) <= 100 or "value" not in c or (
                    isinstance(c["value"], str) and len(c["value"]) > 100):
                raise FakeHTTPError(400, "Invalid Form Body", 50035, {"choices": {"_errors": [
                    {"code": "BASE_TYPE_BAD_LENGTH", "message": "Must be between 1 and 100 in length."}]}})

    @staticmethod
    def _check_modal(data: dict) -> None:
        rows = data.get("components") or []
        if not (1 <= len(str(data.get("title", ""))) <= 45 and 1 <= len(str(data.get("custom_id", ""))) <= 100
                and 1 <= len(rows) <= 5):
            raise FakeHTTPError(400, "Invalid Form Body", 50035, {"data": {"_errors": [
                {"code": "BASE_TYPE_BAD_LENGTH", "message": "title 1-45, custom_id 1-100, 1-5 components"}]}})
        for row in rows:
            inputs = [row.get("component")] if row.get("type") == 18 else row.get("components") or []
            for comp in inputs:
                if not comp or comp.get("type") not in (3, 4, 5, 6, 7, 8, 10, 19) or not comp.get("custom_id"):
                    raise FakeHTTPError(400, "Invalid Form Body", 50035, {"components": {"_errors": [
                        {"code": "COMPONENT_TYPE_INVALID", "message": "not a modal input"}]}})

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction:
        token = request.match_info["token"]
        inter = next((i for i in self.interactions.values() if i.token == token), None)
        if int(request.match_info["app_id"]) != self.app_id or inter is None:
            raise FakeHTTPError(404, "Unknown Webhook", 10015)
        if inter.expired:
            raise FakeHTTPError(401, "Invalid Webhook Token", 50027)
        if not inter.callbacks:
            raise FakeHTTPError(404, "Unknown Webhook", 10015)
        return inter

    async def _followup(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        rec: RecordedRequest = request[_RECORD]
        body = rec.json or {}
        self._require_content(body, rec.files)
        original = inter.original
        if (original is not None and original.loading and original.interaction_id == inter.id
                and original.id in self.messages):
            self._edit_message(original, body, rec.files)  # first followup after a deferral
            msg = original
        else:
            msg = self._new_message(inter.channel_id, body, rec.files, type=20 if inter.type == 2 else 0,
                                    flags=body.get("flags", 0) & FLAG_EPHEMERAL, interaction=inter)
        inter.followups.append(msg)
        self._notify()
        if request.query.get("wait") in ("1", "true", "True"):
            return self._json(self.message_json(msg))
        return web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        mid = request.match_info["message_id"]
        if mid == "@original":
            msg = inter.original
        else:
            msg = next((m for m in [inter.original, *inter.followups] if m is not None and str(m.id) == mid), None)
        if msg is None or msg.id not in self.messages:
            raise _not_found("Message", 10008)
        rec: RecordedRequest = request[_RECORD]
        if request.method == "PATCH":
            self._edit_message(msg, rec.json or {}, rec.files)
        elif request.method == "DELETE":
            self._delete_message(msg)
            self._notify()
            return web.Response(status=204)
        self._notify()
        return self._json(self.message_json(msg))

    # ----------------------------------------------------------------- channel API
    def _channel(self, request: web.Request, need: int = VIEW_CHANNEL) -> FakeChannel:
        ch = self._channel_by_id(request.match_info["channel_id"])
        if ch is None:
            raise _not_found("Channel", 10003)
        if self._permissions(self.bot_member, ch) & need != need:
            raise FakeHTTPError(403, "Missing Permissions", 50013)
        return ch

    def _message(self, ch: FakeChannel, message_id: Any) -> FakeMessage:
        msg = self.messages.get(int(message_id))
        if msg is None or msg.channel_id != ch.id or msg.ephemeral:
            raise _not_found("Message", 10008)
        return msg

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        for msg in self.messages.values():
            for a in msg.attachments:
                if str(a.id) == request.match_info["attachment_id"]:
                    self.cdn_downloads += 1
                    return await self._serve_attachment(request, a)
        return web.Response(status=404, text="Not Found")

    async def _ephemeral_cdn(self, request: web.Request) -> web.StreamResponse:
        upload = self.uploads.get(int(request.match_info["attachment_id"]))
        if upload is None or upload.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        self.cdn_downloads += 1
        return await self._serve_attachment(request, upload)

    async def _serve_attachment(self, request: web.Request, a: FakeAttachment) -> web.StreamResponse:
        ctype = a.content_type or "application/octet-stream"
        if a.serve_size is None and not a.reset:
            self.cdn_bytes_sent += len(a.data)
            return web.Response(body=a.data, content_type=ctype)
        response = web.StreamResponse(headers={"Content-Type": ctype})
        response.enable_chunked_encoding()
        await response.prepare(request)
        total = a.serve_size if a.serve_size is not None else len(a.data)
        stop = total // 2 if a.reset else total
        sent, pad = 0, b"\0" * 65536
        while sent < stop:
            chunk = (a.data[sent:sent + 65536] if sent < len(a.data) else pad)[:stop - sent]
            try:
                await response.write(chunk)
            except (ConnectionError, RuntimeError):
                return response  # the client stopped reading
            sent += len(chunk)
            self.cdn_bytes_sent += len(chunk)
        if a.reset:
            assert request.transport is not None
            request.transport.abort()  # as a reset connection: no end of body
            return response
        await response.write_eof()
        return response

    async def _get_channel(self, request: web.Request) -> web.Response:
        return self._json(self._channel(request).to_json())

    async def _typing(self, request: web.Request) -> web.Response:
        self._channel(request, VIEW_CHANNEL | SEND_MESSAGES)
        return web.Response(status=204)

    async def _list_messages(self, request: web.Request) -> web.Response:
        ch = self._channel(request, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        # Discord: limit 1-100 (default 50); before/after are message ids (snowflakes);
        # the page is always newest first, and with ``after`` it is the messages just after it.
        try:
            limit = int(request.query.get("limit", 50))
            before = int(request.query["before"]) if "before" in request.query else None
            after = int(request.query["after"]) if "after" in request.query else None
        except ValueError:
            raise FakeHTTPError(400, "Invalid Form Body", 50035) from None
        if not 1 <= limit <= 100:
            raise FakeHTTPError(400, "Invalid Form Body", 50035,
                                {"limit": {"_errors": [{"code": "NUMBER_TYPE_MAX",
                                                        "message": "int value should be <= 100."}]}})
        msgs = [m for m in self.messages.values() if m.channel_id == ch.id and not m.ephemeral
                and (before is None or m.id < before)]
        if after is not None:
            msgs = sorted((m for m in msgs if m.id > after), key=lambda m: m.id)[:limit][::-1]
        else:
            msgs = sorted(msgs, key=lambda m: m.id, reverse=True)[:limit]
        return self._json([self.message_json(m) for m in msgs])

    async def _create_channel_message(self, request: web.Request) -> web.Response:
        ch = self._channel(request, VIEW_CHANNEL | SEND_MESSAGES)
        rec: RecordedRequest = request[_RECORD]
        body = rec.json or {}
        if rec.files and not self._permissions(self.bot_member, ch) & ATTACH_FILES:
            raise FakeHTTPError(403, "Missing Permissions", 50013)
        self._require_content(body, rec.files)
        msg = self._new_message(ch.id, body, rec.files, type=19 if body.get("message_reference") else 0)
        self._notify()
        return self._json(self.message_json(msg))

    async def _channel_message(self, request: web.Request) -> web.Response:
        ch = self._channel(request, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        msg = self._message(ch, request.match_info["message_id"])
        rec: RecordedRequest = request[_RECORD]
        if request.method == "PATCH":
            if msg.author_id != self.bot_user_id:
                raise FakeHTTPError(403, "Cannot edit a message authored by another user", 50005)
            self._edit_message(msg, rec.json or {}, rec.files)
        elif request.method == "DELETE":
            if msg.author_id != self.bot_user_id and not self._permissions(self.bot_member, ch) & MANAGE_MESSAGES:
                raise FakeHTTPError(403, "Missing Permissions", 50013)
            self._delete_message(msg)
            self._notify()
            return web.Response(status=204)
        self._notify()
        return self._json(self.message_json(msg))

    # ----------------------------------------------------------------- reactions
    def _add_reaction(self, msg: FakeMessage, emoji: str, user: FakeMember) -> None:
        entry = (emoji, user.id)
        bucket = self.reactions.setdefault(msg.id, set())
        if entry in bucket:
            return
        bucket.add(entry)
        self._dispatch("MESSAGE_REACTION_ADD", {
            "user_id": str(user.id), "channel_id": str(msg.channel_id), "message_id": str(msg.id),
            "guild_id": str(self._guild_of(msg.channel_id)), "emoji": _emoji_json(emoji), "member": user.to_json(),
            "type": 0, "burst": False, "burst_colors": [], "message_author_id": str(msg.author_id),
        }, intent=INTENT_GUILD_MESSAGE_REACTIONS)
        self._notify()

    def _remove_reaction(self, msg: FakeMessage, emoji: str, user_id: int) -> None:
        bucket = self.reactions.get(msg.id, set())
        if (emoji, user_id) not in bucket:
            return
        bucket.discard((emoji, user_id))
        self._dispatch("MESSAGE_REACTION_REMOVE", {
            "user_id": str(user_id), "channel_id": str(msg.channel_id), "message_id": str(msg.id),
            "guild_id": str(self._guild_of(msg.channel_id)), "emoji": _emoji_json(emoji), "type": 0, "burst": False,
        }, intent=INTENT_GUILD_MESSAGE_REACTIONS)
        self._notify()

    async def _put_reaction(self, request: web.Request) -> web.Response:
        ch = self._channel(request, VIEW_CHANNEL | READ_MESSAGE_HISTORY | ADD_REACTIONS)
        msg = self._message(ch, request.match_info["message_id"])
        if request.match_info["user"] != "@me":
            raise _not_found("route", 0)
        emoji = request.match_info["emoji"]
        if not emoji or (":" in emoji and not _CUSTOM_EMOJI.match(emoji)):
            raise FakeHTTPError(400, "Unknown Emoji", 10014)
        self._add_reaction(msg, emoji, self.bot_member)
        return web.Response(status=204)

    async def _delete_reaction(self, request: web.Request) -> web.Response:
        ch = self._channel(request, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        msg = self._message(ch, request.match_info["message_id"])
        who = request.match_info["user"]
        user_id = self.bot_user_id if who == "@me" else int(who)
        if user_id != self.bot_user_id and not self._permissions(self.bot_member, ch) & MANAGE_MESSAGES:
            raise FakeHTTPError(403, "Missing Permissions", 50013)
        self._remove_reaction(msg, request.match_info["emoji"], user_id)
        return web.Response(status=204)

    # ----------------------------------------------------------------- members acting
    def _reactable(self, message_id: int) -> FakeMessage:
        msg = self.messages.get(message_id)
        if msg is None or msg.ephemeral:
            raise ValueError(f"message {message_id} does not exist or is ephemeral; nobody can react to it")
        return msg

    async def react(self, message_id: int, emoji: str, *, user: str = "alice") -> None:
        self._add_reaction(self._reactable(message_id), emoji, self.members[user])

    async def unreact(self, message_id: int, emoji: str, *, user: str = "alice") -> None:
        self._remove_reaction(self._reactable(message_id), emoji, self.members[user].id)
