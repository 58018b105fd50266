"""Start the bot: python -m bot [--check] [--env-file PATH] (or make run)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import discord

from search import logs, metrics, settings_doc
from search.config import Settings
from search.errors import ConfigError, ModelLoadError
from search.service import SearchService

from .app import FindImageBot, point_at
from .state import State

log = logging.getLogger("bot")

__all__ = ["main", "point_at", "run"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bot", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The /findimage Discord bot: loads the model, then serves until SIGINT or "
                    "SIGTERM.", epilog=settings_doc.describe())
    p.add_argument("--check", action="store_true",
                   help="check the settings, DATA_DIR, the Discord token, the Pixabay key and "
                        "the model, one row each, then exit (1 if any fails); never goes online")
    p.add_argument("--env-file", type=Path, metavar="PATH",
                   help="read settings from PATH instead of ./.env (the environment still wins)")
    return p.parse_args(argv)


async def run(settings: Settings, *, bot_options: dict | None = None,
              started: asyncio.Future | None = None, handle_signals: bool = False) -> None:
    """Open the resources, warm the model, then go online until closed or signalled."""
    point_at(settings)
    async with AsyncExitStack() as stack:
        metrics_url = None
        if settings.metrics_port is not None:
            metrics_url = stack.enter_context(
                metrics.serve(settings.metrics_host, settings.metrics_port))
        service = await stack.enter_async_context(SearchService.open(settings))
        state = await stack.enter_async_context(State(settings.data_dir / "bot.sqlite3"))
        bot = FindImageBot(settings, service, state, **(bot_options or {}))
        bot.metrics_url = metrics_url
        await stack.enter_async_context(bot)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
        if started is not None:
            started.set_result(bot)
        await bot.start(settings.discord_token or "")
    log.info("closed cleanly")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        from . import check

        return asyncio.run(check.run(args.env_file, setup_logs=True))
    try:
        settings = Settings.for_entry_point(args.env_file)
        settings.require("DISCORD_TOKEN", "PIXABAY_API_KEY")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format,
               secrets=(settings.discord_token or "", settings.pixabay_api_key or ""))
    try:
        asyncio.run(run(settings, handle_signals=True))
    except discord.LoginFailure:
        print("error: Discord refused DISCORD_TOKEN; copy the token again from the Developer "
              "Portal (Bot → Reset Token).", file=sys.stderr)
        return 2
    except (ConfigError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError) as e:
        print(f"error: cannot reach Discord at {settings.discord_api_base} "
              f"({type(e).__name__}); check the network or DISCORD_API_BASE.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("the bot stopped on an unexpected error")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
