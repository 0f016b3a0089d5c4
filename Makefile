# imagebuilder: `make build-<cloud>-<os>` builds that pair for every Kubernetes minor in the
# matrix; K8S=1.31 narrows it. Pattern rules only: the matrix is the list of targets.
# image-builder's target names work too (`make build-ami-ubuntu-2404`, `build-raw-debian-12`):
# `--only` reads a name no cell id matches as one (imagebuilder/targets.py); `imagebuilder
# targets` lists them.
MATRIX ?= matrix.yaml
K8S ?= *
# The checkout's virtual environment (.ci/run and the README make it), else the python3 on PATH.
VENV ?= .venv
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
# Its tools (ansible-playbook, moto_server...) first on PATH, for the commands make runs.
export PATH := $(if $(wildcard $(VENV)/bin),$(abspath $(VENV))/bin:)$(PATH)
IMAGEBUILDER ?= $(PYTHON) -m imagebuilder.cli
# More options of `imagebuilder build|validate|render`, as image-builder's PACKER_FLAGS: ARGS='-o out --offline'.
ARGS ?=
cells = --only '$*-k8s-$(K8S)' $(ARGS)

.PHONY: help plan render validate test bench prune
help:
	@echo "make plan | build-<cloud>-<os> [K8S=1.31] | validate-<cloud>-<os> | validate | test | bench | prune"
	@$(IMAGEBUILDER) plan -m $(MATRIX) --format make

plan:
	$(IMAGEBUILDER) plan -m $(MATRIX)

build-%:
	$(IMAGEBUILDER) build -m $(MATRIX) $(cells)

validate-%:
	$(IMAGEBUILDER) validate -m $(MATRIX) $(cells)

render-%:
	$(IMAGEBUILDER) render -m $(MATRIX) $(cells)

validate:
	$(IMAGEBUILDER) validate -m $(MATRIX)

test:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

bench:
	$(PYTHON) bench/plan.py
	$(PYTHON) bench/render.py
	$(PYTHON) bench/scheduler.py
	$(PYTHON) bench/changed.py
	$(PYTHON) bench/nightly_noop.py
	$(PYTHON) bench/base_resolution.py

prune:
	$(IMAGEBUILDER) prune -m $(MATRIX)
