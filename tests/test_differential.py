"""Differential testing: hypothesis-made operation sequences, kernel vs simulator, step by step.

Each sequence runs on the kernel backend and on the simulator profile that
should match this kernel (``linux-6.12`` without ACCESS_HINTS,
``access-hints`` with it); after every step the observable state of every
region, the step's result and the faults delivered must agree.  Regions are
1..4 one-page VMAs, registered WP or MISSING|WP; faults are resolved by the
backends' common policy (see :mod:`harness.backends.base`), so nothing blocks.

``UFFD_DIFF_EXAMPLES`` sets the number of sequences (default 500).  A
disagreement fails with the shortest sequence hypothesis finds, printed as
a test ready to paste.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import abi
from harness.abi import Feature, RegisterMode
from harness.backends.differential import Disagreement, run_both
from harness.memory import MemoryKind
from harness.operations import (
    ClearRefs,
    Copy,
    DontNeed,
    Fork,
    Free,
    Hints,
    Move,
    Mprotect,
    PageOut,
    Poison,
    Protect,
    Read,
    Setup,
    Unprotect,
    Write,
    ZeroPage,
)

EXAMPLES = int(os.environ.get("UFFD_DIFF_EXAMPLES", "500"))
KINDS = (MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE, MemoryKind.FILE)
WP = RegisterMode.WP
MISSING_WP = RegisterMode.MISSING | RegisterMode.WP
MINOR_WP = RegisterMode.MINOR | RegisterMode.WP
MINOR = RegisterMode.MINOR


def _kernel_ready():
    from harness.pytest_plugin import _kernel_has_uffd

    return _kernel_has_uffd()


def _hint_features() -> tuple[Feature, ...]:
    from harness.backends.kernel import offered_features

    return (Feature.ACCESS_HINTS,) if Feature.ACCESS_HINTS in offered_features() else ()


@st.composite
def sequences(draw):
    n = draw(st.integers(1, 4))
    kinds = tuple(draw(st.sampled_from(KINDS)) for _ in range(n))
    register = tuple(
        draw(st.sampled_from((WP, MISSING_WP) if kind is MemoryKind.ANON else (WP, MISSING_WP, MINOR_WP, MINOR)))
        for kind in kinds
    )
    # only what this kernel offers (6.1 has no WP_UNPOPULATED, POISON or MOVE): a sequence is about agreement
    offered = _offered()
    features = (
        (Feature.WP_UNPOPULATED,) if Feature.WP_UNPOPULATED in offered and draw(st.booleans()) else ()
    ) + _hint_features()
    ops = draw(st.lists(_op(n, _kernel_swap(), offered), min_size=1, max_size=14))
    return Setup(kinds, register, features), ops


def _offered() -> frozenset:
    from harness.backends.kernel import offered_features

    return offered_features()


def _kernel_swap() -> bool:
    from harness.backends.kernel import kernel_swap

    return kernel_swap()


#: operations, repeated to weight them: accesses and write-protection dominate
_WEIGHTED = (
    (Read,) * 4
    + (Write,) * 5
    + (Protect,) * 4
    + (Unprotect,) * 4
    + (Free,) * 2
    + (DontNeed, Copy, ZeroPage, PageOut, Mprotect, Fork, Poison)
    + (ClearRefs, Move) * 2
)


#: operations that need a feature: left out of the sequences on a kernel without it
_OP_NEEDS = {Poison: Feature.POISON, Move: Feature.MOVE}


@st.composite
def _op(draw, n, swap=False, offered=None):
    kinds = _WEIGHTED + ((PageOut,) * 3 if swap else ())
    if offered is not None:
        kinds = tuple(op for op in kinds if op not in _OP_NEEDS or _OP_NEEDS[op] in offered)
    kind = draw(st.sampled_from(kinds))
    if kind is Fork:
        return Fork()
    if kind is ClearRefs:
        return ClearRefs(draw(st.sampled_from((abi.CLEAR_REFS_ALL, abi.CLEAR_REFS_SOFT_DIRTY))))
    r = draw(st.integers(0, n - 1))
    if kind is Unprotect:
        return Unprotect(
            r, draw(st.sampled_from((Hints.NONE, Hints.NONE, Hints.ACCESS_LIKELY, Hints.WRITE_LIKELY, Hints.BOTH)))
        )
    if kind is Mprotect:
        return Mprotect(r, writable=draw(st.sampled_from((False, True, True))))
    if kind is Move:
        return Move(r, draw(st.integers(0, n - 1)), allow_src_holes=draw(st.booleans()))
    return kind(r)


_stats = {"sequences": 0, "steps": 0}


@pytest.mark.backend("kernel")
@pytest.mark.slow
def test_kernel_and_simulator_agree(request):
    reason = _kernel_ready()
    if reason:
        pytest.skip(reason)
    from harness.backends.kernel import offered_features
    from harness.sim import profiles

    profile = profiles.for_kernel(Feature.ACCESS_HINTS in offered_features()).name
    request.node.user_properties.extend([("backend", "kernel"), ("differential_profile", profile)])
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(sequences())
    def check(case):
        setup, ops = case
        _stats["sequences"] += 1
        _stats["steps"] += len(ops)
        problem = run_both(setup, ops)
        if problem is not None:
            raise AssertionError(str(problem))

    check()
    elapsed = time.monotonic() - started
    request.node.user_properties.extend([("sequences", _stats["sequences"]), ("seconds", round(elapsed, 1))])
    print(f"differential: {_stats['sequences']} sequences, {_stats['steps']} steps, profile {profile}, {elapsed:.1f} s")


#: hand-written sequences: the disagreements found so far (now regressions) and swap paths
KNOWN = [
    pytest.param(
        Setup((MemoryKind.ANON,), (WP,)),
        [Write(0), Free(0), Read(0), PageOut(0)],
        id="pageout-drops-clean-lazyfree-folio",
    ),
    pytest.param(
        Setup((MemoryKind.ANON,), (WP,)),
        [Write(0), Free(0), Write(0), PageOut(0)],
        id="pageout-keeps-redirtied-lazyfree-folio",
    ),
    pytest.param(
        Setup(
            (MemoryKind.SHMEM_PRIVATE, MemoryKind.SHMEM_PRIVATE), (MISSING_WP, MISSING_WP), (Feature.WP_UNPOPULATED,)
        ),
        [Write(1), Unprotect(1), ClearRefs(abi.CLEAR_REFS_ALL), Write(0), Write(1)],
        id="young-after-clear-refs-without-flush",
    ),
    pytest.param(
        Setup((MemoryKind.SHMEM,), (WP,)),
        [Write(0), Protect(0), Unprotect(0), Write(0)],
        id="shmem-unprotect-no-write-upgrade",
    ),
    pytest.param(
        Setup((MemoryKind.ANON,), (WP,)),
        [Write(0), Protect(0), PageOut(0), Read(0), Write(0)],
        id="swap-keeps-uffd-wp",
    ),
    pytest.param(
        Setup((MemoryKind.ANON,), (WP,)),
        [Write(0), PageOut(0), Write(0), ClearRefs(abi.CLEAR_REFS_SOFT_DIRTY)],
        id="swap-in-write",
    ),
    pytest.param(
        Setup((MemoryKind.SHMEM,), (WP,)),
        [Write(0), Protect(0), PageOut(0), Read(0), Write(0)],
        id="shmem-pageout-marker",
    ),
    pytest.param(
        Setup((MemoryKind.ANON,), (WP,), (Feature.WP_UNPOPULATED,)),
        [Write(0), PageOut(0), Free(0), Read(0)],
        id="free-drops-swap-entry",
    ),
    pytest.param(
        Setup((MemoryKind.ANON,), (WP,)),
        [Write(0), ClearRefs(abi.CLEAR_REFS_SOFT_DIRTY), Protect(0), Unprotect(0, Hints.WRITE_LIKELY), Write(0)],
        id="soft-dirty-armed-unprotect",
    ),
    pytest.param(
        Setup((MemoryKind.ANON, MemoryKind.SHMEM), (WP, WP), (Feature.WP_UNPOPULATED,)),
        [
            Poison(0),
            Poison(1),
            Read(0),
            Write(1),
            Protect(0),
            Unprotect(1),
            Copy(0),
            ZeroPage(1),
            Free(1),
            DontNeed(1),
            Read(1),
        ],
        id="poison-markers",
    ),
    pytest.param(
        Setup(
            (MemoryKind.ANON, MemoryKind.ANON, MemoryKind.ANON, MemoryKind.ANON),
            (WP, WP, WP, WP),
            (Feature.WP_UNPOPULATED,),
        ),
        [
            Write(1),
            Protect(1),
            Move(0, 1),
            Write(0),
            Read(2),
            Move(3, 2),
            Move(2, 3, allow_src_holes=True),
            Move(1, 2, allow_src_holes=True),
            Write(2),
            Free(2),
            Move(1, 2),
            Protect(3),
            Move(3, 1),
            Poison(2),
            Move(0, 2),
        ],
        id="move-anon",
    ),
    pytest.param(
        Setup((MemoryKind.ANON, MemoryKind.ANON), (WP, WP)),
        [
            Write(1),
            Fork(),
            Move(0, 1),
            Write(1),
            Move(0, 1),
            PageOut(0),
            Move(1, 0),
            Read(1),
        ],
        id="move-after-fork-and-swap",
    ),
    pytest.param(
        Setup((MemoryKind.ANON, MemoryKind.ANON), (WP, WP)),
        [Write(1), Mprotect(1, writable=False), Move(0, 1), Mprotect(1, writable=True), Move(0, 1)],
        id="move-needs-same-protection",
    ),
    pytest.param(
        Setup((MemoryKind.ANON, MemoryKind.ANON, MemoryKind.ANON), (WP, WP, WP), (Feature.WP_UNPOPULATED,)),
        [
            Poison(1),
            Move(0, 1),
            Protect(2),
            Move(0, 2),
            Move(0, 2, allow_src_holes=True),
            Write(1),
            Write(0),
        ],
        id="move-from-markers",
    ),
]


@pytest.mark.backend("kernel")
@pytest.mark.parametrize("setup, ops", KNOWN)
def test_known_sequences_agree(request, setup, ops):
    reason = _kernel_ready()
    if reason:
        pytest.skip(reason)
    request.node.user_properties.append(("backend", "kernel"))
    setup = replace(setup, features=setup.features + _hint_features())
    problem = run_both(setup, ops)
    assert problem is None, str(problem)


def test_disagreement_prints_a_reproducer(monkeypatch):
    """The report of a disagreement is a test that re-runs the sequence up to the step that disagreed:
    run, it hands assert_agree the same set-up and operations."""
    from harness.backends import differential
    from harness.backends.differential import Step

    setup = Setup((MemoryKind.ANON, MemoryKind.SHMEM), (WP, MISSING_WP), (Feature.WP_UNPOPULATED,))
    ops = [Write(0), Move(1, 0, allow_src_holes=True), Unprotect(0, Hints.WRITE_LIKELY), ClearRefs(1), Fork()]
    state = {"present": True, "young": True, "dirty": False}
    k = Step(ops[2], 0, (), (state,))
    s = Step(ops[2], 0, (), (dict(state, dirty=True),))
    problem = Disagreement(setup, ops, 2, k, s, "linux-6.12", ["r0.dirty False != True"])
    source = problem.reproducer()
    assert "Unprotect(region=0, hints=Hints.WRITE_LIKELY)" in source, source
    namespace: dict = {}
    exec(compile(source, "<reproducer>", "exec"), namespace)  # its own imports: nothing from this module
    ran = []
    monkeypatch.setattr(differential, "assert_agree", lambda setup, ops: ran.append((setup, ops)))
    namespace["test_differential_reproducer"]()
    assert ran == [(setup, ops[:3])], f"the reproducer re-ran something else:\n{source}"


def test_differential_catches_a_model_bug(monkeypatch):
    """Break the model (MADV_FREE forgets to clean the PTE): the comparison must say where."""
    reason = _kernel_ready()
    if reason:
        pytest.skip(reason)
    from harness.sim.model import Mm

    original = Mm._madvise_free_one

    def forgetful(self, vma, i):
        pte = vma.ptes[i]
        dirty = pte is not None and pte.dirty
        original(self, vma, i)
        if dirty:
            pte.dirty = True

    monkeypatch.setattr(Mm, "_madvise_free_one", forgetful)
    setup = Setup((MemoryKind.ANON,), (WP,))
    ops = [Write(0), Free(0), Protect(0)]
    problem = run_both(setup, ops)
    assert problem is not None, "a model that keeps MADV_FREE'd pages dirty agreed with the kernel"
    assert problem.index == 1 and "r0.dirty False != True" in problem.details, str(problem)
