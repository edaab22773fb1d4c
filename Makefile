# One entry point for people and CI. Each target installs what it needs into .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint sync install bench clean

$(BIN)/pithcrawl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/pithcrawl

## make test: lint, type-check and run the whole test suite
test: install lint
	$(BIN)/pytest -n auto

lint: install
	$(BIN)/ruff check pithcrawl tests bench
	$(BIN)/ruff format --check pithcrawl tests bench
	$(BIN)/mypy

## make sync: install, then one verified, archived pass over the tracked records
sync: install
	$(BIN)/pithcrawl sync $(ARGS)

## make bench: the performance benchmark (corpus sizes 5,000 and 50,000; ARGS="--records 2000" for a quick one)
bench: install
	$(BIN)/python bench/sync_bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
