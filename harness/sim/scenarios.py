"""Named scenarios for ``uffd-harness sim run``: a set-up, operations, and the accesses to price.

A scenario speaks the operation language of :mod:`harness.operations`, with
two steps of its own: :class:`Touch`, an access whose cost the
:class:`~harness.sim.cost.CostModel` predicts, and :class:`UnprotectHinted`,
an un-protect with the hints the scenario is run with (``--hints``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from harness.abi import CLEAR_REFS_ALL, Feature, RegisterMode
from harness.memory import MemoryKind
from harness.operations import ClearRefs, Free, Hints, Op, Protect, Read, Setup, Unprotect, Write, apply, start


@dataclass(frozen=True)
class Touch:
    """An access to the region's page whose cost the cost model predicts."""

    region: int
    write: bool

    def words(self) -> tuple[Union[str, int], ...]:
        return ("touch", self.region, "write" if self.write else "read")


@dataclass(frozen=True)
class UnprotectHinted:
    """An un-protect of the region with the hints the scenario is run with."""

    region: int


#: a step of a scenario
ScenarioOp = Union[Op, Touch, UnprotectHinted]

#: every scenario runs on one anonymous or shmem page, registered for WP
_ANON = Setup((MemoryKind.ANON,), (RegisterMode.WP,))
_SHMEM = Setup((MemoryKind.SHMEM,), (RegisterMode.WP,))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    setup: Setup
    ops: tuple[ScenarioOp, ...]
    #: repeat the ops this many times (the RFC loop)
    repeat: int = 1
    #: operations done once before the repeated ones
    prologue: tuple[ScenarioOp, ...] = ()


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "free-unprotect-write",
            "write, MADV_FREE (old+clean), protect, un-protect, then write: the first write pays the dirty assist "
            "unless WRITE_LIKELY dirtied the PTE",
            _ANON,
            (Write(0), Free(0), Protect(0), UnprotectHinted(0), Touch(0, write=True)),
        ),
        Scenario(
            "free-unprotect-read",
            "write, MADV_FREE, protect, un-protect, then read: the first read pays the accessed assist "
            "unless ACCESS_LIKELY made the PTE young",
            _ANON,
            (Write(0), Free(0), Protect(0), UnprotectHinted(0), Touch(0, write=False)),
        ),
        Scenario(
            "shmem-clean-unprotect-write",
            "read-fault a shmem page (clean), protect, un-protect, write: a clean shared PTE is never made "
            "writable, so the write faults whatever the hints",
            _SHMEM,
            (Read(0), ClearRefs(CLEAR_REFS_ALL), Protect(0), UnprotectHinted(0), Touch(0, write=True)),
        ),
        Scenario(
            "wp-fault-round-trip",
            "write to a protected page: a WP fault goes to the handler, which un-protects it",
            _ANON,
            (Write(0), Protect(0), Touch(0, write=True)),
        ),
        Scenario(
            "rfc-loop",
            "the RFC cover letter's single-thread loop, with uffd-wp for mprotect: protect, un-protect, write; "
            "after the first write the PTE stays young and dirty, so hints change little "
            "(as the RFC's 1-thread figures)",
            _ANON,
            (Protect(0), UnprotectHinted(0), Touch(0, write=True)),
            repeat=3,
            prologue=(Write(0),),
        ),
    )
}


@dataclass
class ScenarioResult:
    scenario: Scenario
    profile: str
    hints: Hints
    #: (op, result) per step; touches carry an AccessCost; an UnprotectHinted is the Unprotect it ran as
    steps: list
    #: PteState per region at the end (the modelled PTE)
    states: list
    events: list


def run(name: str, profile: str = "access-hints", hints: Hints = Hints.NONE, cost_model=None) -> ScenarioResult:
    """Run scenario ``name`` on a fresh simulator; price its touches with ``cost_model``."""
    from harness.backends.sim import SimBackend
    from harness.sim.cost import CostModel

    scenario = SCENARIOS[name]
    cost_model = cost_model or CostModel.load()
    b = SimBackend(profile)
    offered = (Feature.ACCESS_HINTS,) if b.has_feature(Feature.ACCESS_HINTS) else ()
    regions = start(b, replace(scenario.setup, features=scenario.setup.features + offered))
    steps, events = [], []
    for op in list(scenario.prologue) + list(scenario.ops) * scenario.repeat:
        if isinstance(op, Touch):
            addr = b.mm.vmas[regions[op.region].index].start
            result = cost_model.access(b.mm, addr, op.write)
        else:
            if isinstance(op, UnprotectHinted):
                op = Unprotect(op.region, hints)
            result = apply(b, regions, op)
        steps.append((op, result))
        events.extend(b.events())
    states = [b.observe(r, 0, "sim") for r in regions]
    b.close()
    return ScenarioResult(scenario, profile, hints, steps, states, events)
