# Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench check clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fishflow.demo

# The report page's browser test drives Debian's Chromium through Playwright; installed here,
# once, when missing (never `playwright install`: it downloads a browser of its own).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# Two processes, each taking whole test files (their session fixtures, a Prefect server, start
# once per process): 8.5 min instead of 14.5 on 2 cores.
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.incremental
	$(BIN)/python -m bench.sqlread
	$(BIN)/python -m bench.longform
	$(BIN)/python -m bench.deploy

check: $(STAMP)
	$(BIN)/ruff format --check fishflow tasks flows tests bench
	$(BIN)/ruff check fishflow tasks flows tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-output .pytest_cache
