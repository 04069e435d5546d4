# Guest kernels and the QEMU runner (harness/vm).  Included by the main Makefile.
#
#   make kernel KERNEL=patched|stock [KERNEL_PATCHES=DIR] [JOBS=N] [SOURCE=6.1|6.12|PATH]
#                                     with SOURCE=6.1: stock-6.1 / patched-6.1 (vm/patches-6.1)
#   make kernels                      both, one after the other
#   make vm-run KERNEL=patched CMD='uname -a' [TIMEOUT=600]
#   make vm-test KERNEL=patched [SOURCE=6.1]  the pytest suite inside a guest of that
#                                     kernel; results in build/results/<KERNEL>/ (stock-6.1, ...)
#   make vm-selftest                  tests/vm: the builder and runner themselves
#   make mutant NAME=young-only       build a mutant (vm/mutants/), boot it, run the contract: caught?
#   make mutant                       the table of mutants
#   make mutants                      every mutant, two guests at a time
#
# Everything is cached under build/kernels/<name>/; an unchanged rebuild takes
# about a second.

# The main Makefile defines PY (the venv's python) and STAMP (venv installed);
# standalone, fall back to .venv or python3.
VM_PYTHON ?= $(or $(PY),$(if $(wildcard .venv/bin/python),.venv/bin/python,python3))
VM_SETUP := $(STAMP)
KERNEL ?= patched
KERNEL_PATCHES ?=
SOURCE ?=
JOBS ?= 2
TIMEOUT ?= 600
CMD ?= uname -a

.PHONY: kernel kernels vm-run vm-test vm-selftest mutant mutants

kernel: | $(VM_SETUP)
	$(VM_PYTHON) -m harness.vm build --kernel $(KERNEL) --jobs $(JOBS) \
		$(if $(KERNEL_PATCHES),--patches $(KERNEL_PATCHES)) $(if $(SOURCE),--source $(SOURCE))

kernels:
	$(MAKE) kernel KERNEL=stock
	$(MAKE) kernel KERNEL=patched

vm-run: | $(VM_SETUP)
	$(VM_PYTHON) -m harness.vm run --kernel $(KERNEL) --timeout $(TIMEOUT) -- sh -c '$(CMD)'

vm-test: setup
	$(PY) -m harness suite --kernel $(KERNEL) $(if $(SOURCE),--source $(SOURCE))

vm-selftest: setup
	$(PY) -m pytest -m vm tests/vm $(PYTEST_ARGS)

mutant: | $(VM_SETUP)
	$(VM_PYTHON) -m harness.vm mutant $(if $(NAME),$(NAME),--list)

mutants: | $(VM_SETUP)
	$(VM_PYTHON) -m harness.vm mutant --all
