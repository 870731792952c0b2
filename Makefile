# editq: `make run` serves everything embedded; `make test` runs the whole suite.
# Both create .venv and install the project into it first; `make test` (and
# `make install`) also install Debian's chromium with apt-get when it is missing,
# which needs root. `make test-no-browser` runs the rest without it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The browser the dashboard's end-to-end tests drive (Debian's package; nothing downloaded).
CHROMIUM ?= /usr/bin/chromium

.PHONY: install run test test-no-browser test-fast lint types check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "editq needs Python 3.11+ (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

$(CHROMIUM):
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

install: $(STAMP) $(CHROMIUM)

run: $(STAMP)
	$(BIN)/editq dev

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest

# Everything but the dashboard's browser tests: needs no chromium, so no root or apt.
test-no-browser: $(STAMP)
	$(BIN)/python -m pytest -m "not browser"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

bench: $(STAMP)
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
