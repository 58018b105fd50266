"""The settings table is the one description: --help, .env.example and docs/configuration.md."""

import re
from dataclasses import fields
from pathlib import Path

from search import settings_doc
from search.config import Settings
from search.settings_doc import SETTINGS

ROOT = Path(__file__).parent.parent


def test_every_setting_has_exactly_one_row_in_the_table():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert set(names) == {f.name.upper() for f in fields(Settings)}


def test_every_name_the_config_reads_is_in_the_table():
    source = (ROOT / "search" / "config.py").read_text()
    read = set(re.findall(r'get\("([A-Z_]+)"\)', source))
    read |= set(re.findall(r'\("([A-Z_]+)", [A-Z_]+\)', source))  # names read in a loop
    assert read and read <= {s.name for s in SETTINGS}
    assert {"CLIP_BACKEND", "CLIP_PRECISION"} <= read


def test_configuration_doc_is_what_the_table_produces():
    # Stale? Run `make docs` (python -m search.settings_doc) and commit the result.
    assert (ROOT / "docs" / "configuration.md").read_text() == settings_doc.configuration_md()


def test_env_example_is_what_the_table_produces():
    # Stale? Run `make docs` (python -m search.settings_doc) and commit the result.
    assert (ROOT / ".env.example").read_text() == settings_doc.env_example()


def test_configuration_doc_lists_every_setting_with_its_default():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert "| `CLIP_MODEL` | `ViT-B-32-256` |" in doc
    assert "| `DATA_DIR` | `./data` |" in doc
    assert "| `METRICS_PORT` | (empty) |" in doc
    for s in SETTINGS:
        assert f"| `{s.name}` |" in doc, s.name


def test_env_example_as_a_dotenv_gives_the_defaults(tmp_path):
    # An operator who copies .env.example and changes nothing runs the defaults.
    assert Settings.load(environ={}, env_file=ROOT / ".env.example") == Settings()


def test_check_names_a_stale_file_and_writing_makes_it_fresh(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "docs" / "configuration.md"
    example = tmp_path / ".env.example"
    monkeypatch.setattr(settings_doc, "ROOT", tmp_path)
    monkeypatch.setattr(settings_doc, "GENERATED", {example: settings_doc.env_example,
                                                    doc: settings_doc.configuration_md})
    assert settings_doc.main(["--check"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        ".env.example is stale; run `make docs`.",
        "docs/configuration.md is stale; run `make docs`."]
    assert settings_doc.main([]) == 0
    assert settings_doc.main(["--check"]) == 0
    doc.write_text(doc.read_text().replace("ViT-B-32-256", "ViT-L-14"))
    assert settings_doc.main(["--check"]) == 1
    assert "docs/configuration.md is stale" in capsys.readouterr().err
