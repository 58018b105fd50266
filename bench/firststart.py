"""A first start as a new user meets it: memory and time, and the first-ever cold query.

    .venv/bin/python -m bench.firststart                 # ViT-B-32, seeded random weights
    .venv/bin/python -m bench.firststart --repo /work/main --only first-start   # "before"

Three whole processes, each with a fresh DATA_DIR, against the fake Pixabay:
- ``first-start``: ``bench.fresh --until-onnx``: start, one cold query, then stay until
  ONNX Runtime serves. A sampler reads every process in its tree (the bot and its export
  child) every 0.1 s: the tree's peak RSS (sum), the bot's own peak, the child's own.
- ``first-query``: ``bench.fresh``: start, one cold query, exit (the export beside it
  stops with the process): the first-ever cold query, timed from exec to exit.
- ``seed``: ``bench.seedproc``: the seed-style script from exec to exit, same images.
``--repo`` runs the product's side from another checkout (its own .venv) for a before/after.
Prints a table with the load average and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import machine
from bench.run import COLD_TAG, FakeProcess

ROOT = Path(__file__).resolve().parent.parent
PHRASE = "a red circle on snow"


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
    except OSError:
        pass
    return kids


class TreeSampler:
    """Peak RSS of a process and its descendants, sampled every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.pid, self.period = pid, period
        self.tree_peak_kb = self.tree_anon_peak_kb = self.child_peak_kb = 0
        self.root_peak_kb = 0

    async def run(self) -> None:
        while True:
            pids = [self.pid]
            for p in pids:
                pids.extend(_children(p))
                if len(pids) > 64:
                    break
            stats = {p: _status(p) for p in pids}
            self.tree_peak_kb = max(self.tree_peak_kb,
                                    sum(s.get("VmRSS", 0) for s in stats.values()))
            self.tree_anon_peak_kb = max(self.tree_anon_peak_kb,
                                         sum(s.get("RssAnon", 0) for s in stats.values()))
            self.root_peak_kb = max(self.root_peak_kb, stats[self.pid].get("VmHWM", 0))
            for p in pids[1:]:
                self.child_peak_kb = max(self.child_peak_kb, stats[p].get("VmHWM", 0))
            await asyncio.sleep(self.period)


async def whole_process(args: list[str], cwd: Path, python: str) -> dict:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        python, *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    sampler = TreeSampler(proc.pid)
    task = asyncio.ensure_future(sampler.run())
    out, err = await proc.communicate()
    wall = time.perf_counter() - t0
    task.cancel()
    if proc.returncode != 0:
        raise SystemExit(f"bench.firststart: {args[1]} failed: {err.decode()[-2000:]}")
    row = json.loads(out.decode().strip().splitlines()[-1])
    row.update(wall_s=wall, tree_peak_mb=sampler.tree_peak_kb / 1024,
               tree_anon_peak_mb=sampler.tree_anon_peak_kb / 1024,
               own_peak_mb=sampler.root_peak_kb / 1024,
               child_peak_sampled_mb=sampler.child_peak_kb / 1024 or None,
               load_after=os.getloadavg())
    return row


async def run(a: argparse.Namespace) -> dict:
    repo = a.repo.resolve()
    python = str(repo / ".venv" / "bin" / "python") if a.repo != ROOT else sys.executable
    rows: dict[str, list[dict]] = {}
    async with FakeProcess(latency_ms=30.0, per_scene=10) as fake:
        with tempfile.TemporaryDirectory(prefix="bench-firststart-") as scratch:
            def fresh(name: str, *extra: str) -> list[str]:
                return ["-m", "bench.fresh", "--model", a.model, "--device", "cpu",
                        "--backend", "auto", "--precision", "auto", "--api-url",
                        fake.api_url, "--key", fake.key, "--tag", COLD_TAG, "--phrase", PHRASE,
                        "--data-dir", str(Path(scratch) / name), "--candidates",
                        str(a.candidates), *extra]

            for r in range(a.runs):
                for scenario in a.only:
                    print(f"[bench.firststart] run {r + 1}/{a.runs}: {scenario} "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
                    if scenario == "first-start":
                        args = fresh(f"first-start-{r}", "--until-onnx") if a.repo == ROOT \
                            else fresh(f"first-start-{r}")  # an old checkout exports inline
                        row = await whole_process(args, repo, python)
                    elif scenario == "first-query":
                        row = await whole_process(fresh(f"first-query-{r}"), repo, python)
                    else:
                        row = await whole_process(
                            ["-m", "bench.seedproc", "--model", a.model, "--api-url",
                             fake.api_url, "--key", fake.key, "--tag", COLD_TAG, "--phrase",
                             PHRASE, "--candidates", str(a.candidates)], ROOT, sys.executable)
                    rows.setdefault(scenario, []).append(row)
                    print(json.dumps({scenario: row}), flush=True)
    return {"model": a.model, "repo": str(repo), "candidates": a.candidates,
            "machine": machine("cpu"), "rows": rows}


def table(report: dict) -> str:
    m = report["machine"]
    lines = [f"bench.firststart: {report['model']}, {report['candidates']} candidates, "
             f"{report['repo']} | {m['cpu_cores']} cores",
             f"{'scenario':<12}{'wall s':>8}{'query s':>9}{'to onnx s':>10}{'tree MB':>9}"
             f"{'anon MB':>9}{'own MB':>8}{'child MB':>9}  served / load"]
    for name, rows in report["rows"].items():
        for r in rows:
            child = r.get("export_child_peak_mb") or r.get("child_peak_sampled_mb")
            onnx = r.get("until_onnx_s")
            lines.append(
                f"{name:<12}{r['wall_s']:>8.1f}{r['query_ms'] / 1000:>9.1f}"
                f"{(f'{onnx:.1f}' if onnx else '-'):>10}{r['tree_peak_mb']:>9.0f}"
                f"{r['tree_anon_peak_mb']:>9.0f}{r['own_peak_mb']:>8.0f}"
                f"{(f'{child:.0f}' if child else '-'):>9}  "
                f"{r.get('served_at_exit', r.get('served_by', 'seed'))} / "
                f"{r['load_after'][0]:.1f}")
    seed = [r["wall_s"] for r in report["rows"].get("seed", [])]
    first = [r["wall_s"] for r in report["rows"].get("first-query", [])]
    if seed and first:
        import statistics

        lines.append(f"first-ever cold query, whole process: seed / product = "
                     f"{statistics.median(seed) / statistics.median(first):.2f}x "
                     f"(medians of {len(seed)} and {len(first)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.firststart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--repo", type=Path, default=ROOT)
    p.add_argument("--only", nargs="+", default=["first-query", "seed", "first-start"],
                   choices=["first-start", "first-query", "seed"])
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    report = asyncio.run(run(a))
    text = table(report)
    print(text)
    out = a.out or ROOT / "bench" / "results" / f"firststart-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "table": text}, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
