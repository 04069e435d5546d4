"""The validator can fail: a deliberately broken patch is caught, clause by clause.

``vm/mutants/young-only`` is our series with one change: WRITE_LIKELY makes
the PTE it makes writable young but *not* dirty (vm/mutants/README.md).  The
test builds it (seeded from the ``patched`` kernel's objects, so only
mm/mprotect.o and mm/huge_memory.o are recompiled), boots it under QEMU and
runs the contract tests (tests/contract) in the guest, then reads their
``--summary-json``:

* clause 3 (WRITE_LIKELY -> dirty and young) is ``fail``, on 4 KiB pages
  and on a THP (the mutant breaks mm/huge_memory.c the same way);
* every other clause, 1, 2, 4, 5, 6, 7 and 8, is ``pass``: the guest kernel
  has soft-dirty tracking and idle-page tracking, so all eight run on the
  kernel (the patched kernel passes all eight the same way);
* the only failed tests are clause 3's (nothing else was broken);
* the kernel offers UFFD_FEATURE_ACCESS_HINTS (the mutant keeps the ABI), and
  the hint values came from the mutant's own uapi header.

One guest boot serves every test of this module.  Boot + contract suite under
TCG takes a few minutes; the seeded build well under one (a cold one, when
``patched`` is not built, 10-16 min).
"""
from __future__ import annotations

import json
import sys
import time

import pytest

from harness.vm import build as vmbuild
from harness.vm import run_in_guest
from harness.vm.build import REPO_ROOT
from harness.vm.errors import GuestError, MissingToolError


def _missing_for_guest(name: str) -> list[str]:
    """tests/vm/conftest.py's missing_for_guest() (tests/ is not a package)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("uffd_harness_tests_vm_conftest",
                                                  Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.missing_for_guest(name)

pytestmark = [pytest.mark.vm, pytest.mark.slow]

MUTANT = "mutant-young-only"
SERIES = REPO_ROOT / "vm" / "mutants" / "young-only"
SEED = "patched"

BROKEN_CLAUSE = "3"
KEPT_CLAUSES = ("1", "2", "4", "5", "6", "7", "8")

BUILD_BUDGET = 2400      # s: a cold build took up to 16 min on the 2-core machine
GUEST_TIMEOUT = 900      # s: boot + tests/contract under TCG on a loaded machine
TEST_TIMEOUT = BUILD_BUDGET + GUEST_TIMEOUT + 120


@pytest.fixture(scope="module")
def mutant_run(tmp_path_factory):
    """(kernel, guest result, summary dict, seconds) of one guest run."""
    # Everything the host needs to boot a guest, except the mutant itself
    # (built below).
    missing = [m for m in _missing_for_guest(MUTANT) if not m.startswith(f"kernel '{MUTANT}'")]
    if missing:
        pytest.skip("cannot boot a guest: missing " + "; ".join(missing))
    t0 = time.monotonic()
    try:
        kernel = vmbuild.build_kernel(MUTANT, SERIES, seed_from=SEED, progress=False)
    except MissingToolError as exc:
        pytest.skip(f"cannot build the mutant kernel: {exc}")
    build_secs = time.monotonic() - t0

    rw = tmp_path_factory.mktemp("mutant-rw")
    summary_path = rw / "summary.json"
    argv = [sys.executable, "-m", "pytest", "tests/contract", "-p", "no:cacheprovider",
            "-q", "-rfE", "--summary-json", str(summary_path)]
    t1 = time.monotonic()
    res = run_in_guest(kernel, argv, timeout=GUEST_TIMEOUT, rwdir=rw,
                       env={"PYTHONDONTWRITEBYTECODE": "1"}, capture=True,
                       console_log=rw / "console.log")
    guest_secs = time.monotonic() - t1
    (rw / "pytest-output.txt").write_text(res.output)     # kept for a post-mortem
    print(f"mutant build {build_secs:.0f} s (cached={kernel.cached}), "
          f"guest run {guest_secs:.0f} s, exit {res.returncode}")
    if not summary_path.exists():
        raise GuestError(f"the guest wrote no {summary_path.name} (pytest exit {res.returncode}); "
                         f"output:\n{res.output[-4000:]}", res.console_tail)
    return kernel, res, json.loads(summary_path.read_text()), build_secs + guest_secs


def test_mutant_series_tracks_vm_patches():
    """vm/mutants/young-only is vm/patches with only the mutant's substitutions
    (so a fix to vm/patches cannot leave the mutant testing an old series)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("uffd_harness_mutants_regen",
                                                  REPO_ROOT / "vm" / "mutants" / "regen.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    bad = regen.stale("young-only")
    assert not bad, (f"vm/mutants/young-only differs from vm/patches + the mutant's change in {bad}: "
                     "run `python vm/mutants/regen.py`")


def _results(summary: dict) -> dict[str, str]:
    return {n: c["result"] for n, c in summary["clauses"].items()}


@pytest.mark.timeout(TEST_TIMEOUT)
def test_mutant_is_the_young_only_kernel(mutant_run):
    """The kernel booted is the mutant: its mm/mprotect.c has the young-only line."""
    kernel, _res, summary, _secs = mutant_run
    mprotect = (kernel.directory / "src" / "mm" / "mprotect.c").read_text()
    assert "ptent = pte_mkyoung(ptent);\t/* MUTANT young-only" in mprotect, \
        f"{kernel.directory}/src/mm/mprotect.c does not carry the mutant's change"
    assert "pte_mkyoung(pte_mkdirty(ptent))" not in mprotect
    assert summary["kernel_release"].startswith("6.12"), summary["kernel_release"]


@pytest.mark.timeout(TEST_TIMEOUT)
def test_mutant_offers_access_hints(mutant_run):
    kernel, _res, summary, _secs = mutant_run
    assert summary["patched"] is True, "the mutant kernel does not offer UFFD_FEATURE_ACCESS_HINTS"
    assert "ACCESS_HINTS" in summary["features"]["offered"], summary["features"]
    assert "ACCESS_HINTS" in summary["features"]["negotiated"], summary["features"]
    assert summary["hint_abi"]["source"] == str(kernel.uapi_header.resolve()), summary["hint_abi"]


@pytest.mark.timeout(TEST_TIMEOUT)
def test_clause3_fails_on_the_mutant(mutant_run):
    _kernel, res, summary, _secs = mutant_run
    c3 = summary["clauses"][BROKEN_CLAUSE]
    assert c3["result"] == "fail", (
        f"clause 3 came out {c3['result']!r} on a kernel whose WRITE_LIKELY does not dirty: "
        f"the validator missed the mutant.\n{json.dumps(c3, indent=1)}\n{res.output[-3000:]}")
    assert c3["tests"]["failed"] >= 1 and c3["backends"].get("kernel", 0) >= 1, c3
    assert "sim" not in c3["backends"], f"clause 3 fell back to the simulator: {c3}"
    # ... and for the right reason: the anonymous PTE made writable with
    # WRITE_LIKELY is seen clean (while young, as the mutant still does).
    assert "FAILED tests/contract/test_contract.py::test_contract_clause[clause3-anon]" in res.output, \
        res.output[-3000:]
    assert "anon old+clean, un-protect WRITE_LIKELY: dirty is False through smaps, expected True" \
        in res.output, res.output[-3000:]
    assert "young is False" not in res.output, \
        f"the mutant keeps young, yet a check saw an old PTE:\n{res.output[-3000:]}"
    # The mutant breaks the PMD path too (mm/huge_memory.c): the THP case fails.
    assert "anon-thp" in c3["memory"].get("kernel", []), c3
    assert "FAILED tests/contract/test_contract.py::test_contract_clause[clause3-anon-thp]" in res.output, \
        res.output[-3000:]


@pytest.mark.timeout(TEST_TIMEOUT)
def test_other_clauses_pass_on_the_mutant(mutant_run):
    _kernel, res, summary, _secs = mutant_run
    results = _results(summary)
    wrong = {n: results[n] for n in KEPT_CLAUSES if results[n] != "pass"}
    assert not wrong, (f"clauses the mutant keeps did not pass: {wrong} (all: {results})\n"
                       f"{res.output[-3000:]}")
    for n in KEPT_CLAUSES:
        assert "sim" not in summary["clauses"][n]["backends"], \
            f"clause {n} ran on the simulator in the guest: {summary['clauses'][n]}"


@pytest.mark.timeout(TEST_TIMEOUT)
def test_only_clause3_tests_failed(mutant_run):
    """The guest's pytest failed (exit 1) and only because of clause 3."""
    _kernel, res, summary, _secs = mutant_run
    assert res.returncode == 1, (f"guest pytest exit {res.returncode}, expected 1 (tests failed); "
                                 f"output:\n{res.output[-3000:]}")
    c3_failed = summary["clauses"][BROKEN_CLAUSE]["tests"]["failed"]
    assert summary["tests"]["failed"] == c3_failed, (
        f"{summary['tests']['failed']} tests failed, clause 3 accounts for {c3_failed}:\n"
        f"{res.output[-3000:]}")
    assert summary["tests"]["skipped"] == 0, f"skips in the guest: {summary['tests']}\n{res.output[-3000:]}"
