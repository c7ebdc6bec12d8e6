# The two commands: `make dev` runs the whole system, `make test` runs the whole suite.
# Both create .venv and install the project when needed (pyproject.toml newer than the last install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: dev test install test-tools lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

dev: install
	$(BIN)/asset-manager dev

# Debian tools some tests need (ODBC drivers, promtool, docker-compose, kubectl); installed when missing
# and we are root, otherwise those tests skip with the reason.
test-tools:
	@scripts/install-test-tools.sh

test: install test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check libs services orchestrator asset_manager tests bench
	$(BIN)/mypy

# Every benchmark prints one JSON object on its last line; then the fault tests at their full counts.
bench: install
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done
	AMS_FAULT_EVENTS=100000 AMS_FAULT_KILLS=20 AMS_SCALE_EVENTS=100000 \
		$(BIN)/python -m pytest tests/faults -m faults -k "sigkill or scale_out" -s -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
