"""The Openverse client against the fake Openverse: page sizes, depth, tokens, budgets."""

import aiohttp
import pytest

from bench.fakes.openverse import FakeOpenverse
from bench.fakes.pixabay import default_catalogue
from search.errors import (
    InvalidOpenverseCredentials,
    InvalidQuery,
    OpenverseUnavailable,
    RateLimited,
)
from search.models import Filters
from search.sources import credit, licence_label, share_urls
from search.sources.openverse import OpenverseClient
from search.store import Store


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def client(fake, session, **kw) -> OpenverseClient:
    return OpenverseClient(session, api_url=fake.api_url, backoff=0.01, timeout=2.0, **kw)


async def test_anonymous_never_asks_for_more_than_20_a_page(fake_openverse, session):
    found = await client(fake_openverse, session).candidates("circle", limit=200)
    assert len(found.hits) == 200 and found.requests == 10
    assert {q["page_size"] for q in fake_openverse.queries} == {"20"}
    assert [q["page"] for q in fake_openverse.queries] == [str(p) for p in range(1, 11)]
    assert fake_openverse.auth_headers == [None] * 10 and fake_openverse.token_requests == 0
    hit = found.hits[0]
    assert hit.source == "openverse" and fake_openverse.truth[hit.id].shape == "circle"
    assert hit.preview_url == fake_openverse.thumb_url(hit.id)
    assert hit.page_url.startswith("https://www.flickr.com/photos/")
    assert hit.license and hit.license_url.startswith("https://creativecommons.org/")
    assert credit(hit).startswith(f"Image by {hit.user} via {hit.provider} · ")
    assert licence_label(hit) in credit(hit)
    assert share_urls(hit)[0] == hit.preview_url + "?full_size=true"


async def test_the_fake_answers_401_to_a_large_anonymous_page(fake_openverse, session):
    async with session.get(fake_openverse.api_url + "images/",
                           params={"q": "circle", "page_size": "21"}) as resp:
        assert resp.status == 401
        assert "X-RateLimit-Available-anon_burst" in resp.headers


async def test_pages_past_20_are_never_requested(session):
    async with FakeOpenverse(default_catalogue(20)) as fake:  # 720 images on snow
        fake.burst_limit = 100
        found = await client(fake, session).candidates("snow", limit=500)
        assert len(found.hits) == 20 * 20
        assert max(int(q["page"]) for q in fake.queries) == 20
        async with session.get(fake.api_url + "images/",
                               params={"q": "snow", "page": "21"}) as resp:
            assert resp.status == 400 and "page" in (await resp.json())["detail"]


async def test_registered_client_gets_a_token_and_larger_pages(fake_openverse, session):
    c = client(fake_openverse, session, client_id="app-id", client_secret="app-secret")
    found = await c.candidates("circle", limit=200)
    assert len(found.hits) == 200 and found.requests == 1
    assert fake_openverse.queries[0]["page_size"] == "200"
    assert fake_openverse.token_requests == 1
    assert fake_openverse.auth_headers[0].startswith("Bearer ")


async def test_token_is_renewed_before_it_expires_and_after_a_revocation(fake_openverse,
                                                                        session):
    now = [1000.0]
    fake_openverse.clock = lambda: now[0]
    fake_openverse.token_ttl = 600
    c = client(fake_openverse, session, client_id="app-id", client_secret="app-secret",
               clock=lambda: now[0])
    await c.candidates("star", limit=20)
    now[0] += 545  # within the last tenth of the token's life: renewed before use
    await c.candidates("star", limit=20)
    assert fake_openverse.token_requests == 2
    fake_openverse.revoke_tokens()
    await c.candidates("star", limit=20)  # 401 once, a new token, the same request again
    assert fake_openverse.token_requests == 3
    assert len(fake_openverse.queries) == 4


async def test_wrong_credentials_are_one_sentence(fake_openverse, session):
    c = client(fake_openverse, session, client_id="app-id", client_secret="nope")
    with pytest.raises(InvalidOpenverseCredentials, match="check OPENVERSE_CLIENT_ID"):
        await c.candidates("circle", limit=20)
    assert fake_openverse.api_requests == 0


async def test_own_budget_follows_the_rate_headers_and_refuses_without_sending(
        fake_openverse, session):
    fake_openverse.burst_limit = 3
    c = client(fake_openverse, session)
    for _ in range(3):
        await c.candidates("cross", limit=20)
    with pytest.raises(RateLimited, match="Openverse's rate limit is reached"):
        await c.candidates("cross", limit=20)
    assert fake_openverse.api_requests == 3


async def test_429_gives_retry_after(fake_openverse, session):
    fake_openverse.burst_limit = 1
    await client(fake_openverse, session).candidates("cross", limit=20)
    with pytest.raises(RateLimited) as info:  # a second process does not know the budget
        await client(fake_openverse, session).candidates("cross", limit=20)
    assert 1 <= info.value.retry_after <= 60
    assert fake_openverse.api_requests == 2


async def test_cached_pages_send_nothing(fake_openverse, session, tmp_path):
    async with Store(tmp_path / "cache.sqlite3") as store:
        c = client(fake_openverse, session, store=store)
        await c.candidates("hexagon", limit=40)
        fake_openverse.reset_counters()
        again = await c.candidates("hexagon", limit=40)
    assert again.from_cache and fake_openverse.api_requests == 0


async def test_server_errors_are_retried_then_reported(fake_openverse, session):
    fake_openverse.fail_next(3, 502)
    with pytest.raises(OpenverseUnavailable, match=r"HTTP 502"):
        await client(fake_openverse, session).candidates("circle", limit=20)


async def test_filters_openverse_cannot_apply_are_refused(fake_openverse, session):
    with pytest.raises(InvalidQuery, match="colour"):
        await client(fake_openverse, session).candidates("circle", Filters(colors=("red",)))
    found = await client(fake_openverse, session).candidates(
        "circle", Filters(orientation="vertical"), limit=20)
    assert fake_openverse.queries[-1]["aspect_ratio"] == "tall"
    assert all(fake_openverse.entry(h.id).aspect[1] > fake_openverse.entry(h.id).aspect[0]
               for h in found.hits)


async def test_hostile_results_are_dropped(fake_openverse, session, monkeypatch):
    real = fake_openverse.result

    def broken(image_id):
        r = real(image_id)
        if fake_openverse.entry(image_id).id % 2:
            r["id"] = "../../etc/passwd"
        return r

    monkeypatch.setattr(fake_openverse, "result", broken)
    found = await client(fake_openverse, session).candidates("circle", limit=40)
    assert found.hits and all(fake_openverse.entry(h.id).id % 2 == 0 for h in found.hits)
