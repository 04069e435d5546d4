"""Named scenarios for ``uffd-harness sim run``: a set-up, operations, and the accesses to price.

Operations use the format of :mod:`harness.backends.differential`; a
``("touch", r, "read"|"write")`` step is an access whose cost the
:class:`~harness.sim.cost.CostModel` predicts.  ``{hints}`` in an
un-protect is replaced by the hints a scenario is run with (``--hints``).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.backends.differential import Setup


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    setup: Setup
    ops: tuple
    #: repeat the ops this many times (the RFC loop)
    repeat: int = 1
    #: operations done once before the repeated ones
    prologue: tuple = ()


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "free-unprotect-write",
            "write, MADV_FREE (old+clean), protect, un-protect, then write: the first write pays the dirty assist "
            "unless WRITE_LIKELY dirtied the PTE",
            Setup(("anon",), ("wp",)),
            (("write", 0), ("free", 0), ("protect", 0), ("unprotect", 0, "{hints}"), ("touch", 0, "write")),
        ),
        Scenario(
            "free-unprotect-read",
            "write, MADV_FREE, protect, un-protect, then read: the first read pays the accessed assist "
            "unless ACCESS_LIKELY made the PTE young",
            Setup(("anon",), ("wp",)),
            (("write", 0), ("free", 0), ("protect", 0), ("unprotect", 0, "{hints}"), ("touch", 0, "read")),
        ),
        Scenario(
            "shmem-clean-unprotect-write",
            "read-fault a shmem page (clean), protect, un-protect, write: a clean shared PTE is never made "
            "writable, so the write faults whatever the hints",
            Setup(("shmem",), ("wp",)),
            (("read", 0), ("clear_refs", 1), ("protect", 0), ("unprotect", 0, "{hints}"), ("touch", 0, "write")),
        ),
        Scenario(
            "wp-fault-round-trip",
            "write to a protected page: a WP fault goes to the handler, which un-protects it",
            Setup(("anon",), ("wp",)),
            (("write", 0), ("protect", 0), ("touch", 0, "write")),
        ),
        Scenario(
            "rfc-loop",
            "the RFC cover letter's single-thread loop, with uffd-wp for mprotect: protect, un-protect, write; "
            "after the first write the PTE stays young and dirty, so hints change little "
            "(as the RFC's 1-thread figures)",
            Setup(("anon",), ("wp",)),
            (("protect", 0), ("unprotect", 0, "{hints}"), ("touch", 0, "write")),
            repeat=3,
            prologue=(("write", 0),),
        ),
    )
}


@dataclass
class ScenarioResult:
    scenario: Scenario
    profile: str
    hints: str
    #: (op, result) per step; touches carry an AccessCost
    steps: list
    #: PteState per region at the end (the modelled PTE)
    states: list
    events: list


def run(name: str, profile: str = "access-hints", hints: str = "", cost_model=None) -> ScenarioResult:
    """Run scenario ``name`` on a fresh simulator; price its touches with ``cost_model``."""
    from harness.backends import differential
    from harness.backends.sim import SimBackend
    from harness.sim.cost import CostModel

    scenario = SCENARIOS[name]
    cost_model = cost_model or CostModel.load()
    b = SimBackend(profile)
    features = tuple(scenario.setup.features) + (("ACCESS_HINTS",) if b.has_feature(_hint_feature()) else ())
    setup = differential.Setup(scenario.setup.kinds, scenario.setup.register, features)
    regions = differential.start(b, setup)
    steps, events = [], []
    for op in list(scenario.prologue) + list(scenario.ops) * scenario.repeat:
        if op[0] == "touch":
            addr = b.mm.vmas[regions[op[1]].index].start
            result = cost_model.access(b.mm, addr, op[2] == "write")
        else:
            op = tuple(hints if part == "{hints}" else part for part in op)
            result = differential.apply(b, regions, op)
        steps.append((op, result))
        events.extend(b.events())
    states = [b.observe(r, 0, "sim") for r in regions]
    b.close()
    return ScenarioResult(scenario, profile, hints, steps, states, events)


def _hint_feature():
    from harness.abi import Feature

    return Feature.ACCESS_HINTS
