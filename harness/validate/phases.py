"""Where the time of a validation went: one entry per phase, for report.json and the last lines printed.

Host-side phases are timed here (:class:`PhaseClock`); the in-guest ones
come from each kernel's ``steps.json`` (written by
:mod:`harness.validate.guest`), and a guest's boot is what its run took
beyond its steps (QEMU start, kernel boot, Python start, power-off).  Guests
run in parallel, so a guest phase's ``seconds`` is its longest kernel's and
``kernels`` has each; a kernel whose results were reused
(:mod:`harness.validate.control_cache`) shows the seconds they took when
they were made, marked ``reused``.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

from harness.validate.outcome import KernelOutcome

#: (key in report.json, label printed), in the order a validation runs them
PHASES = (("check", "check"), ("build_control", "build control"), ("build_candidate", "build candidate"),
          ("boot", "boot"), ("suite", "suite"), ("selftests", "selftests"), ("benchmarks", "benchmarks"),
          ("report", "report"))
#: the phases that run inside each guest
GUEST_PHASES = ("boot", "suite", "selftests", "benchmarks")


class PhaseClock:
    """Wall-clock seconds per host-side phase; a phase timed twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.kernels: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str, kernel: Optional[str] = None) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            dt = time.monotonic() - t0
            self.seconds[phase] = self.seconds.get(phase, 0.0) + dt
            if kernel is not None:
                self.kernels.setdefault(phase, {})[kernel] = dt


def guest_seconds(outcome: KernelOutcome) -> dict[str, float]:
    """One kernel's boot, suite, selftests and benchmarks seconds, from its steps.json and run time."""
    steps = outcome.steps or {}
    suite = float(steps.get("pytest", {}).get("seconds") or 0.0)
    selftests = sum(float(run.get("seconds") or 0.0) for run in steps.get("selftests", {}).values())
    benchmarks = float(steps.get("bench", {}).get("seconds") or 0.0)
    out = {"suite": suite, "selftests": selftests, "benchmarks": benchmarks}
    if outcome.where == "guest":
        out["boot"] = max(0.0, outcome.seconds - suite - selftests - benchmarks)
    return out


def phases_document(clock: PhaseClock, outcomes: list[KernelOutcome], total: float,
                    guests_wall: Optional[float] = None, parallel: int = 1) -> dict:
    """report.json's ``phases``: every phase of :data:`PHASES` that ran, in order, then the totals."""
    doc: dict = {}
    per_kernel = {o.name: guest_seconds(o) for o in outcomes if not o.error or o.steps}
    for key, _ in PHASES:
        if key in GUEST_PHASES:
            kernels = {name: round(s[key], 1) for name, s in per_kernel.items() if key in s}
            if not kernels:
                continue
            fresh = [s for name, s in kernels.items() if not _reused(outcomes, name)]
            entry = {"seconds": max(fresh) if fresh else 0.0, "kernels": kernels}
            reused = sorted(name for name in kernels if _reused(outcomes, name))
            if reused:
                entry["reused"] = reused
            doc[key] = entry
        elif key in clock.seconds:
            entry = {"seconds": round(clock.seconds[key], 1)}
            if key in clock.kernels:
                entry["kernels"] = {k: round(v, 1) for k, v in clock.kernels[key].items()}
            doc[key] = entry
    if guests_wall is not None:
        doc["guests_wall"] = {"seconds": round(guests_wall, 1), "parallel": parallel}
    doc["total"] = {"seconds": round(total, 1)}
    return doc


def _reused(outcomes: list[KernelOutcome], name: str) -> bool:
    return any(o.name == name and o.reused for o in outcomes)


def render_phases(phases: dict) -> list[str]:
    """The lines printed at the end of a validation: one per phase, with seconds."""
    lines = ["where the time went (seconds, wall clock):"]
    for key, label in PHASES:
        entry = phases.get(key)
        if entry is None:
            continue
        detail = ""
        kernels = entry.get("kernels", {})
        if kernels and (key in GUEST_PHASES or len(kernels) > 1):
            reused = set(entry.get("reused", ()))
            detail = "  (" + ", ".join(f"{name} {s:.0f}" + (" reused" if name in reused else "")
                                       for name, s in kernels.items()) + ")"
        lines.append(f"  {label:<16}{entry['seconds']:>6.0f}{detail}")
    wall = phases.get("guests_wall")
    if wall:
        lines.append(f"  {'guests in all':<16}{wall['seconds']:>6.0f}  ({wall['parallel']} at a time; "
                     "boot to benchmarks above are per guest)")
    lines.append(f"  {'total':<16}{phases['total']['seconds']:>6.0f}")
    return lines
