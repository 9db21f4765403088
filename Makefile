# charlm developer entry points; `make help` lists them. Install steps are stamped on pyproject.toml,
# so they run once and again only when the dependencies change.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
IMAGE ?= charlm:latest
ARGS ?=
PYTEST_ARGS ?=
# Tests, training and benchmarks read the corpora from ../shared/data unless told otherwise.
export CHARLM_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)

# Train one config and export it as a shipped model: $(1) = training config, $(2) = models/ folder.
define train_export
$(PY) -m training train --config training/configs/$(1).toml --out runs/$(1)
$(PY) -m training export runs/$(1) --out models/$(2) --force
endef

.PHONY: help serve test lint lock models bench docker docker-torch docker-smoke promtool chromium wrk clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# requirements/dev.lock pins every dependency (`make lock` regenerates it); the image uses serve.lock.
$(VENV)/.serve-installed: pyproject.toml requirements/dev.lock | $(PY)
	$(PY) -m pip install -e '.[serve]' -c requirements/dev.lock
	touch $@

# dev includes serve, so it refreshes both stamps.
$(VENV)/.dev-installed: pyproject.toml requirements/dev.lock | $(PY)
	$(PY) -m pip install -e '.[dev]' -c requirements/dev.lock
	touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed ## serve models/ on :8000 (ONNX Runtime, no torch); ARGS="--port 9000 ..."
	$(PY) -m service serve $(ARGS)

# Debian packages the tests and benchmarks drive, installed as root once (a test that needs one and does
# not find it says so): $(1) the commands that must exist, $(2) the packages, $(3) what needs them,
# $(4) the exit code when we are not root (0: the tests skip; 1: the benchmark cannot run). A policy-rc.d
# keeps apt from starting packaged daemons (Prometheus).
define apt_install
@if $(foreach c,$(1),command -v $(c) >/dev/null &&) true; then exit 0; fi; \
if [ "$$(id -u)" != 0 ]; then echo "$(firstword $(1)) is missing and we are not root: apt-get install $(2) for $(3)" >&2; exit $(4); fi; \
if [ ! -e /usr/sbin/policy-rc.d ]; then \
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
fi; \
apt-get update -qq; \
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null
endef

promtool: ## promtool (Debian's prometheus): tests/test_deploy.py checks the Prometheus files with it
	$(call apt_install,promtool,prometheus,the deploy tests,0)

chromium: ## chromium + chromedriver: tests/test_playground.py drives the web page with Selenium, headless
	$(call apt_install,chromium chromedriver,chromium chromium-driver,the playground tests,0)

wrk: ## wrk drives `make bench`'s HTTP runs
	$(call apt_install,wrk,wrk,make bench,1)

test: $(VENV)/.dev-installed promtool chromium ## run the test suite (installs the dev venv, promtool and chromium first)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed ## ruff check + ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

models: $(VENV)/.dev-installed ## retrain and re-export the three shipped models into models/
	$(call train_export,names_wavenet,names-wavenet)
	$(call train_export,names_gpt,names-gpt)
	$(call train_export,shakespeare_gpt,shakespeare-gpt)

# Pins from the current lock are kept unless UPGRADE=1; both files come from pyproject.toml's extras.
lock: $(VENV)/.dev-installed ## regenerate requirements/{serve,dev}.lock with uv (UPGRADE=1: newest versions)
	$(VENV)/bin/uv pip compile pyproject.toml --extra serve --generate-hashes --universal --python-version 3.11 \
	  --custom-compile-command 'make lock' -q $(if $(UPGRADE),--upgrade) -o requirements/serve.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	  --custom-compile-command 'make lock' -q $(if $(UPGRADE),--upgrade) -o requirements/dev.lock

# bench adds transformers (the engine benchmark's Hugging Face reference) to the dev venv.
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.dev-installed
	$(PY) -m pip install -e '.[dev,bench]' -c requirements/dev.lock
	touch $@

bench: $(VENV)/.bench-installed wrk ## run the benchmarks (installs the bench extras: transformers)
	$(PY) -m benchmarks

docker: ## build the serving image (ONNX Runtime, no torch); IMAGE=charlm:latest
	docker build -t $(IMAGE) .

docker-torch: docker ## build the TorchScript image charlm:torch on top (deploy/torch.Dockerfile; TORCH_PIP_ARGS=...)
	docker build -f deploy/torch.Dockerfile --build-arg BASE_IMAGE=$(IMAGE) \
	  --build-arg TORCH_PIP_ARGS="$(TORCH_PIP_ARGS)" -t charlm:torch .

docker-smoke: ## build the image, run it read-only as uid 12345 with a key; check ready, auth, a generation, metrics, stop
	bash deploy/smoke.sh

clean: ## remove the venv and caches (not models/ nor runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
