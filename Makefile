# Two commands: `make run` starts the bot, `make test` runs ruff, mypy and the whole suite.
# `make docs` rewrites .env.example and docs/configuration.md from search/settings_doc.py.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= ./data

.PHONY: run test lint docs bench demo fakes model serve tiny-clip clean clean-data

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

# No account needed: the CLI against the fake catalogue with the test model.
demo: $(STAMP)
	$(PY) -m bench.demo

# Fake Pixabay, Openverse and Discord on fixed loopback ports, until Ctrl-C.
fakes: $(STAMP)
	$(PY) -m bench.fakes

# The ONNX files for CLIP_MODEL, ahead of time, into MODEL_CACHE_DIR (default DATA_DIR/models).
model: $(STAMP)
	$(PY) -m search.export

tiny-clip: $(STAMP)
	$(PY) -m tests.fixtures.train_tiny_clip

# Build outputs only; DATA_DIR (the members' picks) is never touched here.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# DATA_DIR (./data unless given: make clean-data DATA_DIR=path; .env is not read here).
# Only a folder holding this project's files is removed.
clean-data:
	@if [ ! -e "$(DATA_DIR)" ]; then echo "$(DATA_DIR) does not exist: nothing to remove."; \
	elif ! ls "$(DATA_DIR)" | grep -qxE 'bot\.sqlite3|search\.sqlite3|models|demo'; then \
		echo "$(DATA_DIR) holds none of /findimage's files: left alone."; exit 1; \
	else \
		echo "Removing $(DATA_DIR): bot.sqlite3 (the members' picks, results pages and answers"; \
		echo "still owed: back it up first, see docs/operations.md), search.sqlite3 (the caches),"; \
		echo "models/ (the exported ONNX model) and demo/ (make demo's). It holds:"; \
		ls -A "$(DATA_DIR)"; \
		rm -rf "$(DATA_DIR)"; \
	fi
