# Everything a fresh machine needs: Python 3.11 and make. Each target builds the virtual
# environment first (once, again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

DEV_PORT ?= 3000

.PHONY: demo dev test lint format bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/capacity-pipeline demo

# The Dagster UI (webserver and daemon) over the demo's data and Dagster home; runs the demo first
# when there is none yet.
dev: $(INSTALLED)
	test -f .demo/whalefall-demo.db || $(BIN)/capacity-pipeline demo
	DAGSTER_HOME=$(CURDIR)/.demo/dagster_home \
	WHALEFALL_DATABASE_URL=sqlite:///$(CURDIR)/.demo/whalefall-demo.db \
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DEV_PORT)

test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(INSTALLED)
	$(BIN)/python bench/aggregation_bench.py --scale 100x100x100 --scale 1000x100x100 --reuse --freshness
	$(BIN)/python bench/run_center_load.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache
