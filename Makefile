# imagebuilder: `make build-<cloud>-<os>` builds that pair for every Kubernetes minor in the
# matrix; K8S=1.31 narrows it. Pattern rules only: the matrix is the list of targets.
MATRIX ?= matrix.yaml
K8S ?= *
PYTHON ?= python3
IMAGEBUILDER ?= $(PYTHON) -m imagebuilder.cli
cells = --only '$*-k8s-$(K8S)'

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
	$(PYTHON) -m pytest

bench:
	$(PYTHON) bench/plan.py
	$(PYTHON) bench/render.py
	$(PYTHON) bench/scheduler.py
	$(PYTHON) bench/changed.py
	$(PYTHON) bench/nightly_noop.py

prune:
	$(IMAGEBUILDER) prune -m $(MATRIX)
