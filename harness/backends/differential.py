"""Differential testing: run one operation sequence on the kernel and on the simulator, compare.

A sequence is a :class:`~harness.operations.Setup` (the regions: kind and
registration of each; the features to negotiate) and a list of operations
(:mod:`harness.operations`: ``Write(0)``, ``Unprotect(0, Hints.WRITE_LIKELY)``,
``Move(dst=0, src=1)``, ...).

After every step each backend reports, per region, the observable bits
(present, swapped, uffd_wp, young, dirty, exclusive, file_shared, and
soft_dirty when the kernel has it), the step's result (0, a signal number
for an access, or the errno of a failed call) and the faults delivered.
The first step where they differ is a :class:`Disagreement`, whose
:meth:`Disagreement.reproducer` is a test ready to paste.

Two things the model cannot know are kept out of the comparison:
the kernel side runs pinned to one CPU (per-CPU LRU batches otherwise make
the reclaim of MADV_FREE'd pages depend on scheduling), and a ``young`` bit
after an access that may have used a TLB entry cached before young was
cleared without a flush (clear_refs 1, idle marking) is not compared: the
simulator reports it in ``Step.uncertain`` (found on the TCG guest).
"""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass, field
from typing import Optional

from harness.abi import Feature
from harness.backends.base import Backend, RegionRef
from harness.operations import Op, Outcome, Setup, apply, source_imports, start
from harness.process import pinned_to_one_cpu
from harness.pte import SMAPS

FIELDS = ("present", "swapped", "uffd_wp", "young", "dirty", "exclusive", "file_shared")


@dataclass
class Step:
    op: Op
    result: Outcome
    events: tuple
    states: tuple  # one dict of FIELDS per region
    #: per region, the fields the simulator cannot predict (young through a stale TLB entry)
    uncertain: tuple = ()

    def describe(self) -> str:
        states = "; ".join(
            f"r{i}: "
            + _bits(s)
            + ("?" + ",".join(sorted(self.uncertain[i])) if i < len(self.uncertain) and self.uncertain[i] else "")
            for i, s in enumerate(self.states)
        )
        events = " ".join(str(e) for e in self.events) or "-"
        return f"result={_result_name(self.result)} events={events} {states}"


@dataclass
class Disagreement(Exception):
    setup: Setup
    ops: list[Op]
    index: int
    kernel: Step
    sim: Step
    profile: str
    details: list = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"kernel and simulator ({self.profile}) disagree after step {self.index} {self.ops[self.index]!r}:\n"
            f"  kernel: {self.kernel.describe()}\n  sim:    {self.sim.describe()}\n"
            f"  differences: {', '.join(self.details)}\n\nreproducer:\n{self.reproducer()}"
        )

    def reproducer(self) -> str:
        """A test that runs the sequence up to the step that disagreed (paste it, run it with pytest)."""
        ops = self.ops[: self.index + 1]
        imports = ["from harness.backends.differential import assert_agree", *source_imports(self.setup, ops)]
        return (
            "def test_differential_reproducer():\n"
            + "".join(f"    {line}\n" for line in sorted(imports))
            + "\n"
            + f"    setup = {self.setup!r}\n"
            + "    ops = [\n"
            + "".join(f"        {op!r},\n" for op in ops)
            + "    ]\n"
            + "    assert_agree(setup, ops)\n"
        )


def _bits(state: dict) -> str:
    letters = {
        "present": "P",
        "swapped": "S",
        "uffd_wp": "U",
        "young": "Y",
        "dirty": "D",
        "exclusive": "X",
        "file_shared": "F",
        "soft_dirty": "s",
    }
    return "".join(letters[k] if v else "." for k, v in state.items())


def _result_name(result) -> str:
    if isinstance(result, tuple):
        kind, code = result
        if kind == "signal":
            return signal.Signals(code).name
        return errno.errorcode.get(code, str(code))
    return str(result)


def observe(b: Backend, regions: list[RegionRef], soft_dirty: bool) -> tuple:
    states = b.observe_pages([(r, 0) for r in regions], SMAPS)
    out = []
    for st in states:
        d = {f: bool(getattr(st, f)) for f in FIELDS}
        if soft_dirty:
            d["soft_dirty"] = bool(st.soft_dirty)
        out.append(d)
    return tuple(out)


def run(b: Backend, setup: Setup, ops: list[Op], soft_dirty: bool) -> list[Step]:
    regions = start(b, setup)
    steps = []
    for op in ops:
        result = apply(b, regions, op)
        events = tuple(b.events())
        uncertain = tuple(b.uncertain_fields(r) for r in regions) if hasattr(b, "uncertain_fields") else ()
        steps.append(Step(op, result, events, observe(b, regions, soft_dirty), uncertain))
    return steps


def compare(
    setup: Setup, ops: list[Op], kernel_steps: list[Step], sim_steps: list[Step], profile: str
) -> Optional[Disagreement]:
    for i, (k, s) in enumerate(zip(kernel_steps, sim_steps, strict=False)):
        details = []
        if k.result != s.result:
            details.append(f"result {_result_name(k.result)} != {_result_name(s.result)}")
        if k.events != s.events:
            details.append(f"events {[str(e) for e in k.events]} != {[str(e) for e in s.events]}")
        for r, (ks, ss) in enumerate(zip(k.states, s.states, strict=False)):
            unsure = s.uncertain[r] if r < len(s.uncertain) else ()
            for f in ks:
                if ks[f] != ss[f] and f not in unsure:
                    details.append(f"r{r}.{f} {ks[f]} != {ss[f]}")
        if details:
            return Disagreement(setup, ops, i, k, s, profile, details)
    return None


def sim_for_kernel():
    """The simulator configured like the running kernel: its profile, soft-dirty and swap."""
    from harness.backends.kernel import kernel_soft_dirty, kernel_swap, offered_features
    from harness.backends.sim import SimBackend
    from harness.sim import profiles

    profile = profiles.for_kernel(Feature.ACCESS_HINTS in offered_features())
    return SimBackend(profile, soft_dirty=kernel_soft_dirty(), swap=kernel_swap())


def run_both(setup: Setup, ops: list[Op]) -> Optional[Disagreement]:
    from harness.backends.kernel import KernelBackend, kernel_soft_dirty

    soft_dirty = kernel_soft_dirty()
    sb = sim_for_kernel()
    # per-CPU LRU batches (lru_add_drain() drains only the local CPU's) would otherwise make reclaim
    # of just-MADV_FREE'd pages depend on scheduling
    with pinned_to_one_cpu():
        kb = KernelBackend(channels=[SMAPS])
        try:
            k_steps = run(kb, setup, ops, soft_dirty)
        finally:
            kb.close()
    try:
        s_steps = run(sb, setup, ops, soft_dirty)
    finally:
        sb.close()
    return compare(setup, ops, k_steps, s_steps, sb.profile)


def assert_agree(setup: Setup, ops: list[Op]) -> None:
    """Raise :class:`Disagreement` (with a reproducer) unless both backends agree at every step."""
    problem = run_both(setup, ops)
    if problem is not None:
        raise problem
