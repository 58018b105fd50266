"""Ctrl-C and SIGTERM for the entry points: stop within a second or two, say so, exit 130 / 143.

``install()`` comes first in an entry point, before its heavy imports. From then on:

* in plain code (settings, ``DATA_DIR``, imports) a signal ends the process at once:
  nothing is open yet that could lose anything;
* inside ``run(coro)`` (``asyncio.run`` with this wired in) it cancels the main task, so
  ``async with`` blocks close what they opened, and a watchdog ends the process
  ``GRACE`` seconds later if a clean-up hangs (a model still loading on its thread, a
  download that never answers);
* once ``on_signal(callback)`` is set (the bot, when it is online) a signal calls the
  callback on the loop instead: a graceful close, and the entry point's own exit code.

A second signal always ends the process at once. Either way stderr gets one line,
``error: interrupted (SIGINT).``, and the exit status is 128 + the signal's number.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Clean-up normally takes milliseconds (SQLite closes, sessions close); a model load in
# progress cannot be stopped at all, so past this the process ends without it.
GRACE = 0.5


class Interrupted(BaseException):
    """A signal stopped the entry point; like KeyboardInterrupt, ``except Exception`` lets it by."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message(signum))


def message(signum: int) -> str:
    return f"error: interrupted ({signal.Signals(signum).name})."


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.said = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.callback: Callable[[int], object] | None = None
        self.graceful = False  # the signal went to on_signal's callback
        self.lock = threading.Lock()


_state = _State()


def install() -> None:
    """Take over SIGINT and SIGTERM for this process (call from the main thread)."""
    global _state
    _state = _State()  # a fresh start for each run of an entry point
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def say(signum: int) -> None:
    """The one line on stderr, once, whichever path gets there first."""
    with _state.lock:
        if _state.said:
            return
        _state.said = True
    try:
        sys.stderr.write(message(signum) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        os.write(2, (message(signum) + "\n").encode())


def _hard_exit(signum: int) -> None:
    say(signum)
    os._exit(128 + signum)


def _watchdog(signum: int) -> None:
    timer = threading.Timer(GRACE, _hard_exit, args=(signum,))
    timer.daemon = True
    timer.start()


def _handler(signum: int, frame: object) -> None:
    if _state.signum is not None:  # a second signal: no more waiting
        _hard_exit(_state.signum)
    loop, task, callback = _state.loop, _state.task, _state.callback
    if callback is not None and loop is not None and not loop.is_closed():
        _state.callback = None  # the next signal ends the process
        _state.signum, _state.graceful = signum, True
        loop.call_soon_threadsafe(callback, signum)
        return
    _state.signum = signum
    if loop is None or task is None or task.done() or loop.is_closed():
        _hard_exit(signum)  # plain code: nothing to close
        return
    _watchdog(signum)
    loop.call_soon_threadsafe(task.cancel)


def on_signal(callback: Callable[[int], object] | None) -> None:
    """From now on a signal calls ``callback(signum)`` on the loop (None: cancel again)."""
    _state.callback = callback


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``; a signal cancels it and raises Interrupted here."""

    async def main() -> T:
        loop = asyncio.get_running_loop()
        # A signal may land on another thread while this one sleeps in select(): the
        # wake-up fd makes the loop (and so the Python-level handler) run at once.
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        loop.add_reader(rsock.fileno(), _drain, rsock)
        old_fd = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        _state.loop, _state.task = loop, asyncio.current_task()
        try:
            return await coro
        finally:
            _state.task, _state.callback = None, None
            signal.set_wakeup_fd(old_fd)
            loop.remove_reader(rsock.fileno())
            rsock.close()
            wsock.close()

    try:
        result = asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        if _state.signum is not None:
            raise Interrupted(_state.signum) from None
        raise
    finally:
        _state.loop = None
    if _state.signum is not None and not _state.graceful:  # the coroutine ate the cancel
        raise Interrupted(_state.signum)
    return result


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except (BlockingIOError, InterruptedError):
        pass
