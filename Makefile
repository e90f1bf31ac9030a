# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv and install everything on first use; re-running installs nothing new.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SIDA   := $(VENV)/bin/sida
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt -e '.[text,export,serve,dev]'
	touch $(STAMP)

# Main job: serve the bundled models (API on http://127.0.0.1:8000, docs at /docs).
run: setup
	$(SIDA) serve

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf build $(VENV)
