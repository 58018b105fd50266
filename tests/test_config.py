"""Settings: environment first, then .env; every invalid value is one sentence naming it."""

from pathlib import Path

import pytest

from search.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, Settings
from search.errors import ConfigError

TINY = Path(__file__).parent / "fixtures" / "tiny-clip"


def load(env: dict, tmp_path: Path, dotenv: str | None = None) -> Settings:
    env_file = tmp_path / ".env"
    if dotenv is not None:
        env_file.write_text(dotenv)
    return Settings.load(env, env_file=env_file)


def test_defaults_match_the_documented_endpoints(tmp_path):
    s = load({}, tmp_path)
    assert s.discord_api_base == "https://discord.com/api/v10"
    assert s.discord_gateway_url == "wss://gateway.discord.gg/"
    assert s.pixabay_api_url == "https://pixabay.com/api/"
    assert s.image_hosts == ("pixabay.com", "cdn.pixabay.com")
    assert (s.clip_model, s.clip_pretrained) == (DEFAULT_MODEL, DEFAULT_PRETRAINED)
    assert s.clip_device == "auto"
    assert s.data_dir == Path("./data")


def test_environment_wins_over_dotenv(tmp_path):
    s = load({"PIXABAY_API_KEY": "from-env"}, tmp_path,
             "PIXABAY_API_KEY=from-file\nDISCORD_GUILD_ID=42\n")
    assert s.pixabay_api_key == "from-env"
    assert s.discord_guild_id == 42


def test_tokens_are_not_in_the_repr(tmp_path):
    s = load({"DISCORD_TOKEN": "secret-token-123", "PIXABAY_API_KEY": "secret-key-456"}, tmp_path)
    assert "secret-token-123" not in repr(s)
    assert "secret-key-456" not in repr(s)


def test_local_dir_model_is_accepted_and_pretrained_ignored(tmp_path):
    s = load({"CLIP_MODEL": f"local-dir:{TINY}", "CLIP_PRETRAINED": "whatever"}, tmp_path)
    assert s.clip_model == f"local-dir:{TINY}"


@pytest.mark.parametrize(("env", "names", "allowed"), [
    ({"CLIP_DEVICE": "tpu"}, "CLIP_DEVICE", "auto, cpu, cuda"),
    ({"CLIP_MODEL": "ViT-Nonsense-99"}, "CLIP_MODEL", "open_clip.list_models()"),
    ({"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "no_such_tag"}, "CLIP_PRETRAINED", "laion2b"),
    ({"CLIP_MODEL": "local-dir:/no/such/folder"}, "CLIP_MODEL", "open_clip_config.json"),
    ({"CLIP_MODEL": "hf-hub:justonepart"}, "CLIP_MODEL", "hf-hub:org/repo"),
    ({"DISCORD_API_BASE": "discord.com/api"}, "DISCORD_API_BASE", "https://"),
    ({"DISCORD_GATEWAY_URL": "https://gateway.discord.gg"}, "DISCORD_GATEWAY_URL", "wss://"),
    ({"PIXABAY_API_URL": "http//broken"}, "PIXABAY_API_URL", "http://"),
    ({"DISCORD_GUILD_ID": "my-server"}, "DISCORD_GUILD_ID", "numeric"),
    ({"IMAGE_HOSTS": "https://pixabay.com/x"}, "IMAGE_HOSTS", "host names"),
    ({"IMAGE_VARIANT": "500"}, "IMAGE_VARIANT", "180, 340, 640, 960"),
    ({"SEARCH_CANDIDATES": "900"}, "SEARCH_CANDIDATES", "1 to 500"),
    ({"RESULTS_KEEP_DAYS": "0"}, "RESULTS_KEEP_DAYS", "1 to 3650"),
])
def test_invalid_value_is_one_sentence_naming_the_variable(tmp_path, env, names, allowed):
    with pytest.raises(ConfigError) as info:
        load(env, tmp_path).check_model()  # zoo names are checked just before the model loads
    text = str(info.value)
    assert names in text and allowed in text
    assert "\n" not in text and text.endswith(".")


def test_require_names_the_missing_setting(tmp_path):
    s = load({"PIXABAY_API_KEY": "k"}, tmp_path)
    with pytest.raises(ConfigError, match="DISCORD_TOKEN is not set.*\\.env"):
        s.require("PIXABAY_API_KEY", "DISCORD_TOKEN")


def test_search_deadline_defaults_to_30_s_and_is_bounded(tmp_path):
    assert load({}, tmp_path).search_deadline_seconds == 30.0
    assert load({"SEARCH_DEADLINE_SECONDS": "5"}, tmp_path).search_deadline_seconds == 5.0
    with pytest.raises(ConfigError, match="SEARCH_DEADLINE_SECONDS must be a whole number "
                                          "from 1 to 600, not '0'"):
        load({"SEARCH_DEADLINE_SECONDS": "0"}, tmp_path)


def test_operator_settings_default_to_info_text_and_no_metrics(tmp_path):
    s = load({}, tmp_path)
    assert (s.log_level, s.log_format, s.metrics_port, s.metrics_host) == (
        "INFO", "text", None, "127.0.0.1")
    s = load({"LOG_LEVEL": "debug", "LOG_FORMAT": "JSON", "METRICS_PORT": "9464",
              "METRICS_HOST": "0.0.0.0"}, tmp_path)
    assert (s.log_level, s.log_format, s.metrics_port, s.metrics_host) == (
        "DEBUG", "json", 9464, "0.0.0.0")


@pytest.mark.parametrize(("name", "value", "sentence"), [
    ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not 'LOUD'."),
    ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of text, json, not 'xml'."),
    ("METRICS_PORT", "99999", "METRICS_PORT must be a whole number from 0 to 65535, not "
                              "'99999'."),
    ("METRICS_HOST", "http://x/", "METRICS_HOST must be an address such as 127.0.0.1, not "
                                  "'http://x/'."),
])
def test_invalid_operator_settings_are_one_sentence(tmp_path, name, value, sentence):
    with pytest.raises(ConfigError) as caught:
        load({name: value}, tmp_path)
    assert str(caught.value) == sentence
