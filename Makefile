# One command per developer task; CI calls `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint unit bench chaos clean

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

test: lint
	$(BIN)/pytest -q -m "not chaos"

chaos: $(STAMP)
	$(BIN)/pytest -q -m chaos

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b --json || exit 1; done

clean:
	rm -rf $(VENV) .fleet .pytest_cache .mypy_cache .ruff_cache
