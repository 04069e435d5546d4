"""Where the time of a validation went: one entry per phase, for report.json and the last lines printed.

Host-side phases are timed here (:class:`PhaseClock`), and so are the
guests': the host notes when each of the guest's step lines
(:data:`harness.validate.guest.STEP_LINES`) reaches its console
(:class:`GuestTimer`), because a TCG guest's own clock runs slow on a
loaded host (3 Dec: a suite that took about 500 s of host time measured
155 s in the guest).  Boot is from QEMU's start to the first step line,
benchmarks end when the guest is gone.  The guest's ``steps.json``
seconds are the fallback (the host path, where they are wall clock).  Guests
run in parallel, so a guest phase's ``seconds`` is its longest kernel's and
``kernels`` has each; a kernel whose results were reused
(:mod:`harness.validate.control_cache`) shows the seconds they took when
they were made, marked ``reused``.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterator, Optional

from harness.validate.guest import STEP_LINES
from harness.validate.outcome import KernelOutcome

#: (key in report.json, label printed), in the order a validation runs them
PHASES = (
    ("check", "check"),
    ("build_control", "build control"),
    ("build_candidate", "build candidate"),
    ("boot", "boot"),
    ("suite", "suite"),
    ("selftests", "selftests"),
    ("suite_selftests", "suite+selftests"),
    ("benchmarks", "benchmarks"),
    ("report", "report"),
)
#: the phases that run inside each guest
GUEST_PHASES = ("boot", "suite", "selftests", "suite_selftests", "benchmarks")


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


#: guest.py's step names -> the phase each starts
_STEP_PHASES = {"pytest": "suite", "selftests": "selftests", "bench": "benchmarks", "beside": "suite_selftests"}


class GuestTimer:
    """Host wall-clock times of one guest's phases, from its console lines as they arrive."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: dict[str, float] = {}

    def on_line(self, text: str) -> None:
        """For run_in_guest(on_line=...): note when each step's first progress line came."""
        if not text.startswith("[validate] "):
            return
        for step, words in STEP_LINES.items():
            phase = _STEP_PHASES[step]
            if phase not in self.marks and f": {words}" in text:
                self.marks[phase] = time.monotonic()

    def seconds(self, end: Optional[float] = None) -> dict[str, float]:
        """Boot (to the first step line) and each step (to the next one, the last to ``end``)."""
        end = time.monotonic() if end is None else end
        order = sorted(self.marks.items(), key=lambda kv: kv[1])
        if not order:
            return {}
        out = {"boot": round(order[0][1] - self.start, 1)}
        for (phase, t), nxt in zip(order, [t for _, t in order[1:]] + [end], strict=False):
            out[phase] = round(nxt - t, 1)
        return out

    def write(self, out_dir: Path, end: Optional[float] = None) -> dict[str, float]:
        """Save :meth:`seconds` as ``phases.json`` next to the guest's results (kept with a reused control)."""
        secs = self.seconds(end)
        if secs:
            (out_dir / "phases.json").write_text(json.dumps(secs) + "\n")
        return secs


def guest_seconds(outcome: KernelOutcome) -> dict[str, float]:
    """One kernel's boot, suite, selftests and benchmarks seconds: host-timed if it was a guest."""
    if outcome.host_phases:
        return {k: float(v) for k, v in outcome.host_phases.items()}
    steps = outcome.steps or {}
    suite = float(steps.get("pytest", {}).get("seconds") or 0.0)
    selftests = sum(float(run.get("seconds") or 0.0) for run in steps.get("selftests", {}).values())
    benchmarks = float(steps.get("bench", {}).get("seconds") or 0.0)
    if steps.get("beside"):  # run at once: the longer of the two
        out = {"suite_selftests": max(suite, selftests), "benchmarks": benchmarks}
    else:
        out = {"suite": suite, "selftests": selftests, "benchmarks": benchmarks}
    if outcome.where == "guest":
        out["boot"] = max(0.0, outcome.seconds - sum(out.values()))
    return out


def phases_document(
    clock: PhaseClock,
    outcomes: list[KernelOutcome],
    total: float,
    guests_wall: Optional[float] = None,
    parallel: int = 1,
) -> dict:
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
            detail = (
                "  ("
                + ", ".join(f"{name} {s:.0f}" + (" reused" if name in reused else "") for name, s in kernels.items())
                + ")"
            )
        lines.append(f"  {label:<16}{entry['seconds']:>6.0f}{detail}")
    wall = phases.get("guests_wall")
    if wall:
        lines.append(
            f"  {'guests in all':<16}{wall['seconds']:>6.0f}  ({wall['parallel']} at a time; "
            "boot to benchmarks above are per guest)"
        )
    lines.append(f"  {'total':<16}{phases['total']['seconds']:>6.0f}")
    return lines
