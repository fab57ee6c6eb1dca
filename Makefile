# Everything a fresh machine needs: Python 3.11 and make. Each target builds the virtual
# environment first (once, again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

DEV_PORT ?= 3000
# The suite on two workers: the e2e tests (real servers) together on one, the rest spread.
PYTEST_PARALLEL := -n 2 --dist loadgroup

.PHONY: demo dev test test-fast lint format bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[pipeline,dev]"
	touch $(INSTALLED)

# The run links that the demo's and dev's runs write into the run center point at the UI dev
# serves (DEV_PORT), unless DAGSTER_WEBSERVER_URL says otherwise.
demo dev: export DAGSTER_WEBSERVER_URL ?= http://127.0.0.1:$(DEV_PORT)

demo: $(INSTALLED)
	$(BIN)/capacity-pipeline demo

# The Dagster UI (webserver and daemon) over the demo's data and Dagster home; runs the demo first
# when there is none yet.
dev: $(INSTALLED)
	test -f .demo/whalefall-demo.db || $(BIN)/capacity-pipeline demo
	DAGSTER_HOME=$(CURDIR)/.demo/dagster_home \
	WHALEFALL_DATABASE_URL=sqlite:///$(CURDIR)/.demo/whalefall-demo.db \
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DEV_PORT)

# The whole suite, e2e tests included (docs/development.md: what each tier takes).
test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_PARALLEL)

# Everything but the e2e tests (those marked slow: they start real dagster dev servers).
test-fast: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not slow"

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(INSTALLED)
	$(BIN)/python bench/aggregation_bench.py --scale 100x100x100 --scale 1000x100x100 --reuse --freshness
	$(BIN)/python bench/automation_bench.py
	$(BIN)/python bench/run_center_load.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache
