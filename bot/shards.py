"""IDENTIFY turns: Discord's session start limit, kept across processes.

Discord lets a bot IDENTIFY one shard per 5 seconds in each bucket ``shard_id %
max_concurrency`` (``session_start_limit.max_concurrency`` from GET /gateway/bot); an
IDENTIFY sooner is refused. Processes that start together each run some shards, so
the turn is taken in Redis (``SET NX PX 5000`` on the bucket) when REDIS_URL is set;
without it, or while Redis is away, this process spaces its own IDENTIFYs.
"""

from __future__ import annotations

import asyncio
import logging
import time

import discord

from search.shared import RedisUnavailable, SharedRedis

log = logging.getLogger(__name__)

IDENTIFY_INTERVAL = 5.0  # seconds between two IDENTIFYs of one bucket (Discord)
MAX_TURN_WAIT = 120.0  # after this, IDENTIFY anyway: Discord's op 9 is the worst outcome


class IdentifyTurns:
    def __init__(self, client: discord.AutoShardedClient, shared: SharedRedis | None) -> None:
        self.client = client
        self.shared = shared
        self._concurrency: int | None = None
        self._last: dict[int, float] = {}  # bucket -> when this process last IDENTIFYed

    async def max_concurrency(self) -> int:
        if self._concurrency is None:
            try:
                limits = await self.client.fetch_session_start_limits()
                self._concurrency = max(1, min(int(limits.max_concurrency), 1024))
            except (discord.HTTPException, discord.GatewayNotFound, OSError, ValueError,
                    KeyError, TypeError) as e:
                log.warning("could not read max_concurrency from /gateway/bot (%s); "
                            "IDENTIFYing one shard at a time", type(e).__name__)
                return 1
        return self._concurrency

    async def wait(self, shard_id: int | None) -> None:
        """Return when ``shard_id`` may IDENTIFY."""
        bucket = (shard_id or 0) % await self.max_concurrency()
        deadline = time.monotonic() + MAX_TURN_WAIT
        if self.shared is not None:
            try:
                await self._redis_turn(bucket, deadline)
                self._last[bucket] = time.monotonic()
                return
            except RedisUnavailable:
                log.info("shard %s: Redis is away; spacing IDENTIFYs in this process only",
                         shard_id)
        last = self._last.get(bucket)
        if last is not None:
            await asyncio.sleep(max(0.0, last + IDENTIFY_INTERVAL - time.monotonic()))
        self._last[bucket] = time.monotonic()

    async def _redis_turn(self, bucket: int, deadline: float) -> None:
        shared = self.shared
        assert shared is not None
        key = shared.key("identify", bucket)
        while True:
            got = await shared.call(lambda: shared.client.set(
                key, shared.instance, nx=True, px=int(IDENTIFY_INTERVAL * 1000)))
            if got:
                return
            left_ms = await shared.call(lambda: shared.client.pttl(key))
            if time.monotonic() > deadline:
                log.warning("IDENTIFY bucket %d stayed taken for %.0f s; going ahead", bucket,
                            MAX_TURN_WAIT)
                return
            await asyncio.sleep(min(IDENTIFY_INTERVAL, max(0.05, (left_ms or 50) / 1000)))
