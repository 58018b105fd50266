"""What the bench measures besides stage times: loop stalls, memory, the machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import statistics
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch


class StallMeter:
    """A ticker that sleeps ``period`` and records how late it wakes: the loop's worst stall."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst = 0.0
        self.ticks = 0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.perf_counter() - t0 - self.period)
            self.ticks += 1

    @property
    def worst_ms(self) -> float:
        return self.worst * 1000.0

    async def __aenter__(self) -> StallMeter:
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (Linux: clear_refs 5); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is kB on Linux, bytes on macOS
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if platform.system() == "Darwin":
            kb //= 1024
    return kb / 1024.0


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0) / 1024.0


def rss_anon_mb() -> float | None:
    """The private part of RSS (heap, tensors), without mapped library files."""
    kb = _status_kb("RssAnon")
    return None if kb is None else kb / 1024.0


def reset_peak_gpu(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb(device: str) -> dict[str, float] | None:
    if not device.startswith("cuda"):
        return None
    return {"allocated": torch.cuda.max_memory_allocated() / 2**20,
            "reserved": torch.cuda.max_memory_reserved() / 2**20}


def machine(device: str) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_cores": cores,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_stages(samples: list[Mapping[str, float]]) -> dict[str, float]:
    keys = {k for s in samples for k in s}
    return {k: median(s.get(k) for s in samples) for k in sorted(keys)}
