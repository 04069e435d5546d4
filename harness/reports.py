"""The shapes of a test run's documents and their readers: ``summary.json`` and ``report.json``.

``summary.json`` is written by the pytest plugin (``--summary-json``, field by
field in :func:`harness.pytest_plugin.build_summary`), in a guest or on the
host; ``report.json`` by ``uffd-harness validate`` from the summaries of
each kernel.  Whoever reads one back (validate reading a guest's summary, a
CI script reading the report) gets it checked whole, or a
:class:`~harness.errors.DocumentError` naming the file and the key.
"""

from __future__ import annotations

import os
from typing import Any

from harness import schema
from harness.schema import NUMBER, ListOf, MapOf, Maybe, Obj

_COUNTS = Obj(optional=dict.fromkeys(("passed", "failed", "skipped", "total"), NUMBER))

SUMMARY_CLAUSE = Obj(
    required={"result": str},
    optional={
        "needs": ListOf(str),
        "kernel_has_needs": bool,
        "tests": _COUNTS,
        "backends": MapOf(NUMBER),
        "channels": MapOf(ListOf(str)),
        "memory": MapOf(ListOf(str)),
        "gaps": ListOf(str),
        "coverage": MapOf(dict),
    },
)

#: the version each document carries in its "schema" field
SUMMARY_SCHEMA = "uffd-harness/summary/1"
REPORT_SCHEMA = "uffd-harness/report/1"

SUMMARY = Obj(
    required={"kernel_release": str, "patched": bool, "tests": _COUNTS, "clauses": MapOf(SUMMARY_CLAUSE)},
    optional={
        "schema": str,
        "features": Obj(optional={"offered": ListOf(str), "negotiated": ListOf(str)}),
        "hint_abi": Obj(optional={"feature": NUMBER, "access_likely": NUMBER, "write_likely": NUMBER, "source": str}),
        "backend_option": Maybe(str),
        "sim_profile": Maybe(str),
        "backends": MapOf(NUMBER),
        "timeline": Obj(optional={k: Maybe(NUMBER) for k in ("process_start", "first_test", "summary")}),
    },
)

REPORT = Obj(
    required={
        "verdict": Obj(required={"kind": str, "line": str}),
        "ok": bool,
        "problems": ListOf(str),
        "kernels": MapOf(dict),
        "clauses": MapOf(dict),
    },
    optional={
        "schema": str,
        "qemu": str,
        "quick": bool,
        "seconds": NUMBER,
        "selftest_regressions": MapOf(ListOf(str)),
        "bench": Maybe(dict),
        "reproduce": dict,
    },
)


def load_summary(path: os.PathLike | str) -> dict[str, Any]:
    """A ``--summary-json`` document, checked; DocumentError naming the file otherwise."""
    return schema.load(path, SUMMARY, "a test summary", "pytest --summary-json PATH")


def load_report(path: os.PathLike | str) -> dict[str, Any]:
    """A ``report.json`` of ``uffd-harness validate``, checked; DocumentError naming the file otherwise."""
    return schema.load(path, REPORT, "a validation report", "uffd-harness validate")
