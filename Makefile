# Two commands do everything on a fresh machine:
#   make demo   create .venv, install vitmech, run the main job on the embedded default
#   make test   create .venv where needed, install vitmech with its test extras, run the tests
#   make lint   ruff check, ruff format --check and mypy on vitmech/ (config in pyproject.toml)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-all lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitmech compare --out runs/demo --force

# the whole suite on one pytest-xdist worker per CPU core, at most 4 (as a plain `pytest` does: addopts);
# `make test TEST_WORKERS=-n0` runs it in one process
TEST_WORKERS ?= -n auto --maxprocesses=4

test: $(STAMP)
	$(PY) -m pytest -q $(TEST_WORKERS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" $(TEST_WORKERS)

# needs only the linters in the venv (a stale install stamp does not reinstall the package first)
lint:
	test -x $(VENV)/bin/mypy || $(MAKE) venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/forward.py

clean:
	rm -rf $(VENV) reports runs
