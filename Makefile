# Everything a newcomer needs: `make demo` and `make test` (both create .venv and are idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck layers unit bench schema clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata changes; the install is editable, so code edits need none.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crawler demo

test: lint typecheck layers unit

lint: $(STAMP)
	$(BIN)/ruff check crawler tests benchmarks migrations
	$(BIN)/ruff format --check crawler tests benchmarks migrations

typecheck: $(STAMP)
	$(BIN)/mypy --strict crawler

layers: $(STAMP)
	$(BIN)/lint-imports

# The suite runs against a throwaway PostgreSQL as well as SQLite (tests/with_postgres.sh).
unit: $(STAMP)
	tests/with_postgres.sh $(BIN)/python -m pytest

# After adding or changing a migration: regenerate the head schema a new SQLite database is made from.
schema: $(STAMP)
	$(BIN)/python -m crawler.store.schema_dump

bench: $(STAMP)
	$(BIN)/python benchmarks/crawl_throughput.py

clean:
	rm -rf $(VENV) demo.db demo.db-* .pytest_cache .mypy_cache .ruff_cache
