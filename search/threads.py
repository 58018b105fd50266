"""Background threads yield the CPU to the event loop.

On a small machine the encoder and the decode threads can keep every core busy for
seconds. At the same priority the scheduler gives them the loop thread's turn, and
a reaction or a warm query waits tens of milliseconds for a core. Lowering their
priority (Linux nice values are per thread) keeps the loop's wake-ups prompt; when
the loop is idle they still get every spare cycle.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

BACKGROUND_NICENESS = 10


def lower_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Lower the calling thread's scheduling priority by ``niceness`` (where the OS can).

    Threads it starts afterwards, such as torch's OpenMP pool, inherit it.
    """
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid)
                                                  + niceness, 19))
    except (AttributeError, OSError) as e:  # not Linux, or a sandbox that forbids it
        log.debug("could not lower a background thread's priority: %s", e)
