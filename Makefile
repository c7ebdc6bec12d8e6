# The two commands: `make dev` runs the whole system, `make test` runs the whole suite.
# Both create .venv and install the project when needed (pyproject.toml or the lock newer than the last
# install): the exact versions of requirements-dev.lock, hashes checked, then the project itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

UV_VERSION := 0.13.9

.PHONY: dev test install test-tools lint bench clean lock image-test

# PYTHONWARNINGS: setuptools' editable build prints an information-only "Editable installation" notice (a
# UserWarning) that reads like an error on a first `make dev`.
$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-dev.lock
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# After changing dependencies in pyproject.toml: resolve both lock files again (one resolution, so the image's
# requirements.lock pins exactly the versions of requirements-dev.lock). tests/deploy/test_lock.py checks them.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
		--no-emit-package dagster-asset-management -o requirements-dev.lock
	$(BIN)/uv pip compile pyproject.toml --extra deploy --universal --python-version 3.11 --generate-hashes \
		-c requirements-dev.lock -o requirements.lock

install: $(STAMP)

dev: install
	$(BIN)/asset-manager dev

# Debian tools some tests need (ODBC drivers, promtool, docker-compose, kubectl, podman for the image);
# installed when missing and we are root, otherwise those tests skip with the reason (a failure in CI).
test-tools:
	@scripts/install-test-tools.sh

test: install test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Builds the image from the Dockerfile with podman (no Docker engine needed) and starts every role of
# docker-compose.prod.yml from it; part of `make test` too. About 2-4 minutes once the base images are cached.
image-test: install test-tools
	$(BIN)/python -m pytest tests/deploy/test_image.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check libs services orchestrator asset_manager tests bench deploy
	$(BIN)/ruff format --check libs services orchestrator asset_manager tests bench deploy
	$(BIN)/mypy

# Every benchmark prints one JSON object on its last line; then the fault tests at their full counts.
bench: install
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done
	AMS_FAULT_EVENTS=100000 AMS_FAULT_KILLS=20 AMS_SCALE_EVENTS=100000 \
		$(BIN)/python -m pytest tests/faults -m faults -k "sigkill or scale_out" -s -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
