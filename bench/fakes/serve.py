"""The fakes as a service a person can point the bot and the CLI at: fixed loopback ports,
the settings that reach them, and a member's console for the fake Discord.

``python -m bench.fakes`` (see ``__main__``) runs ``serve()``; ``make demo`` reuses
``product_env()``.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import threading
from pathlib import Path

from .discord import FakeDiscord
from .openverse import FakeOpenverse
from .pixabay import FakePixabay

ROOT = Path(__file__).resolve().parents[2]
TINY_CLIP = ROOT / "tests" / "fixtures" / "tiny-clip"
BASE_PORT = 8740  # Pixabay here, Openverse on the next port, Discord on the one after


def product_env(pixabay: FakePixabay, openverse: FakeOpenverse | None = None,
                discord: FakeDiscord | None = None) -> dict[str, str]:
    """The settings that point the product at these fakes and the test model."""
    env = {
        "PIXABAY_API_URL": pixabay.api_url,
        "PIXABAY_API_KEY": pixabay.key,
        "IMAGE_HOSTS": "127.0.0.1",
    }
    if openverse is not None:
        env["OPENVERSE_API_URL"] = openverse.api_url
    if discord is not None:
        env.update({
            "DISCORD_TOKEN": discord.token,
            "DISCORD_GUILD_ID": str(discord.guild_id),
            "DISCORD_API_BASE": discord.api_base,
            "DISCORD_GATEWAY_URL": discord.gateway_url,
        })
    env.update({
        # The test model: a few MB, trained on the fakes' scenes, loads in a second.
        "CLIP_MODEL": f"local-dir:{TINY_CLIP}",
        "CLIP_DEVICE": "cpu",
        "CLIP_BACKEND": "torch",  # no ONNX export at the first start
    })
    return env


def env_text(env: dict[str, str]) -> str:
    return "\n".join(f"{name}={value}" for name, value in env.items())


def parse_command(line: str) -> tuple[str, dict[str, object]]:
    """``/findimage tag:circle phrase:"a red circle"`` -> ("findimage", {...}), as typed in
    Discord's box; ValueError with what is wrong."""
    words = shlex.split(line)
    if not words or not words[0].startswith("/"):
        raise ValueError("type a slash command, e.g. /findimage tag:circle "
                         "phrase:\"a red circle on snow\"")
    options: dict[str, object] = {}
    for word in words[1:]:
        name, sep, value = word.partition(":")
        if not sep or not name:
            raise ValueError(f"'{word}' is not name:value")
        options[name] = (int(value) if value.isdigit() else
                         {"true": True, "false": False}.get(value.lower(), value))
    return words[0][1:], options


def describe_reply(message) -> str:
    """What a member would read: the text, each embed's title and footer, the files."""
    lines = [message.content] if message.content else []
    for embed in message.embeds:
        lines.append("  " + " · ".join(" ".join(str(embed[k]).split())  # one line each
                                       for k in ("title", "description", "url") if embed.get(k)))
        if embed.get("footer", {}).get("text"):
            lines.append("    " + embed["footer"]["text"])
    lines += [f"  [file {a.filename}, {a.size} bytes]" for a in message.attachments]
    return "\n".join(lines) or "(an empty reply)"


async def show_replies(discord: FakeDiscord, interaction, timeout: float = 300) -> None:
    """Print what the member sees as it changes (a first page, its final order, an error),
    until the answer is complete: the bot has added its reactions, or it said something
    only the member can see."""
    printed: set[tuple[int, str | None]] = set()

    def shown() -> list:
        return [m for m in (interaction.original, *interaction.followups)
                if m is not None and m.id in discord.messages and not m.loading]

    def reacted(message) -> bool:
        return any(user == discord.bot_user_id
                   for _, user in discord.reactions.get(message.id, ()))

    def complete() -> bool:
        messages = shown()
        public = [m for m in messages if not m.ephemeral]
        return any(reacted(m) for m in public) or (
            not public and any(m.ephemeral for m in messages))

    while True:
        for message in shown():
            if (message.id, message.edited_timestamp) not in printed:
                printed.add((message.id, message.edited_timestamp))
                print(describe_reply(message) + "\n", flush=True)
        if complete():
            print("(only you can see this)" if not [m for m in shown() if not m.ephemeral]
                  else "(the bot added its reactions: the answer is complete)", flush=True)
            return
        await discord.wait_for(
            lambda: complete() or any((m.id, m.edited_timestamp) not in printed
                                      for m in shown()), timeout, what="the bot's reply")


async def console(discord: FakeDiscord, lines: asyncio.Queue) -> None:
    """Read slash commands from stdin and type them into the fake Discord as alice."""
    while True:
        line = await lines.get()
        if line is None:
            return
        if not line.strip():
            continue
        try:
            name, options = parse_command(line)
            interaction = await discord.invoke(name, options)
            await show_replies(discord, interaction)
        except (ValueError, LookupError, PermissionError, TimeoutError) as e:
            print(f"! {e}", flush=True)


async def serve(base_port: int = BASE_PORT, per_scene: int = 10) -> None:
    pixabay = FakePixabay(per_scene=per_scene)
    openverse = FakeOpenverse(pixabay.entries)
    discord = FakeDiscord()
    await pixabay.start(base_port)
    await openverse.start(base_port + 1)
    await discord.start(base_port + 2)
    try:
        print(f"# Fake Pixabay, Openverse and Discord on 127.0.0.1:{base_port}-{base_port + 2}"
              ", with the test model. Ctrl-C stops them.\n"
              "# Put these lines in an env file (python -m search --env-file FILE circle "
              "\"a red circle\", or python -m bot --env-file FILE),\n"
              "# then type slash commands here once the bot is online, e.g. "
              "/findimage tag:circle phrase:\"a red circle on snow\"", flush=True)
        print(env_text(product_env(pixabay, openverse, discord)), flush=True)
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue = asyncio.Queue()

        def read() -> None:  # stdin blocks: a daemon thread; EOF ends the console only
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=read, name="console", daemon=True).start()
        await console(discord, lines)
        await asyncio.Event().wait()  # until interrupted
    finally:
        await discord.close()
        await openverse.close()
        await pixabay.close()
