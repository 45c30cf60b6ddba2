# One command per developer task; CI calls `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint unit bench chaos clean chromium

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fleet needs Python 3.11+, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/fleet demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check fleet tests bench
	$(BIN)/ruff format --check fleet tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: lint chromium
	$(BIN)/pytest -q -m "not chaos"

# The inbox's browser test drives Debian's chromium (never a downloaded browser); best effort.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium not installed: the browser test will skip"; \
	fi

chaos: $(STAMP)
	$(BIN)/pytest -q -m chaos

bench: $(STAMP)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b --json || exit 1; done

clean:
	rm -rf $(VENV) .fleet .pytest_cache .mypy_cache .ruff_cache
