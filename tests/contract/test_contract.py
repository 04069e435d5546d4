"""The contract of BRIEF 2.2, clause by clause, on anon, shmem and shmem-private one-page regions,
and on an anonymous transparent huge page (a PMD-mapped 2 MiB folio).

Written once, run on whichever backend the ``backend`` fixture picks: the
kernel when it offers what the clause needs, else the simulator's
``access-hints`` profile (``--backend auto``, the default).  The checks
themselves live in :mod:`harness.backends.contract`; each returns the
violations it saw, and the assertion message lists them.

THP (``clauseN-anon-thp``): clauses 1, 2, 3, 5, 6, 7 and 8 on one
MADV_HUGEPAGE region of one PMD, checked through smaps (the VMA's
Referenced / Private_Dirty are the PMD's young / dirty) and, as root with
CONFIG_IDLE_PAGE_TRACKING, idle-page tracking on the head page; after each
un-protect the region must still be PMD-mapped (smaps AnonHugePages,
PAGEMAP_SCAN's HUGE category and, as root, kpageflags' THP bit, which must
agree).  The simulator does not model THP, so these cases are kernel-only
and exist only where the kernel itself has what the clause needs
(:func:`harness.pytest_plugin.thp_clauses`): on a kernel without
ACCESS_HINTS only clauses 1 and 5 have a THP case.  A machine that cannot
give a THP (THP disabled, no free 2 MiB block) skips them naming why, which
under CI=true is a failure.  Not covered: shmem / file THP (clause 4 and
shmem_enabled), mTHP (PTE-mapped large folios), swapped-out THPs in clause 7.
"""
from __future__ import annotations

import pytest

from harness.abi import Feature
from harness.backends.contract import CLAUSE_KINDS, CLAUSES, THP_CLAUSES, memory_label
from harness.errors import ThpUnavailable
from harness.memory import MemoryKind
from harness.pytest_plugin import CLAUSE_NEEDS, thp_clauses


def _params(with_thp: tuple):
    for n in sorted(CLAUSES):
        for kind in CLAUSE_KINDS[n]:
            yield pytest.param(n, kind, False, id=f"clause{n}-{kind.value}",
                               marks=[pytest.mark.clause(n), pytest.mark.needs(*CLAUSE_NEEDS[n])])
    for n in with_thp:
        yield pytest.param(n, MemoryKind.ANON, True, id=f"clause{n}-{memory_label(MemoryKind.ANON, True)}",
                           marks=[pytest.mark.clause(n), pytest.mark.needs(*CLAUSE_NEEDS[n]),
                                  pytest.mark.backend("kernel")])


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ == "test_contract_clause":
        with_thp = thp_clauses(metafunc.config.getoption("--backend"), THP_CLAUSES)
        metafunc.parametrize("n, kind, thp", list(_params(with_thp)))


def test_contract_clause(backend, request, n, kind, thp):
    request.node.user_properties.append(("memory", memory_label(kind, thp)))
    try:
        violations = CLAUSES[n](backend, kind, thp=thp)
    except ThpUnavailable as exc:
        pytest.skip(str(exc))
    assert not violations, (f"clause {n} ({CLAUSES[n].__doc__.strip()}) violated on {backend.name} "
                            f"[{backend.profile}, {backend.kernel_release}], {memory_label(kind, thp)}:\n  "
                            + "\n  ".join(violations))


@pytest.mark.clause(1)
def test_clause1_hint_bits_rejected_even_with_other_features(backend):
    """Negotiating every other feature the kernel offers still does not enable the hint bits."""
    from harness.backends.contract import clause_1
    others = [f for f in (Feature.WP_UNPOPULATED, Feature.WP_HUGETLBFS_SHMEM, Feature.MISSING_SHMEM)
              if backend.has_feature(f)]
    original = backend.api
    backend.api = lambda features=(): original(others)
    violations = clause_1(backend, MemoryKind.ANON)
    assert not violations, "\n".join(violations)
