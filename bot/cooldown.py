"""One search per member per USER_COOLDOWN_SECONDS, charged only when a search starts.

discord.py's ``checks.cooldown`` spends the member's turn before the command runs, so a
command refused for its input ("give a phrase") would make the corrected one wait. Here
the turn is taken once the request has passed every check, and handed back when the
search itself refuses the query.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from discord import app_commands

MAX_MEMBERS = 10_000  # members remembered at once; only those inside their window matter


class MemberCooldown:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._started: dict[int, float] = {}  # member id -> when their last search started

    def check(self, member_id: int) -> None:
        """CommandOnCooldown (the member's "slow down") if their turn is not back yet."""
        if self.seconds <= 0:
            return
        started = self._started.get(member_id)
        if started is None:
            return
        wait = started + self.seconds - self.clock()
        if wait > 0:
            raise app_commands.CommandOnCooldown(app_commands.Cooldown(1, self.seconds), wait)

    def charge(self, member_id: int) -> float | None:
        """Take the member's turn now; returns what to hand to ``refund``."""
        if self.seconds <= 0:
            return None
        before = self._started.pop(member_id, None)
        self._started[member_id] = self.clock()
        self._prune()
        return before

    def refund(self, member_id: int, before: float | None) -> None:
        """The search refused the query: the member's turn is theirs again."""
        self._started.pop(member_id, None)
        if before is not None:
            self._started[member_id] = before

    def _prune(self) -> None:
        if len(self._started) <= MAX_MEMBERS:
            return
        now = self.clock()
        for member_id, started in list(self._started.items()):  # oldest first
            if len(self._started) <= MAX_MEMBERS // 2 and started + self.seconds > now:
                break
            del self._started[member_id]
