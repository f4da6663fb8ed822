# make run: set up and serve on the embedded stores; make test: set up and run every test.
# Installs are pinned by constraints.txt (pip-compile output of setup.py's requirements; `make lock` refreshes it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints.txt | sha1sum | cut -c1-12)

.PHONY: install run test lint fmt typecheck lock bench clean redis-bin redis browser

$(BIN)/python:
	@bash scripts/check-python.sh '$(PYTHON)'
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(STAMP): setup.py constraints.txt | $(BIN)/python
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/billing serve --host 127.0.0.1 --port 8080 --workers 1

# The redis-server binary only: tests and the bench start their own servers on free ports.
redis-bin:
	bash scripts/ensure-redis.sh

# Opt-in: a Redis daemon on 127.0.0.1:6379 (no persistence) for running the service against a real Redis.
redis:
	bash scripts/ensure-redis.sh --serve

browser:
	bash scripts/ensure-browser.sh

# What `make test` checks before the tests: lint, formatting and strict types.
lint: install
	$(BIN)/ruff check billing tests bench
	$(BIN)/ruff format --check billing tests bench
	$(BIN)/mypy --strict billing

fmt: install
	$(BIN)/ruff format billing tests bench

typecheck: install
	$(BIN)/mypy --strict billing

# Re-resolve setup.py's requirements (with the test extra), keeping the current pins where they still fit;
# `make lock ARGS=--upgrade` (or ARGS='--upgrade-package NAME') moves them.
lock: | $(BIN)/python
	$(PIP_INSTALL) pip-tools
	$(BIN)/pip-compile -q --extra test --strip-extras --allow-unsafe --no-emit-find-links --no-emit-index-url \
		$(ARGS) -o constraints.txt setup.py

# The suite mostly waits on the servers it starts, so it runs in TEST_PROCESSES processes, a test file to each.
TEST_PROCESSES ?= 2

test: install redis-bin browser lint
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile

bench: install redis-bin
	bash scripts/ensure-wrk.sh
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
