"""The retriever against the fake Pixabay: paging, cache, budget, and every failure typed."""

import aiohttp
import pytest

from bench.fakes.pixabay import FakePixabay
from search.errors import (
    InvalidApiKey,
    InvalidQuery,
    MalformedResponse,
    PixabayRejected,
    PixabayUnavailable,
    RateLimited,
)
from search.models import Filters
from search.sources.pixabay import PixabayClient
from search.store import Store


@pytest.fixture
async def client(fake_pixabay, tmp_path):
    async with aiohttp.ClientSession() as session:
        yield PixabayClient(session, api_url=fake_pixabay.api_url, key=fake_pixabay.key,
                            store=Store(tmp_path / "c.sqlite3"), timeout=0.5, backoff=0.01)


async def test_pages_with_200_per_page_until_it_has_enough(client, fake_pixabay):
    found = await client.candidates("circle", limit=400)
    assert [q["page"] for q in fake_pixabay.queries] == ["1", "2"]
    assert {q["per_page"] for q in fake_pixabay.queries} == {"200"}
    assert len(found.hits) == len({h.id for h in found.hits})
    assert len(found.hits) == found.total_hits  # fewer than 400 circles are safe
    assert all("circle" in h.tags for h in found.hits)


async def test_500_is_the_most_one_query_reaches():
    async with FakePixabay(per_scene=20) as fake, aiohttp.ClientSession() as session:
        client = PixabayClient(session, api_url=fake.api_url, key=fake.key)
        found = await client.candidates("snow", limit=10_000)  # 720 snow scenes exist
        assert len(found.hits) == 500 and found.total_hits == 500
        assert [q["page"] for q in fake.queries] == ["1", "2", "3"]


async def test_cached_for_24_hours_keyed_by_normalised_parameters(client, fake_pixabay):
    await client.candidates("Circle", limit=50)
    again = await client.candidates("  circle ", limit=50)
    assert fake_pixabay.api_requests == 1 and again.from_cache and again.requests == 0
    await client.candidates("circle", Filters(orientation="vertical"), limit=50)
    assert fake_pixabay.api_requests == 2


async def test_budget_is_never_exceeded_under_300_rapid_queries(client, fake_pixabay):
    sent = refused = 0
    for i in range(300):
        try:
            await client.candidates("circle", Filters(min_width=i), limit=10)
            sent += 1
        except RateLimited as e:
            refused += 1
            assert 0 < e.retry_after <= 60
    assert sent == 100 and refused == 200
    assert fake_pixabay.api_requests == 100  # nothing was sent that Pixabay would refuse


async def test_server_headers_tighten_the_budget(client, fake_pixabay):
    fake_pixabay.rate_limit = 5  # the key is also used elsewhere: Pixabay says 5 left
    for i in range(5):
        await client.candidates("circle", Filters(min_width=i), limit=10)
    with pytest.raises(RateLimited):
        await client.candidates("circle", Filters(min_width=99), limit=10)
    assert fake_pixabay.api_requests == 5


async def test_429_is_typed_with_the_seconds_to_wait(client, fake_pixabay):
    fake_pixabay.rate_limit = 0
    with pytest.raises(RateLimited) as info:
        await client.candidates("circle")
    assert 1 <= info.value.retry_after <= 60
    assert "try again in" in str(info.value)


async def test_invalid_key_is_typed_with_pixabays_text(fake_pixabay):
    async with aiohttp.ClientSession() as session:
        bad = PixabayClient(session, api_url=fake_pixabay.api_url, key="wrong")
        with pytest.raises(InvalidApiKey) as info:
            await bad.candidates("circle")
    assert "Invalid or missing API key" in info.value.detail
    assert str(info.value) == "Pixabay rejected the API key; check PIXABAY_API_KEY."


async def test_other_400_logs_pixabays_text_and_says_our_own_sentence(client, fake_pixabay,
                                                                      monkeypatch, caplog):
    monkeypatch.setattr("search.sources.pixabay.PER_PAGE", 201)
    with pytest.raises(PixabayRejected) as info:
        await client.candidates("circle")
    assert '"per_page" is out of valid range' in info.value.detail
    assert str(info.value) == ("Pixabay refused the search (HTTP 400); try another tag or "
                               "filters, or ask the admins to read the log.")
    assert '"per_page" is out of valid range' in caplog.text


async def test_5xx_is_retried_then_answers(client, fake_pixabay):
    fake_pixabay.fail_next(2, status=502)
    found = await client.candidates("circle", limit=10)
    assert len(found.hits) == 10 and fake_pixabay.api_requests == 3


async def test_5xx_past_the_retries_is_unavailable(client, fake_pixabay):
    fake_pixabay.fail_next(5, status=503)
    with pytest.raises(PixabayUnavailable, match=r"HTTP 503"):
        await client.candidates("circle")
    assert fake_pixabay.api_requests == 3


async def test_hanging_request_times_out_and_is_retried(client, fake_pixabay):
    fake_pixabay.hang_next(1)
    found = await client.candidates("circle", limit=5)
    assert len(found.hits) == 5 and fake_pixabay.api_requests == 2


async def test_malformed_json_is_typed(client, fake_pixabay):
    fake_pixabay.malformed_next(1)
    with pytest.raises(MalformedResponse):
        await client.candidates("circle")


async def test_unknown_fields_ignored_and_missing_optional_fields_tolerated(client,
                                                                          fake_pixabay):
    fake_pixabay.extra_hit_fields = {"aiGenerated": True, "noAiTraining": False}
    fake_pixabay.extra_response_fields = {"next": "whatever"}
    fake_pixabay.omit_hit_fields = {"userImageURL", "likes", "previewURL", "user", "user_id"}
    found = await client.candidates("circle", limit=10)
    assert len(found.hits) == 10
    assert found.hits[0].preview_url == "" and found.hits[0].user == "unknown"


async def test_query_over_100_characters_is_refused_before_any_call(client, fake_pixabay):
    with pytest.raises(InvalidQuery, match="at most 100"):
        await client.candidates("a" * 101)
    assert fake_pixabay.api_requests == 0


def test_filters_are_checked_before_any_call():
    with pytest.raises(InvalidQuery, match="orientation must be one of"):
        Filters(orientation="diagonal")
    with pytest.raises(InvalidQuery, match="colors must be one of"):
        Filters(colors=("purple",))
