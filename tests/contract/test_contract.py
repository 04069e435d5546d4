"""The contract of BRIEF 2.2, clause by clause, on anon, shmem and shmem-private one-page regions.

Written once, run on whichever backend the ``backend`` fixture picks: the
kernel when it offers what the clause needs, else the simulator's
``access-hints`` profile (``--backend auto``, the default).  The checks
themselves live in :mod:`harness.backends.contract`; each returns the
violations it saw, and the assertion message lists them.

Not covered yet: transparent huge pages (the checks use 4 KiB pages only).
"""
from __future__ import annotations

import pytest

from harness.abi import Feature
from harness.backends.contract import CLAUSE_KINDS, CLAUSES
from harness.pytest_plugin import CLAUSE_NEEDS


def _params():
    for n in sorted(CLAUSES):
        for kind in CLAUSE_KINDS[n]:
            yield pytest.param(n, kind, id=f"clause{n}-{kind.value}",
                               marks=[pytest.mark.clause(n), pytest.mark.needs(*CLAUSE_NEEDS[n])])


@pytest.mark.parametrize("n, kind", list(_params()))
def test_contract_clause(backend, n, kind):
    violations = CLAUSES[n](backend, kind)
    assert not violations, (f"clause {n} ({CLAUSES[n].__doc__.strip()}) violated on {backend.name} "
                            f"[{backend.profile}, {backend.kernel_release}]:\n  " + "\n  ".join(violations))


@pytest.mark.clause(1)
def test_clause1_hint_bits_rejected_even_with_other_features(backend):
    """Negotiating every other feature the kernel offers still does not enable the hint bits."""
    from harness.backends.contract import clause_1
    others = [f for f in (Feature.WP_UNPOPULATED, Feature.WP_HUGETLBFS_SHMEM, Feature.MISSING_SHMEM)
              if backend.has_feature(f)]
    original = backend.api
    backend.api = lambda features=(): original(others)
    from harness.memory import MemoryKind
    violations = clause_1(backend, MemoryKind.ANON)
    assert not violations, "\n".join(violations)
