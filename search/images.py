"""Download: the allow-list, the caps, and the byte budget (decoding is ``search.decode``).

A hostile or broken API response cannot make us fetch an internal address: every
URL (and every redirect) must be https on a host in IMAGE_HOSTS, or plain http on
a loopback host that is itself listed. Each failure becomes an ``ImageSkipped``
with a short reason; the caller counts them.

A hostile or broken CDN cannot amplify memory either: the bytes held between download
and decode are bounded (``ByteBudget``: a download waits for room before its body is
read, so the CDN is slowed rather than buffered), and every body has a size cap.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import aiohttp
from yarl import URL

from .config import LOOPBACK_HOSTS
from .errors import ImageSkipped

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
HELD_BYTES = 64 * 1024 * 1024  # downloaded bytes waiting for or in decoding, all queries
# Files kept after download so a contact sheet's tiles (the ranked size) are not fetched
# again on a page turn: a 340 px webformat is 15-40 kB, so 32 MB holds the candidates
# of roughly ten searches; the entry cap bounds the bookkeeping for tiny files.
RECENT_BYTES = 32 * 1024 * 1024
RECENT_ENTRIES = 4096


def check_url(url: str | URL, hosts: Iterable[str]) -> URL:
    """The parsed URL if it may be fetched, else ImageSkipped('host not allowed')."""
    try:
        u = URL(url) if isinstance(url, str) else url
    except (ValueError, TypeError):
        raise ImageSkipped("bad url") from None
    host = (u.host or "").lower()
    if not any(_matches(host, u.port, entry.lower()) for entry in hosts):
        raise ImageSkipped("host not allowed", host)
    if u.scheme == "https" or (u.scheme == "http" and host in LOOPBACK_HOSTS):
        return u
    raise ImageSkipped("host not allowed", f"{u.scheme} on {host}")


def _matches(host: str, port: int | None, entry: str) -> bool:
    """``entry`` is a host (any port) or ``host:port`` (that port only)."""
    name, sep, wanted = entry.rpartition(":")
    if sep and wanted.isdigit() and not name.endswith(":"):  # not "::1"
        return host == name.strip("[]") and port == int(wanted)
    return host == entry.strip("[]") or host == entry


class ByteBudget:
    """Bytes that may be held at once; takers wait in turn (first come, first served)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    async def take(self, n: int) -> int:
        """Wait until ``n`` bytes (at most the capacity) fit; returns what was taken."""
        n = max(0, min(n, self.capacity))
        if not self._waiters and self.held + n <= self.capacity:
            self._grant(n)
            return n
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give(n)  # granted just as it was cancelled
            else:
                self._wake()  # a cancelled head must not block the others
            raise
        return n

    def give(self, n: int) -> None:
        self.held -= n
        self._wake()

    @property
    def waiting(self) -> int:
        return sum(1 for _, f in self._waiters if not f.done())

    def _grant(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.held + n > self.capacity:
                return
            self._waiters.popleft()
            self._grant(n)
            future.set_result(None)


class RecentBytes:
    """The most recently downloaded files by URL, bounded in bytes and in entries (LRU)."""

    def __init__(self, max_bytes: int = RECENT_BYTES, max_entries: int = RECENT_ENTRIES
                 ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self.hits = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, url: str) -> bytes | None:
        data = self._items.get(url)
        if data is not None:
            self._items.move_to_end(url)
            self.hits += 1
        return data

    def put(self, url: str, data: bytes) -> None:
        if len(data) > self.max_bytes or self.max_entries <= 0:
            return
        old = self._items.pop(url, None)
        if old is not None:
            self.bytes -= len(old)
        self._items[url] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes or len(self._items) > self.max_entries:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= len(dropped)


class ImageFetcher:
    """Bounded concurrent downloads on one session (the caller's, and closed by it)."""

    def __init__(self, session: aiohttp.ClientSession, hosts: Iterable[str], *,
                 max_bytes: int = 5_000_000, timeout: float = 10.0, concurrency: int = 16,
                 held_bytes: int = HELD_BYTES, recent: RecentBytes | None = None) -> None:
        self.session = session
        self.recent = RecentBytes() if recent is None else recent
        self.hosts = tuple(hosts)
        self.max_bytes = max_bytes
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        # Room for two of the largest files at least, so a waiting download always fits
        # once the decodes ahead of it are done.
        self.budget = ByteBudget(max(held_bytes, 2 * max_bytes))
        self._sem = asyncio.Semaphore(concurrency)

    async def fetch(self, url: str, *, max_bytes: int | None = None, reuse: bool = False,
                    hosts: Iterable[str] | None = None) -> bytes:
        """The image's bytes, or ImageSkipped with a reason.

        ``reuse``: a file this process downloaded lately (``recent``) is not fetched
        again, and what is fetched is kept there. ``hosts``: another allow-list than the
        candidates' (attachments come from Discord's CDN, nowhere else).
        """
        if reuse and (data := self.recent.get(url)) is not None:
            return data
        data, _ = await self._fetch(url, max_bytes or self.max_bytes, reserve=False,
                                    hosts=self.hosts if hosts is None else tuple(hosts))
        if reuse:
            self.recent.put(url, data)
        return data

    @asynccontextmanager
    async def held(self, url: str) -> AsyncIterator[bytes]:
        """The image's bytes, counted against the byte budget until the block ends.

        A download waits for room in the budget before it reads the body, so when
        decoding falls behind, downloads slow down instead of piling up in memory.
        """
        data, reserved = await self._fetch(url, self.max_bytes, reserve=True)
        self.recent.put(url, data)  # a contact sheet of this ranking shows these files
        try:
            yield data
        finally:
            self.budget.give(reserved)

    async def _fetch(self, url: str, cap: int, *, reserve: bool,
                     hosts: tuple[str, ...] | None = None) -> tuple[bytes, int]:
        hosts = self.hosts if hosts is None else hosts
        target = check_url(url, hosts)
        reserved = 0
        async with self._sem:
            try:
                for _ in range(MAX_REDIRECTS + 1):
                    async with self.session.get(target, timeout=self.timeout,
                                                allow_redirects=False) as resp:
                        if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                            target = check_url(target.join(URL(resp.headers["Location"])),
                                               hosts)
                            continue
                        if resp.status != 200:
                            raise ImageSkipped(f"http {resp.status}")
                        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
                        if not ctype.startswith("image/"):
                            raise ImageSkipped("not an image", ctype or "no content type")
                        size = resp.content_length
                        if size is not None and size > cap:
                            raise ImageSkipped("too large", f"{size} bytes")
                        if reserve:
                            reserved = await self.budget.take(size if size is not None else cap)
                        data = bytearray()
                        async for chunk in resp.content.iter_chunked(65536):
                            data += chunk
                            if len(data) > cap:
                                raise ImageSkipped("too large", f"over {cap} bytes")
                        if reserve and len(data) > reserved:  # longer than it said
                            raise ImageSkipped("truncated", "body longer than its length")
                        if reserve and len(data) < reserved:
                            self.budget.give(reserved - len(data))
                            reserved = len(data)
                        return bytes(data), reserved
                raise ImageSkipped("too many redirects")
            except BaseException as e:
                if reserved:
                    self.budget.give(reserved)
                if isinstance(e, TimeoutError):
                    raise ImageSkipped("timeout") from None
                if isinstance(e, aiohttp.ClientPayloadError):
                    raise ImageSkipped("truncated") from None
                if isinstance(e, aiohttp.ClientError):
                    raise ImageSkipped("download failed", type(e).__name__) from None
                raise
