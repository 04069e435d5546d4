"""Differential testing: run one operation sequence on the kernel and on the simulator, compare.

A sequence is a :class:`Setup` (the regions: kind and registration of each;
the features to negotiate) and a list of operations, each a tuple::

    ("read", r) ("write", r) ("protect", r) ("unprotect", r, hints)   hints: "", "A", "W", "AW"
    ("free", r) ("dontneed", r) ("pageout", r) ("copy", r) ("zeropage", r) ("poison", r)
    ("move", dst, src) ("move", dst, src, "holes")
    ("mprotect", r, "r"|"rw") ("fork",) ("clear_refs", 1|4)

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

from harness.abi import Feature, RegisterMode
from harness.backends.base import Backend, RegionRef
from harness.memory import PROT_READ, PROT_RW, MemoryKind
from harness.process import pinned_to_one_cpu
from harness.pte import SMAPS

FIELDS = ("present", "swapped", "uffd_wp", "young", "dirty", "exclusive", "file_shared")


@dataclass(frozen=True)
class Setup:
    kinds: tuple  # MemoryKind value per region ("anon", "shmem", "shmem-private", "file")
    register: tuple  # "wp", "missing+wp", "minor+wp" or "minor" per region
    features: tuple = ()  # Feature names to negotiate

    def modes(self) -> list[RegisterMode]:
        names = {"wp": RegisterMode.WP, "missing": RegisterMode.MISSING, "minor": RegisterMode.MINOR}
        modes = []
        for spec in self.register:
            mode = RegisterMode(0)
            for part in spec.split("+"):
                mode |= names[part]
            modes.append(mode)
        return modes


@dataclass
class Step:
    op: tuple
    result: object
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
    ops: list
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
        ops = ",\n        ".join(repr(op) for op in self.ops[: self.index + 1])
        return (
            "def test_differential_reproducer():\n"
            "    from harness.backends.differential import Setup, assert_agree\n"
            f"    setup = {self.setup!r}\n"
            "    ops = [\n"
            f"        {ops},\n"
            "    ]\n"
            "    assert_agree(setup, ops)\n"
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


def start(b: Backend, setup: Setup) -> list[RegionRef]:
    b.api(tuple(Feature[name] for name in setup.features))
    return [b.create(MemoryKind(kind), 1, mode) for kind, mode in zip(setup.kinds, setup.modes(), strict=False)]


def apply(b: Backend, regions: list[RegionRef], op: tuple):
    """Do one operation; returns 0, ("signal", n) or ("errno", n)."""
    name = op[0]
    try:
        if name in ("read", "write"):
            sig = (b.read if name == "read" else b.write)(regions[op[1]])
            return ("signal", sig) if sig else 0
        if len(op) > 1 and name != "clear_refs":
            r = regions[op[1]]
        elif name not in ("fork", "clear_refs"):  # the two operations that name no region
            raise ValueError(f"operation {op!r} names no region")
        if name == "protect":
            b.protect(r)
        elif name == "unprotect":
            hints = op[2] if len(op) > 2 else ""
            b.unprotect(r, access_likely="A" in hints, write_likely="W" in hints)
        elif name in ("free", "dontneed", "pageout"):
            b.madvise(r, name)
        elif name == "copy":
            b.copy(r)
        elif name == "zeropage":
            b.zeropage(r)
        elif name == "poison":
            b.poison(r)
        elif name == "move":
            b.move(r, 0, regions[op[2]], 0, allow_src_holes=len(op) > 3 and op[3] == "holes")
        elif name == "mprotect":
            b.mprotect(r, PROT_READ if op[2] == "r" else PROT_RW)
        elif name == "fork":
            b.fork()
        elif name == "clear_refs":
            b.clear_refs(op[1])
        else:
            raise ValueError(f"unknown operation {op!r}")
    except OSError as exc:
        return ("errno", exc.errno)
    return 0


def observe(b: Backend, regions: list[RegionRef], soft_dirty: bool) -> tuple:
    states = b.observe_pages([(r, 0) for r in regions], SMAPS)
    out = []
    for st in states:
        d = {f: bool(getattr(st, f)) for f in FIELDS}
        if soft_dirty:
            d["soft_dirty"] = bool(st.soft_dirty)
        out.append(d)
    return tuple(out)


def run(b: Backend, setup: Setup, ops: list, soft_dirty: bool) -> list[Step]:
    regions = start(b, setup)
    steps = []
    for op in ops:
        result = apply(b, regions, op)
        events = tuple(b.events())
        uncertain = tuple(b.uncertain_fields(r) for r in regions) if hasattr(b, "uncertain_fields") else ()
        steps.append(Step(op, result, events, observe(b, regions, soft_dirty), uncertain))
    return steps


def compare(
    setup: Setup, ops: list, kernel_steps: list[Step], sim_steps: list[Step], profile: str
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


def run_both(setup: Setup, ops: list) -> Optional[Disagreement]:
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


def assert_agree(setup: Setup, ops: list) -> None:
    """Raise :class:`Disagreement` (with a reproducer) unless both backends agree at every step."""
    problem = run_both(setup, ops)
    if problem is not None:
        raise problem
