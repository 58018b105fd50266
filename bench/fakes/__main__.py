"""python -m bench.fakes [--port 8740]: fake Pixabay, Openverse and Discord on loopback.

Prints the settings that point the CLI or the bot at them (and at the test model), then
serves until Ctrl-C or SIGTERM. Lines typed on stdin go to the fake Discord as a member's
slash commands, and the bot's reply is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .serve import BASE_PORT, serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fakes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=BASE_PORT,
                   help=f"Pixabay's port; Openverse and Discord take the next two "
                        f"(default {BASE_PORT})")
    p.add_argument("--per-scene", type=int, default=10,
                   help="photos per scene in the catalogue (default 10: 1440 photos)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # both stop it the same way
    try:
        asyncio.run(serve(args.port, args.per_scene))
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"error: cannot listen on 127.0.0.1:{args.port}-{args.port + 2} "
              f"({e.strerror or e}); pick others with --port N.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
