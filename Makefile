# The two set-up commands of the README:
#   make demo   runs the demo on the embedded default (SQLite + in-process broker)
#   make test   runs every check and test (starts its own PostgreSQL and Redis)
# Each creates .venv and installs what it needs, apt packages included, on a fresh Debian machine.

VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck bench system-deps clean

demo: $(STAMP)
	$(BIN)/espbridge demo

test: system-deps $(STAMP) check
	$(BIN)/pytest

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	cd sdk && ../$(BIN)/mypy --strict espbridge

bench: system-deps $(STAMP)
	scripts/install-system-deps.sh wrk
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/sdk.py

.PHONY: bench-sync bench-sync-ac bench-audit bench-rfm
bench-sync: system-deps $(STAMP)
	$(BIN)/python bench/sync_klaviyo.py

bench-sync-ac: system-deps $(STAMP)
	$(BIN)/python bench/sync_activecampaign.py

bench-audit: system-deps $(STAMP)
	$(BIN)/python bench/audit_verify.py

bench-rfm: system-deps $(STAMP)
	$(BIN)/python bench/rfm.py

system-deps:
	scripts/install-system-deps.sh

$(STAMP): pyproject.toml sdk/pyproject.toml
	scripts/install-system-deps.sh python
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -e ./sdk
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache espbridge-demo.db*
