# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv and install everything on first use; re-running installs nothing new.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SIDA   := $(VENV)/bin/sida
STAMP  := $(VENV)/.installed

.PHONY: setup browser run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	rm -rf sida.egg-info   # a stale one beside the sources would shadow the installed entry points
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt -e '.[text,t2i,export,serve,ui,dev,fid]'
	touch $(STAMP)

# Main job: serve the bundled models (API on http://127.0.0.1:8000, docs at /docs).
run: setup
	$(SIDA) serve

# System tools the tests drive: Debian's chromium for the UI test (Playwright's own browser download needs the
# internet) and nginx for the reverse-proxy test (deploy/nginx.conf). Without them those tests skip.
browser:
	@command -v chromium >/dev/null && command -v nginx >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then APT=apt-get; elif command -v sudo >/dev/null; then APT='sudo -n apt-get'; fi; \
	  [ -n "$$APT" ] && $$APT update -q && DEBIAN_FRONTEND=noninteractive $$APT install -y -q chromium nginx-light; } \
	  || echo 'chromium/nginx could not be installed: the browser and proxy tests will skip'

# One pytest worker per core and one more (a third of the suite waits on servers and subprocesses, so a spare worker
# keeps the cores busy), each test handed to whichever worker is free (the slow ones would otherwise queue).
test: setup browser
	$(PY) -m pytest -q -n $$(( $$(nproc) + 1 )) --dist worksteal tests

# The zoo recipe (models/zoo/README.md) on a GPU machine: every stage at full length into runs/zoo.
zoo: setup
	PATH=$(abspath $(VENV))/bin:$$PATH train/recipes/zoo.sh all runs/zoo

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf build $(VENV)
