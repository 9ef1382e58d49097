# Two commands on a fresh machine: `make demo` and `make test`. Both create and use ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test test-fast lint typecheck pytest pytest-fast demo bench clean browser-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check persona tools tests
	$(BIN)/ruff format --check persona tools tests

typecheck: $(STAMP)
	$(BIN)/mypy persona tools

pytest: $(STAMP)
	$(BIN)/pytest -q --ignore=tests/browser

test: lint typecheck pytest

# The inner loop: `make test` without the tests marked slow (those that start the persona CLI as a process).
pytest-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow" --ignore=tests/browser

test-fast: lint typecheck pytest-fast

# The review console in headless Chromium (Debian's /usr/bin/chromium; `apt-get install chromium`), driven by
# Playwright. `make browser-test PERSONA_SCREENSHOTS_DIR=docs` refreshes the README's screenshots.
BROWSER_STAMP := $(VENV)/.browser-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,browser]'
	rm -f $(VENV)/.browser-* && touch $(BROWSER_STAMP)

browser-test: $(BROWSER_STAMP)
	PERSONA_SCREENSHOTS_DIR=$(PERSONA_SCREENSHOTS_DIR) $(BIN)/pytest -q tests/browser

demo: $(STAMP)
	$(BIN)/persona demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache

# Benchmarks against peers (not part of `make test`): installs the bench extra, runs every section,
# prints the tables and writes bench/results/latest.md. The side-by-side sections (orchestration, webhooks)
# run 3 rounds, order rotated, figures as median [min-max]: `make bench BENCH_ARGS='--repeats 5'` for more.
# `make bench BENCH_ARGS=--quick` for a short run (one round unless --repeats is given).
BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.bench-* && touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
