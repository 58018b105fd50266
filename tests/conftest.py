"""Shared fixtures: the stock catalogue and a running fake Pixabay."""

from __future__ import annotations

import pytest

from tests.fakes.pixabay import FakePixabay, default_catalogue


@pytest.fixture(scope="session")
def catalogue():
    """The default stock library (``tests.scenes.catalogue(per_scene=10)``), as a tuple."""
    return default_catalogue(10)


@pytest.fixture
async def fake_pixabay(catalogue):
    """A FakePixabay with the default catalogue on 127.0.0.1:<random port>."""
    async with FakePixabay(catalogue) as fake:
        yield fake
