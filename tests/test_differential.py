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

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.abi import Feature
from harness.backends.differential import Disagreement, Setup, run_both

EXAMPLES = int(os.environ.get("UFFD_DIFF_EXAMPLES", "500"))
KINDS = ("anon", "shmem", "shmem-private", "file")


def _kernel_ready():
    from harness.pytest_plugin import _kernel_has_uffd

    return _kernel_has_uffd()


def _hint_features() -> tuple:
    from harness.backends.kernel import offered_features

    return ("ACCESS_HINTS",) if Feature.ACCESS_HINTS in offered_features() else ()


@st.composite
def sequences(draw):
    n = draw(st.integers(1, 4))
    kinds = tuple(draw(st.sampled_from(KINDS)) for _ in range(n))
    register = tuple(
        draw(st.sampled_from(("wp", "missing+wp") if kind == "anon" else ("wp", "missing+wp", "minor+wp", "minor")))
        for kind in kinds
    )
    # only what this kernel offers (6.1 has no WP_UNPOPULATED, POISON or MOVE): a sequence is about agreement
    offered = _offered()
    features = (
        ("WP_UNPOPULATED",) if Feature.WP_UNPOPULATED in offered and draw(st.booleans()) else ()
    ) + _hint_features()
    ops = draw(st.lists(_op(n, _kernel_swap(), offered), min_size=1, max_size=14))
    return Setup(kinds, register, features), ops


def _offered() -> frozenset:
    from harness.backends.kernel import offered_features

    return offered_features()


def _kernel_swap() -> bool:
    from harness.backends.kernel import kernel_swap

    return kernel_swap()


#: operation names, repeated to weight them: accesses and write-protection dominate
_WEIGHTED = (
    ("read",) * 4
    + ("write",) * 5
    + ("protect",) * 4
    + ("unprotect",) * 4
    + ("free",) * 2
    + ("dontneed", "copy", "zeropage", "pageout", "mprotect", "fork", "poison")
    + ("clear_refs", "move") * 2
)


#: operations that need a feature: left out of the sequences on a kernel without it
_OP_NEEDS = {"poison": Feature.POISON, "move": Feature.MOVE}


@st.composite
def _op(draw, n, swap=False, offered=None):
    names = _WEIGHTED + (("pageout",) * 3 if swap else ())
    if offered is not None:
        names = tuple(op for op in names if op not in _OP_NEEDS or _OP_NEEDS[op] in offered)
    name = draw(st.sampled_from(names))
    if name == "fork":
        return ("fork",)
    if name == "clear_refs":
        return ("clear_refs", draw(st.sampled_from((1, 4))))
    r = draw(st.integers(0, n - 1))
    if name == "unprotect":
        return ("unprotect", r, draw(st.sampled_from(("", "", "A", "W", "AW"))))
    if name == "mprotect":
        return ("mprotect", r, draw(st.sampled_from(("r", "rw", "rw"))))
    if name == "move":
        src = draw(st.integers(0, n - 1))
        return ("move", r, src) + (("holes",) if draw(st.booleans()) else ())
    return (name, r)


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
        Setup(("anon",), ("wp",), ()),
        [("write", 0), ("free", 0), ("read", 0), ("pageout", 0)],
        id="pageout-drops-clean-lazyfree-folio",
    ),
    pytest.param(
        Setup(("anon",), ("wp",), ()),
        [("write", 0), ("free", 0), ("write", 0), ("pageout", 0)],
        id="pageout-keeps-redirtied-lazyfree-folio",
    ),
    pytest.param(
        Setup(("shmem-private", "shmem-private"), ("missing+wp", "missing+wp"), ("WP_UNPOPULATED",)),
        [("write", 1), ("unprotect", 1, ""), ("clear_refs", 1), ("write", 0), ("write", 1)],
        id="young-after-clear-refs-without-flush",
    ),
    pytest.param(
        Setup(("shmem",), ("wp",), ()),
        [("write", 0), ("protect", 0), ("unprotect", 0, ""), ("write", 0)],
        id="shmem-unprotect-no-write-upgrade",
    ),
    pytest.param(
        Setup(("anon",), ("wp",), ()),
        [("write", 0), ("protect", 0), ("pageout", 0), ("read", 0), ("write", 0)],
        id="swap-keeps-uffd-wp",
    ),
    pytest.param(
        Setup(("anon",), ("wp",), ()),
        [("write", 0), ("pageout", 0), ("write", 0), ("clear_refs", 4)],
        id="swap-in-write",
    ),
    pytest.param(
        Setup(("shmem",), ("wp",), ()),
        [("write", 0), ("protect", 0), ("pageout", 0), ("read", 0), ("write", 0)],
        id="shmem-pageout-marker",
    ),
    pytest.param(
        Setup(("anon",), ("wp",), ("WP_UNPOPULATED",)),
        [("write", 0), ("pageout", 0), ("free", 0), ("read", 0)],
        id="free-drops-swap-entry",
    ),
    pytest.param(
        Setup(("anon",), ("wp",), ()),
        [("write", 0), ("clear_refs", 4), ("protect", 0), ("unprotect", 0, "W"), ("write", 0)],
        id="soft-dirty-armed-unprotect",
    ),
    pytest.param(
        Setup(("anon", "shmem"), ("wp", "wp"), ("WP_UNPOPULATED",)),
        [
            ("poison", 0),
            ("poison", 1),
            ("read", 0),
            ("write", 1),
            ("protect", 0),
            ("unprotect", 1, ""),
            ("copy", 0),
            ("zeropage", 1),
            ("free", 1),
            ("dontneed", 1),
            ("read", 1),
        ],
        id="poison-markers",
    ),
    pytest.param(
        Setup(("anon", "anon", "anon", "anon"), ("wp", "wp", "wp", "wp"), ("WP_UNPOPULATED",)),
        [
            ("write", 1),
            ("protect", 1),
            ("move", 0, 1),
            ("write", 0),
            ("read", 2),
            ("move", 3, 2),
            ("move", 2, 3, "holes"),
            ("move", 1, 2, "holes"),
            ("write", 2),
            ("free", 2),
            ("move", 1, 2),
            ("protect", 3),
            ("move", 3, 1),
            ("poison", 2),
            ("move", 0, 2),
        ],
        id="move-anon",
    ),
    pytest.param(
        Setup(("anon", "anon"), ("wp", "wp"), ()),
        [
            ("write", 1),
            ("fork",),
            ("move", 0, 1),
            ("write", 1),
            ("move", 0, 1),
            ("pageout", 0),
            ("move", 1, 0),
            ("read", 1),
        ],
        id="move-after-fork-and-swap",
    ),
    pytest.param(
        Setup(("anon", "anon"), ("wp", "wp"), ()),
        [("write", 1), ("mprotect", 1, "r"), ("move", 0, 1), ("mprotect", 1, "rw"), ("move", 0, 1)],
        id="move-needs-same-protection",
    ),
    pytest.param(
        Setup(("anon", "anon", "anon"), ("wp", "wp", "wp"), ("WP_UNPOPULATED",)),
        [
            ("poison", 1),
            ("move", 0, 1),
            ("protect", 2),
            ("move", 0, 2),
            ("move", 0, 2, "holes"),
            ("write", 1),
            ("write", 0),
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
    features = tuple(setup.features) + _hint_features()
    setup = Setup(setup.kinds, setup.register, features)
    problem = run_both(setup, ops)
    assert problem is None, str(problem)


def test_disagreement_prints_a_reproducer():
    """The report of a disagreement is Python source that re-runs the sequence."""
    from harness.backends.differential import Step

    setup = Setup(("anon",), ("wp",), ("WP_UNPOPULATED",))
    ops = [("write", 0), ("protect", 0), ("unprotect", 0, "W")]
    state = {"present": True, "young": True, "dirty": False}
    k = Step(ops[-1], 0, (), (state,))
    s = Step(ops[-1], 0, (), (dict(state, dirty=True),))
    problem = Disagreement(setup, ops, 2, k, s, "linux-6.12", ["r0.dirty False != True"])
    source = problem.reproducer()
    compile(source, "<reproducer>", "exec")
    assert "assert_agree(setup, ops)" in source and "('unprotect', 0, 'W')" in source
    namespace: dict = {}
    exec(source, namespace)
    assert callable(namespace["test_differential_reproducer"])


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
    setup = Setup(("anon",), ("wp",), ())
    ops = [("write", 0), ("free", 0), ("protect", 0)]
    problem = run_both(setup, ops)
    assert problem is not None, "a model that keeps MADV_FREE'd pages dirty agreed with the kernel"
    assert problem.index == 1 and "r0.dirty False != True" in problem.details, str(problem)
