"""Every JSON document the harness reads is checked whole before use: what its writer writes passes,
anything else is a DocumentError naming the file and the key."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import reports, schema
from harness.errors import DocumentError
from harness.timing import documents
from harness.vm.documents import load_build_info

#: file formats, the same on any kernel; a second interpreter (guest suites deselect host_only)
pytestmark = pytest.mark.host_only


@pytest.fixture(scope="module")
def written_summary(tmp_path_factory):
    """summary.json as the pytest plugin writes it, from a real (small) run."""
    path = tmp_path_factory.mktemp("summary") / "summary.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--summary-json",
            str(path),
            "tests/test_abi.py",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def test_the_plugins_summary_passes_its_schema(written_summary):
    doc = reports.load_summary(written_summary)
    assert doc["tests"]["total"] > 0 and set(doc["clauses"]) == {str(n) for n in range(1, 9)}


def test_validates_report_passes_its_schema(tmp_path):
    from harness.validate.outcome import KernelOutcome
    from harness.validate.report import write_report
    from harness.validate.verdict import build_report

    outcome = KernelOutcome("stock", "guest", tmp_path / "stock", accel="tcg")
    outcome.summary = {"kernel_release": "6.12", "patched": False, "tests": {"passed": 1}, "clauses": {}}
    write_report(build_report([outcome], None, False, 1.0), tmp_path)
    assert reports.load_report(tmp_path / "report.json")["verdict"]["kind"]


SUMMARY_DAMAGE = {
    "list": [],
    "no-clauses": {"kernel_release": "6.12", "patched": False, "tests": {}},
    "clause-without-result": {"kernel_release": "6.12", "patched": False, "tests": {}, "clauses": {"1": {}}},
    "patched-string": {"kernel_release": "6.12", "patched": "yes", "tests": {}, "clauses": {}},
    "timeline-string": {
        "kernel_release": "6.12",
        "patched": False,
        "tests": {},
        "clauses": {},
        "timeline": {"first_test": "soon"},
    },
}


@pytest.mark.parametrize("case", sorted(SUMMARY_DAMAGE))
def test_a_damaged_summary_is_named(tmp_path, case):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(SUMMARY_DAMAGE[case]))
    with pytest.raises(DocumentError) as info:
        reports.load_summary(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "doc",
    [{}, [], {"verdict": "holds", "ok": True, "problems": [], "kernels": {}, "clauses": {}}],
    ids=["empty", "list", "verdict-string"],
)
def test_a_damaged_report_is_named(tmp_path, doc):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DocumentError, match="report.json"):
        reports.load_report(path)


@pytest.mark.parametrize(
    "loader",
    [reports.load_summary, reports.load_report, documents.load_bench, documents.load_calibration, load_build_info],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe\x00", b"[" * 100000, b"nul", b"1e999"],
    ids=["empty", "binary", "deep", "truncated", "infinity"],
)
def test_every_reader_names_the_file_for_garbage(tmp_path, loader, content):
    path = tmp_path / "doc.json"
    path.write_bytes(content)
    with pytest.raises(DocumentError) as info:
        loader(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_key_paths_in_messages():
    shape = schema.Obj(required={"a": schema.MapOf(schema.ListOf(schema.FINITE))})
    assert schema.problem({"a": {"x": [1, 2, float("nan")]}}, shape) == "a.x[2]: expected a finite number, got nan"
    assert schema.problem({"a": {"x": [True]}}, shape) == "a.x[0]: expected a finite number, got true"
    assert schema.problem({}, shape) == "the document: no 'a'"


# -- the readers behind the verbs: a damaged document is reported, never a traceback -----------------------

DAMAGED_BUILD_JSON = {
    "list": "[]",
    "source-a-string": json.dumps({"key": "0" * 64, "patched": False, "source": "6.12", "built_at": "x"}),
    "built-at-a-number": json.dumps({"key": "0" * 64, "patched": False, "built_at": 5}),
    "steps-infinite": '{"key": "' + "0" * 64 + '", "patched": false, "kbuild_steps": 1e999}',
}


@pytest.mark.parametrize("case", sorted(DAMAGED_BUILD_JSON))
def test_the_builder_and_the_guest_read_build_json_through_its_schema(tmp_path, monkeypatch, case):
    """Seeding, pruning candidates, the progress estimate and the guest's base version: a damaged build.json
    is an unbuilt or undated kernel, not an AttributeError or TypeError half-way through a build."""
    from harness.validate import guest
    from harness.vm import build as vmbuild

    kernels = tmp_path / "kernels"
    for name in ("candidate-a", "candidate-b", "candidate-c"):
        (kernels / name).mkdir(parents=True)
        good = {"key": "0" * 64, "patched": True, "built_at": f"2026-12-0{name[-1] == 'c' and 2 or 1}T00:00:00Z"}
        (kernels / name / "build.json").write_text(json.dumps(good))
    damaged = kernels / "candidate-a"
    (damaged / "build.json").write_text(DAMAGED_BUILD_JSON[case])
    assert vmbuild._seed_unfit(damaged, "", "gcc", "src") == "it is not built"
    assert vmbuild._previous_steps(damaged) == 0
    monkeypatch.setattr(guest.paths, "KERNELS_DIR", kernels)
    monkeypatch.setenv(guest.paths.ENV_KERNEL, "candidate-a")
    assert guest._kernel_base_version() is None
    removed = vmbuild.prune_candidates(kernels, keep=1, log=lambda _: None)
    assert sorted(removed) == ["candidate-a", "candidate-b"], "the undated (damaged) and the older build go"


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        json.dumps({"schema": documents.CALIBRATION_SCHEMA, "tcg": "no"}),
        json.dumps({"schema": documents.CALIBRATION_SCHEMA, "net_intervals": {"first_touch.young_dirty.read": [1]}}),
        json.dumps({"schema": documents.CALIBRATION_SCHEMA, "net_intervals": {"first_touch.young_dirty.read": "x"}}),
    ],
    ids=["list", "tcg-string", "interval-of-one", "interval-string"],
)
def test_validates_projection_names_a_damaged_host_calibration(tmp_path, content):
    from harness.sim.projection import host_projection

    path = tmp_path / "calibration.json"
    path.write_text(content)
    projection = host_projection(path)
    assert projection["available"] is False and projection["why"].startswith(f"{path}: "), projection


def test_a_mutant_whose_guest_wrote_a_damaged_summary_is_not_shown_and_says_why(tmp_path, monkeypatch):
    from harness.vm import mutants, runner

    def guest(kernel, argv, rwdir, **kwargs):
        (rwdir / "summary.json").write_text('{"clauses": {"1": {}}}')
        return runner.GuestResult(0, [], 1.0, "tcg", "")

    monkeypatch.setattr(runner, "run_in_guest", guest)
    run = mutants.run_guest(mutants.all_mutants()[0], None, tmp_path)
    assert run.summary is None and run.results() == {} and run.caught() == []
    assert run.error and "summary.json" in run.error, run.error
