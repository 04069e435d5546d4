"""The contract of BRIEF 2.2, clause by clause, on every target of the table in
:data:`harness.backends.contract.CONTRACT`: each memory kind as one page, as a
multi-page range over two VMAs crossing a PMD boundary (one ioctl), and as an
anonymous transparent huge page.

Written once, run on whichever backend the ``backend`` fixture picks: the
kernel when it offers what the clause needs, else the simulator's
``access-hints`` profile (``--backend auto``, the default).  The checks
themselves live in :mod:`harness.backends.contract`; each returns the
violations it saw, and the assertion message lists them.

THP and hugetlb targets (``clauseN-anon-thp``, ``clauseN-hugetlb-private``)
are kernel-only (the simulator models neither) and exist only where the
kernel itself has what the clause needs
(:func:`harness.pytest_plugin.kernel_only_clauses`).  A machine that cannot
give a THP or free huge pages skips them naming why, which under CI=true is a
failure, and which makes the clause "not shown" in the summary.
"""

from __future__ import annotations

import pytest

from harness.abi import Feature
from harness.backends.contract import CONTRACT, KERNEL_ONLY_CLAUSES, Shape
from harness.errors import ObservationUnavailable, ThpUnavailable
from harness.memory import MemoryKind, free_hugepages
from harness.pytest_plugin import kernel_only_clauses

#: shapes whose cases change global mm settings (large folios on, khugepaged paused): see the test below
MM_SETTINGS_SHAPES = (Shape.THP, Shape.THP_PART, Shape.LARGE_FOLIO)


def _params(with_kernel_only: tuple):
    for n, clause in sorted(CONTRACT.items()):
        for target in clause.targets(kernel_only=n in with_kernel_only):
            marks = [pytest.mark.clause(n), pytest.mark.needs(*clause.needs)]
            if target.kernel_only:
                marks.append(pytest.mark.backend("kernel"))
            if target.shape in MM_SETTINGS_SHAPES:
                marks.append(pytest.mark.mm_settings)
            yield pytest.param(n, target, id=f"clause{n}-{target.label}", marks=marks)


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ == "test_contract_clause":
        with_kernel_only = kernel_only_clauses(metafunc.config.getoption("--backend"), KERNEL_ONLY_CLAUSES)
        metafunc.parametrize("n, target", list(_params(with_kernel_only)))


#: huge pages a hugetlb target may hold at once (clause 4: six regions, each with a COW copy from its write probe)
HUGETLB_PAGES_NEEDED = 16


def test_contract_clause(backend, request, n, target):
    if target.kind.hugetlb:
        request.getfixturevalue("hugepages_reserved")  # as root, raises vm.nr_hugepages for this module
        if free_hugepages() < HUGETLB_PAGES_NEEDED:
            pytest.skip(f"{target.label}: fewer than {HUGETLB_PAGES_NEEDED} free huge pages (vm.nr_hugepages)")
    if target.shape is Shape.LARGE_FOLIO:
        request.getfixturevalue("large_folios_enabled")  # as root, lets MADV_HUGEPAGE memory have them
    if target.shape in MM_SETTINGS_SHAPES:
        request.getfixturevalue("khugepaged_paused")  # its collapses would change the layout under a check
    request.node.user_properties.append(("memory", target.label))
    request.node.user_properties.append(("shape", target.shape.value))
    try:
        violations = CONTRACT[n].check(backend, target)
    except (ThpUnavailable, ObservationUnavailable) as exc:
        pytest.skip(str(exc))
    assert not violations, (
        f"clause {n} ({CONTRACT[n].text}) violated on {backend.name} "
        f"[{backend.profile}, {backend.kernel_release}], {target.label}:\n  " + "\n  ".join(violations)
    )


@pytest.mark.clause(1)
def test_clause1_hint_bits_rejected_even_with_other_features(backend):
    """Negotiating every other feature the kernel offers still does not enable the hint bits."""
    from harness.backends.contract import Target, check_1

    others = [
        f for f in (Feature.WP_UNPOPULATED, Feature.WP_HUGETLBFS_SHMEM, Feature.MISSING_SHMEM) if backend.has_feature(f)
    ]
    original = backend.api
    backend.api = lambda features=(): original(others)
    violations = check_1(backend, Target(MemoryKind.ANON, Shape.PAGE))
    assert not violations, "\n".join(violations)
