"""The fake Pixabay in its own process, so its request handling is not on our loop.

``python -m bench.fakeserver --latency-ms 30 --per-scene 10`` prints one JSON line
(``api_url``, ``key``, ``port``) when it listens, and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import bench.fakes.pixabay as fake_module
from bench.fakes.pixabay import FakePixabay, default_catalogue


async def serve(latency: float, per_scene: int) -> None:
    # Renders are cached; 20 queries x 200 photos would overflow the default budget and
    # the concurrent scenario would time the fake's drawing instead of our downloads.
    fake_module._CACHE_BUDGET = max(fake_module._CACHE_BUDGET, 1 << 30)
    fake = FakePixabay(default_catalogue(per_scene), rate_limit=10**9)
    fake.latency = latency
    async with fake:
        print(json.dumps({"api_url": fake.api_url, "key": fake.key, "port": fake.port}),
              flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # returns at EOF: the parent left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--per-scene", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(serve(args.latency_ms / 1000.0, args.per_scene))


if __name__ == "__main__":
    main()
