# Two entry points: `make demo` (set up + run the quick reproduce end to end) and `make test`.
# Both create .venv and install the package with its extras, CPU PyTorch pinned by constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Use the shared offline datasets when they sit beside the checkout (no network needed then).
SHARED := $(abspath ../shared/datasets)
export TINYROBUST_DATA ?= $(if $(wildcard $(SHARED)),$(SHARED),$(HOME)/.cache/tinyrobust/data)

.PHONY: setup demo test test-fast lint full clean-venv

setup: $(STAMP)

# constraints.txt keeps pip on the CPU build of torch; torchattacks (AutoAttack's FAB-T) goes in with
# --no-deps because it declares torchvision (which would pull another torch) and an old requests.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,export]"
	$(PY) -m pip install -q -c constraints.txt --no-deps torchattacks==3.5.1
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tinyrobust reproduce --dataset cifar10 --budget quick --out results/cifar10-quick

# two pytest workers (pytest-xdist): the suite is CPU-bound and single-threaded per test (TINYROBUST_THREADS=1)
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

full: $(STAMP)
	$(VENV)/bin/tinyrobust reproduce --dataset cifar10 --budget full --out benchmarks/results/cifar10

clean-venv:
	rm -rf $(VENV)
