"""Prometheus metrics (prometheus-client), served on METRICS_PORT when it is set.

The metrics live in the library's default registry, so each part of the product
counts where the event happens with one small call; nothing is served unless an
entry point calls ``serve()``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import ConfigError

log = logging.getLogger(__name__)

SEARCHES = Counter(
    "findimage_searches", "Searches by how they ended: results, no_results, busy, cooldown, "
    "refused, or the error's kind.", ["outcome", "source"])
SEARCH_SECONDS = Histogram(
    "findimage_search_seconds", "Wall time of a search that answered, from the command to "
    "the answer; warm when every vector came from the cache.", ["cache"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120))
IMAGES_SKIPPED = Counter(
    "findimage_images_skipped", "Candidate images left out of a ranking, by reason.",
    ["reason"])
UPSTREAM_REQUESTS = Counter(
    "findimage_upstream_requests", "Requests sent to an image source's API, by HTTP status "
    "(or timeout, error).", ["source", "status"])
QUEUE_DEPTH = Gauge(
    "findimage_queue_depth", "Searches admitted and not finished: running or waiting for a "
    "slot.")
ENCODER_BATCH_SIZE = Histogram(
    "findimage_encoder_batch_size", "Images per forward pass of the image encoder.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
SHARES = Counter("findimage_shares", "Picks posted for the team.")


class Budget(Protocol):
    def remaining(self) -> int: ...


class _Budgets(Collector):
    """findimage_upstream_budget_remaining, read from each source's live budget."""

    def __init__(self) -> None:
        self.budgets: weakref.WeakValueDictionary[str, Budget] = weakref.WeakValueDictionary()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "findimage_upstream_budget_remaining",
            "Requests a source's API will still take in its current window.",
            labels=["source"])
        for source, budget in sorted(self.budgets.items()):
            family.add_metric([source], budget.remaining())
        yield family


_BUDGETS = _Budgets()
REGISTRY.register(_BUDGETS)


def watch_budget(source: str, budget: Budget) -> None:
    """Report ``budget.remaining()`` as the source's remaining budget (the newest wins)."""
    _BUDGETS.budgets[source] = budget


@contextmanager
def serve(host: str, port: int) -> Iterator[str]:
    """Serve /metrics on ``host:port`` (0: any free port) until the block ends; yields the URL."""
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as e:
        raise ConfigError(f"METRICS_PORT {port} on {host} cannot be opened "
                          f"({e.strerror or e}); pick a free port or leave METRICS_PORT "
                          "empty.") from e
    bound = server.server_address[1]
    name = f"[{host}]" if ":" in host else host
    url = f"http://{name}:{bound}/metrics"
    log.info("metrics on %s", url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
