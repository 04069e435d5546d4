"""report.tap read by the kernel's own KTAP parser, ``tools/testing/kunit/kunit.py parse``.

The parser comes from the unpacked linux-source-6.12 tree that the kernel
build leaves in ``build/cache/src/`` (harness/vm/build.py), so these tests run
with the builder's tests (``pytest -m vm tests/vm``, after ``make kernels``);
they boot nothing.  Inputs: the outputs of a real ``make validate``
(tests/kernel_ci_data.py), and the same with a failed clause, a build failure
and a guest panic.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernel_ci_data  # noqa: E402
from harness.validate import report as render  # noqa: E402
from harness.validate.verdict import build_report  # noqa: E402
from harness.vm import build as vmbuild  # noqa: E402

pytestmark = pytest.mark.vm

_TOTALS = re.compile(r"Testing complete\. Ran (\d+) tests: (.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def kunit_py() -> Path:
    tool = vmbuild.BUILD_DIR / "cache" / "src" / vmbuild.SOURCE_DIRNAME / "tools/testing/kunit/kunit.py"
    if not tool.exists():
        pytest.skip(f"the kernel's KTAP parser: {tool} missing (unpacked by `make kernel KERNEL=stock`)")
    return tool


def _expected(report: dict) -> Counter:
    """What a KTAP parser must count in report.tap, from report.json's dictionary alone."""
    want = Counter()
    for name, k in report["kernels"].items():
        for clause in report["clauses"].values():
            want[{"pass": "passed", "absent": "skipped"}.get(clause.get(name, "absent"), "failed")] += 1
        for run in k["selftests"].values():
            for case in run["cases"]:
                want[{"pass": "passed", "skip": "skipped", "fail": "failed"}[case["result"]]] += 1
            want["failed"] += bool(run.get("error"))
        want["failed"] += bool(k["error"])
    want["passed" if report["ok"] else "failed"] += 1  # the verdict line
    return want


def _parse(kunit_py: Path, tap: str, tmp_path: Path) -> tuple[int, Counter, str]:
    path = tmp_path / "report.tap"
    path.write_text(tap)
    proc = subprocess.run(
        [sys.executable, str(kunit_py), "parse", str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    out = proc.stdout + proc.stderr
    m = _TOTALS.search(out)
    assert m, f"kunit.py parse printed no totals:\n{out[-3000:]}"
    counts = Counter({k: int(v) for k, v in (item.split(": ") for item in m.group(2).split(", "))})
    return int(m.group(1)), counts, out


@pytest.mark.parametrize("case", ["real", "odd_names", "clause_fails", "build_fails", "guest_panics"])
def test_kunit_parser_reads_report_tap_with_the_same_totals(kunit_py, tmp_path, case):
    errors = {"build_fails": {"patched": "build failed: 0002 does not apply"}}.get(case)
    outcomes = kernel_ci_data.outcomes(tmp_path, errors=errors)
    if case == "odd_names":
        # what a selftest may print: a '#' in a name (KTAP's directive mark), a reason over two lines
        outcomes[0].steps["selftests"]["uffd-unit-tests"]["cases"].append(
            {"name": "hugetlb # 2M pages", "result": "skip", "reason": "no huge pages\nvm.nr_hugepages=0"}
        )
    if case == "clause_fails":
        outcomes[1].summary["clauses"]["3"]["result"] = "fail"
    if case == "guest_panics":
        outcomes[1].error, outcomes[1].summary = "guest failed: kernel 'patched' panicked\nKernel panic", None
    report = build_report(outcomes, None, False, 1.0)
    ran, counts, out = _parse(kunit_py, render.render_tap(report), tmp_path)
    assert "[ERROR]" not in out and "crashed" not in counts and "errors" not in counts, (
        f"kunit.py parse disagrees with report.tap:\n{out[-3000:]}"
    )
    want = _expected(report)
    assert counts == want and ran == sum(want.values()), f"kunit.py counted {counts}, report.json says {want}"
