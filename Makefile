# Two commands: `make run` starts the bot, `make test` runs ruff, mypy and the whole suite.
# `make docs` rewrites .env.example and docs/configuration.md from search/settings_doc.py.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint docs bench model serve tiny-clip clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,serve]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m bot

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m mypy

docs: $(STAMP)
	$(PY) -m search.settings_doc

serve: $(STAMP)
	$(PY) -m search.serve

bench: $(STAMP)
	$(PY) -m bench

# The ONNX files for CLIP_MODEL, ahead of time, into MODEL_CACHE_DIR (default DATA_DIR/models).
model: $(STAMP)
	$(PY) -m search.export

tiny-clip: $(STAMP)
	$(PY) -m tests.fixtures.train_tiny_clip

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache
