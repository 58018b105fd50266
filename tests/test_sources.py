"""Cached responses and vectors belong to the endpoint (and key) that produced them: pointing
PIXABAY_API_URL elsewhere, or using another key, never serves the old results."""

import sqlite3

import pytest

from bench.fakes.pixabay import FakePixabay
from search.errors import InvalidApiKey
from search.service import SearchService


@pytest.fixture
async def other_pixabay(catalogue):
    """A second catalogue server with the same ids (another host, a mirror, a staging API)."""
    async with FakePixabay(catalogue, key="other-key") as fake:
        yield fake


async def test_another_endpoint_is_asked_and_its_images_downloaded(settings, tiny_encoder,
                                                                   fake_pixabay, other_pixabay):
    async with SearchService.open(settings, encoder=tiny_encoder) as service:
        first = await service.find("circle", "a red circle", candidates=20)
    moved = settings.replace(pixabay_api_url=other_pixabay.api_url,
                             pixabay_api_key=other_pixabay.key)
    async with SearchService.open(moved, encoder=tiny_encoder) as service:
        again = await service.find("circle", "a red circle", candidates=20)
    assert other_pixabay.api_requests == 1
    assert not again.api_cached and again.embeddings_cached == 0 and again.downloaded == 20
    assert other_pixabay.image_requests == 20
    assert all(h.hit.image_url.startswith(other_pixabay.api_url.replace("/api/", ""))
               for h in again.hits)
    assert first.hits[0].hit.image_url != again.hits[0].hit.image_url


async def test_a_wrong_key_is_refused_not_answered_from_the_cache(settings, tiny_encoder,
                                                                  fake_pixabay):
    async with SearchService.open(settings, encoder=tiny_encoder) as service:
        await service.find("circle", "a red circle", candidates=20)
    wrong = settings.replace(pixabay_api_key="not-the-key")
    async with SearchService.open(wrong, encoder=tiny_encoder) as service:
        with pytest.raises(InvalidApiKey):
            await service.find("circle", "a red circle", candidates=20)


async def test_the_key_itself_is_never_stored(settings, tiny_encoder, fake_pixabay):
    async with SearchService.open(settings, encoder=tiny_encoder) as service:
        await service.find("circle", "a red circle", candidates=20)
    with sqlite3.connect(settings.db_path) as conn:
        dump = "\n".join(conn.iterdump())
    assert fake_pixabay.key not in dump
    assert fake_pixabay.api_url in dump  # the scope names the endpoint
