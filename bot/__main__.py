"""Start the bot: python -m bot (or make run).

Start-up order, cheapest check first, so a mistake is named in seconds: settings (no
torch import), DATA_DIR usable and the state file sound, Discord login over REST (the
token), what a crash left behind, and only then the model (imports torch, may download).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl

from search.config import Settings
from search.errors import ConfigError, ModelLoadError
from search.sqlite import check_data_dir

from .app import FindImageBot
from .recovery import answer_pending, reconcile_picks
from .state import State

log = logging.getLogger("bot")


def point_at(settings: Settings) -> None:
    """Send REST and the gateway where the settings say (a proxy, or the tests' fake)."""
    discord.http.Route.BASE = settings.discord_api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def run(settings: Settings, *, bot_options: dict | None = None,
              started: asyncio.Future | None = None, handle_signals: bool = False) -> None:
    """Open the resources in start-up order, then go online until closed or signalled."""
    point_at(settings)
    async with AsyncExitStack() as stack:
        state = await stack.enter_async_context(
            State(settings.data_dir / "bot.sqlite3", keep_days=settings.results_keep_days))
        bot = FindImageBot(settings, None, state, **(bot_options or {}))
        await stack.enter_async_context(bot)
        await bot.login(settings.discord_token or "")  # REST: a wrong token fails here
        await answer_pending(bot)
        await reconcile_picks(bot)
        from search.service import SearchService  # imports torch: last
        from search.tuning import freeze_heap, tune_process  # the process is ours: tune it

        tune_process()
        bot.service = await stack.enter_async_context(SearchService.open(settings))
        freeze_heap()
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
        if started is not None:
            started.set_result(bot)
        await bot.connect()
    log.info("closed cleanly")


def main() -> int:
    try:
        settings = Settings.load()
        settings.require("DISCORD_TOKEN")
        settings.require_source(settings.search_source)
        check_data_dir(settings.data_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    discord.utils.setup_logging(level=logging.INFO)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
