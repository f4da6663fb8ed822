# make run: set up and serve on the embedded stores; make test: set up and run every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.py | sha1sum | cut -c1-12)

.PHONY: install run test lint bench clean services browser

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/billing serve --host 127.0.0.1 --port 8080 --workers 1

services:
	bash scripts/ensure-redis.sh

browser:
	bash scripts/ensure-browser.sh

lint: install
	$(BIN)/ruff check billing tests bench

test: install services browser lint
	$(BIN)/pytest -q -p no:cacheprovider

bench: install services
	bash scripts/ensure-wrk.sh
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
