"""The retriever against a hostile Pixabay: overflowing numbers, bad bytes, huge bodies,
absurd headers and a 400 that echoes the key. Each answer is one typed error or the good
hits alone; nothing crashes, nothing locks the bot out, nothing refused is cached."""

import logging

import aiohttp
import pytest

from bench.fakes.pixabay import FakePixabay
from search.errors import InvalidApiKey, MalformedResponse, PixabayRejected, RateLimited
from search.sources.pixabay import MAX_BODY_BYTES, PixabayClient
from search.store import Store
from tests.test_cli import cli

UNREADABLE = "Pixabay sent a response that could not be read; try again in a minute."


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def client_for(fake, session, store=None, **options) -> PixabayClient:
    return PixabayClient(session, api_url=fake.api_url, key=fake.key, store=store,
                         timeout=2.0, backoff=0.01, **options)


@pytest.mark.parametrize("field, raw", [
    ("id", "1e400"),  # infinity to Python's json
    ("id", "100000000000000000000"),  # 10**20: past SQLite's INTEGER
    ("imageWidth", "1e400"),
    ("user_id", "-5"),
    ("webformatURL", '"javascript:alert(1)"'),
    ("webformatURL", '"https://cdn.pixabay.com/x\\u001b[31m.jpg"'),
    ("tags", "[1, 2]"),
])
async def test_a_hit_with_a_hostile_field_is_dropped_and_the_rest_kept(
        fake_pixabay, session, caplog, field, raw):
    clean = await client_for(fake_pixabay, session).candidates("circle", limit=200)
    bad = [h.id for h in clean.hits[:3]]
    for image_id in bad:
        fake_pixabay.raw_hit_fields[image_id] = {field: raw}
    fake_pixabay.raw_response_fields = {"totalHits": "1e400"}
    with caplog.at_level(logging.WARNING, logger="search.sources.pixabay"):
        found = await client_for(fake_pixabay, session).candidates("circle", limit=200)
    assert [h.id for h in found.hits] == [h.id for h in clean.hits if h.id not in bad]
    assert f"dropped 3 of {len(clean.hits)} hits; first: {field}" in caplog.text


async def test_a_link_that_is_not_http_is_dropped_but_the_hit_kept(fake_pixabay, session):
    fake_pixabay.extra_hit_fields = {"pageURL": "javascript:alert(1)",
                                     "previewURL": "data:image/png;base64,AAAA"}
    found = await client_for(fake_pixabay, session).candidates("circle", limit=5)
    assert [h.page_url for h in found.hits] == [
        f"https://pixabay.com/photos/id-{h.id}/" for h in found.hits]
    assert {h.preview_url for h in found.hits} == {""}


async def test_a_page_of_nothing_but_bad_hits_is_unreadable_not_no_results(fake_pixabay,
                                                                           session):
    fake_pixabay.extra_hit_fields = {"id": 1e30}
    with pytest.raises(MalformedResponse):
        await client_for(fake_pixabay, session).candidates("circle", limit=5)


async def test_overlong_tags_and_names_are_capped_not_fatal(fake_pixabay, session):
    fake_pixabay.extra_hit_fields = {"tags": "tiger, " + "x" * 5000, "user": "u" * 3000}
    found = await client_for(fake_pixabay, session).candidates("circle", limit=5)
    assert len(found.hits) == 5
    assert found.hits[0].tags[0] == "tiger" and len(", ".join(found.hits[0].tags)) <= 1000
    assert found.hits[0].user == "u" * 100


@pytest.mark.parametrize("body", [
    b'{"total": 1, "totalHits": 1, "hits": [{"id": 1, "tags": "caf\xe9"}]}',  # Latin-1
    b'{"total": 1, "totalHits": NaN, "hits": []}',
    b'\xff\xfe{\x00}\x00',
    b'[1, 2, 3]',
    b'{"total": 1, "totalHits": 1, "hits": "none"}',
])
async def test_an_unreadable_body_is_one_sentence_and_not_cached(fake_pixabay, session,
                                                                 tmp_path, body):
    client = client_for(fake_pixabay, session, store=Store(tmp_path / "c.sqlite3"))
    fake_pixabay.raw_body_next(body)
    with pytest.raises(MalformedResponse) as info:
        await client.candidates("circle", limit=10)
    assert str(info.value) == UNREADABLE
    found = await client.candidates("circle", limit=10)
    assert len(found.hits) == 10 and fake_pixabay.api_requests == 2


async def test_the_cli_says_one_line_and_exits_3_on_a_body_that_is_not_utf8(fake_pixabay,
                                                                            tmp_path):
    fake_pixabay.raw_body_next(b'{"total": 1, "totalHits": 1, "hits": [{"tags": "\xff"}]}')
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle")
    assert (code, out, err) == (3, "", f"error: {UNREADABLE}\n")


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_8_mb_is_refused_and_never_cached(fake_pixabay, session, tmp_path,
                                                            chunked):
    client = client_for(fake_pixabay, session, store=Store(tmp_path / "c.sqlite3"))
    fake_pixabay.huge_next(MAX_BODY_BYTES + 1_000_000, chunked=chunked)
    with pytest.raises(MalformedResponse):
        await client.candidates("circle", limit=10)
    again = await client.candidates("circle", limit=10)
    assert not again.from_cache and fake_pixabay.api_requests == 2


async def test_a_large_body_under_the_cap_is_read(fake_pixabay, session):
    fake_pixabay.huge_next(3_000_000)  # parsed on a thread, not on the event loop
    found = await client_for(fake_pixabay, session).candidates("circle", limit=10)
    assert len(found.hits) == 10


@pytest.mark.parametrize("headers", [
    {"X-RateLimit-Reset": "inf"},
    {"X-RateLimit-Reset": "1e12"},
    {"X-RateLimit-Reset": "nan", "Retry-After": "inf"},
    {"X-RateLimit-Remaining": "lots", "Retry-After": "1e400"},
])
async def test_waits_from_headers_are_clamped_to_a_minute_and_searches_resume(
        fake_pixabay, session, headers):
    now = [1000.0]
    client = client_for(fake_pixabay, session, clock=lambda: now[0])
    fake_pixabay.rate_limit = 0
    fake_pixabay.extra_headers = headers
    with pytest.raises(RateLimited) as info:
        await client.candidates("circle", limit=10)
    assert info.value.retry_after == 60
    assert "try again in 60 s" in str(info.value)
    with pytest.raises(RateLimited):  # we do not ask again while Pixabay said to wait
        await client.candidates("circle", limit=10)
    assert fake_pixabay.api_requests == 1
    fake_pixabay.rate_limit = 100
    fake_pixabay.extra_headers = {}
    now[0] += 61
    assert len((await client.candidates("circle", limit=10)).hits) == 10


async def test_an_infinite_reset_on_a_good_answer_does_not_lock_searches_out(fake_pixabay,
                                                                             session):
    now = [1000.0]
    client = client_for(fake_pixabay, session, clock=lambda: now[0])
    fake_pixabay.extra_headers = {"X-RateLimit-Reset": "inf", "X-RateLimit-Remaining": "0"}
    assert len((await client.candidates("circle", limit=10)).hits) == 10
    fake_pixabay.extra_headers = {}
    now[0] += 61
    assert len((await client.candidates("square", limit=10)).hits) == 10


async def test_a_400_echoing_the_key_is_logged_redacted_and_never_shown(session, caplog):
    async with FakePixabay(key="s3cret-Key/+=") as fake:
        fake.reject_next()
        client = PixabayClient(session, api_url=fake.api_url, key=fake.key)
        with caplog.at_level(logging.WARNING, logger="search.sources.pixabay"), \
                pytest.raises(PixabayRejected) as info:
            await client.candidates("circle")
    assert str(info.value) == ("Pixabay refused the search (HTTP 400); try another tag or "
                               "filters, or ask the admins to read the log.")
    assert "Invalid request: key=[redacted]&q=circle" in caplog.text
    assert "s3cret" not in caplog.text and "s3cret" not in info.value.detail


async def test_the_real_key_error_is_still_recognised(session):
    async with FakePixabay() as fake:
        client = PixabayClient(session, api_url=fake.api_url, key="wrong")
        with pytest.raises(InvalidApiKey):
            await client.candidates("circle")
