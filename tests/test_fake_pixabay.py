"""The fake Pixabay against plain aiohttp: documented parameters, errors, images, faults."""

from __future__ import annotations

import asyncio
import io
import json
import re

import aiohttp
import pytest
from PIL import Image, UnidentifiedImageError
from yarl import URL

from bench.fakes.pixabay import (
    KEY_ERROR,
    PAGE_ERROR,
    PER_PAGE_ERROR,
    RATE_ERROR,
    SIZES,
    FakePixabay,
)
from bench.fakes.scenes import ALL_SCENES, CatalogueEntry, size_for

pytestmark = pytest.mark.timeout(60)

HIT_FIELDS = {
    "id": int, "pageURL": str, "type": str, "tags": str, "previewURL": str,
    "previewWidth": int, "previewHeight": int, "webformatURL": str, "webformatWidth": int,
    "webformatHeight": int, "largeImageURL": str, "imageWidth": int, "imageHeight": int,
    "imageSize": int, "views": int, "downloads": int, "collections": int, "likes": int,
    "comments": int, "user_id": int, "user": str, "userImageURL": str,
}


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def call(session, fake, **params):
    """GET /api/ with the right key (unless given); returns (status, headers, text)."""
    params = {"key": fake.key, **{k: str(v) for k, v in params.items()}}
    async with session.get(fake.api_url, params=params) as r:
        return r.status, r.headers, await r.text()


async def search(session, fake, **params) -> dict:
    status, headers, text = await call(session, fake, **params)
    assert status == 200, text
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(text)


async def fetch(session, url):
    async with session.get(url) as r:
        return r.status, r.headers, await r.read()


def ids(body) -> list[int]:
    return [h["id"] for h in body["hits"]]


def matching(fake, *tags) -> list[CatalogueEntry]:
    return [e for e in fake.entries if set(tags) <= set(e.scene.tags.split(", "))]


# ------------------------------------------------------------------ key and q


@pytest.mark.parametrize("key", [None, "", "wrong-key"])
async def test_missing_or_wrong_key_is_400_with_pixabay_text(session, fake_pixabay, key):
    params = {"q": "circle"} if key is None else {"q": "circle", "key": key}
    async with session.get(fake_pixabay.api_url, params=params) as r:
        assert r.status == 400
        assert r.content_type == "text/plain"
        assert await r.text() == KEY_ERROR == "[ERROR 400] Invalid or missing API key ([key])."


async def test_q_over_100_characters_is_400(session, fake_pixabay):
    status, headers, text = await call(session, fake_pixabay, q="a" * 101)
    assert status == 400 and '"q"' in text and headers["Content-Type"].startswith("text/plain")
    status, _, _ = await call(session, fake_pixabay, q="circle".ljust(100))
    assert status == 200


async def test_q_words_must_all_be_tags_case_insensitive(session, fake_pixabay):
    fake = fake_pixabay
    want = {e.id for e in matching(fake, "circle", "red")}
    assert len(want) == 40
    for q in ("circle red", "RED Circle", "red+circle"):  # '+' sent literally (%2B)
        body = await search(session, fake, q=q, per_page=200)
        assert body["total"] == 40 and set(ids(body)) == want
    raw = URL(f"{fake.api_url}?key={fake.key}&q=red+circle&per_page=200", encoded=True)
    async with session.get(raw) as r:  # '+' as the URL encoding of a space
        assert set(ids(await r.json())) == want
    body = await search(session, fake, q="circles")
    assert body == {"total": 0, "totalHits": 0, "hits": []}


async def test_empty_q_returns_everything(session, fake_pixabay):
    body = await search(session, fake_pixabay)
    assert body["total"] == len(fake_pixabay.entries) == 1440
    assert len(body["hits"]) == 20


# ------------------------------------------------------------------ filters


@pytest.mark.parametrize(("name", "value"), [
    ("lang", "xx"), ("id", "abc"), ("image_type", "photograph"), ("orientation", "diagonal"),
    ("category", "cats"), ("colors", "purple"), ("colors", "red,mauve"), ("min_width", "-1"),
    ("min_height", "tall"), ("editors_choice", "maybe"), ("safesearch", "yes"),
    ("order", "random"), ("page", "first"), ("per_page", "many"),
])
async def test_invalid_values_are_400_naming_the_parameter(session, fake_pixabay, name, value):
    status, headers, text = await call(session, fake_pixabay, **{name: value})
    assert status == 400
    assert headers["Content-Type"].startswith("text/plain")
    assert text.startswith("[ERROR 400]") and f'"{name}"' in text


async def test_lang_is_accepted_and_does_not_change_results(session, fake_pixabay):
    en = await search(session, fake_pixabay, q="star")
    for lang in ("de", "ja", "en"):
        assert await search(session, fake_pixabay, q="star", lang=lang) == en


async def test_id_returns_that_image(session, fake_pixabay):
    image_id = fake_pixabay.entries[7].id
    body = await search(session, fake_pixabay, id=image_id)
    assert body["total"] == 1 and ids(body) == [image_id]
    assert body["hits"][0]["tags"] == fake_pixabay.truth[image_id].tags
    assert (await search(session, fake_pixabay, id=1))["total"] == 0


async def test_image_type(session, fake_pixabay):
    base = await search(session, fake_pixabay, q="square")
    assert (await search(session, fake_pixabay, q="square", image_type="photo")) == base
    assert all(h["type"] == "photo" for h in base["hits"])
    for kind in ("illustration", "vector"):
        assert (await search(session, fake_pixabay, q="square", image_type=kind))["total"] == 0


async def test_orientation(session, fake_pixabay):
    fake = fake_pixabay
    pool = matching(fake, "circle", "red")
    h = await search(session, fake, q="circle red", orientation="horizontal", per_page=200)
    v = await search(session, fake, q="circle red", orientation="vertical", per_page=200)
    assert h["total"] == sum(e.aspect[0] > e.aspect[1] for e in pool) > 0
    assert v["total"] == sum(e.aspect[0] < e.aspect[1] for e in pool) > 0
    assert h["total"] + v["total"] < len(pool)  # squares are neither
    assert all(x["imageWidth"] > x["imageHeight"] for x in h["hits"])
    assert all(x["webformatHeight"] > x["webformatWidth"] for x in v["hits"])


async def test_category(session, fake_pixabay):
    fake = fake_pixabay
    nature = await search(session, fake, q="hexagon", category="nature", per_page=200)
    want = {e.id for e in matching(fake, "hexagon") if e.scene.background in ("snow", "grass")}
    assert set(ids(nature)) == want and len(want) == 120
    travel = await search(session, fake, q="hexagon", category="travel", per_page=200)
    assert all(fake.truth[i].background == "sand" for i in ids(travel)) and travel["total"] == 60
    assert (await search(session, fake, q="hexagon", category="music"))["total"] == 0


async def test_min_width_and_min_height(session, fake_pixabay):
    fake = fake_pixabay
    full = await search(session, fake, q="cross blue", per_page=200)
    wide = await search(session, fake, q="cross blue", min_width=3500, per_page=200)
    tall = await search(session, fake, q="cross blue", min_height=2500, per_page=200)
    assert 0 < wide["total"] < full["total"] and 0 < tall["total"] < full["total"]
    assert all(h["imageWidth"] >= 3500 for h in wide["hits"])
    assert all(h["imageHeight"] >= 2500 for h in tall["hits"])
    assert wide["total"] == sum(h["imageWidth"] >= 3500 for h in full["hits"])
    both = await search(session, fake, q="cross blue", min_width=3500, min_height=2500,
                        per_page=200)
    assert set(ids(both)) == set(ids(wide)) & set(ids(tall))


async def test_colors(session, fake_pixabay):
    fake = fake_pixabay
    red = await search(session, fake, q="star", colors="red", per_page=200)
    assert red["total"] == 40 and {fake.truth[i].colour for i in ids(red)} == {"red"}
    lilac = await search(session, fake, q="star", colors="lilac", per_page=200)
    assert lilac["total"] == 40 and {fake.truth[i].colour for i in ids(lilac)} == {"purple"}
    both = await search(session, fake, q="star", colors="red,blue", per_page=200)
    assert both["total"] == 80 and {fake.truth[i].colour for i in ids(both)} == {"red", "blue"}
    assert (await search(session, fake, q="star", colors="grayscale"))["total"] == 0


async def test_editors_choice(session, fake_pixabay):
    fake = fake_pixabay
    body = await search(session, fake, q="triangle", editors_choice="true", per_page=200)
    want = {e.id for e in matching(fake, "triangle")} & fake.editors_choice_ids
    assert set(ids(body)) == want and 0 < len(want) < 240
    assert (await search(session, fake, q="triangle", editors_choice="false"))["total"] == 240


async def test_safesearch_drops_the_unsafe_subset(session, fake_pixabay):
    fake = fake_pixabay
    assert 0 < len(fake.unsafe_ids) < 100
    assert (await search(session, fake, safesearch="false"))["total"] == 1440
    assert (await search(session, fake, safesearch="true"))["total"] == 1440 - len(fake.unsafe_ids)
    unsafe = min(fake.unsafe_ids)
    assert (await search(session, fake, id=unsafe, safesearch="true"))["total"] == 0
    assert (await search(session, fake, id=unsafe))["total"] == 1  # default false


async def test_order(session, fake_pixabay):
    popular = await search(session, fake_pixabay, q="circle", per_page=200)
    views = [h["views"] for h in popular["hits"]]
    assert views == sorted(views, reverse=True)
    assert await search(session, fake_pixabay, q="circle", per_page=200, order="popular") == popular
    latest = await search(session, fake_pixabay, q="circle", per_page=200, order="latest")
    assert ids(latest) == sorted(ids(latest), reverse=True)


# ------------------------------------------------------------------ paging


@pytest.mark.parametrize("per_page", [2, 201, 0, -5])
async def test_per_page_out_of_range_is_400(session, fake_pixabay, per_page):
    status, _, text = await call(session, fake_pixabay, per_page=per_page)
    assert (status, text) == (400, PER_PAGE_ERROR)


async def test_per_page_bounds_and_default(session, fake_pixabay):
    assert len((await search(session, fake_pixabay))["hits"]) == 20
    assert len((await search(session, fake_pixabay, per_page=3))["hits"]) == 3
    assert len((await search(session, fake_pixabay, per_page=200))["hits"]) == 200


async def test_total_hits_capped_at_500_and_pages_stop_there(session, fake_pixabay):
    fake = fake_pixabay
    seen: list[int] = []
    for page, n in ((1, 200), (2, 200), (3, 100)):
        body = await search(session, fake, per_page=200, page=page, order="latest")
        assert (body["total"], body["totalHits"], len(body["hits"])) == (1440, 500, n)
        seen += ids(body)
    assert len(set(seen)) == 500 and seen == sorted(seen, reverse=True)
    for page in (4, 0):
        status, _, text = await call(session, fake, per_page=200, page=page)
        assert (status, text) == (400, PAGE_ERROR)


async def test_pages_of_a_small_result(session, fake_pixabay):
    pages = [await search(session, fake_pixabay, q="circle red snow", per_page=3, page=p)
             for p in (1, 2, 3, 4)]
    assert [len(b["hits"]) for b in pages] == [3, 3, 3, 1]
    assert len({i for b in pages for i in ids(b)}) == 10
    assert (await call(session, fake_pixabay, q="circle red snow", per_page=3, page=5))[2] \
        == PAGE_ERROR
    # no results: page 1 is an empty answer, page 2 is out of range
    assert (await search(session, fake_pixabay, q="nothing"))["hits"] == []
    assert (await call(session, fake_pixabay, q="nothing", page=2))[0] == 400


# ------------------------------------------------------------------ hits and images


async def test_every_documented_hit_field_with_its_type(session, fake_pixabay):
    fake = fake_pixabay
    body = await search(session, fake, q="hexagon", per_page=50)
    for hit in body["hits"]:
        assert set(hit) == set(HIT_FIELDS)
        for name, kind in HIT_FIELDS.items():
            assert type(hit[name]) is kind, name
        entry = fake.entry(hit["id"])
        assert hit["tags"] == entry.scene.tags and hit["type"] == "photo"
        slug = "-".join(entry.scene.tags.split(", "))
        assert hit["pageURL"] == f"https://pixabay.com/photos/{slug}-{hit['id']}/"
        assert (hit["previewWidth"], hit["previewHeight"]) == size_for(entry.aspect, 150)
        assert (hit["webformatWidth"], hit["webformatHeight"]) == size_for(entry.aspect, 640)
        assert max(hit["imageWidth"], hit["imageHeight"]) >= 1920
        w, h = entry.aspect
        assert abs(hit["imageWidth"] / hit["imageHeight"] - w / h) < 0.01
        for name, size in (("previewURL", 150), ("webformatURL", 640), ("largeImageURL", 1280)):
            url = URL(hit[name])
            assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", fake.port)
            assert re.fullmatch(rf"/get/[0-9a-f]+_{size}\.jpg", url.path)
        assert hit["userImageURL"].startswith("https://cdn.pixabay.com/user/")
        assert hit["downloads"] <= hit["views"] and hit["imageSize"] > 0
    again = await search(session, fake, q="hexagon", per_page=50)
    assert again == body  # deterministic per id
    assert fake.hit(body["hits"][0]["id"]) == body["hits"][0]


@pytest.mark.parametrize("size", SIZES)
async def test_size_variants_serve_jpegs_with_that_longest_side(session, fake_pixabay, size):
    fake = fake_pixabay
    hit = (await search(session, fake, q="star yellow night", per_page=3))["hits"][0]
    url = hit["webformatURL"].replace("_640.", f"_{size}.")
    status, headers, data = await fetch(session, url)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert int(headers["Content-Length"]) == len(data)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB"
    assert img.size == size_for(fake.entry(hit["id"]).aspect, size) and max(img.size) == size
    if size == 640:
        assert img.size == (hit["webformatWidth"], hit["webformatHeight"])
    if size == 150:
        assert url == hit["previewURL"]
        assert img.size == (hit["previewWidth"], hit["previewHeight"])
    if size == 1280:
        assert url == hit["largeImageURL"]


async def test_unknown_image_paths_are_404(session, fake_pixabay):
    url = fake_pixabay.image_url(fake_pixabay.entries[0].id, 640)
    assert (await fetch(session, url.replace("_640.", "_500.")))[0] == 404
    assert (await fetch(session, re.sub(r"/get/[0-9a-f]+_", "/get/" + "0" * 48 + "_", url)))[0] \
        == 404


async def test_images_are_rendered_once_and_cached(session):
    # A scene seed nobody else renders, so the process-wide cache starts cold.
    entry = CatalogueEntry(id=42, scene=ALL_SCENES[5], seed=987_654_321, aspect=(4, 3),
                           quality=75)
    async with FakePixabay([entry]) as fake:
        url = fake.image_url(42, 340)
        first = await asyncio.gather(*(fetch(session, url) for _ in range(3)))
        assert fake.render_count == 1
        assert (await fetch(session, url))[2] == first[0][2]
        assert fake.render_count == 1
        assert fake.requests_for_image(42) == 4


# ------------------------------------------------------------------ rate limit


async def test_rate_limit_headers_429_and_recovery(session, fake_pixabay):
    fake = fake_pixabay
    now = [1000.0]
    fake.clock = lambda: now[0]
    fake.rate_limit = 3
    seen = []
    for step in (0, 10, 5):
        now[0] += step
        status, headers, _ = await call(session, fake, q="circle")
        assert status == 200
        seen.append((headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"],
                     headers["X-RateLimit-Reset"]))
    assert seen == [("3", "2", "60"), ("3", "1", "50"), ("3", "0", "45")]
    status, headers, text = await call(session, fake, q="circle")
    assert (status, text) == (429, RATE_ERROR)
    assert headers["X-RateLimit-Remaining"] == "0" and headers["X-RateLimit-Reset"] == "45"
    # Errors carry the headers too; another key has its own budget.
    status, headers, _ = await call(session, fake, key="other")
    assert status == 400 and headers["X-RateLimit-Remaining"] == "2"
    now[0] += 44.5
    assert (await call(session, fake))[0] == 429
    now[0] += 0.5  # the window is over
    status, headers, _ = await call(session, fake, q="circle")
    assert status == 200 and headers["X-RateLimit-Remaining"] == "2"
    assert headers["X-RateLimit-Reset"] == "60"


async def test_default_budget_is_100_per_60_seconds(session, fake_pixabay):
    _, headers, _ = await call(session, fake_pixabay)
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("100", "99")
    assert int(headers["X-RateLimit-Reset"]) == 60


# ------------------------------------------------------------------ API faults


async def test_latency_delays_api_and_images(session, fake_pixabay):
    fake = fake_pixabay
    url = fake.image_url(fake.entries[0].id, 150)
    await fetch(session, url)  # warm the render cache
    fake.latency = 0.25
    loop = asyncio.get_running_loop()
    for coro in (call(session, fake), fetch(session, url)):
        t0 = loop.time()
        assert (await coro)[0] == 200
        assert loop.time() - t0 >= 0.24


async def test_fail_next_gives_5xx_then_recovers(session, fake_pixabay):
    fake = fake_pixabay
    fake.fail_next(2, status=502)
    for _ in range(2):
        status, headers, _ = await call(session, fake, q="circle")
        assert status == 502 and "X-RateLimit-Remaining" in headers
    assert (await call(session, fake, q="circle"))[0] == 200
    fake.fail_next()
    assert (await call(session, fake))[0] == 503


async def test_hang_next_until_release(session, fake_pixabay):
    fake = fake_pixabay
    fake.hang_next(2)
    tasks = [asyncio.ensure_future(call(session, fake, q="circle")) for _ in range(2)]
    await fake.wait_for_hung(2, timeout=5)
    assert fake.hung == 2 and not any(t.done() for t in tasks)
    fake.release_hung()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [r[0] for r in results] == [200, 200]
    assert (await call(session, fake))[0] == 200  # the knob is spent


async def test_hung_request_is_dropped_on_close(session, fake_pixabay):
    fake = fake_pixabay
    fake.hang_next()
    task = asyncio.ensure_future(call(session, fake))
    await fake.wait_for_hung(1, timeout=5)
    await asyncio.wait_for(fake.close(), 5)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, 5)


async def test_malformed_next_is_broken_json(session, fake_pixabay):
    fake = fake_pixabay
    fake.malformed_next()
    status, headers, text = await call(session, fake, q="circle")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(text)
    assert json.loads((await call(session, fake, q="circle"))[2])["total"] == 240


async def test_extra_and_omitted_fields(session, fake_pixabay):
    fake = fake_pixabay
    fake.extra_hit_fields = {"noAiTraining": True, "isAiGenerated": False}
    fake.extra_response_fields = {"schema": 2}
    fake.omit_hit_fields = {"userImageURL", "likes", "previewURL"}
    body = await search(session, fake, q="square")
    assert body["schema"] == 2
    for hit in body["hits"]:
        assert hit["noAiTraining"] is True and hit["isAiGenerated"] is False
        assert not {"userImageURL", "likes", "previewURL"} & set(hit)
        assert "webformatURL" in hit


# ------------------------------------------------------------------ image faults


def first_id(fake, offset=0):
    return fake.entries[offset].id


async def test_fault_missing_on_every_size(session, fake_pixabay):
    fake = fake_pixabay
    image_id = first_id(fake)
    fake.set_image_fault(image_id, "missing")
    for size in SIZES:
        assert (await fetch(session, fake.image_url(image_id, size)))[0] == 404
    assert (await fetch(session, fake.image_url(first_id(fake, 1), 150)))[0] == 200
    fake.clear_image_faults()
    assert (await fetch(session, fake.image_url(image_id, 150)))[0] == 200


@pytest.mark.parametrize("size", [150, 640])
async def test_fault_truncated(session, fake_pixabay, size):
    fake = fake_pixabay
    image_id = first_id(fake, 2)
    _, _, whole = await fetch(session, fake.image_url(image_id, size))
    fake.set_image_fault(image_id, "truncated")
    status, headers, data = await fetch(session, fake.image_url(image_id, size))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert int(headers["Content-Length"]) == len(data) < len(whole) and whole.startswith(data)
    img = Image.open(io.BytesIO(data))  # the header is intact
    assert img.format == "JPEG"
    with pytest.raises(OSError, match="truncated"):
        img.load()


@pytest.mark.parametrize("size", [180, 960])
async def test_fault_not_an_image(session, fake_pixabay, size):
    fake = fake_pixabay
    html_id, garbage_id = first_id(fake, 3), first_id(fake, 4)
    fake.set_image_fault(html_id, "html")
    fake.set_image_fault(garbage_id, "garbage")
    status, headers, data = await fetch(session, fake.image_url(html_id, size))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert data.startswith(b"<!DOCTYPE html>")
    status, headers, data = await fetch(session, fake.image_url(garbage_id, size))
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and len(data) > 1000
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(data))


async def test_fault_bomb(session, fake_pixabay):
    fake = fake_pixabay
    image_id = first_id(fake, 5)
    fake.set_image_fault(image_id, "bomb")
    bodies = []
    for size in (150, 640):
        status, headers, data = await fetch(session, fake.image_url(image_id, size))
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert len(data) < 200_000
        img = Image.open(io.BytesIO(data))  # reads the header only
        assert img.format == "PNG" and img.size == (8000, 6250)
        bodies.append(data)
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize(("kind", "fmt", "mode", "ctype"), [
    ("rgba", "PNG", "RGBA", "image/png"),
    ("gif", "GIF", "P", "image/gif"),
    ("cmyk", "JPEG", "CMYK", "image/jpeg"),
])
async def test_fault_other_formats(session, fake_pixabay, kind, fmt, mode, ctype):
    fake = fake_pixabay
    image_id = first_id(fake, 6)
    fake.set_image_fault(image_id, kind)
    for size in (150, 340):
        status, headers, data = await fetch(session, fake.image_url(image_id, size))
        assert status == 200 and headers["Content-Type"] == ctype
        img = Image.open(io.BytesIO(data))
        assert (img.format, img.mode) == (fmt, mode)
        assert img.size == size_for(fake.entry(image_id).aspect, size)
        if kind == "rgba":
            w, h = img.size
            assert img.getpixel((0, 0))[3] == 0 and img.getpixel((w // 2, h // 2))[3] == 255


async def test_fault_foreign_host(session, fake_pixabay):
    fake = fake_pixabay
    image_id = ids(await search(session, fake, q="cross"))[0]
    fake.set_image_fault(image_id, "foreign_host")
    hit = next(h for h in (await search(session, fake, q="cross"))["hits"] if h["id"] == image_id)
    for name in ("previewURL", "webformatURL", "largeImageURL"):
        url = URL(hit[name])
        assert (url.host, url.port) == ("localhost", fake.port)
    assert fake.requests_for_image(image_id) == 0
    status, headers, data = await fetch(session, hit["webformatURL"])  # still served
    assert status == 200 and Image.open(io.BytesIO(data)).format == "JPEG"
    assert fake.requests_for_image(image_id) == 1


async def test_unknown_fault_is_refused(fake_pixabay):
    with pytest.raises(ValueError):
        fake_pixabay.set_image_fault(first_id(fake_pixabay), "on-fire")


# ------------------------------------------------------------------ counters and truth


async def test_counters_queries_and_reset(session, fake_pixabay):
    fake = fake_pixabay
    body = await search(session, fake, q="circle", colors="red", per_page=3)
    await call(session, fake, key="bad")
    for hit in body["hits"][:2]:
        await fetch(session, hit["webformatURL"])
    await fetch(session, f"http://127.0.0.1:{fake.port}/nowhere")
    assert fake.api_requests == 2 and fake.image_requests == 2
    assert fake.hits_by_path["/api/"] == 2 and fake.hits_by_path["/nowhere"] == 1
    assert fake.hits_by_path[URL(body["hits"][0]["webformatURL"]).path] == 1
    assert fake.queries == [{"q": "circle", "colors": "red", "per_page": "3"}, {}]
    fake.reset_counters()
    assert (fake.api_requests, fake.image_requests, fake.queries) == (0, 0, [])
    assert not fake.hits_by_path


async def test_truth_and_addresses(fake_pixabay, catalogue):
    fake = fake_pixabay
    assert len(fake.truth) == len(catalogue) == 1440
    assert all(fake.truth[e.id] == e.scene for e in catalogue)
    assert fake.api_url == f"http://127.0.0.1:{fake.port}/api/"
    assert (fake.host, fake.key) == ("127.0.0.1", "test-key")


# ------------------------------------------------------------------ hostile knobs


async def test_raw_fields_are_spliced_in_as_raw_json(session, fake_pixabay):
    fake = fake_pixabay
    body = await search(session, fake, q="circle", per_page=3)
    target = body["hits"][1]["id"]
    fake.raw_hit_fields[target] = {"imageWidth": "1e400", "id": "100000000000000000000"}
    fake.raw_response_fields = {"totalHits": "1e400"}
    _, _, text = await call(session, fake, q="circle", per_page=3)
    assert '"totalHits": 1e400' in text and '"imageWidth": 1e400' in text
    hits = json.loads(text)["hits"]
    assert hits[1]["id"] == 10**20 and hits[0]["id"] == body["hits"][0]["id"]


async def test_extra_headers_override_the_rate_headers_also_on_429(session, fake_pixabay):
    fake = fake_pixabay
    fake.extra_headers = {"X-RateLimit-Reset": "inf", "Retry-After": "1e12"}
    _, headers, _ = await call(session, fake, q="circle")
    assert headers["X-RateLimit-Reset"] == "inf"
    fake.rate_limit = 0
    status, headers, _ = await call(session, fake, q="circle")
    assert status == 429 and headers["Retry-After"] == "1e12"


async def test_reject_next_echoes_the_whole_query_key_included(session, fake_pixabay):
    fake = fake_pixabay
    fake.reject_next()
    status, _, text = await call(session, fake, q="circle")
    assert status == 400 and text == f"[ERROR 400] Invalid request: key={fake.key}&q=circle"
    assert (await call(session, fake, q="circle"))[0] == 200


async def test_raw_body_next_sends_exactly_those_bytes(session, fake_pixabay):
    fake = fake_pixabay
    fake.raw_body_next(b'{"hits": "\xff"}')
    async with session.get(fake.api_url, params={"key": fake.key}) as r:
        assert r.status == 200 and await r.read() == b'{"hits": "\xff"}'


@pytest.mark.parametrize("chunked", [False, True])
async def test_huge_next_pads_the_real_answer_to_the_size(session, fake_pixabay, chunked):
    fake = fake_pixabay
    fake.huge_next(3_000_000, chunked=chunked)
    async with session.get(fake.api_url, params={"key": fake.key, "q": "circle"}) as r:
        assert (r.content_length is None) == chunked
        data = await r.read()
    assert len(data) == 3_000_000 and json.loads(data)["total"] == 240


async def test_big_and_near_cap_png_faults(session, fake_pixabay):
    fake = fake_pixabay
    fake.set_image_fault(first_id(fake), "big")
    fake.set_image_fault(first_id(fake, 1), "near_cap_png")
    status, headers, data = await fetch(session, fake.image_url(first_id(fake)))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert 4_500_000 < len(data) < 4_800_000
    assert Image.open(io.BytesIO(data)).size == (2304, 1728)
    status, headers, data = await fetch(session, fake.image_url(first_id(fake, 1)))
    assert status == 200 and headers["Content-Type"] == "image/png" and len(data) < 100_000
    assert Image.open(io.BytesIO(data)).size == (5472, 3648)


async def test_slow_fault_dribbles_one_byte_per_interval(session, fake_pixabay):
    fake = fake_pixabay
    fake.slow_interval = 0.2
    image_id = first_id(fake)
    fake.set_image_fault(image_id, "slow")
    async with session.get(fake.image_url(image_id, 180)) as r:
        assert r.status == 200 and r.content_length == len(fake.entry(image_id).jpeg(180))
        jpeg = fake.entry(image_id).jpeg(180)
        got = b""
        while len(got) < 3:
            chunk = await asyncio.wait_for(r.content.readany(), 5)
            assert 1 <= len(chunk) <= 2  # a byte at a time (two if we were late)
            got += chunk
        assert got == jpeg[:3] and not r.content.at_eof()
