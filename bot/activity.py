"""What an operator sees of each /findimage: one INFO line and the search metrics.

A ``SearchRecord`` rides on the interaction from the command's first line (or from the
error handler, for a search refused before its body ran) and is finished exactly once,
with the outcome. The phrase's text is never logged, only its length; the tag is quoted,
so a member's text cannot forge a log line.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from search import metrics
from search.errors import AllImagesFailed, InvalidQuery, NoResults, SearchError
from search.models import SOURCES

from .errors import Busy, Refusal

if TYPE_CHECKING:  # search.service imports torch, which loads last at start-up
    from search.service import SearchResult

log = logging.getLogger("bot.searches")

_KEY = "search_record"
_PLAIN = re.compile(r"[\w.:-]+")
_STAGES = ("api", "download", "decode", "encode", "rank", "total")


def outcome_of(error: BaseException) -> str:
    """results / no_results / busy / cooldown / refused, or the error's kind in snake case."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, Busy):
        return "busy"
    if isinstance(error, app_commands.CommandOnCooldown):
        return "cooldown"
    if isinstance(error, (Refusal, InvalidQuery, app_commands.CheckFailure,
                          app_commands.TransformerError)):
        return "refused"
    if isinstance(error, NoResults):
        return "no_results"
    if isinstance(error, SearchError):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()
    return "error"


@dataclass
class SearchRecord:
    interaction_id: int
    guild_id: int | None
    channel_id: int | None
    member_id: int
    source: str
    tag: str
    phrase_chars: int
    started: float = field(default_factory=time.perf_counter)
    result: SearchResult | None = None
    candidates: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    done: bool = False

    def took(self, result: SearchResult) -> None:
        self.result = result
        self.candidates = result.fetched
        self.skipped = dict(result.skipped)

    def finish(self, outcome: str) -> None:
        """Log the line and count the metrics, once."""
        if self.done:
            return
        self.done = True
        seconds = time.perf_counter() - self.started
        fields: dict[str, object] = {
            "outcome": outcome, "guild": self.guild_id, "channel": self.channel_id,
            "member": self.member_id, "interaction": self.interaction_id,
            "source": self.source, "tag": self.tag, "phrase_chars": self.phrase_chars,
        }
        result = self.result
        if self.candidates is not None:
            fields["candidates"] = self.candidates
        if result is not None:
            fields["ranked"] = result.candidates
            fields["cache"] = _cache(result)
            fields["api_cached"] = result.api_cached
            fields["vectors_cached"] = result.embeddings_cached
            fields["downloaded"] = result.downloaded
            fields["left_out"] = result.left_out  # still downloading at the deadline
        fields["skipped"] = dict(sorted(self.skipped.items()))
        if result is not None:
            for stage in _STAGES:
                if stage in result.timings:
                    fields[f"{stage}_ms"] = round(result.timings[stage], 1)
        fields["seconds"] = round(seconds, 3)

        metrics.SEARCHES.labels(outcome, self.source).inc()
        for reason, n in self.skipped.items():
            metrics.IMAGES_SKIPPED.labels(reason).inc(n)
        if result is not None and outcome == "results":
            metrics.SEARCH_SECONDS.labels(_cache(result)).observe(seconds)
        log.info("search %s", " ".join(f"{k}={_text(k, v)}" for k, v in fields.items()),
                 extra={"search": fields})


def _cache(result: SearchResult) -> str:
    return "warm" if result.downloaded == 0 else "cold"


def _text(key: str, value: object) -> str:
    """key=value: a member's text (the tag) is always quoted, our own words never."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if key != "tag" and isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def begin(interaction: discord.Interaction, tag: str, phrase: str) -> SearchRecord:
    """The record of this search, kept on the interaction until it is finished."""
    record = interaction.extras.get(_KEY)
    if record is None:
        default = getattr(getattr(interaction.client, "settings", None), "search_source", None)
        source = str(getattr(interaction.namespace, "source", None) or default or SOURCES[0])
        record = SearchRecord(
            interaction_id=interaction.id, guild_id=interaction.guild_id,
            channel_id=interaction.channel_id, member_id=interaction.user.id, source=source,
            tag=" ".join(str(tag).split())[:100], phrase_chars=len(str(phrase)))
        interaction.extras[_KEY] = record
    return record


def answered(interaction: discord.Interaction) -> None:
    """Finish the search's record: its results are posted."""
    record = interaction.extras.get(_KEY)
    if record is not None:
        record.finish("results")


def failed(interaction: discord.Interaction, error: BaseException) -> None:
    """Finish the search's record with the outcome ``error`` stands for."""
    ns = interaction.namespace
    record = begin(interaction, getattr(ns, "tag", "") or "", getattr(ns, "phrase", "") or "")
    original = getattr(error, "original", error)
    if isinstance(original, AllImagesFailed):
        record.candidates = original.count
        record.skipped = dict(original.reasons)
    record.finish(outcome_of(error))
