# Two entry points: `make demo` (set up + run the quick reproduce end to end) and `make test`.
# Both create .venv and install pinned dependencies (CPU PyTorch via constraints.txt) when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Use the shared offline datasets when they sit beside the checkout (no network needed then).
SHARED := $(abspath ../shared/datasets)
export TINYROBUST_DATA ?= $(if $(wildcard $(SHARED)),$(SHARED),$(HOME)/.cache/tinyrobust/data)

.PHONY: setup demo test full clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q -c constraints.txt --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tinyrobust reproduce --dataset cifar10 --budget quick --out results/cifar10-quick

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

full: $(STAMP)
	$(VENV)/bin/tinyrobust reproduce --dataset cifar10 --budget full --out benchmarks/results/cifar10

clean-venv:
	rm -rf $(VENV)
