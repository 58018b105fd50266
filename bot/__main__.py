"""Start the bot: python -m bot [--check] [--env-file PATH] (or make run).

Start-up order, cheapest check first, so a mistake is named in seconds: settings (no
torch import), DATA_DIR usable and the state file sound, Discord login over REST (the
token), what a crash left behind, then the model (imports torch, may download), and only
once it serves are the commands synced and the gateway joined.

Exit codes: 0 closed cleanly; 2 a setting a person must fix (restarting cannot help); 75
(EX_TEMPFAIL) a remote that may come back (Discord, the model hub) is unreachable:
restart later; 130 / 143 interrupted by SIGINT / SIGTERM before the model served; 1 anything
else.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports: Ctrl-C works from the first moment
    from search import interrupt

    interrupt.install()

import argparse
import asyncio
import contextlib
import logging
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import discord

from search import interrupt, logs, metrics, settings_doc
from search.config import Settings, notify_socket
from search.errors import ConfigError, ModelHubUnreachable, ModelLoadError
from search.inference import InferenceUnavailable
from search.sources import require
from search.storage import Unavailable, check_data_dir

from .app import FindImageBot, point_at
from .recovery import answer_pending, reconcile_picks, sweep_forever
from .state import State
from .systemd import notify

log = logging.getLogger("bot")

EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; the unit restarts it (2 it does not)

__all__ = ["main", "point_at", "run"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bot", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The /findimage Discord bot: loads the model, then serves until SIGINT or "
                    "SIGTERM.", epilog=settings_doc.describe())
    p.add_argument("--check", action="store_true",
                   help="check the settings, DATA_DIR, the Discord token, the Pixabay key and "
                        "the model, one row each, then exit (1 if any fails). It logs in to "
                        "Discord over REST (never the gateway: the bot does not appear online), "
                        "sends Pixabay one search, and asks the model hub when the weights are "
                        "not cached (then downloads them into this user's cache)")
    p.add_argument("--env-file", type=Path, metavar="PATH",
                   help="read settings from PATH instead of ./.env (the environment still wins)")
    return p.parse_args(argv)


async def run(settings: Settings, *, bot_options: dict | None = None,
              started: asyncio.Future | None = None, handle_signals: bool = False) -> None:
    """Open the resources in start-up order, then go online until closed or signalled.

    With ``handle_signals`` (the entry point), systemd hears how start-up goes
    (``Type=notify``: READY=1 once online), and a signal once the model serves closes the bot.
    """
    point_at(settings)
    systemd = notify_socket() if handle_signals else None
    async with AsyncExitStack() as stack:
        if settings.metrics_port is not None:
            metrics_url = stack.enter_context(
                metrics.serve(settings.metrics_host, settings.metrics_port))
        else:
            metrics_url = None
        state = await stack.enter_async_context(
            State(settings.state_target, keep_days=settings.results_keep_days,
                  **settings.database_pool))
        shared = None
        if settings.redis_url:  # one round trip before anything goes online
            from search.shared import RedisUnavailable, SharedRedis, unreachable_sentence

            shared = await stack.enter_async_context(SharedRedis(
                settings.redis_url, prefix=settings.redis_key_prefix,
                shown=settings.redis_shown))
            try:
                await shared.round_trip()
            except RedisUnavailable as e:
                raise ConfigError(unreachable_sentence(settings.redis_shown, str(e))) from None
        bot = FindImageBot(settings, None, state, shared, **(bot_options or {}))
        bot.metrics_url = metrics_url
        await stack.enter_async_context(bot)
        notify(systemd, "STATUS=logging in to Discord")
        await bot.login(settings.discord_token or "")  # REST: a wrong token fails here
        await answer_pending(bot)
        await reconcile_picks(bot)
        if state.shared:  # other processes may die while this one runs: finish their work
            sweeper = asyncio.create_task(sweep_forever(bot, state.heartbeat), name="sweep")
            stack.callback(sweeper.cancel)
        notify(systemd, "STATUS=loading the model")
        from search.service import SearchService  # imports torch: last
        from search.tuning import freeze_heap, tune_process  # the process is ours: tune it

        tune_process(in_process=not settings.inference_url)
        bot.service = await stack.enter_async_context(SearchService.open(settings,
                                                                         shared=shared))
        freeze_heap()
        # Only now: members must not be offered the commands of a bot whose model failed.
        await bot.sync_commands()
        if started is not None:
            started.set_result(bot)
        if handle_signals:
            stack.enter_context(_online_signals(bot, systemd))
        notify(systemd, "STATUS=connecting to the Discord gateway")
        await bot.connect()
    log.info("closed cleanly")


@contextlib.contextmanager
def _online_signals(bot: FindImageBot, systemd: str | None):
    """Once the model serves, SIGINT / SIGTERM close the bot cleanly (exit 0): from the
    gateway connect on, a member may be mid-search, and close() lets discord.py finish
    what it can. Before, they interrupt (130 / 143). systemd hears READY=1 once the
    gateway is ready (with shards, every shard this process runs)."""

    async def ready() -> None:
        await bot.wait_until_ready()
        notify(systemd, "READY=1", "STATUS=online")

    async def close() -> None:
        notify(systemd, "STOPPING=1", "STATUS=closing")
        await bot.close()

    interrupt.on_signal(lambda signum: asyncio.ensure_future(close()))
    task = asyncio.ensure_future(ready())
    try:
        yield
    finally:
        task.cancel()
        interrupt.on_signal(None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.check:
            from . import check

            return interrupt.run(check.run(args.env_file, setup_logs=True))
        try:
            settings = Settings.for_entry_point(args.env_file)
            settings.require("DISCORD_TOKEN")
            require(settings, settings.search_source)
            check_data_dir(settings.data_dir)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        logs.setup(settings.log_level, settings.log_format,
                   secrets=(settings.discord_token or "", settings.pixabay_api_key or ""))
        return serve(settings)
    except interrupt.Interrupted as e:
        interrupt.say(e.signum)
        return e.exit_code


def serve(settings: Settings) -> int:
    """Run the bot; the exit code says whether restarting can help (see the docstring)."""
    try:
        interrupt.run(run(settings, handle_signals=True))
    except discord.LoginFailure:
        print("error: Discord refused DISCORD_TOKEN; copy the token again from the Developer "
              "Portal (Bot → Reset Token).", file=sys.stderr)
        return 2
    except ModelHubUnreachable as e:  # the network may come back: let the unit restart us
        print(f"error: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    except (ConfigError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:  # the server may be starting: exit 1, so systemd tries again
        print(f"error: {e.detail or 'PostgreSQL is not answering'}; start it, or check "
              "DATABASE_URL.", file=sys.stderr)
        return 1
    except InferenceUnavailable as e:  # a service that may come back: a restartable exit
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as e:
        print(f"error: cannot reach Discord at {settings.discord_api_base} "
              f"({type(e).__name__}); check the network or DISCORD_API_BASE.", file=sys.stderr)
        return EX_TEMPFAIL
    except discord.DiscordServerError as e:
        print(f"error: Discord answered HTTP {e.status}; it should be back soon.",
              file=sys.stderr)
        return EX_TEMPFAIL
    except Exception:
        log.exception("the bot stopped on an unexpected error")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
