# uffd-harness: `make validate` runs the main job, `make test` runs the tests.
# Each target installs what it needs (a venv here; Debian packages via apt as root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup lint format test test-host test-trees validate bench clean distclean

setup: $(STAMP)

# Reinstall when the package metadata or any C source changes (the CFFI
# extension is compiled at install time).
$(STAMP): pyproject.toml setup.py harness/_ffi_build.py $(wildcard cbits/*)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,vm,bench]'
	@touch $@

# One style: ruff's lint and format and mypy's types, with the settings in pyproject.toml
# (seconds).  `make format` rewrites the files that `ruff format --check` names.
LINTED = harness tests vm/mutants setup.py
lint: setup
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy

format: setup
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

# The tests: lint first, the host suite (fast), then the two kernels, the tests
# of the builder and runner (they boot guests, mutants included), the whole suite
# again inside a guest of each kernel, and the same on Linux 6.1 (its build and
# selftest, then the suite in a stock-6.1 and a patched-6.1 guest).  Under CI=true
# a skip is a failure.  `validate --tree` on a git tree is `make test-trees`.
test: setup lint
	$(PY) -m pytest -m "not vm" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory kernels
	$(PY) -m pytest -m "vm and not other_base" tests/vm $(PYTEST_ARGS)
	$(MAKE) --no-print-directory vm-test KERNEL=stock
	$(MAKE) --no-print-directory vm-test KERNEL=patched
	$(PY) -m pytest tests/vm/test_source_61.py $(PYTEST_ARGS)
	$(MAKE) --no-print-directory vm-test KERNEL=stock SOURCE=6.1
	$(MAKE) --no-print-directory vm-test KERNEL=patched SOURCE=6.1

# validate --tree end to end on a git tree made from linux-source-6.12 (two more kernel builds).
test-trees: setup
	$(PY) -m pytest tests/vm/test_tree_build.py $(PYTEST_ARGS)

# The host suite alone: no kernel builds, no guests.
test-host: setup
	$(PY) -m pytest -m "not vm" $(PYTEST_ARGS)

# The main job: kernels, guests, every check and benchmark, one report.
validate: setup
	$(PY) -m harness validate $(VALIDATE_ARGS)

include vm/kernel.mk
include bench.mk

clean:
	rm -rf build/results .pytest_cache .hypothesis .mypy_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) build harness/_native*.so *.egg-info
