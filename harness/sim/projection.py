"""What the hints would save on this machine's CPU: the simulator's cost model, fed the host's calibration.

Under QEMU TCG a guest's timings say nothing about hardware accessed/dirty
assists (TCG sets the bits in its own slow path, at no extra cost), so a
validation in TCG guests cannot measure what the hint patch saves.  What it
can do is project: take the host's own calibration (``calibration.json``
from ``make bench`` on the host, never a guest's), price each simulator
scenario whose un-protect takes hints with and without them, and report the
difference with the interval that the calibration's medians carry.  It is a
projection from a model, and every result says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from harness.errors import DocumentError
from harness.operations import Hints
from harness.sim.cost import AccessCost, CostModel
from harness.sim.scenarios import SCENARIOS, Touch, UnprotectHinted, run
from harness.timing.documents import load_calibration

#: the bench scenarios a projected simulator scenario corresponds to: (without hints, with them)
BENCH_COUNTERPARTS = {
    "free-unprotect-write": ("uffd.unprotect.old_clean.write", "uffd.unprotect_write_likely.old_clean.write"),
    "free-unprotect-read": ("uffd.unprotect.old_clean.read", "uffd.unprotect_access_likely.old_clean.read"),
}

#: how to get what a projection needs, for the report
HOW_TO_CALIBRATE = (
    "run `make bench` on the host (not in a guest): it writes build/results/calibration.json, "
    "which the next report projects from"
)


def _hints_for(scenario) -> Optional[Hints]:
    """The hint a scenario's touch would want: WRITE_LIKELY before a write, ACCESS_LIKELY before a read;
    None without an un-protect that takes the scenario's hints."""
    if not any(isinstance(op, UnprotectHinted) for op in scenario.ops):
        return None
    writes = any(isinstance(op, Touch) and op.write for op in scenario.ops)
    return Hints.WRITE_LIKELY if writes else Hints.ACCESS_LIKELY


def _touch_cycles(name: str, hints: Hints, model: CostModel) -> float:
    result = run(name, "access-hints", hints, model)
    return sum(res.cycles for op, res in result.steps if isinstance(res, AccessCost))


def project(calibration: dict, source: str) -> dict:
    """Cycles each hint-taking scenario saves per touch under ``calibration``, with a 95% interval.

    Returns ``{"source", "created", "cpu_model", "kernel", "model", "rows": [{"scenario",
    "hints", "bench", "without", "with", "saved", "saved_lo", "saved_hi"}]}``;
    ``saved_lo``/``saved_hi`` are None when the calibration carries no intervals.
    """
    point = CostModel.from_calibration(calibration, source=source)
    low: Optional[CostModel]
    high: Optional[CostModel]
    try:
        low = CostModel.from_calibration(calibration, source=source, bound="low")
        high = CostModel.from_calibration(calibration, source=source, bound="high")
    except KeyError:
        low = high = None  # a calibration written before net_intervals: a point estimate only
    rows = []
    for name, scenario in SCENARIOS.items():
        hints = _hints_for(scenario)
        if hints is None:
            continue
        without, with_ = _touch_cycles(name, Hints.NONE, point), _touch_cycles(name, hints, point)
        row = {
            "scenario": name,
            "hints": hints.short,
            "bench": list(BENCH_COUNTERPARTS.get(name, ())),
            "without": without,
            "with": with_,
            "saved": without - with_,
            "saved_lo": None,
            "saved_hi": None,
        }
        if low is not None and high is not None:  # both or neither
            ends = [_touch_cycles(name, Hints.NONE, m) - _touch_cycles(name, hints, m) for m in (low, high)]
            row["saved_lo"], row["saved_hi"] = min(ends), max(ends)
        rows.append(row)
    return {
        "source": source,
        "created": calibration.get("created"),
        "cpu_model": calibration.get("cpu_model"),
        "kernel": calibration.get("kernel"),
        "hypervisor": calibration.get("hypervisor_vendor"),
        "model": {k: getattr(point, k) for k in ("base_access", "tlb_walk", "accessed_assist", "dirty_assist")},
        "assumed": list(point.assumed),
        "rows": rows,
    }


def host_projection(path: Path) -> dict:
    """The projection from the host calibration at ``path``, or why there is none and how to make one.

    ``{"available": True, ...project()}`` or ``{"available": False, "why": ..., "how": ...}``.
    """
    if not path.exists():
        return {"available": False, "why": f"no host calibration ({path} does not exist)", "how": HOW_TO_CALIBRATE}
    try:
        doc = load_calibration(path)
    except DocumentError as exc:  # names the file and the key
        return {"available": False, "why": str(exc), "how": HOW_TO_CALIBRATE}
    if doc.get("tcg") or not doc.get("models_hardware_assists", True):
        return {
            "available": False,
            "why": f"{path} was itself measured under TCG ({doc.get('created')})",
            "how": HOW_TO_CALIBRATE,
        }
    return {"available": True, **project(doc, str(path))}
