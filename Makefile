# charlm developer entry points; `make help` lists them. Install steps are stamped on pyproject.toml,
# so they run once and again only when the dependencies change.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
IMAGE ?= charlm
# The release: pyproject.toml's version; `make docker` tags $(IMAGE):$(VERSION) and $(IMAGE):latest.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
ARGS ?=
PYTEST_ARGS ?=
# Tests, training and benchmarks read the corpora from ../shared/data unless told otherwise.
export CHARLM_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)

# Train one config and export it as a shipped model: $(1) = training config, $(2) = models/ folder.
define train_export
$(PY) -m training train --config training/configs/$(1).toml --out runs/$(1)
$(PY) -m training export runs/$(1) --out models/$(2) --force
endef

.PHONY: help serve test test-gpu lint lock models bench docker docker-torch docker-smoke promtool chromium kubectl wrk clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# requirements/dev.lock pins every dependency with its hashes and extras (`make lock` regenerates it); the
# image uses serve.lock. pip takes no hashes nor extras in a constraints file, so the installs below are
# constrained by the lock's bare pins (name==version ; marker), derived from it.
CONSTRAINTS := $(VENV)/constraints.txt
$(CONSTRAINTS): requirements/dev.lock | $(PY)
	sed -nE 's/^([A-Za-z0-9_.-]+)(\[[^]]*\])?(==[^ ;\\]+)( ;[^\\]*[^ \\])?.*/\1\3\4/p' $< > $@

# charlm itself is built with the hashed, pinned setuptools of requirements/build.lock, not whatever PyPI
# has that day (--no-build-isolation: pip would fetch an unpinned one for an isolated build).
$(VENV)/.build-installed: requirements/build.lock | $(PY)
	$(PY) -m pip install --require-hashes -r requirements/build.lock
	touch $@

$(VENV)/.serve-installed: pyproject.toml $(CONSTRAINTS) $(VENV)/.build-installed | $(PY)
	$(PY) -m pip install --no-build-isolation -e '.[serve]' -c $(CONSTRAINTS)
	touch $@

# dev includes serve, so it refreshes both stamps.
$(VENV)/.dev-installed: pyproject.toml $(CONSTRAINTS) $(VENV)/.build-installed | $(PY)
	$(PY) -m pip install --no-build-isolation -e '.[dev]' -c $(CONSTRAINTS)
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

promtool: ## promtool (Debian's prometheus): tests/deploy/test_deploy.py checks the Prometheus files with it
	$(call apt_install,promtool,prometheus,the deploy tests,0)

chromium: ## chromium + chromedriver: tests/service/test_playground.py drives the web page with Selenium, headless
	$(call apt_install,chromium chromedriver,chromium chromium-driver,the playground tests,0)

wrk: ## wrk drives `make bench`'s HTTP runs
	$(call apt_install,wrk,wrk,make bench,1)

kubectl: ## kubectl (Debian's kubernetes-client where none is installed): tests/deploy/test_k8s.py renders the kustomization
	$(call apt_install,kubectl,kubernetes-client,the k8s tests,0)

test: $(VENV)/.dev-installed promtool chromium kubectl ## run the test suite (installs the dev venv, promtool, chromium, kubectl first)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-gpu: $(VENV)/.dev-installed ## on a machine with a CUDA GPU: the tests marked gpu (install onnxruntime-gpu and a CUDA torch into the venv first)
	$(VENV)/bin/pytest -q -m gpu -rs tests/engine

lint: $(VENV)/.dev-installed ## ruff check + ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

models: $(VENV)/.dev-installed ## retrain and re-export the three shipped models into models/
	$(call train_export,names_wavenet,names-wavenet)
	$(call train_export,names_gpt,names-gpt)
	$(call train_export,shakespeare_gpt,shakespeare-gpt)

# Pins from the current lock are kept unless UPGRADE=1; serve and dev come from pyproject.toml's extras, build
# from requirements/build.in (what `pip install .` builds with). Every file has hashes and keeps the extras
# it pins (`uvicorn[standard]==...`): pip <= 23.2 refuses `--require-hashes` when a dependency asks for an
# extra that the file pins without it (tests/deploy/test_locks.py).
UV_COMPILE = $(VENV)/bin/uv pip compile --generate-hashes --no-strip-extras --universal --python-version 3.11 \
  --custom-compile-command 'make lock' -q $(if $(UPGRADE),--upgrade)
lock: $(VENV)/.dev-installed ## regenerate requirements/{serve,dev,build}.lock with uv (UPGRADE=1: newest versions)
	$(UV_COMPILE) pyproject.toml --extra serve -o requirements/serve.lock
	$(UV_COMPILE) pyproject.toml --extra dev -o requirements/dev.lock
	$(UV_COMPILE) requirements/build.in -c requirements/dev.lock -o requirements/build.lock

# bench adds transformers (the engine benchmark's Hugging Face reference) to the dev venv.
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.dev-installed
	$(PY) -m pip install --no-build-isolation -e '.[dev,bench]' -c $(CONSTRAINTS)
	touch $@

bench: $(VENV)/.bench-installed wrk ## run the benchmarks (installs the bench extras: transformers, ctranslate2, lm-eval); ARGS=--quick: a smoke run
	$(PY) -m benchmarks $(ARGS)

# Provenance for the image's OCI labels and charlm_build_info (Dockerfile, last lines).
# The checkout's commit, with -dirty when files differ from it (as charlm_build_info says outside an image).
REVISION ?= $(shell h=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD || h=$$h-dirty; echo $$h; } || echo unknown)
SOURCE ?= $(shell git remote get-url origin 2>/dev/null || echo unknown)
CREATED ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
docker: ## build the serving image (ONNX Runtime, no torch), tagged $(IMAGE):<version> and $(IMAGE):latest
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) --build-arg CREATED=$(CREATED) \
	  --build-arg SOURCE=$(SOURCE) -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

docker-torch: docker ## build the TorchScript image $(IMAGE):torch on top (deploy/torch.Dockerfile; TORCH_PIP_ARGS=...)
	docker build -f deploy/torch.Dockerfile --build-arg BASE_IMAGE=$(IMAGE):$(VERSION) \
	  --build-arg TORCH_PIP_ARGS="$(TORCH_PIP_ARGS)" -t $(IMAGE):$(VERSION)-torch -t $(IMAGE):torch .

docker-smoke: ## build the image, run it read-only as uid 12345 with a key; check ready, auth, a generation, metrics, stop
	bash deploy/smoke.sh

clean: ## remove the venv and caches (not models/ nor runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
