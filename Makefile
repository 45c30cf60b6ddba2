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
	$(BIN)/pytest -q -m "not chaos" --durations=25

# The inbox's browser test drives Debian's chromium (never a downloaded browser); best effort.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium not installed: the browser test will skip"; \
	fi

chaos: $(STAMP)
	$(BIN)/pytest -q -m chaos --timeout 900
	$(BIN)/python bench/chaos.py --json
	$(BIN)/python bench/chaos.py --json --amqp auto

# The performance set (every bench/*.py but chaos.py), within 10 minutes on a 2-core machine; the
# chaos benchmark (bench/chaos.py, minutes of failure scenarios at load) runs under `make chaos`.
PERF_BENCH := $(filter-out bench/chaos.py,$(sort $(wildcard bench/[!_]*.py)))

bench: $(STAMP)
	@for b in $(PERF_BENCH); do echo "== $$b"; $(BIN)/python $$b --json || exit 1; done

clean:
	rm -rf $(VENV) .fleet .pytest_cache .mypy_cache .ruff_cache
