"""Settings for the second source and the results layout."""

import pytest

from search.config import Settings
from search.errors import ConfigError
from search.sources import require

MODEL = {"CLIP_MODEL": "local-dir:tests/fixtures/tiny-clip"}


def test_defaults_search_pixabay_with_an_automatic_layout():
    s = Settings.from_mapping(MODEL)
    assert (s.search_source, s.results_layout) == ("pixabay", "auto")
    assert s.openverse_api_url == "https://api.openverse.org/v1/"
    assert s.openverse_host == "api.openverse.org"


def test_openverse_needs_no_pixabay_key():
    s = Settings.from_mapping({**MODEL, "SEARCH_SOURCE": "OpenVerse"})
    require(s, s.search_source)
    with pytest.raises(ConfigError, match="PIXABAY_API_KEY is not set"):
        require(s, "pixabay")


@pytest.mark.parametrize(("env", "message"), [
    ({"SEARCH_SOURCE": "flickr"}, "SEARCH_SOURCE must be pixabay or openverse, not 'flickr'."),
    ({"RESULTS_LAYOUT": "table"}, "RESULTS_LAYOUT must be auto, list or grid, not 'table'."),
    ({"OPENVERSE_CLIENT_ID": "abc"}, "OPENVERSE_CLIENT_ID and OPENVERSE_CLIENT_SECRET go"),
    ({"OPENVERSE_API_URL": "ftp://x/"}, "OPENVERSE_API_URL must be a URL starting with"),
])
def test_bad_values_are_one_sentence(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_mapping({**MODEL, **env})


def test_client_secret_is_never_in_the_repr():
    s = Settings.from_mapping({**MODEL, "OPENVERSE_CLIENT_ID": "id-1",
                               "OPENVERSE_CLIENT_SECRET": "s3cret"})
    assert "s3cret" not in repr(s) and "id-1" not in repr(s)
