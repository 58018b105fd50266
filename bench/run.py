"""Scenarios, goals, the table and the JSON file; ``python -m bench --help``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import torch

from bench.baseline import seed_style
from bench.measure import (
    StallMeter,
    machine,
    median,
    median_stages,
    peak_gpu_mb,
    peak_rss_mb,
    reset_peak_gpu,
    reset_peak_rss,
    rss_anon_mb,
    rss_mb,
)
from search.clip import ClipEncoder, load_model, resolve_device
from search.config import Settings
from search.errors import ConfigError, ImageSkipped, SearchError
from search.images import ImageFetcher, check_url
from search.models import Filters
from search.service import DOWNLOADS_IN_FLIGHT, SearchService
from search.sources import rank_url
from search.sources.pixabay import hit_from_api
from search.tuning import freeze_heap, tune_process

PROVISIONAL_AFTER = 1.5  # bot.cogs.findimage.FindImage.provisional_after (no Discord import)

ROOT = Path(__file__).resolve().parent.parent
TINY_CLIP = f"local-dir:{ROOT / 'tests' / 'fixtures' / 'tiny-clip'}"
COLD_TAG = "circle"
SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
COLOURS = ("red", "blue", "yellow", "green", "purple", "orange")
BACKGROUNDS = ("snow", "grass", "sand", "night")
STAGES = ("api", "download", "decode", "encode", "rank", "total")
SCENARIOS = ("baseline", "cold", "warm", "downloaded", "concurrent", "concurrent-downloaded",
             "encoder", "cold-torch", "fresh-cold", "fresh-warm")
PAGE = 5  # the bot's default page: a provisional page needs this many ranked

GOALS = {
    "P1": "GPU, 200 downloaded candidates, decode through scores: <= 30 ms on H100/H200 "
          "and >= 60x the baseline",
    "P2": "GPU cold query, 200 candidates, 30 ms a request: <= 400 ms steady; the first "
          "query of a fresh process <= 500 ms",
    "P3": "CPU warm query: <= 30 ms p50",
    "P4": "CPU cold query vs the seed-style baseline, same run: >= 3x at the default "
          "precision; >= 4x with int8",
    "P5": "largest event-loop stall during a cold query: <= 20 ms",
    "P6": "CPU cold query: time to the first provisional page <= 4 s on 2 cores",
    "P7": "memory, ViT-B-32 serving: CPU RSS <= 1.2 GB; CUDA RSS <= 1.5 GB and GPU <= 1 GB",
    "P8": "CLI warm query, whole process, ViT-B-32, 2 cores: <= 5 s",
}


@dataclass
class Options:
    model: str = "ViT-B-32"
    device: str = "auto"
    candidates: int = 200
    latency_ms: float = 30.0
    runs: int = 3
    baseline_runs: int = 2
    warm_queries: int = 5
    concurrent: int = 20
    concurrent_candidates: int | None = None
    threads: int | None = None
    max_batch: int | None = None
    fetch_concurrency: int | None = None
    backend: str = "auto"
    precision: str = "auto"
    scenarios: tuple[str, ...] = SCENARIOS
    out: Path | None = None
    quick: bool = False


@dataclass
class Results:
    options: dict
    machine: dict = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    scenarios: dict = field(default_factory=dict)
    goals: list = field(default_factory=list)


def parse(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark SearchService against a fake Pixabay on loopback, beside a "
                    "seed-style baseline (sequential downloads, PIL, batch-1 fp32).")
    p.add_argument("--model", help="open_clip name (random weights) or local-dir:PATH "
                   "[ViT-B-32; --quick: tiny-clip]")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N [CLIP_DEVICE, else auto]")
    p.add_argument("--candidates", type=int, help="candidates per cold query [200; quick 24]")
    p.add_argument("--latency-ms", type=float, help="added to every fake request [30; quick 5]")
    p.add_argument("--runs", type=int, help="runs of each scenario [3; quick 1]")
    p.add_argument("--baseline-runs", type=int, help="runs of the baseline [2; quick 1]")
    p.add_argument("--warm-queries", type=int, help="warm queries per run [5; quick 3]")
    p.add_argument("--concurrent", type=int, help="concurrent queries, distinct tags [20]")
    p.add_argument("--concurrent-candidates", type=int,
                   help="candidates per concurrent query [200 on CUDA, 10 on CPU; quick 4]")
    p.add_argument("--threads", type=int, help="encoder intra-op threads [ClipEncoder's default]")
    p.add_argument("--max-batch", type=int, help="encoder micro-batch bound [ClipEncoder's]")
    p.add_argument("--fetch-concurrency", type=int,
                   help="what-if: downloads in flight per query and connections per host "
                        "[the product's defaults]")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"),
                   help="CLIP_BACKEND for the product's encoder [auto]")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"),
                   help="CLIP_PRECISION for the product's encoder [auto]")
    p.add_argument("--scenarios", help=f"comma list of {','.join(SCENARIOS)} [all]")
    p.add_argument("--out", type=Path, help="JSON file [bench/results/bench-<time>-<device>.json]")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, few candidates, one run, 5 ms latency: a smoke test")
    a = p.parse_args(argv)
    o = Options(quick=a.quick)
    if a.quick:
        o.model, o.candidates, o.latency_ms = TINY_CLIP, 24, 5.0
        o.runs, o.baseline_runs, o.warm_queries, o.concurrent_candidates = 1, 1, 3, 4
    for name in ("model", "device", "candidates", "latency_ms", "runs", "baseline_runs",
                 "warm_queries", "concurrent", "concurrent_candidates", "threads", "max_batch",
                 "fetch_concurrency", "backend", "precision", "out"):
        value = getattr(a, name)
        if value is not None:
            setattr(o, name, value)
    if a.device is None:
        try:
            o.device = Settings.load().clip_device
        except ConfigError as e:
            p.error(str(e))
    if a.scenarios:
        chosen = tuple(s.strip() for s in a.scenarios.split(",") if s.strip())
        unknown = set(chosen) - set(SCENARIOS)
        if unknown:
            p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
        o.scenarios = chosen
    if not 1 <= o.candidates <= 200:
        p.error("--candidates must be from 1 to 200")
    if o.concurrent > len(COLOURS) * len(BACKGROUNDS) + len(SHAPES) * len(COLOURS):
        p.error("--concurrent is larger than the distinct tags the fake catalogue has")
    return o


def phrases():
    """An endless supply of distinct phrases, so the text cache never answers."""
    forms = ("a {c} {s} on {b}", "a photo of a {c} {s} on {b}", "{c} {s} on {b}",
             "a {c} {s} on a {b} background", "{c} {s} {b}")
    for n in itertools.count():
        for form, c, s, b in itertools.product(forms, COLOURS, SHAPES, BACKGROUNDS):
            yield form.format(c=c, s=s, b=b) + ("" if n == 0 else f" {n}")


def concurrent_tags(n: int) -> list[str]:
    """Distinct two-word tags: colour+background first (more photos each), then shape+colour."""
    tags = [f"{c} {b}" for c in COLOURS for b in BACKGROUNDS]
    tags += [f"{s} {c}" for s in SHAPES for c in COLOURS]
    return tags[:n]


class MemoryFetcher(ImageFetcher):
    """Serves bytes downloaded before: the path after the download, without the network."""

    def __init__(self, blobs: Mapping[str, bytes], session: aiohttp.ClientSession,
                 hosts: tuple[str, ...]) -> None:
        super().__init__(session, hosts)
        self.blobs = blobs

    async def fetch(self, url: str, *, max_bytes: int | None = None) -> bytes:
        check_url(url, self.hosts)
        try:
            return self.blobs[url]
        except KeyError:
            raise ImageSkipped("http 404") from None

    @contextlib.asynccontextmanager
    async def held(self, url: str):
        yield await self.fetch(url)


class FakeProcess:
    """``bench.fakeserver`` in a child process; ``api_url`` and ``key`` once it listens."""

    def __init__(self, latency_ms: float, per_scene: int) -> None:
        self.args = ["-m", "bench.fakeserver", "--latency-ms", str(latency_ms),
                     "--per-scene", str(per_scene)]
        self.proc: asyncio.subprocess.Process | None = None
        self.api_url = self.key = ""

    async def __aenter__(self) -> FakeProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError("the fake Pixabay did not start; see its error above")
        info = json.loads(line)
        self.api_url, self.key = info["api_url"], info["key"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.stdin.close()  # the fake serves until its stdin closes
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Bench:
    def __init__(self, o: Options, fake: FakeProcess, encoder: ClipEncoder,
                 session: aiohttp.ClientSession, scratch: Path) -> None:
        self.o = o
        self.fake = fake
        self.encoder = encoder
        self.session = session
        self.scratch = scratch
        self.phrases = phrases()
        self.blobs: dict[str, bytes] = {}
        self.cold_ids: list[int] = []
        self._dirs = itertools.count()
        self._baseline_model: torch.nn.Module | None = None
        self.settings = Settings.from_mapping({
            "PIXABAY_API_URL": fake.api_url, "PIXABAY_API_KEY": fake.key,
            "IMAGE_HOSTS": "127.0.0.1", "CLIP_DEVICE": "cpu",
        }).replace(clip_model=o.model, clip_pretrained=None, clip_device=encoder.device)

    def fresh_settings(self) -> Settings:
        """Settings with an empty DATA_DIR: no API cache, no embedding cache."""
        return self.settings.replace(data_dir=self.scratch / f"data-{next(self._dirs)}")

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.settings.image_hosts

    async def prime(self, tags: list[str], counts: list[int]) -> None:
        """Download every image the scenarios use, once: it fills the fake's render cache
        and gives the ``downloaded`` scenarios their bytes."""
        fetcher = ImageFetcher(self.session, self.hosts)
        for tag, count in zip(tags, counts, strict=True):
            params = {"key": self.fake.key, "q": tag, **Filters().params(), "page": "1",
                      "per_page": "200"}
            async with self.session.get(self.fake.api_url, params=params) as resp:
                body = await resp.json()
            hits = [hit_from_api(raw) for raw in body["hits"]][:count]
            if len(hits) < count:
                raise SystemExit(f"bench: the fake has {len(hits)} photos for '{tag}', "
                                 f"fewer than {count}")
            urls = [rank_url(h, self.settings.image_variant) for h in hits]
            datas = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
            self.blobs.update(zip(urls, datas, strict=True))
            if tag == COLD_TAG:
                self.cold_ids = [h.id for h in hits]

    # -- scenarios ------------------------------------------------------------------
    async def _find(self, svc: SearchService, tag: str, candidates: int) -> dict:
        first_page: list[float] = []

        def on_partial(partial) -> None:
            if not first_page and partial.ranked >= min(PAGE, partial.total):
                first_page.append(time.perf_counter())

        t0 = time.perf_counter()
        result = await svc.find(tag, next(self.phrases), candidates=candidates,
                                partial=on_partial)
        t1 = time.perf_counter()
        row = {k: result.timings.get(k, 0.0) for k in STAGES}
        row.update(wall=(t1 - t0) * 1000.0, images=result.downloaded,
                   candidates=result.candidates, started=t0, ended=t1)
        # What the bot shows first: the provisional page (never before its delay), or
        # the final one when that comes sooner.
        shown = t1 if not first_page else min(t1, max(first_page[0],
                                                      t0 + PROVISIONAL_AFTER))
        row["first_page_ms"] = (shown - t0) * 1000.0
        return row

    def _memory(self, row: dict) -> dict:
        row["peak_rss_mb"] = peak_rss_mb()
        gpu = peak_gpu_mb(self.encoder.device)
        if gpu is not None:
            row["peak_gpu_mb"] = gpu
        return row

    def _reset_memory(self) -> None:
        reset_peak_rss()
        reset_peak_gpu(self.encoder.device)

    async def cold_and_warm(self, warm: bool) -> tuple[dict, list[dict]]:
        async with self.service() as svc:
            self._reset_memory()
            async with StallMeter() as meter:
                cold = await self._find(svc, COLD_TAG, self.o.candidates)
            cold["stall_ms"] = meter.worst_ms
            self._memory(cold)
            rows = []
            for _ in range(self.o.warm_queries if warm else 0):
                async with StallMeter() as meter:
                    row = await self._find(svc, COLD_TAG, self.o.candidates)
                row["stall_ms"] = meter.worst_ms
                rows.append(self._memory(row))
        return cold, rows

    @contextlib.asynccontextmanager
    async def service(self, *, from_memory: bool = False):
        """A SearchService as the product opens it, on empty caches.

        ``from_memory``: images come from the bytes primed before, not the network.
        """
        session = self.session if self.o.fetch_concurrency else None
        async with SearchService.open(self.fresh_settings(), session=session,
                                      encoder=self.encoder) as svc:
            swapped = None
            if from_memory:
                swapped = MemoryFetcher(self.blobs, svc.fetcher.session, self.hosts)
            elif self.o.fetch_concurrency:
                swapped = ImageFetcher(svc.fetcher.session, self.hosts,
                                       concurrency=self.o.fetch_concurrency)
            if swapped is not None:
                svc.fetcher = swapped
            yield svc

    async def downloaded(self) -> dict:
        """Decode through scores for candidates already downloaded (P1)."""
        async with self.service(from_memory=True) as svc:
            self._reset_memory()
            async with StallMeter() as meter:
                row = await self._find(svc, COLD_TAG, self.o.candidates)
        row["stall_ms"] = meter.worst_ms
        row["through_scores"] = row["total"] - row["api"] - row["download"]
        return self._memory(row)

    async def concurrent(self, from_memory: bool) -> dict:
        tags = concurrent_tags(self.o.concurrent)
        async with self.service(from_memory=from_memory) as svc:
            self._reset_memory()
            t0 = time.perf_counter()
            async with StallMeter() as meter:
                rows = await asyncio.gather(*(
                    self._find(svc, tag, self.o.concurrent_candidates) for tag in tags))
            wall = (time.perf_counter() - t0) * 1000.0
        images = sum(r["images"] for r in rows)
        # The encode phase: from the first query past its API call to the last answer.
        phase = max(r["ended"] for r in rows) - min(r["started"] + r["api"] / 1000.0
                                                      for r in rows)
        out = {f"query_{k}": v for k, v in median_stages(
            [{k: r[k] for k in STAGES} for r in rows]).items()}
        out.update(wall=wall, images=images, queries=len(rows), stall_ms=meter.worst_ms,
                   images_per_s=images / max(phase, 1e-9))
        return self._memory(out)

    async def encoder_alone(self) -> dict:
        """The encoder on preprocessed pixels already on its device: images per second."""
        n = self.o.candidates
        pixels = torch.randn((n, 3, *self.encoder.image_size), device=self.encoder.device,
                             dtype=self.encoder.dtype)
        self._reset_memory()
        await self.encoder.encode_images(pixels[:min(n, 8)])  # shapes the worker has not seen
        t0 = time.perf_counter()
        _, _ = await self.encoder.encode_images(pixels)
        seconds = time.perf_counter() - t0
        return self._memory({"total": seconds * 1000.0, "images": n, "images_per_s": n / seconds})

    async def cold_torch(self) -> dict:
        """The cold query again with torch fp32 serving, beside the default backend's."""
        torch_encoder = ClipEncoder(self.o.model, None, "cpu", threads=self.o.threads,
                                    max_batch=self.o.max_batch, backend="torch",
                                    random_weights=not self.o.model.startswith("local-dir:"))
        async with torch_encoder:
            saved, self.encoder = self.encoder, torch_encoder
            try:
                row, _ = await self.cold_and_warm(False)
            finally:
                self.encoder = saved
        return row

    async def fresh(self, data_dir: Path, *, until_onnx: bool = False) -> dict:
        """One query in a new process (``bench.fresh``), timed from its start to its exit;
        ``until_onnx``: it stays until the export beside it serves (a first start)."""
        o = self.o
        args = ["-m", "bench.fresh", "--model", o.model, "--device", self.encoder.device,
                "--backend", o.backend, "--precision", o.precision, "--api-url",
                self.fake.api_url, "--key", self.fake.key, "--tag", COLD_TAG, "--phrase",
                next(self.phrases), "--data-dir", str(data_dir), "--candidates",
                str(o.candidates), *(["--until-onnx"] if until_onnx else [])]
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        wall = (time.perf_counter() - t0) * 1000.0
        if proc.returncode != 0:
            raise SystemExit(f"bench: the fresh process failed: {err.decode()[-2000:]}")
        child = json.loads(out.decode().strip().splitlines()[-1])
        row = {k: child["timings"].get(k, 0.0) for k in STAGES}
        row.update(process_ms=wall, query_ms=child["query_ms"],
                   before_query_s=child["before_query_s"], open_s=child["open_s"],
                   import_torch_s=child["import_torch_s"],
                   import_search_s=child["import_search_s"], images=child["downloaded"],
                   peak_rss_mb=child["peak_rss_mb"], rss_end_mb=child["rss_mb"])
        return row

    async def baseline(self) -> dict:
        enc = self.encoder
        if self._baseline_model is None:
            if enc.model is None:  # ONNX Runtime serves and torch's copy was freed
                loaded = await asyncio.to_thread(
                    load_model, self.o.model, None, "cpu",
                    random_weights=not self.o.model.startswith("local-dir:"))
                self._baseline_model = loaded.model
            else:
                # The seed ran float32; on CUDA the product's model is half, so copy it.
                self._baseline_model = (enc.model if enc.dtype == torch.float32 else
                                        await asyncio.to_thread(
                                            lambda: copy.deepcopy(enc.model).float()))
        row = await asyncio.to_thread(
            seed_style, api_url=self.fake.api_url, key=self.fake.key, tag=COLD_TAG,
            phrase=next(self.phrases), candidates=self.o.candidates,
            variant=self.settings.image_variant, model=self._baseline_model,
            preprocess=enc.preprocess, tokenizer=enc.tokenizer, device=enc.device,
            threads=enc.threads)
        row["same_images"] = sorted(row.pop("ranking")) == sorted(self.cold_ids)
        row["through_scores"] = row["decode"] + row["encode"] + row["rank"]
        return row


# -- the whole run ------------------------------------------------------------------
async def run(o: Options) -> Results:
    tune_process()  # as the product's entry points do
    device = resolve_device(o.device)
    if o.concurrent_candidates is None:
        o.concurrent_candidates = 200 if device.startswith("cuda") else 10
    if o.model.startswith("local-dir:") and not (
            ROOT / o.model[len("local-dir:"):] / "open_clip_config.json").is_file() and not (
            Path(o.model[len("local-dir:"):]) / "open_clip_config.json").is_file():
        raise SystemExit(f"bench: {o.model} has no open_clip_config.json "
                         "(for the tiny model: make tiny-clip)")
    res = Results(options={k: (str(v) if isinstance(v, Path) else v)
                           for k, v in asdict(o).items()})
    res.machine = machine(device)
    # 6 shapes x per_scene photos for each colour+background tag, after safesearch.
    per_scene = max(10, -(-int(o.concurrent_candidates / 0.95) // len(SHAPES)) + 1)
    log(f"starting the fake (latency {o.latency_ms:g} ms) and loading {o.model} on {device}")
    rss_before = rss_mb()
    async with FakeProcess(o.latency_ms, per_scene) as fake:
        encoder = ClipEncoder(o.model, None, device, threads=o.threads, max_batch=o.max_batch,
                              backend=o.backend, precision=o.precision,
                              random_weights=not o.model.startswith("local-dir:"),
                              export="wait")  # measure what serves once the export is done
        t0 = time.perf_counter()
        async with encoder:
            freeze_heap()
            res.encoder = {"model": o.model, "identity": encoder.identity,
                           "device": encoder.device, "dtype": str(encoder.dtype),
                           "threads": encoder.threads or torch.get_num_threads(),
                           "max_batch": encoder.max_batch, "batch_wait_s": encoder.batch_wait,
                           "short_text": encoder.short_text,
                           "backend": encoder.backend.name,
                           "precision": encoder.backend.precision,
                           "load_s": time.perf_counter() - t0}
            res.memory = {"rss_imports_mb": rss_before, "rss_loaded_mb": rss_mb(),
                          "rss_anon_loaded_mb": rss_anon_mb(),
                          "peak_rss_load_mb": peak_rss_mb()}
            gpu = peak_gpu_mb(device)
            if gpu is not None:
                res.memory["peak_gpu_load_mb"] = gpu
                free, total = torch.cuda.mem_get_info(torch.device(device))
                # the CUDA context and nvjpeg's own buffers, which the allocator never sees
                res.memory["gpu_device_used_loaded_mb"] = (total - free) / 2**20
            per_host = o.fetch_concurrency or DOWNLOADS_IN_FLIGHT
            connector = aiohttp.TCPConnector(limit=max(64, per_host), limit_per_host=per_host)
            with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
                async with aiohttp.ClientSession(connector=connector) as session:
                    bench = Bench(o, fake, encoder, session, Path(scratch))
                    await scenarios(bench, res)
    return res


async def scenarios(bench: Bench, res: Results) -> None:
    o = bench.o
    tags, counts = [COLD_TAG], [o.candidates]
    if {"concurrent", "concurrent-downloaded"} & set(o.scenarios):
        conc = concurrent_tags(o.concurrent)
        tags += conc
        counts += [o.concurrent_candidates] * len(conc)
    log(f"priming: {sum(counts)} images for {len(tags)} tags")
    await bench.prime(tags, counts)
    runs: dict[str, list] = {s: [] for s in o.scenarios}
    for r in range(max(o.runs, o.baseline_runs if "baseline" in o.scenarios else 0)):
        if r < o.runs:
            if "cold" in o.scenarios or "warm" in o.scenarios:
                log(f"run {r + 1}/{o.runs}: cold" + (" + warm" if "warm" in o.scenarios else ""))
                cold, warm = await bench.cold_and_warm("warm" in o.scenarios)
                if "cold" in o.scenarios:
                    runs["cold"].append(cold)
                if "warm" in o.scenarios:
                    runs["warm"] += warm
            if "downloaded" in o.scenarios:
                log(f"run {r + 1}/{o.runs}: downloaded")
                runs["downloaded"].append(await bench.downloaded())
            if "concurrent" in o.scenarios:
                log(f"run {r + 1}/{o.runs}: concurrent ({o.concurrent} queries)")
                runs["concurrent"].append(await bench.concurrent(from_memory=False))
            if "concurrent-downloaded" in o.scenarios:
                log(f"run {r + 1}/{o.runs}: concurrent-downloaded")
                runs["concurrent-downloaded"].append(await bench.concurrent(from_memory=True))
            if "encoder" in o.scenarios:
                log(f"run {r + 1}/{o.runs}: encoder alone, batch {o.candidates}")
                runs["encoder"].append(await bench.encoder_alone())
        if "cold-torch" in o.scenarios and r < o.runs and bench.encoder.device == "cpu" \
                and bench.encoder.backend.name != "torch":
            log(f"run {r + 1}/{o.runs}: cold with torch fp32, beside "
                f"{bench.encoder.backend.name} {bench.encoder.backend.precision}")
            runs["cold-torch"].append(await bench.cold_torch())
        if {"fresh-cold", "fresh-warm"} & set(o.scenarios) and r < o.runs:
            data_dir = bench.scratch / f"fresh-{r}"
            if r == 0 and bench.encoder.backend.name == "onnx":
                log("fresh process: one start to export the ONNX files (not timed)")
                await bench.fresh(data_dir.with_name("fresh-export"), until_onnx=True)
                shutil.copytree(data_dir.with_name("fresh-export") / "models",
                                bench.scratch / "models-exported")
            if (bench.scratch / "models-exported").is_dir():
                shutil.copytree(bench.scratch / "models-exported", data_dir / "models")
            log(f"run {r + 1}/{o.runs}: fresh process, cold query, then warm query")
            cold_row = await bench.fresh(data_dir)
            warm_row = await bench.fresh(data_dir)
            if "fresh-cold" in o.scenarios:
                runs["fresh-cold"].append(cold_row)
            if "fresh-warm" in o.scenarios:
                runs["fresh-warm"].append(warm_row)
        if "baseline" in o.scenarios and r < o.baseline_runs:
            log(f"run {r + 1}/{o.baseline_runs}: baseline (seed-style)")
            runs["baseline"].append(await bench.baseline())
    for name, rows in list(runs.items()):
        if not rows:  # not for this device or backend (cold-torch on CUDA)
            continue
        numeric = [{k: v for k, v in row.items() if isinstance(v, (int, float))
                    and not isinstance(v, bool) and k not in ("started", "ended")}
                   for row in rows]
        res.scenarios[name] = {"runs": [{k: v for k, v in row.items()
                                         if k not in ("started", "ended")} for row in rows],
                               "median": median_stages(numeric) if numeric else {}}
        if name == "warm" and numeric:
            res.scenarios[name]["p50_total"] = median(r["total"] for r in numeric)
        if name in ("cold", "downloaded") or name.startswith("concurrent"):
            res.scenarios[name]["worst_stall_ms"] = max(
                (r.get("stall_ms", 0.0) for r in numeric), default=None)
    # The product's own peak: its scenarios (not the baseline, not the synthetic
    # batch-200 encoder row) in the first run, before the baseline's allocations have
    # grown the heap that later runs inherit. The all-runs peak is kept beside it.
    product = [s for n, s in res.scenarios.items()
               if n not in ("baseline", "encoder", "cold-torch", "fresh-cold", "fresh-warm")]
    first = [s["runs"][0].get("peak_rss_mb") for s in product if s["runs"]]
    every = [r.get("peak_rss_mb") for s in product for r in s["runs"]]
    res.memory["peak_rss_serving_mb"] = max((v for v in first if v), default=None)
    res.memory["peak_rss_serving_all_runs_mb"] = max((v for v in every if v), default=None)
    gpu = [r["peak_gpu_mb"]["reserved"] for n, s in res.scenarios.items() if n != "baseline"
           for r in s["runs"] if "peak_gpu_mb" in r]
    if gpu or "peak_gpu_load_mb" in res.memory:
        res.memory["peak_gpu_reserved_mb"] = max(
            gpu + [res.memory.get("peak_gpu_load_mb", {}).get("reserved", 0.0)])
    res.goals = goals(res)


# -- goals --------------------------------------------------------------------------
def _med(res: Results, scenario: str, key: str) -> float | None:
    return res.scenarios.get(scenario, {}).get("median", {}).get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def goals(res: Results) -> list[dict]:
    cuda = res.machine["device"].startswith("cuda")
    gpu_name = res.machine.get("gpu", "")
    big_gpu = any(k in gpu_name for k in ("H100", "H200"))
    vit_b32 = res.encoder.get("model") == "ViT-B-32"
    int8 = res.encoder.get("precision") == "int8"
    rows = []

    def add(pid: str, figure: str, status: str, **values: object) -> None:
        rows.append({"id": pid, "goal": GOALS[pid], "figure": figure, "status": status,
                     **values})

    def verdict(ok: bool | None, needs: str | None = None) -> str:
        if needs:
            return needs
        return "n/a" if ok is None else ("pass" if ok else "fail")

    cpu_only = "needs CPU run" if cuda else None
    gpu_only = None if cuda else "needs GPU"
    p1 = _med(res, "downloaded", "through_scores")
    base_ts = _med(res, "baseline", "through_scores")
    x1 = _ratio(base_ts, p1)
    add("P1", _fmt_ms(p1) + (f", {x1:.1f}x baseline" if x1 else ""),
        verdict(p1 is not None and x1 is not None and p1 <= 30 and x1 >= 60,
                None if cuda and big_gpu else ("needs GPU" if not cuda else "needs H100/H200")),
        ms=p1, x_baseline=x1)
    p2 = _med(res, "cold", "total")
    first = _med(res, "fresh-cold", "query_ms")
    add("P2", f"{_fmt_ms(p2)} steady, first in a fresh process {_fmt_ms(first)}",
        verdict(p2 is not None and p2 <= 400 and (first is None or first <= 500), gpu_only),
        ms=p2, first_ms=first)
    p3 = res.scenarios.get("warm", {}).get("p50_total")
    add("P3", _fmt_ms(p3) + " p50", verdict(p3 is not None and p3 <= 30, cpu_only), ms=p3)
    x4 = _ratio(_med(res, "baseline", "total"), _med(res, "cold", "total"))
    x4_torch = _ratio(_med(res, "baseline", "total"), _med(res, "cold-torch", "total"))
    cores = res.machine.get("cpu_cores")
    served = f"{res.encoder.get('backend')} {res.encoder.get('precision')}"
    add("P4", (f"{x4:.2f}x {served}" if x4 else "-")
        + (f", {x4_torch:.2f}x torch fp32" if x4_torch else "") + f" ({cores} cores)",
        verdict(x4 is not None and x4 >= (4 if int8 else 3), cpu_only), x=x4,
        x_torch=x4_torch)
    p5 = res.scenarios.get("cold", {}).get("worst_stall_ms")
    add("P5", _fmt_ms(p5) + " worst of runs", verdict(p5 is not None and p5 <= 20), ms=p5)
    p6 = _med(res, "cold", "first_page_ms")
    add("P6", _fmt_ms(p6) + f" ({cores} cores)",
        verdict(p6 is not None and p6 <= 4000, cpu_only), ms=p6)
    rss = max(v for v in (res.memory.get("peak_rss_load_mb"),
                          res.memory.get("peak_rss_serving_mb"), 0.0) if v is not None)
    fresh = _med(res, "fresh-warm", "peak_rss_mb")
    if fresh is not None:  # a process as users run it: no baseline, no export in it
        rss = fresh
    gpu = res.memory.get("peak_gpu_reserved_mb")
    ok = (rss <= 1536 and (gpu is None or gpu <= 1024)) if cuda else rss <= 1229
    add("P7", f"RSS {rss:.0f} MB" + (" (fresh process)" if fresh is not None else "")
        + (f", GPU {gpu:.0f} MB" if gpu is not None else ""),
        verdict(ok, None if vit_b32 else "n/a: not ViT-B-32"), rss_mb=rss, gpu_mb=gpu)
    p8 = _med(res, "fresh-warm", "process_ms")
    add("P8", _fmt_ms(p8) + " whole process",
        verdict(p8 is not None and p8 <= 5000,
                cpu_only or (None if vit_b32 else "n/a: not ViT-B-32")), ms=p8)
    return rows


# -- output -------------------------------------------------------------------------
def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms")


def _cell(v: float | None) -> str:
    return "-" if v is None else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}")


def table(res: Results) -> str:
    m, e, o = res.machine, res.encoder, res.options
    lines = [
        f"bench: {e['model']} on {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, "
        f"{e['backend']} {e['precision']}, {e['threads']} intra-op threads, "
        f"max batch {e['max_batch']}, short text {e['short_text']} | {m['cpu_cores']} cores, "
        f"load {', '.join(f'{x:.1f}' for x in m['load_average'] or [])} | torch {m['torch']}",
        f"fake latency {o['latency_ms']:g} ms/request, {o['candidates']} candidates, "
        f"{o['runs']} runs (baseline {o['baseline_runs']}); medians in ms",
        "",
        f"{'scenario':<24}{'n':>3}" + "".join(f"{s:>9}" for s in STAGES)
        + f"{'stall':>8}{'x base':>8}  note",
    ]
    base_total = _med(res, "baseline", "total")
    for name, s in res.scenarios.items():
        med = s["median"]
        n = len(s["runs"])
        note = ""
        if name.startswith("concurrent"):
            cells = [med.get(f"query_{k}") for k in STAGES]
            note = (f"per-query medians; {med.get('queries', 0):.0f} queries, wall "
                    f"{_fmt_ms(med.get('wall'))}, {med.get('images_per_s', 0):.1f} img/s")
        elif name == "encoder":
            cells = [None] * 5 + [med.get("total")]
            note = f"{med.get('images', 0):.0f} images, {med.get('images_per_s', 0):.1f} img/s"
        else:
            cells = [med.get(k) for k in STAGES]
        if name == "warm":
            note = f"p50 of {n} queries"
        if name == "downloaded":
            note = (f"decode through scores {_fmt_ms(med.get('through_scores'))}; "
                    "bytes from memory")
        if name == "baseline":
            same = all(r.get("same_images") for r in s["runs"])
            note = (f"decode through scores {_fmt_ms(med.get('through_scores'))}; "
                    f"same images: {'yes' if same else 'NO'}")
        if name in ("cold", "cold-torch"):
            note = f"first page {_fmt_ms(med.get('first_page_ms'))}"
        if name.startswith("fresh"):
            note = (f"process {_fmt_ms(med.get('process_ms'))}: imports "
                    f"{med.get('import_torch_s', 0) + med.get('import_search_s', 0):.1f} s, "
                    f"open {med.get('open_s', 0):.1f} s, query {_fmt_ms(med.get('query_ms'))}")
        x = _ratio(base_total, med.get("total")) if name in ("cold", "cold-torch") else None
        lines.append(f"{name:<24}{n:>3}" + "".join(f"{_cell(c):>9}" for c in cells)
                     + f"{_cell(s.get('worst_stall_ms', med.get('stall_ms'))):>8}"
                     + f"{(f'{x:.2f}' if x else '-'):>8}  {note}")
    mem = res.memory
    lines += ["", f"memory: RSS {_cell(mem.get('rss_imports_mb'))} MB after imports, "
              f"{mem.get('rss_loaded_mb', 0):.0f} MB loaded "
              f"(private {_cell(mem.get('rss_anon_loaded_mb'))} MB), peak "
              f"{_cell(mem.get('peak_rss_load_mb'))} MB at load, "
              f"{_cell(mem.get('peak_rss_serving_mb'))} MB serving "
              f"({_cell(mem.get('peak_rss_serving_all_runs_mb'))} MB after baseline runs)"
              + (f"; GPU peak reserved {mem['peak_gpu_reserved_mb']:.0f} MB"
                 if mem.get("peak_gpu_reserved_mb") is not None else ""), ""]
    lines.append(f"{'goal':<5}{'figure':<50}{'status':<20}target")
    for g in res.goals:
        lines.append(f"{g['id']:<5}{g['figure']:<50}{g['status']:<20}{g['goal']}")
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    try:
        res = asyncio.run(run(o))
    except SearchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    text = table(res)
    print(text)
    out = o.out or (ROOT / "bench" / "results"
                    / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{res.machine['device']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**asdict(res), "table": text}, indent=2, default=str))
    print(f"\nwritten: {out}")
    return 0
