"""A source's request budget: our own sliding window, tightened by what the server says.

A source client never sends a request it knows will be refused: ``acquire`` refuses
with ``RateLimited`` (the wait a member is told) before anything is sent. What the
server's headers say is fed in through ``tighten`` (the adapter reads its own header
names), and a refusal (HTTP 429) through ``hold``. These four calls plus ``remaining``
are the whole interface, so a budget shared between processes can fill the same shape.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import RateLimited


@dataclass
class RateBudget:
    """At most ``limit`` requests in any ``window`` seconds, in this process."""

    limit: int = 100
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    sent: deque = field(default_factory=deque)
    server_remaining: int | None = None
    server_reset_at: float = 0.0
    label: str = "Pixabay"  # who refuses, in the sentence a user sees

    def check(self) -> None:
        """Raise ``RateLimited`` if a request now would be refused; spends nothing."""
        now = self.clock()
        while self.sent and now - self.sent[0] >= self.window:
            self.sent.popleft()
        if now >= self.server_reset_at:
            self.server_remaining = None
        if self.server_remaining is not None and self.server_remaining <= 0:
            raise RateLimited(self.server_reset_at - now, self.label, cap=self.window)
        if len(self.sent) >= self.limit:
            raise RateLimited(self.sent[0] + self.window - now, self.label, cap=self.window)

    def acquire(self) -> None:
        """Spend one request, or raise ``RateLimited`` without spending."""
        self.check()
        self.sent.append(self.clock())
        if self.server_remaining is not None:
            self.server_remaining -= 1

    def remaining(self) -> int:
        """Requests this budget would still allow now."""
        now = self.clock()
        ours = self.limit - sum(1 for t in self.sent if now - t < self.window)
        if self.server_remaining is not None and now < self.server_reset_at:
            return max(0, min(ours, self.server_remaining))
        return max(0, ours)

    def tighten(self, remaining: int, reset: float, limit: int | None = None) -> None:
        """The server says ``remaining`` requests are left for ``reset`` seconds (at most
        this window), and its limit is ``limit``."""
        self.server_remaining = remaining
        self.server_reset_at = self.clock() + min(max(reset, 0.0), self.window)
        if limit is not None:
            self.limit = max(1, limit)

    def hold(self, seconds: float) -> None:
        """The server refused: send nothing for ``seconds`` (at most this window)."""
        self.tighten(0, seconds)


def acquire_all(budgets: Sequence[RateBudget]) -> None:
    """Spend one request from each budget, or from none when any would refuse."""
    for budget in budgets:
        budget.check()
    for budget in budgets:
        budget.acquire()


def hold_for(budgets: Sequence[RateBudget], wait: float | None, label: str) -> RateLimited:
    """A 429 told us to wait ``wait`` seconds (None: it did not say, or said nonsense).

    The wait is charged to the shortest window that can hold it, capped at that window:
    an unreadable wait is one window of the shortest, never a day. Returns the error
    that tells the member how long."""
    ordered = sorted(budgets, key=lambda b: b.window)
    wait = ordered[0].window if wait is None else max(wait, 1.0)
    budget = next((b for b in ordered if wait <= b.window), ordered[-1])
    wait = min(wait, budget.window)
    budget.hold(wait)
    return RateLimited(wait, label, cap=budget.window)
