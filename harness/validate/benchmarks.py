"""The benchmark part of a validation's report: each kernel's scenarios, and stock against candidate.

A comparison of timings taken under QEMU TCG has no verdict: TCG does not
model the hardware accessed/dirty assists the hint patch removes, so
"faster" or "slower" there would mean nothing.  Such a comparison is marked
``emulated``, its rows carry the medians and no verdict, and in place of a
verdict the report carries a projection (:mod:`harness.sim.projection`) from
the host's own calibration, or how to make one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from harness import paths
from harness.timing.bench import emulated_reason

#: where ``make bench`` on the host leaves the calibration a projection reads
HOST_CALIBRATION = paths.CALIBRATION_JSON

#: the verdict of a row that was not judged
EMULATED = "emulated"


def scenarios_of(doc: dict) -> dict:
    """One kernel's bench document, summarised: where it ran and each scenario's median or why none."""
    cal = doc.get("calibration") or {}
    scenarios = {}
    for name, s in (doc.get("scenarios") or {}).items():
        summary = s.get("summary") or {}
        scenarios[name] = {
            "status": s.get("status", "?"),
            "unit": s.get("unit", "cycles"),
            **{k: summary.get(k) for k in ("n", "median", "ci_lo", "ci_hi")},
        }
    return {
        "created": doc.get("created"),
        "tcg": bool(cal.get("tcg")),
        "models_hardware_assists": bool(cal.get("models_hardware_assists", not cal.get("tcg"))),
        "cpu_model": cal.get("cpu_model"),
        "hypervisor": cal.get("hypervisor_vendor"),
        "scenarios": scenarios,
    }


def comparison(stock_doc: dict, candidate_doc: dict, host_calibration: Optional[Path] = None) -> dict:
    """report.json's ``bench``: rows of stock against candidate, and under TCG a projection instead of verdicts."""
    from harness.sim.projection import host_projection
    from harness.timing import bench

    rows, skipped = bench.compare_results(bench.results_of(stock_doc), bench.results_of(candidate_doc))
    emulated = emulated_reason(stock_doc, candidate_doc, ("stock", "candidate"))
    out_rows = []
    for c in rows:
        row = {
            "name": c.name,
            "a_median": c.median_a,
            "b_median": c.median_b,
            "diff": c.diff,
            "diff_lo": c.ci_lo,
            "diff_hi": c.ci_hi,
            "verdict": c.verdict,
        }
        if emulated:
            # the medians are what TCG measured; a difference between them is not a hardware effect
            row.update(diff=None, diff_lo=None, diff_hi=None, verdict=EMULATED)
        out_rows.append(row)
    doc = {
        "rows": out_rows,
        "not_compared": skipped,
        "emulated": emulated,
        "stock_calibration": stock_doc.get("calibration"),
        "candidate_calibration": candidate_doc.get("calibration"),
    }
    if emulated:
        doc["projection"] = host_projection(host_calibration or HOST_CALIBRATION)
    return doc
