"""The validation report: verdicts, problems, KTAP and JUnit, from synthetic kernel outcomes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.validate import report as render
from harness.validate import run
from harness.validate.outcome import KernelOutcome
from harness.validate.verdict import build_report

#: reports from recorded results: the same on any kernel (guest suites deselect host_only)
pytestmark = pytest.mark.host_only


def _summary(patched: bool, clauses: dict[int, str]) -> dict:
    return {
        "kernel_release": "6.12.57",
        "patched": patched,
        "features": {"offered": ["PAGEFAULT_FLAG_WP"] + (["ACCESS_HINTS"] if patched else [])},
        "tests": {"passed": 10, "failed": 0, "skipped": 0},
        "backends": {"kernel": 8, "sim": 2},
        "clauses": {
            str(n): {
                "result": r,
                "channels": {"kernel": ["smaps", "idle-page"]},
                "memory": {"kernel": ["anon", "anon-thp"] if n != 4 else ["shmem"]},
            }
            for n, r in clauses.items()
        },
    }


def _selftests(fail_case: bool = False) -> dict:
    cases = [
        {"name": "zeropage on anon", "result": "pass", "reason": ""},
        {"name": "wp-fork on shmem", "result": "fail" if fail_case else "pass", "reason": ""},
    ]
    return {
        "uffd-unit-tests": {
            "name": "uffd-unit-tests",
            "returncode": 1 if fail_case else 0,
            "seconds": 1.0,
            "cases": cases,
            "error": "",
        }
    }


def _outcome(
    tmp_path: Path, name: str, patched: bool, clauses: dict[int, str], *, fail_case=False, error=""
) -> KernelOutcome:
    o = KernelOutcome(name, "guest", tmp_path / name, error=error, accel="tcg")
    if not error:
        o.summary = _summary(patched, clauses)
        o.steps = {"pytest": {"returncode": 0}, "bench": {"returncode": 0}, "selftests": _selftests(fail_case)}
    return o


STOCK = {1: "pass", 2: "absent", 3: "absent", 4: "absent", 5: "pass", 6: "absent", 7: "absent", 8: "absent"}
ALL_PASS = dict.fromkeys(range(1, 9), "pass")


def test_patched_keeping_every_clause_holds(tmp_path):
    report = build_report(
        [_outcome(tmp_path, "stock", False, STOCK), _outcome(tmp_path, "patched", True, ALL_PASS)], None, False, 1.0
    )
    assert report["verdict"]["kind"] == "holds" and report["ok"]
    assert report["clauses"][2]["stock"] == "absent" and report["clauses"][2]["patched"] == "pass"
    assert report["clauses"][3]["memory"]["patched"] == {"kernel": ["anon", "anon-thp"]}
    assert "patched: kernel (smaps, idle-page) on anon, anon-thp" in render.render_markdown(report), (
        "the report must say which memory each clause was checked on"
    )


def test_a_failed_clause_is_broken_and_named(tmp_path):
    broken = {**ALL_PASS, 3: "fail"}
    report = build_report(
        [_outcome(tmp_path, "stock", False, STOCK), _outcome(tmp_path, "candidate", True, broken)],
        Path("/p"),
        False,
        1.0,
    )
    assert report["verdict"]["kind"] == "broken" and not report["ok"]
    assert "clause 3" in report["verdict"]["line"] and "dirty and young" in report["verdict"]["line"]


def test_a_series_without_the_feature_is_absent(tmp_path):
    report = build_report(
        [_outcome(tmp_path, "stock", False, STOCK), _outcome(tmp_path, "candidate", False, STOCK)],
        Path("/p"),
        False,
        1.0,
    )
    assert report["verdict"]["kind"] == "absent" and not report["ok"]


def test_a_build_failure_is_reported_and_the_other_kernel_still_is(tmp_path):
    report = build_report(
        [
            _outcome(tmp_path, "stock", False, STOCK),
            _outcome(tmp_path, "candidate", True, {}, error="build failed: patch 0001 does not apply"),
        ],
        Path("/p"),
        False,
        1.0,
    )
    assert report["verdict"]["kind"] == "error" and "does not apply" in report["verdict"]["line"]
    assert report["kernels"]["stock"]["tests"]["passed"] == 10, "stock results are still in the report"
    assert any("does not apply" in p for p in report["problems"])


def test_selftest_regression_is_called_out(tmp_path):
    report = build_report(
        [_outcome(tmp_path, "stock", False, STOCK), _outcome(tmp_path, "patched", True, ALL_PASS, fail_case=True)],
        None,
        False,
        1.0,
    )
    assert report["selftest_regressions"] == {"uffd-unit-tests": ["wp-fork on shmem"]}
    assert not report["ok"], "a regression fails the validation even when the contract holds"


def test_ktap_and_junit_are_well_formed(tmp_path):
    report = build_report(
        [_outcome(tmp_path, "stock", False, STOCK), _outcome(tmp_path, "patched", True, {**ALL_PASS, 4: "fail"})],
        None,
        False,
        1.0,
    )
    tap = render.render_tap(report).splitlines()
    assert tap[0] == "KTAP version 1" and tap[1] == "1..3"
    assert "    ok 2 clause_2 # SKIP feature absent" in tap, "stock's absent clauses are KTAP skips"
    assert any(line.startswith("    not ok 4 clause_4") for line in tap)
    assert tap[-1].startswith("not ok 3 verdict # contract broken")
    suite = ET.fromstring(render.render_junit(report)).find("testsuite")
    assert int(suite.get("failures")) == 1 and int(suite.get("skipped")) == 6
    md = render.render_markdown(report)
    assert md.splitlines()[2].startswith("**contract broken: clause 4")


def test_write_report_writes_every_format(tmp_path):
    report = build_report(
        [_outcome(tmp_path, "stock", False, STOCK), _outcome(tmp_path, "patched", True, ALL_PASS)], None, False, 1.0
    )
    render.write_report(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["verdict"]["kind"] == "holds"
    for name in ("report.md", "report.tap", "report.junit.xml"):
        assert (tmp_path / name).stat().st_size > 0


def test_parallel_guests_bounded_by_memory_and_cores():
    assert run._parallel_guests(free_mb=1000) == 1
    assert run._parallel_guests(free_mb=100_000) <= (__import__("os").cpu_count() or 1)


def test_a_guest_that_panics_is_an_error_line(tmp_path, monkeypatch):
    from harness.vm import runner
    from harness.vm.errors import GuestPanic

    def panicking(*args, **kwargs):
        raise GuestPanic("kernel 'candidate' panicked while running 'python ...'", ["Kernel panic - not syncing"])

    monkeypatch.setattr(runner, "run_in_guest", panicking)
    monkeypatch.setattr("harness.vm.build.load_kernel", lambda name: name)
    outcome = run._boot_and_run(KernelOutcome("candidate", "guest", tmp_path / "candidate"), False, lambda msg: None)
    assert "panicked" in outcome.error and "Kernel panic" in outcome.error
    report = build_report([_outcome(tmp_path, "stock", False, STOCK), outcome], Path("/p"), False, 1.0)
    assert report["verdict"]["kind"] == "error" and not report["ok"]
    assert "panicked" in report["verdict"]["line"]
    assert report["kernels"]["stock"]["tests"]["passed"] == 10


def test_each_user_series_gets_its_own_build_name(tmp_path):
    one, two, empty = (tmp_path / d for d in ("one", "two", "empty"))
    for d, body in ((one, "--- a/x\n+++ b/x\n"), (two, "--- a/y\n+++ b/y\n"), (empty, None)):
        d.mkdir()
        if body:
            (d / "0001-change.patch").write_text(body)
    names = {d: run.candidate_name(d) for d in (one, two, empty)}
    assert names[one].startswith("candidate-") and names[two].startswith("candidate-")
    assert names[one] != names[two], "two different series would rebuild each other in one build directory"
    assert run.candidate_name(one) == names[one], "the same series must find its cached build again"
    assert names[empty] == "candidate"


# -- verdict integrity: the headline and the exit status agree ---------------------------


def test_evidence_outside_the_clauses_makes_the_verdict_not_shown(tmp_path):
    """Every clause passed, but another test of the suite failed (pytest exit 1): never "holds" with exit 1."""
    patched = _outcome(tmp_path, "patched", True, ALL_PASS)
    patched.steps["pytest"] = {"returncode": 1}
    report = build_report([_outcome(tmp_path, "stock", False, STOCK), patched], None, False, 1.0)
    assert report["verdict"]["kind"] == "not shown" and not report["ok"], report["verdict"]
    assert "pytest suite exited 1" in report["verdict"]["line"]


def test_a_failing_selftest_of_the_candidate_is_not_a_hold(tmp_path):
    report = build_report(
        [_outcome(tmp_path, "stock", False, STOCK), _outcome(tmp_path, "patched", True, ALL_PASS, fail_case=True)],
        None,
        False,
        1.0,
    )
    assert report["verdict"]["kind"] == "not shown" and not report["ok"], report["verdict"]
    assert "selftest uffd-unit-tests" in report["verdict"]["line"]


def test_a_guest_that_failed_after_writing_its_summary_is_an_error(tmp_path):
    """A summary on disk (from this run) does not outweigh a crash: the verdict is error, not holds."""
    patched = _outcome(tmp_path, "patched", True, ALL_PASS)
    patched.error = "guest failed: kernel 'patched' panicked while running 'python ...'"
    report = build_report([_outcome(tmp_path, "stock", False, STOCK), patched], None, False, 1.0)
    assert report["verdict"]["kind"] == "error" and not report["ok"]
    assert "panicked" in report["verdict"]["line"]


def test_a_clause_not_shown_names_what_is_missing(tmp_path):
    patched = _outcome(tmp_path, "patched", True, {**ALL_PASS, 2: "not shown"})
    patched.summary["clauses"]["2"]["gaps"] = ["anon-thp: skipped (no free 2 MiB block)"]
    report = build_report([_outcome(tmp_path, "stock", False, STOCK), patched], None, False, 1.0)
    assert report["verdict"]["kind"] == "not shown" and not report["ok"]
    assert "clause 2: anon-thp: skipped (no free 2 MiB block)" in report["verdict"]["line"]
    assert "no free 2 MiB block" in render.render_markdown(report)


def test_a_missing_clause_is_not_shown(tmp_path):
    partial = {n: r for n, r in ALL_PASS.items() if n != 7}
    report = build_report(
        [_outcome(tmp_path, "stock", False, STOCK), _outcome(tmp_path, "patched", True, partial)], None, False, 1.0
    )
    assert report["verdict"]["kind"] == "not shown" and "clause 7" in report["verdict"]["line"]


def test_a_validation_starts_from_an_empty_results_directory(tmp_path):
    """An earlier run's summary.json and report must be gone before a new run writes anything."""
    old = tmp_path / "patched"
    old.mkdir()
    (old / "summary.json").write_text(json.dumps(_summary(True, ALL_PASS)))
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "calibration.json").write_text("{}")  # the host's `make bench`: not a validation result
    run._clear_results(tmp_path, ["stock", "patched"], lambda msg: None)
    assert not old.exists() and not (tmp_path / "report.json").exists()
    assert (tmp_path / "calibration.json").exists()
    outcome = KernelOutcome("patched", "guest", old, error="guest failed: timed out")
    outcome.load()
    report = build_report([_outcome(tmp_path, "stock", False, STOCK), outcome], None, False, 1.0)
    assert report["verdict"]["kind"] == "error" and "timed out" in report["verdict"]["line"]


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: None, "no series file and no *.patch"),
        (lambda d: (d / "series").write_text("0001-not-here.patch\n"), "0001-not-here.patch"),
    ],
)
def test_a_bad_series_is_refused_before_anything_is_built(tmp_path, monkeypatch, capsys, make, expect):
    """validate --patches checks the series first: one line, exit 2, no build, no results touched."""
    from harness.vm import build as vm_build

    series = tmp_path / "series-dir"
    series.mkdir()
    make(series)
    monkeypatch.setattr(vm_build, "check_host", lambda **kwargs: None)
    monkeypatch.setattr(vm_build, "build_kernel", lambda *a, **k: pytest.fail("validate built a kernel"))
    results = tmp_path / "results"
    (results / "stock").mkdir(parents=True)
    (results / "stock" / "summary.json").write_text("{}")
    lines = []
    assert run.validate(series, results=results, log=lines.append) == 2
    assert len(lines) == 1 and expect in lines[0] and "--patches" in lines[0], lines
    assert (results / "stock" / "summary.json").exists(), "a refused series must lose nothing"


def test_the_report_names_the_pte_channel_and_its_patch_by_hash(tmp_path):
    patched = _outcome(tmp_path, "patched", True, ALL_PASS)
    patched.build = {
        "pte_channel": {"available": True},
        "instrumentation": [{"file": "0001-mm-uffd-harness.patch", "sha256": "ab" * 32}],
    }
    stock = _outcome(tmp_path, "stock", False, STOCK)
    stock.build = {"pte_channel": {"available": False, "reason": "vm/instrumentation does not apply"}}
    report = build_report([stock, patched], None, False, 1.0)
    assert report["kernels"]["patched"]["pte_channel"] == "yes: 0001-mm-uffd-harness.patch (sha256 abababababab)"
    assert report["kernels"]["stock"]["pte_channel"] == "no: vm/instrumentation does not apply"
    md = render.render_markdown(report)
    assert "sha256 abababababab" in md and "vm/instrumentation does not apply" in md
