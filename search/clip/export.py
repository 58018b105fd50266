"""Making the ONNX files: export both towers, quantise, check, publish into the cache.

``export_model`` does it in the calling process (``python -m search.export`` calls it
there, with a progress bar). A serving process never does: ``ExportChild`` runs
``python -m search.clip.export`` beside it, at the encoder's niceness, under a memory
ceiling, and reads
its progress as JSON lines, so an export killed for memory takes only itself down.

Each step's files are written into a staging folder ``MODELS/.export-*`` that holds a
lock while the export lives; a start that finds one unlocked (left by a killed export)
removes it. The published folder is complete or absent.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .quality import Agreement, judge

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (step done, steps, what)
STAGING_PREFIX = ".export-"
# Resident memory an export needs: what its imports take (torch, open_clip, the exporters,
# ONNX Runtime: ~1.0-1.3 GB with the tiny model), and a multiple of the fp32 weights'
# bytes, measured on ViT-B-32 (docs/performance.md): the model, the traced graph, the
# serialised protobuf, the quantiser's copy and ONNX Runtime's sessions for the checks.
IMPORTS_MB = 1100.0
PEAK_PER_WEIGHT_BYTE = 3.0
# Address space beyond resident memory that torch, ONNX Runtime and glibc reserve but do
# not touch (thread stacks, arenas): RLIMIT_AS counts it, so the ceiling allows for it.
ADDRESS_SPACE_SLACK = 3 << 30


@dataclass(frozen=True)
class Outcome:
    """What an export published: the precision that serves, and why int8 does not."""

    precision: str
    folder: Path
    note: str  # "" when the asked precision serves
    seconds: float


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove staging folders that no live export holds (a killed start's leftovers)."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for path in [*root.glob(f"{STAGING_PREFIX}*"), *root.glob(f"*/{STAGING_PREFIX}*")]:
        if not path.is_dir():
            continue
        lock = path / ".lock"
        try:
            with lock.open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # an export in another process is writing it now
        except OSError:
            pass  # no lock file to open: an older export's folder; nobody holds it
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d staging folder(s) left by an interrupted ONNX export in %s",
                 len(removed), root)
    return removed


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another process exporting the same model: wait
        yield


def export_model(model_name: str, pretrained: str | None, precision: str, root: Path, *,
                 random_weights: bool = False, progress: Progress | None = None) -> Outcome:
    """Export ``model_name`` for ``precision`` into ``root`` and check it; raises on failure."""
    from . import backends
    from .model import load_model

    t0 = time.perf_counter()
    say = progress or (lambda done, of, what: None)
    steps = 5 if precision == "int8" else 4
    skeleton = load_model(model_name, pretrained, "cpu", random_weights=random_weights,
                          weights=False)
    folder = root / backends.cache_key(skeleton, precision)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{folder.name}.lock"):
        done = backends.published(skeleton, root, precision)
        if done is not None:  # another process finished it while this one waited
            say(steps, steps, "already exported")
            return Outcome(done[0], done[1], done[2], time.perf_counter() - t0)
        loaded = load_model(model_name, pretrained, "cpu", random_weights=random_weights)
        say(1, steps, "weights loaded")
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
        lock = (staging / ".lock").open("a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            outcome = _export_checked(loaded, root, staging, precision, say, steps)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            lock.close()
    return Outcome(outcome[0], outcome[1], outcome[2], time.perf_counter() - t0)


def _export_checked(loaded, root: Path, staging: Path, precision: str, say: Progress,
                    steps: int) -> tuple[str, Path, str]:
    from . import backends

    fp32 = backends.export_towers(loaded, staging, on_tower=lambda what: say(
        2 if what == "image" else 3, steps, f"{what} tower exported"))
    started = time.perf_counter()
    probe = backends.Probe.of(loaded)
    reference = probe.torch_scores(loaded)
    probe_s = time.perf_counter() - started
    seconds: dict[str, str] = {}
    note, agreement = "", None
    if precision == "int8":
        int8 = backends.quantise(fp32, staging / "int8")
        say(4, steps, "int8 quantised")
        checking = time.perf_counter()
        note, agreement = judge_int8(loaded, probe, reference, int8)
        seconds = {"int8_check_s": f"{time.perf_counter() - checking + probe_s:.2f}"}
        if not note:
            folder = backends.publish(loaded, root, int8, "int8",
                                      extra=agreement.as_meta("int8") | seconds)
            say(steps, steps, f"checked: int8 serves ({agreement.figures()})")
            return "int8", folder, ""
    cosine, scores = probe.check(loaded, fp32)
    if cosine < backends.AGREEMENT["fp32"]:
        raise RuntimeError(f"the fp32 ONNX files give cosine {cosine:.5f} with torch, below "
                           f"{backends.AGREEMENT['fp32']}")
    extra = (agreement.as_meta("int8") | seconds) if agreement else {}
    if note:
        extra["int8_why"] = note
    folder = backends.publish(loaded, root, fp32, "fp32", extra=extra)
    if precision == "int8":
        backends.refuse_int8(loaded, root, note, extra)
        log.warning("CLIP %s: int8 refused at export: %s; fp32 ONNX serves", loaded.name, note)
    say(steps, steps, "checked: fp32 serves" + (f" ({note})" if note else ""))
    return "fp32", folder, note


def judge_int8(loaded, probe, reference: np.ndarray, int8) -> tuple[str, Agreement]:
    """Why int8 may not serve ("" if it may), and the probe figures. ``reference``: torch
    fp32's scores on the probe photographs."""
    from . import backends

    try:
        cosine, scores = probe.check(loaded, int8)
    except Exception as e:  # a file ONNX Runtime cannot load or run
        why = f"the int8 files do not run ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        return why, Agreement(0, len(reference), 0, 0.0, False, why)
    agreement = judge(reference, scores)
    if cosine < backends.AGREEMENT["int8"]:
        return (f"int8 gives cosine {cosine:.4f} with torch, below "
                f"{backends.AGREEMENT['int8']}"), agreement
    if not agreement.passed:
        return f"int8 ranks the probe photographs unlike fp32 ({agreement.why})", agreement
    return "", agreement


# -- the child process ------------------------------------------------------------------

def child_main(argv: list[str] | None = None) -> int:
    """``python -m search.clip.export``: progress as JSON lines on stdout, errors on stderr."""
    p = argparse.ArgumentParser(prog="python -m search.clip.export")
    p.add_argument("--model", required=True)
    p.add_argument("--pretrained")
    p.add_argument("--precision", required=True, choices=("fp32", "int8"))
    p.add_argument("--cache-dir", type=Path, required=True)
    p.add_argument("--random-weights", action="store_true")
    a = p.parse_args(argv)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing a library prints may break the JSON lines
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(message)s")

    def progress(done: int, of: int, what: str) -> None:
        out.write(json.dumps({"step": done, "of": of, "what": what,
                              "rss_mb": _status_mb("VmRSS"), "peak_rss_mb": _status_mb("VmHWM")})
                  + "\n")

    try:
        outcome = export_model(a.model, a.pretrained, a.precision, a.cache_dir,
                               random_weights=a.random_weights, progress=progress)
    except MemoryError:
        print("out of memory under the export's ceiling", file=sys.stderr)
        return 3
    except Exception as e:  # every way an export fails is one line for the parent
        print(f"{type(e).__name__}: {' '.join(str(e).split())[:500]}", file=sys.stderr)
        return 1
    out.write(json.dumps({"done": outcome.precision, "note": outcome.note,
                          "seconds": round(outcome.seconds, 1),
                          "peak_rss_mb": peak_rss_mb(),
                          "peak_vm_mb": _status_mb("VmPeak")}) + "\n")
    return 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not glibc: close() still stops the export
        return None


def _die_with_parent(prctl) -> None:
    """Linux: SIGKILL the export when the thread that started it dies (a bot killed with
    SIGKILL leaves no export running, even one paused with SIGSTOP, which a SIGTERM would
    not wake; its staging folder goes at the next start). Runs between fork and exec, so
    libc was loaded before the fork (dlopen there can hang)."""
    if prctl is not None:
        prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def needed_mb(parameters: int) -> float:
    return IMPORTS_MB + parameters * 4 * PEAK_PER_WEIGHT_BYTE / 2**20


PAUSE_GRACE_S = 60.0  # searches may stop the export this long in all, whatever its age


def pause_allowed(paused_s: float, life_s: float) -> bool:
    """Searches may stop the export for ``PAUSE_GRACE_S`` in all (a first member's cold
    query, start to end), then for at most half its life: under searches that never
    stop, the export still runs half the time and finishes."""
    return paused_s < max(PAUSE_GRACE_S, life_s / 2)


class ExportChild:
    """``python -m search.clip.export`` beside the serving process, watched by a thread.

    ``on_progress(done, of, what)`` and ``on_exit(error)`` run on the watcher thread;
    ``error`` is None when the files were published and checked.
    """

    def __init__(self, model_name: str, pretrained: str | None, precision: str, root: Path, *,
                 random_weights: bool, ceiling_mb: float | None, nice: int = 0,
                 on_progress: Progress, on_exit: Callable[[str | None, dict], None]) -> None:
        cmd = [sys.executable, "-m", "search.clip.export", "--model", model_name,
               "--precision", precision, "--cache-dir", str(root)]
        if pretrained:
            cmd += ["--pretrained", pretrained]
        if random_weights:
            cmd.append("--random-weights")
        self.ceiling_mb = ceiling_mb
        self._on_progress, self._on_exit = on_progress, on_exit
        self._stopping = False
        self.paused = False
        self.paused_seconds = 0.0  # in all, while searches encoded
        self._paused_at = 0.0
        limit = None if ceiling_mb is None else int(ceiling_mb * 2**20) + ADDRESS_SPACE_SLACK

        prctl = _load_prctl()  # before the fork

        def setup() -> None:  # in the child, before exec: nothing that takes a lock
            _die_with_parent(prctl)
            if nice:
                os.nice(nice)  # beside the serving process, out of its way
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        self.started = time.perf_counter()
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, preexec_fn=setup, text=True)
        self._errors: list[str] = []
        self._stderr = threading.Thread(target=self._read_errors, daemon=True,
                                        name="clip-export-stderr")
        self._stderr.start()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="clip-export")
        self.thread.start()

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.strip():
                self._errors = [*self._errors[-19:], line.strip()]

    def _watch(self) -> None:
        assert self.process.stdout is not None
        final: dict = {}
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "done" in message:
                final = message
            elif isinstance(message.get("step"), int) and isinstance(message.get("of"), int):
                self._on_progress(message["step"], message["of"], str(message.get("what", "")))
        rc = self.process.wait()
        self._stderr.join(5)
        if self._stopping:
            return
        if rc == 0 and final:
            self._on_exit(None, final)
            return
        self._on_exit(self.describe(rc), final)

    def describe(self, rc: int) -> str:
        last = self._errors[-1] if self._errors else ""
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else rc
            memory = " (the kernel's OOM killer, most likely: too little memory)" \
                if -rc == signal.SIGKILL else ""
            return f"the export process was killed by {name}{memory}"
        if rc == 3 or "MemoryError" in last or "std::bad_alloc" in last:
            ceiling = f"{self.ceiling_mb:.0f} MB" if self.ceiling_mb else "the memory"
            return f"the export ran out of memory under its ceiling of {ceiling}"
        return last or f"the export process exited with status {rc}"

    def may_pause(self) -> bool:
        """Whether searches may keep (or put) the export stopped: see ``pause_allowed``."""
        now = time.perf_counter()
        paused = self.paused_seconds + (now - self._paused_at if self.paused else 0.0)
        return pause_allowed(paused, now - self.started)

    def pause(self) -> None:
        """SIGSTOP the export while a search encodes: on a small host the member's query
        gets the cores, and the export goes on once the encoder is idle (``resume``), or
        once it has been stopped for its share (``pause_allowed``)."""
        if not self.paused and self.process.poll() is None and self.may_pause():
            try:
                os.kill(self.process.pid, signal.SIGSTOP)
            except ProcessLookupError:
                return
            self.paused, self._paused_at = True, time.perf_counter()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.paused_seconds += time.perf_counter() - self._paused_at
            try:
                os.kill(self.process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 2.0) -> None:
        """End the export now (the serving process is closing); its staging folder goes at
        the next start."""
        self._stopping = True
        self.resume()  # a stopped process does not act on SIGTERM
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.thread.join(timeout)


if __name__ == "__main__":
    raise SystemExit(child_main())
