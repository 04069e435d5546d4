"""Parsing the kernel selftests' output, and running one with a timeout."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from harness.selftests import CaseResult, SelftestRun, parse_ktap, parse_uffd_unit_tests, regressions, run_selftest

#: selftest output parsed from text: the same on any kernel (guest suites deselect host_only)
pytestmark = pytest.mark.host_only

UFFD_OUTPUT = """\
Testing UFFDIO_API (with syscall)... done
Testing register-ioctls on anon... done
Testing zeropage on hugetlb... skipped [reason: memory allocation failed]
Testing wp-fork on shmem... # some diagnostic the test printed
failed [reason: Detected stale uffd-wp bit in child in present pte]
Testing events on anon... """

KTAP_OUTPUT = """\
TAP version 13
1..4
# [INFO] PTRACE write access
ok 1 SIGSEGV generated, page not modified
not ok 2 page migration kept the dirty bit
ok 3 # SKIP Did not get a THP populated
ok 4 userfaultfd_tests all new pages must not be written (dirty)
# Totals: pass:2 fail:1 xfail:0 xpass:0 skip:1 error:0
"""


def test_uffd_unit_tests_lines_become_cases():
    cases = parse_uffd_unit_tests(UFFD_OUTPUT)
    assert [(c.name, c.result) for c in cases] == [
        ("UFFDIO_API (with syscall)", "pass"),
        ("register-ioctls on anon", "pass"),
        ("zeropage on hugetlb", "skip"),
        ("wp-fork on shmem", "fail"),
        ("events on anon", "fail"),  # started, never finished: a crash or a hang
    ]
    assert cases[2].reason == "memory allocation failed"
    assert "uffd-wp bit" in cases[3].reason
    assert "no result" in cases[4].reason


def test_ktap_lines_become_cases():
    cases = parse_ktap(KTAP_OUTPUT)
    assert [c.result for c in cases] == ["pass", "fail", "skip", "pass"]
    assert cases[2].reason == "Did not get a THP populated" and cases[2].name == "test 3"
    assert cases[1].name == "page migration kept the dirty bit"


def test_run_result_and_regressions():
    stock = SelftestRun(
        "uffd-unit-tests", 0, 1.0, [CaseResult("a", "pass"), CaseResult("b", "pass"), CaseResult("c", "skip")]
    )
    patched = SelftestRun(
        "uffd-unit-tests", 1, 1.0, [CaseResult("a", "pass"), CaseResult("b", "fail"), CaseResult("c", "fail")]
    )
    assert stock.result == "pass" and patched.result == "fail"
    assert regressions(stock, patched) == ["b"], "only a stock pass that now fails is a regression"
    assert SelftestRun("x", 4, 0.1, [CaseResult("a", "skip")]).result == "skip"


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_hanging_selftest_is_killed_and_reported(tmp_path):
    binary = _script(tmp_path, "mkdirty", "echo 'TAP version 13'\necho 'ok 1 first'\nexec sleep 60\n")
    run = run_selftest(binary, timeout=1)
    assert run.error.startswith("timed out after 1 s")
    assert run.result == "fail" and run.seconds < 10
    assert [c.result for c in run.cases] == ["pass"], "what it printed before hanging is kept"


def test_a_missing_selftest_is_reported(tmp_path):
    run = run_selftest(tmp_path / "pagemap_ioctl")
    assert run.result == "fail" and "not built" in run.error


def test_exit_status_counts(tmp_path):
    binary = _script(tmp_path, "uffd-unit-tests", "echo 'Testing x on anon... done'\nexit 1\n")
    run = run_selftest(binary, timeout=10)
    assert run.returncode == 1 and run.result == "fail", "a non-zero exit fails even if every case passed"
