# `make bench`: first-touch latency microbenchmarks (harness/timing).
# Included by the top-level Makefile; PY and setup come from there.
BENCH_ARGS ?=

.PHONY: bench bench-self-test

bench: setup
	$(PY) -m harness bench $(BENCH_ARGS)

bench-self-test: setup
	$(PY) -m harness bench --self-test
