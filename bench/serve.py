"""A thin bot beside the in-process one: ``python -m bench.serve``.

In the same run, against the fake Discord and the fake Pixabay (``--latency-ms`` added to
every request), with one ``python -m search.serve`` service on loopback:

- a bot process with the encoder in-process, and one with ``INFERENCE_URL``: each one's
  resident memory once online (and its peak), and its time from start to online;
- the member's wait for a cold query (a new tag: API, downloads, encode) and a warm one
  (a new phrase on that tag) through each, from the slash command to the final page
  (the bot adds its reactions only then: Discord's round trips included);
- the engine's own cold and warm query times (``timings.total``) through the CLI, and
  the CLI's whole process.

Each mode runs ``--rounds`` times on a fresh ``DATA_DIR``; medians are reported and
everything is written to ``bench/results/serve-*.json``. ``--model`` and
``--random-weights`` choose the model (default: the project's tiny test model, whose
encode is trivial, so the service's transport is what the ratio shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.fakes.discord import FakeDiscord
from bench.fakes.pixabay import FakePixabay, default_catalogue
from bench.measure import median

ROOT = Path(__file__).resolve().parent.parent
TINY = f"local-dir:{ROOT / 'tests' / 'fixtures' / 'tiny-clip'}"
PHRASES = ("a red circle on snow", "a blue circle on grass", "a green circle at night")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_mb(pid: int, field: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def start_service(env: dict[str, str], args: argparse.Namespace
                        ) -> tuple[asyncio.subprocess.Process, str, float]:
    port = free_port()
    cmd = [sys.executable, "-m", "search.serve"]
    if args.random_weights:
        cmd.append("--random-weights")
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, env={**env, "SERVE_PORT": str(port), "SERVE_HOST": "127.0.0.1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 600)
        if not line:
            raise SystemExit("bench.serve: the service did not start")
        if line.startswith(b"serving "):
            break
    asyncio.ensure_future(_drain(proc))
    return proc, f"http://127.0.0.1:{port}", time.perf_counter() - t0


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


async def one_round(mode: str, base_env: dict[str, str], pixabay: FakePixabay, tmp: Path,
                    url: str, k: int) -> dict:
    from bot.embeds import NEXT

    fake = FakeDiscord()
    await fake.start()
    try:
        env = {**base_env, "DISCORD_TOKEN": fake.token, "DISCORD_GUILD_ID": str(fake.guild_id),
               "DISCORD_API_BASE": fake.api_base, "DISCORD_GATEWAY_URL": fake.gateway_url,
               "DATA_DIR": str(tmp / f"{mode}-{k}"), "RESULTS_LAYOUT": "list"}
        if mode == "service":
            env["INFERENCE_URL"] = url
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", env=env, cwd=tmp, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            await fake.wait_for(lambda: fake.connected and fake.guild_id in fake.synced_commands,
                                600, what="the bot to come online")
            online = time.perf_counter() - t0
            rss_online = status_mb(proc.pid, "VmRSS")
            waits = []
            for phrase in PHRASES:
                tag = "circle"
                t1 = time.perf_counter()
                inter = await fake.invoke("findimage", {"tag": tag, "phrase": phrase})
                reply = await inter.wait_followup(1, timeout=600)
                await fake.wait_for(
                    lambda r=reply: (NEXT, fake.bot_user_id) in fake.reactions.get(r.id, set()),
                    600, what="the final page")
                waits.append((time.perf_counter() - t1) * 1000.0)
            peak = status_mb(proc.pid, "VmHWM")
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
    finally:
        await fake.close()
    return {"online_s": online, "rss_online_mb": rss_online, "peak_rss_mb": peak,
            "cold_ms": waits[0], "warm_ms": median(waits[1:])}


async def cli_round(mode: str, base_env: dict[str, str], tmp: Path, url: str, k: int) -> dict:
    """The engine's own figures through the CLI: a cold query (a fresh DATA_DIR) and a warm
    one (a new phrase on that tag), each as ``timings.total`` and as a whole process."""
    env = {**base_env, "DATA_DIR": str(tmp / f"cli-{mode}-{k}")}
    if mode == "service":
        env["INFERENCE_URL"] = url
    out: dict[str, float] = {}
    for name, phrase in (("cold", PHRASES[0]), ("warm", PHRASES[1])):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "search", "circle", phrase, "--json", env=env, cwd=tmp,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 900)
        if proc.returncode != 0:
            raise SystemExit(f"bench.serve: the CLI failed: {stderr.decode()[-500:]}")
        out[f"cli_{name}_query_ms"] = json.loads(stdout)["timings"]["total"]
        out[f"cli_{name}_process_s"] = time.perf_counter() - t0
    return out


async def main_async(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    ray_tmp = tempfile.mkdtemp(prefix="fi-ray-", dir="/tmp")
    async with FakePixabay(default_catalogue(args.per_scene), rate_limit=10**9) as pixabay:
        pixabay.latency = args.latency_ms / 1000.0
        base_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "PIXABAY_API_URL": pixabay.api_url,
                    "PIXABAY_API_KEY": pixabay.key, "IMAGE_HOSTS": "127.0.0.1",
                    "CLIP_MODEL": args.model, "CLIP_DEVICE": args.device,
                    "CLIP_BACKEND": args.backend,
                    "SEARCH_CANDIDATES": str(args.candidates), "USER_COOLDOWN_SECONDS": "0",
                    "RAY_TMPDIR": ray_tmp}
        if args.pretrained:
            base_env["CLIP_PRETRAINED"] = args.pretrained
        service, url, service_start = await start_service(
            {**base_env, "DATA_DIR": str(tmp / "service")}, args)
        try:
            rounds: dict[str, list[dict]] = {"in-process": [], "service": []}
            for k in range(args.rounds):
                for mode in rounds:  # alternate, so a load change hits both alike
                    pixabay.reset_counters()
                    got = await one_round(mode, base_env, pixabay, tmp, url, k)
                    got.update(await cli_round(mode, base_env, tmp, url, k))
                    rounds[mode].append(got)
                    print(f"{mode:10} round {k + 1}: {json.dumps(rounds[mode][-1])}",
                          flush=True)
        finally:
            os.killpg(service.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(service.wait(), 60)
            except TimeoutError:
                os.killpg(service.pid, signal.SIGKILL)
    summary = {mode: {key: median(r[key] for r in runs) for key in runs[0]}
               for mode, runs in rounds.items()}
    here, thin = summary["in-process"], summary["service"]
    summary["ratios"] = {
        "cold_service_vs_in_process": thin["cold_ms"] / here["cold_ms"],
        "warm_service_vs_in_process": thin["warm_ms"] / here["warm_ms"],
        "cli_cold_query_service_vs_in_process": (thin["cli_cold_query_ms"]
                                                 / here["cli_cold_query_ms"]),
        "rss_service_vs_in_process": thin["rss_online_mb"] / here["rss_online_mb"],
    }
    summary["goals"] = {
        "thin_rss_le_200mb": thin["rss_online_mb"] <= 200,
        "thin_online_le_3s": thin["online_s"] <= 3.0,
        "cold_within_15pct": thin["cli_cold_query_ms"] <= 1.15 * here["cli_cold_query_ms"],
        "warm_le_30ms": thin["cli_warm_query_ms"] <= 30.0,
    }
    return {"model": args.model, "rounds": rounds, "summary": summary,
            "service_start_s": service_start, "latency_ms": args.latency_ms,
            "candidates": args.candidates, "load_average": os.getloadavg(),
            "cpu_cores": len(os.sched_getaffinity(0)), "when": time.strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=TINY)
    p.add_argument("--pretrained", default=None)
    p.add_argument("--random-weights", action="store_true",
                   help="seeded random weights for a zoo model (speed only; rankings are noise)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch",
                   help="CLIP_BACKEND for both (torch: no ONNX export on each fresh DATA_DIR)")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--per-scene", type=int, default=10)
    p.add_argument("--latency-ms", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    result = asyncio.run(main_async(args))
    print(json.dumps(result["summary"], indent=2))
    out = args.out or ROOT / "bench" / "results" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
