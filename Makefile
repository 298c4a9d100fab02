# The developer's front door. `make run` and `make test` work on a fresh machine
# with Python >= 3.11, make and a C compiler (see README).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD := build
MODULES_OUT := $(abspath $(BUILD)/modules)
MODULE_DIRS := $(patsubst %/Makefile,%,$(wildcard lib/modules/*/Makefile))
CACHE_DIR ?= $(HOME)/.cache/fleet-external-server

.PHONY: help venv modules modules-asan proto lint test test-unit test-valgrind run bench e2e image clean

help:
	@echo "make run       build, start a broker, the server and a simulated car"
	@echo "make test      lint, type-check and run every test"
	@echo "make modules   build the C modules into $(BUILD)/modules"
	@echo "make proto     regenerate server/external_server/wire from lib/proto"
	@echo "make lint      ruff (lint + format check) and mypy"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,operator,broker]'
	touch $@

venv: $(VENV)/.installed

modules:
	@mkdir -p $(MODULES_OUT)
	@for d in $(MODULE_DIRS); do $(MAKE) --no-print-directory -C $$d OUT=$(MODULES_OUT) || exit 1; done

proto: venv
	$(PY) tools/gen_proto.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-unit: venv modules
	$(VENV)/bin/pytest tests

test-valgrind: venv modules
	$(PY) tools/valgrind_modules.py

test: lint test-unit test-valgrind

run: venv modules
	$(PY) -m external_server.devrun $(if $(BROKER),--broker $(BROKER),) --config config/config.json

clean:
	rm -rf $(BUILD)
	@for d in $(MODULE_DIRS); do $(MAKE) --no-print-directory -C $$d clean OUT=$(MODULES_OUT); done
