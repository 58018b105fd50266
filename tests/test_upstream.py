"""The one request loop (search.upstream.request), for every source, against the fakes.

A 429 says how long to wait in a header; a hostile or broken server may say ``inf``,
``nan``, ``1e12`` or ``-5``. Whichever source sent it, the member is told one window's
wait, the budget is held for that window and no longer, and searches resume after it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import aiohttp
import pytest

from search.errors import OpenverseUnreachable, RateLimited
from search.models import SOURCES
from search.sources import ADAPTERS
from search.sources.openverse import OpenverseClient
from search.sources.pixabay import PixabayClient
from search.upstream import header_seconds

ROOT = Path(__file__).resolve().parent.parent
HOSTILE_WAITS = ["inf", "nan", "1e12", "-5", "Infinity", "soon"]


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


class Refusing:
    """One source's fake, set to answer 429 with a chosen Retry-After, and a client of it."""

    def __init__(self, source: str, fake, session, clock) -> None:
        self.source, self.fake = source, fake
        options = dict(timeout=2.0, backoff=0.01, clock=clock)
        if source == "pixabay":
            self.client = PixabayClient(session, api_url=fake.api_url, key=fake.key, **options)
        else:
            self.client = OpenverseClient(session, api_url=fake.api_url, **options)

    def refuse(self, retry_after: str) -> None:
        if self.source == "pixabay":
            self.fake.rate_limit = 0
            self.fake.extra_headers = {"Retry-After": retry_after,
                                       "X-RateLimit-Reset": retry_after}
        else:
            self.fake.burst_limit = 0
            self.fake.extra_headers = {"Retry-After": retry_after}

    def recover(self) -> None:
        if self.source == "pixabay":
            self.fake.rate_limit = 100
        else:
            self.fake.burst_limit = 20
        self.fake.extra_headers = {}


@pytest.fixture(params=SOURCES)
def refusing(request, session):
    now = [1000.0]
    fake = request.getfixturevalue(f"fake_{request.param}")
    if request.param == "openverse":
        fake.clock = lambda: now[0]
    source = Refusing(request.param, fake, session, lambda: now[0])
    source.now = now
    return source


@pytest.mark.parametrize("retry_after", HOSTILE_WAITS)
async def test_an_unreadable_wait_on_a_429_is_one_minute_for_every_source(refusing,
                                                                          retry_after):
    label = ADAPTERS[refusing.source].label
    refusing.refuse(retry_after)
    with pytest.raises(RateLimited) as info:
        await refusing.client.candidates("circle", limit=20)
    assert str(info.value) == f"{label}'s rate limit is reached; try again in 60 s."
    with pytest.raises(RateLimited, match="try again in 60 s"):  # not asked again meanwhile
        await refusing.client.candidates("circle", limit=20)
    assert refusing.fake.api_requests == 1
    refusing.recover()
    refusing.now[0] += 61  # a minute on, not a day: the source answers again
    assert len((await refusing.client.candidates("circle", limit=20)).hits) == 20
    assert refusing.fake.api_requests == 2


async def test_a_per_minute_wait_past_a_minute_is_capped_at_the_minute(refusing):
    refusing.refuse("90")
    with pytest.raises(RateLimited) as info:
        await refusing.client.candidates("circle", limit=20)
    if refusing.source == "pixabay":  # one budget, a minute long: 90 s cannot be its wait
        assert info.value.retry_after == 60
        refusing.recover()
        refusing.now[0] += 61
        assert len((await refusing.client.candidates("circle", limit=20)).hits) == 20
    else:  # Openverse has a day budget too: a wait past a minute is charged to it
        assert info.value.retry_after == 90
        refusing.recover()
        refusing.now[0] += 61
        with pytest.raises(RateLimited, match="try again in 29 s"):
            await refusing.client.candidates("circle", limit=20)
        refusing.now[0] += 30
        assert len((await refusing.client.candidates("circle", limit=20)).hits) == 20


async def test_a_readable_day_wait_from_openverse_is_kept_and_told(fake_openverse, session):
    now = [1000.0]
    fake_openverse.clock = lambda: now[0]
    client = OpenverseClient(session, api_url=fake_openverse.api_url, backoff=0.01,
                             clock=lambda: now[0])
    fake_openverse.burst_limit = 0
    fake_openverse.extra_headers = {"Retry-After": "3600"}
    with pytest.raises(RateLimited) as info:
        await client.candidates("circle", limit=20)
    assert str(info.value) == "Openverse's rate limit is reached; try again in 3600 s."
    assert client.day.remaining() == 0  # the day's window holds a wait past a minute
    fake_openverse.burst_limit = 20
    fake_openverse.extra_headers = {}
    now[0] += 61
    with pytest.raises(RateLimited, match="try again in 3539 s"):
        await client.candidates("circle", limit=20)
    assert fake_openverse.api_requests == 1
    now[0] += 3540
    assert len((await client.candidates("circle", limit=20)).hits) == 20


async def test_openverse_that_cannot_be_reached_names_its_url_and_setting(session):
    client = OpenverseClient(session, api_url="http://127.0.0.1:9/v1/", retries=1,
                             backoff=0.01)
    with pytest.raises(OpenverseUnreachable) as info:
        await client.candidates("circle", limit=20)
    assert str(info.value) == ("Cannot reach Openverse at http://127.0.0.1:9/v1/ "
                               "(ClientConnectorError); check the network or "
                               "OPENVERSE_API_URL.")


@pytest.mark.parametrize(("value", "seconds"), [
    ("30", 30.0), (" 0 ", 0.0), ("86400", 86400.0), ("2.5", 2.5),
    ("inf", None), ("-inf", None), ("nan", None), ("1e12", None), ("-5", None),
    ("86401", None), ("", None), ("soon", None), (None, None),
])
def test_a_wait_from_a_header_is_finite_and_at_most_a_day(value, seconds):
    assert header_seconds(value) == seconds


def test_the_registry_lists_every_source_a_query_may_name():
    assert tuple(ADAPTERS) == SOURCES
    for name, adapter in ADAPTERS.items():
        assert adapter.name == name and adapter.label and adapter.home.startswith("https://")


def test_openverse_imports_nothing_from_pixabay():
    tree = ast.parse((ROOT / "search/sources/openverse.py").read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    assert not [m for m in imported if "pixabay" in m]


def test_no_module_outside_the_adapters_asks_which_source_it_is():
    """What differs per source is asked of its adapter, never by comparing names."""
    names = "|".join(SOURCES)
    test = re.compile(rf"""[!=]=\s*["']({names})["']|["']({names})["']\s*[!=]=""")
    found = [f"{path.relative_to(ROOT)}:{n}" for folder in ("search", "bot")
             for path in sorted((ROOT / folder).rglob("*.py"))
             if "sources" not in path.relative_to(ROOT).parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if test.search(line)]
    assert found == [], found
