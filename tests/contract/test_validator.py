"""The contract checks can fail: run them on simulator profiles that break the contract.

A validator that never fails proves nothing.  Each deliberately broken
profile declares the clauses it breaks (``Profile.expected_failures``); these
tests assert the checks report exactly those, and that the stock 6.12
profile cannot even negotiate what clauses 2-4 and 6-8 need.
"""

from __future__ import annotations

import errno

import pytest

from harness.backends.contract import CLAUSES, run_clause
from harness.backends.sim import SimBackend
from harness.sim import profiles

# The simulator gives the same answers on any kernel: no need to repeat them in a TCG guest (~25 s there).
pytestmark = pytest.mark.host_only


def _failing_clauses(profile: str) -> set:
    failing = set()
    for n in CLAUSES:
        results = run_clause(n, lambda: SimBackend(profile))
        if any(results.values()):
            failing.add(n)
    return failing


def test_access_hints_profile_passes_every_clause():
    assert _failing_clauses("access-hints") == set()


@pytest.mark.parametrize("name", [p.name for p in profiles.PROFILES.values() if p.broken])
def test_broken_profile_fails_exactly_its_clauses(name):
    profile = profiles.get(name)
    failing = _failing_clauses(name)
    assert failing == set(profile.expected_failures), (
        f"profile {name} should fail clauses {sorted(profile.expected_failures)}, the checks report {sorted(failing)}"
    )


def test_young_only_profile_is_caught_on_write_likely_dirty():
    violations = run_clause(3, lambda: SimBackend("access-hints-young-only"))["anon"]
    assert any("dirty is False" in v and "WRITE_LIKELY" in v for v in violations), violations


@pytest.mark.parametrize("n", [2, 3, 4, 6, 7, 8])
def test_stock_profile_cannot_negotiate_hints(n):
    with pytest.raises(OSError) as info:
        run_clause(n, lambda: SimBackend("linux-6.12"))
    assert info.value.errno == errno.EINVAL, f"clause {n} on linux-6.12: {info.value}"


@pytest.mark.parametrize("n", [1, 5])
def test_stock_profile_passes_clauses_1_and_5(n):
    results = run_clause(n, lambda: SimBackend("linux-6.12"))
    assert not any(results.values()), results


def test_readme_shows_the_contract_table():
    """The README's contract table is the one in the code (CONTRACT), not a copy that drifts."""
    from pathlib import Path

    from harness.backends.contract import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme, "README.md's contract table differs from harness.backends.contract.CONTRACT"
