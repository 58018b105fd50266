"""``python -m bench --quick`` runs every scenario and reports every goal; no time is judged."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import GOALS, SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
STATUSES = {"pass", "fail", "needs GPU", "needs H100/H200", "needs CPU run",
            "n/a: not ViT-B-32"}


@pytest.mark.timeout(660)
def test_quick_bench_writes_every_scenario_and_every_goal(tmp_path):
    out = tmp_path / "quick.json"
    # two ONNX exports, each in its own child interpreter (torch's import included): about
    # 100 s on a quiet 2-core machine, four times that with other jobs on the cores
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["scenarios"]) == set(SCENARIOS)
    for name, scenario in report["scenarios"].items():
        assert scenario["runs"], name
        assert scenario["median"], name
    assert report["scenarios"]["cold"]["runs"][0]["images"] > 0
    assert all(r["same_images"] for r in report["scenarios"]["baseline"]["runs"])
    assert [g["id"] for g in report["goals"]] == list(GOALS)
    for goal in report["goals"]:
        assert goal["status"] in STATUSES, goal
        assert goal["figure"] and goal["figure"] != "-", goal
    for stage in ("api", "download", "decode", "encode", "rank", "total"):
        assert stage in report["scenarios"]["cold"]["median"]
    assert "stall_ms" in report["scenarios"]["cold"]["median"]
    assert report["memory"]["peak_rss_serving_mb"] > 0
    for line in ("P1", "P7", "P8", "baseline", "concurrent", "fresh-cold", "cold-torch"):
        assert line in done.stdout
