"""Scale-out: 1 and then 2 real bot processes against the fakes, in the same run.

    .venv/bin/python -m bench.scale                      # 2-5 minutes on a loaded 2-core VM
    .venv/bin/python -m bench.scale --members 8 --searches 96 --model local-dir:...

Each configuration starts ``python -m bot`` processes (one running both shards, then two
with one shard each, SHARD_COUNT=2) against a fake Discord with a guild on each shard and
a fake Pixabay that keeps Pixabay's documented 100 requests per 60 s, all sharing one
Redis (REDIS_URL, a key prefix per configuration) and each its own fresh DATA_DIR. Then
``--members`` members search at once, ``--searches`` searches in all on distinct tags
(every one a cold API request and downloads), spread evenly over both guilds.

Reported per configuration: searches per minute (searches / wall time), p50 / p95
latency (the command sent to its final answer: the results' reactions, or a sentence),
the most Pixabay requests in any 60 s window (the key's budget is shared through
Redis, so it is never above 100 whatever the process count), answers refused by the
rate limit, and each process's RSS (now and peak). The model is the tiny test model by
default (``--model``): the figures are the scale-out machinery's, not the encoder's
(see docs/scaling.md for the capacity arithmetic with the real model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = f"local-dir:{ROOT / 'tests' / 'fixtures' / 'tiny-clip'}"
REACTIONS = ("◀️", "▶️")


def tags(n: int) -> list[str]:
    """``n`` distinct tags that each find photos in the fake's catalogue."""
    from bench.fakes.scenes import BACKGROUNDS, COLOURS, SHAPES

    found = [f"{s} {c}" for s in SHAPES for c in COLOURS]
    found += [f"{s} {c} {b}" for s in SHAPES for c in COLOURS for b in BACKGROUNDS]
    if n > len(found):
        raise SystemExit(f"--searches is at most {len(found)} (distinct tags with photos)")
    return found[:n]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return round(fields.get("VmRSS", 0.0), 1), round(fields.get("VmHWM", 0.0), 1)


async def configuration(processes: int, args, work: Path) -> dict:
    from bench.fakes.discord import FakeDiscord
    from bench.fakes.pixabay import FakePixabay, default_catalogue

    discord = FakeDiscord(shards=2, guilds=2, max_concurrency=2)
    await discord.start()
    pixabay = FakePixabay(default_catalogue(args.per_scene))  # 100 requests / 60 s per key
    await pixabay.start()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    shard_sets = ["0,1"] if processes == 1 else ["0", "1"]
    procs, logs = [], []
    try:
        for i, ids in enumerate(shard_sets):
            env = {
                "PATH": "/usr/bin:/bin", "DISCORD_TOKEN": discord.token,
                "DISCORD_API_BASE": discord.api_base, "DISCORD_GATEWAY_URL": discord.gateway_url,
                "PIXABAY_API_URL": pixabay.api_url, "PIXABAY_API_KEY": pixabay.key,
                "IMAGE_HOSTS": "127.0.0.1", "CLIP_MODEL": args.model, "CLIP_DEVICE": "cpu",
                "DATA_DIR": str(work / f"p{processes}-{i}"), "USER_COOLDOWN_SECONDS": "0",
                "SEARCH_CANDIDATES": str(args.candidates), "RESULTS_LAYOUT": "list",
                "MAX_CONCURRENT_SEARCHES": str(args.members), "LOG_LEVEL": "WARNING",
                "SHARD_COUNT": "2", "SHARD_IDS": ids, "REDIS_URL": args.redis,
                "REDIS_KEY_PREFIX": prefix,
            }
            if args.model == TINY:
                env["CLIP_BACKEND"] = "torch"  # the tiny model is not exported to ONNX here
            log = (work / f"p{processes}-{i}.log").open("wb")
            logs.append(log)
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", cwd=ROOT, env=env, stdout=log, stderr=log))
        t0 = time.monotonic()
        await discord.wait_for(lambda: discord.connected_shards() == {0, 1}
                               and None in discord.synced_commands, 600,
                               what="the bot processes to come online")
        start_s = time.monotonic() - t0
        pixabay.reset_counters()
        gate = asyncio.Semaphore(args.members)
        users = ("alice", "bob", "admin", "owner")
        latencies: list[float] = []
        refused = busy = unanswered = 0

        async def one(i: int, tag: str) -> None:
            nonlocal refused, busy, unanswered
            async with gate:
                sent = time.monotonic()
                inter = await discord.invoke(
                    "findimage", {"tag": tag, "phrase": f"a photo of a {tag}"},
                    user=users[i % len(users)], channel=("general", "general@1")[i % 2])
                # the answer: a followup (results or a sentence), or an immediate sentence
                try:
                    await discord.wait_for(lambda: inter.followups or any(
                        c["type"] == 4 for c in inter.callbacks), 120,
                        what=f"an answer to search {i} ({tag})")
                except TimeoutError:
                    unanswered += 1  # reported, and the logs kept with --logs
                    return
                if not inter.followups:
                    busy += 1
                    latencies.append(time.monotonic() - sent)
                    return
                reply = inter.followups[0]
                if reply.ephemeral:
                    refused += "rate limit" in reply.content
                else:
                    want = {(e, discord.bot_user_id) for e in REACTIONS}
                    await discord.wait_for(
                        lambda: want <= discord.reactions.get(reply.id, set()), 300,
                        what="the results' reactions")
                latencies.append(time.monotonic() - sent)

        started = time.monotonic()
        await asyncio.gather(*(one(i, tag) for i, tag in enumerate(tags(args.searches))))
        wall = time.monotonic() - started
        rss = [rss_mb(p.pid) for p in procs]
        latencies.sort()
        return {
            "processes": processes, "members": args.members, "searches": args.searches,
            "start_s": round(start_s, 1), "wall_s": round(wall, 1),
            "searches_per_minute": round(args.searches / wall * 60, 1),
            "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(latencies[max(0, int(len(latencies) * 0.95 + 0.5) - 1)], 2),
            "api_requests": pixabay.api_requests,
            "most_api_requests_in_60s": pixabay.most_in_window(60.0),
            "image_requests": pixabay.image_requests, "rate_limited": refused, "busy": busy,
            "unanswered": unanswered,
            "rss_mb": [r[0] for r in rss], "peak_rss_mb": [r[1] for r in rss],
        }
    finally:
        await stop_processes(procs)
        for log in logs:
            log.close()
        await pixabay.close()
        await discord.close()


async def stop_processes(procs: list[asyncio.subprocess.Process], grace: float = 60.0) -> None:
    """SIGTERM every bot process still running, then wait; SIGKILL one that outlives
    ``grace`` seconds (the tests' sharded bots stop the same way)."""
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), grace)
        except TimeoutError:
            p.kill()
            await p.wait()


def table(rows: list[dict]) -> str:
    head = ("procs", "searches/min", "p50 s", "p95 s", "API req", "max/60s", "limited",
            "unanswered", "RSS MB (peak)", "wall s")
    lines = ["  ".join(f"{h:>13}" for h in head)]
    for r in rows:
        rss = ", ".join(f"{a:.0f} ({b:.0f})" for a, b in zip(r["rss_mb"], r["peak_rss_mb"], strict=True))
        cells = (r["processes"], r["searches_per_minute"], r["p50_s"], r["p95_s"],
                 r["api_requests"], r["most_api_requests_in_60s"], r["rate_limited"],
                 r["unanswered"], rss, r["wall_s"])
        lines.append("  ".join(f"{c!s:>13}" for c in cells))
    return "\n".join(lines)


async def render_ahead(per_scene: int) -> int:
    """Draw every photo once, so neither configuration times the fake's drawing (its
    renders are cached per process, and the second configuration would find them)."""
    import aiohttp

    import bench.fakes.pixabay as fake_module
    from bench.fakes.pixabay import FakePixabay, default_catalogue

    fake_module._CACHE_BUDGET = max(fake_module._CACHE_BUDGET, 1 << 30)
    async with FakePixabay(default_catalogue(per_scene)) as fake, aiohttp.ClientSession() as s:
        for entry in fake.entries:
            async with s.get(fake.image_url(entry.id, size=340)) as resp:
                await resp.read()
        return len(fake.entries)


async def main_async(args) -> dict:
    from tests.redis_server import redis_answers

    if not redis_answers(args.redis):
        raise SystemExit(f"error: Redis does not answer at {args.redis}; start it (.ci/run "
                         "shows how) or pass --redis URL.")
    await render_ahead(args.per_scene)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = args.logs or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [await configuration(n, args, work) for n in args.processes]
    return {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end",
            "model": args.model, "per_scene": args.per_scene, "candidates": args.candidates,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=4, help="members searching at once")
    p.add_argument("--searches", type=int, default=110,
                   help="searches per configuration (past 100 the shared key budget shows)")
    p.add_argument("--candidates", type=int, default=24, help="SEARCH_CANDIDATES")
    p.add_argument("--per-scene", type=int, default=3, help="photos per scene in the fake")
    p.add_argument("--model", default=TINY, help="CLIP_MODEL of the bot processes")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    p.add_argument("--logs", type=Path, help="keep the processes' DATA_DIRs and logs here")
    p.add_argument("--processes", type=lambda v: [int(x) for x in v.split(",")],
                   default=[1, 2], help="the configurations, e.g. 1,2")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    report = asyncio.run(main_async(args))
    report["total_s"] = round(time.monotonic() - t0, 1)
    print(table(report["rows"]))
    print(f"{report['machine']}; model {args.model.rsplit('/', 1)[-1]}; {args.members} members"
          f", {args.searches} searches a configuration; {report['total_s']} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
