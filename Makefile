# Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fishflow.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

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
