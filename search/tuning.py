"""Process-wide tuning, applied by the entry points (the CLI, the bot, the bench).

A library does not freeze its host's garbage collector or set its warning filters;
the programs that own the process do, once, through these functions.
"""

from __future__ import annotations

import gc
import warnings

from .threads import lower_priority


def _load_malloc_trim():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def trim_heap() -> None:
    """Give the heap a CPU batch's activations freed back to the OS (glibc only).

    Freed blocks of a few MB stay in glibc's arenas, so without this the process keeps
    the largest batch's working set and some fragmentation for good (~140 MB more
    resident after a cold ViT-B-32 query on CPU). It costs well under a millisecond.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def tune_process(*, in_process: bool = True) -> None:
    """Before the model loads: quiet warnings, a niced encoder, trimmed heaps.

    ``in_process=False`` (INFERENCE_URL): no encoder here, so neither torch nor its hooks.
    """
    # torchvision 0.29 warns on every decode_jpeg call; the call is what we want.
    warnings.filterwarnings("ignore", category=DeprecationWarning,
                            message=".*image decoding and encoding capabilities of TorchVision")
    if not in_process:
        return
    from .clip import worker

    # The encoder thread yields the CPU to the event loop (see search.threads).
    if lower_priority not in worker.THREAD_SETUP:
        worker.THREAD_SETUP.append(lower_priority)
    if trim_heap not in worker.AFTER_CPU_BATCH:
        worker.AFTER_CPU_BATCH.append(trim_heap)


def freeze_heap() -> None:
    """After the model loaded: move the ~400k long-lived objects out of the collector's way.

    torch, open_clip and the tokenizer leave that many; a full collection walks them
    all (200 ms on a small CPU) and, triggered by a busy query's allocations, would
    stall the event loop that long.
    """
    gc.collect()
    gc.freeze()
