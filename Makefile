# uffd-harness: `make validate` runs the main job, `make test` runs the tests.
# Each target installs what it needs (a venv here; Debian packages via apt as root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-host validate bench clean distclean

setup: $(STAMP)

# Reinstall when the package metadata or any C source changes (the CFFI
# extension is compiled at install time).
$(STAMP): pyproject.toml setup.py harness/_ffi_build.py $(wildcard cbits/*)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,vm,bench]'
	@touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

include vm/kernel.mk
include bench.mk

clean:
	rm -rf build/results .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) build harness/_native*.so *.egg-info
