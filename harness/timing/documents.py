"""The shapes of ``bench.json`` and ``calibration.json`` (field by field in :mod:`harness.timing`), and their readers.

A reader checks the whole document before returning it: ``compare`` and the
simulator's cost model never meet a missing key, a string where a number
belongs, or a NaN sample.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from harness import schema
from harness.errors import DocumentError
from harness.schema import FINITE, NUMBER, ListOf, MapOf, Maybe, Obj

BENCH_SCHEMA = "uffd-harness/bench/1"
CALIBRATION_SCHEMA = "uffd-harness/calibration/1"
BENCH_WRITER = "uffd-harness bench --json-out PATH"
CALIBRATION_WRITER = "uffd-harness bench --calibration PATH"

#: what compare reads of a bench document's calibration section (the TSC rate divides by it)
_CALIBRATION_FACTS = Obj(
    required={"tsc_hz": FINITE},
    optional={
        "cpu_model": Maybe(str),
        "kernel": Maybe(str),
        "hypervisor_vendor": Maybe(str),
        "tcg": Maybe(bool),
        "empty_cycles": Maybe(NUMBER),
        "note": Maybe(str),
    },
)

SUMMARY = Obj(required=dict.fromkeys(("n", "median", "p10", "p90", "ci_lo", "ci_hi", "min", "max"), NUMBER))

SCENARIO = Obj(
    required={
        "group": str,
        "describe": str,
        "unit": str,
        "status": str,
        "samples": ListOf(FINITE),
        "round_medians": ListOf(NUMBER),
        "faults": NUMBER,
        "state_errors": ListOf(str),
    },
    optional={"batch_sizes": ListOf(NUMBER), "fault_free": bool, "summary": Maybe(SUMMARY)},
)

BENCH = Obj(
    required={
        "schema": str,
        "created": str,
        "config": dict,
        "calibration": _CALIBRATION_FACTS,
        "scenarios": MapOf(SCENARIO),
    },
    optional={"derived": dict, "host": dict},
)

CALIBRATION = Obj(
    required={"schema": str},
    optional={
        "tsc_hz": Maybe(FINITE),
        "empty_cycles": Maybe(NUMBER),
        "models_hardware_assists": bool,
        "medians": MapOf(NUMBER),
        "net_medians": MapOf(NUMBER),
        # [lo, hi] of each median: the cost model's bounds (harness.sim.cost) unpack them
        "intervals": MapOf(ListOf(FINITE)),
        "net_intervals": MapOf(ListOf(FINITE)),
        "absent": MapOf(str),
        "cpu_model": Maybe(str),
        "kernel": Maybe(str),
        "hypervisor_vendor": Maybe(str),
        "tcg": Maybe(bool),
        # the simulator's own figures (harness.sim.cost): cycles, so finite and not negative
        "cost_model": MapOf(FINITE),
    },
)


def load_bench(path: os.PathLike | str) -> dict[str, Any]:
    """A bench JSON file, checked whole; DocumentError naming the file and the key otherwise."""
    doc = schema.load(path, BENCH, "a bench JSON", BENCH_WRITER, schema=BENCH_SCHEMA)
    for name, scenario in doc["scenarios"].items():
        sizes = scenario.get("batch_sizes") or []
        if any(not isinstance(n, int) or n < 0 for n in sizes):
            raise DocumentError(path, f"scenarios.{name}.batch_sizes: expected counts, got {sizes!r}")
    if doc["calibration"]["tsc_hz"] <= 0:
        raise DocumentError(path, f"calibration.tsc_hz: expected a positive rate, got {doc['calibration']['tsc_hz']}")
    return doc


def load_calibration(path: os.PathLike | str) -> dict[str, Any]:
    """A calibration JSON file, checked whole (``cost_model`` figures must not be negative)."""
    doc = schema.load(path, CALIBRATION, "a calibration JSON", CALIBRATION_WRITER, schema=CALIBRATION_SCHEMA)
    for key, value in (doc.get("cost_model") or {}).items():
        if value < 0:
            raise DocumentError(path, f"cost_model.{key}: a cost in cycles cannot be negative, got {value}")
    for field in ("intervals", "net_intervals"):
        for key, pair in (doc.get(field) or {}).items():
            if len(pair) != 2 or pair[0] > pair[1]:
                raise DocumentError(path, f"{field}.{key}: expected [lo, hi] with lo <= hi, got {pair!r}")
    return doc


def load_previous_calibration(path: os.PathLike | str) -> Optional[dict[str, Any]]:
    """The calibration a new one updates, or None when there is none fit to update (it is then replaced)."""
    try:
        return load_calibration(path)
    except DocumentError:
        return None
