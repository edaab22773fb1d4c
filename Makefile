# One entry point for people and CI. Each target installs what it needs into .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint sync install install-test browser postgresql bench demo clean

# pithcrawl and what it runs on (aiohttp, pynacl, …): all `make sync` needs.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# Then the test tools (pytest, hypothesis, ruff, mypy).
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Debian's Chromium, for the browser tests of the status pages (when missing).
browser:
	@sh .ci/install-chromium

# PostgreSQL's server, for the tests that run the archive on it (when missing).
postgresql:
	@sh .ci/install-postgresql

## make test: lint, type-check and run the whole test suite
# Three test processes for two CPUs: many tests wait on real servers and subprocesses,
# but the suite as a whole keeps the CPUs busy (on 2 cores: 2 processes 222 s, 3 171-191 s,
# 4 197-208 s, each more spending CPU on contention than it saves in waiting).
TEST_WORKERS ?= $(shell python3 -c 'import os; print(max(2, 3 * len(os.sched_getaffinity(0)) // 2))' 2>/dev/null || echo 3)
# Bytecode is cached even where the environment turns it off (PYTHONDONTWRITEBYTECODE):
# else each of the ~120 pithcrawl processes the suite starts compiles the package again,
# and each test process rewrites every test module's asserts again.
test: install-test browser postgresql lint
	$(BIN)/python -m compileall -q pithcrawl
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n $(TEST_WORKERS)

lint: install-test
	$(BIN)/ruff check pithcrawl tests bench demo
	$(BIN)/ruff format --check pithcrawl tests bench demo
	$(BIN)/mypy

## make sync: install, then one verified, archived pass over the tracked records
sync: install
	$(BIN)/pithcrawl sync $(ARGS)

## make bench: the performance benchmark (corpus sizes 5,000 and 50,000; ARGS="--records 2000" for a quick one)
bench: install
	$(BIN)/python bench/sync_bench.py $(ARGS)

## make demo: install, then watch pithcrawl catch a rollback and a tampered copy, offline
demo: install
	$(BIN)/python demo/demo.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
