"""The validation's outputs as kernel CI takes them: KCIDB (checked by kcidb-io), LAVA jobs (checked by
LAVA's own schema), and benchmark comparisons that give no verdict under TCG.

The inputs are the outputs of a real ``make validate`` (tests/kernel_ci_data.py).
The KTAP check by the kernel's own parser needs the unpacked kernel tree and is in
tests/vm/test_ktap_parser.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import kernel_ci_data
from harness import lava
from harness.validate import benchmarks, kcidb
from harness.validate import report as render
from harness.validate.verdict import build_report

#: KCIDB, LAVA and KTAP documents and their schemas: the same on any kernel (guest suites deselect host_only)
pytestmark = pytest.mark.host_only

#: what the LAVA schema check needs on the host: Debian's lava-common, for the system python3
LAVA_COMMON = {"/usr/lib/python3/dist-packages/lava_common/schemas/__init__.py": "lava-common"}
SYSTEM_PYTHON = "/usr/bin/python3"


def _report(tmp_path: Path, **kw) -> dict:
    return build_report(kernel_ci_data.outcomes(tmp_path, **kw), None, False, 600.0)


def _written(tmp_path: Path, report: dict) -> tuple[dict, dict]:
    """report.json and report.kcidb.json as write_report leaves them."""
    results = tmp_path / "results"
    results.mkdir()
    render.write_report(report, results)
    return (json.loads((results / "report.json").read_text()), json.loads((results / "report.kcidb.json").read_text()))


# -- KCIDB ------------------------------------------------------------------------------


def test_kcidb_document_is_valid_and_counts_match_report_json(tmp_path):
    import kcidb_io

    report, doc = _written(tmp_path, _report(tmp_path))
    kcidb_io.schema.LATEST.validate(doc)  # raises on any schema violation
    kernels = report["kernels"]
    by_kind = Counter(t["path"].split(".")[1] for t in doc["tests"])
    assert by_kind["contract"] == len(report["clauses"]) * len(kernels) == 16
    cases = sum(len(run["cases"]) + bool(run.get("error")) for k in kernels.values() for run in k["selftests"].values())
    assert cases > 0 and by_kind["selftests"] == cases, "one KCIDB test per selftest case in report.json"
    scenarios = sum(len(b["scenarios"]) for b in report["benchmarks"].values())
    assert scenarios > 0 and by_kind["bench"] == scenarios, "one KCIDB test per benchmark scenario"
    assert len(doc["builds"]) == len(kernels)
    assert len({t["id"] for t in doc["tests"]}) == len(doc["tests"]), "test IDs must be unique"


def test_kcidb_statuses_follow_report_json(tmp_path):
    report, doc = _written(tmp_path, _report(tmp_path))
    builds = {b["id"]: b for b in doc["builds"]}
    for t in doc["tests"]:
        kernel = t["id"].split(":")[2]
        parts = t["path"].split(".")
        if parts[1] == "contract":
            result = report["clauses"][parts[2].split("_")[1]][kernel]
            assert t["status"] == {"pass": "PASS", "fail": "FAIL", "absent": "SKIP"}[result], t["id"]
            if result == "absent":
                assert "absent" in t["comment"], "a SKIP says why"
        elif parts[1] == "bench":
            scenario = ".".join(parts[2:])
            s = report["benchmarks"][kernel]["scenarios"][scenario]
            if s["status"] == "ok":
                assert t["status"] == "DONE" and t["number"] == {"value": s["median"], "unit": "cycles"}
                assert t["misc"]["tcg"] is True, "a guest's timing says it was emulated"
            else:
                assert t["status"] in ("SKIP", "ERROR") and t["comment"] == s["status"]
        assert builds[t["build_id"]]["status"] == "PASS"
    stock = next(c for c in doc["checkouts"] if not c["patchset_hash"])
    patched = next(c for c in doc["checkouts"] if c["patchset_hash"])
    series = [p["sha256"] for p in report["kernels"]["patched"]["build"]["patches"]]
    assert patched["patchset_hash"] == kcidb.patchset_hash(series) and len(series) > 0
    assert stock["misc"]["source_version"] == patched["misc"]["source_version"] != "unknown"
    for b in doc["builds"]:
        assert b["compiler"].startswith("gcc") and b["duration"] > 0 and b["config_name"]


def test_kcidb_build_failure_is_miss_and_panic_is_error(tmp_path):
    import kcidb_io

    errors = {"patched": "build failed: 0002 does not apply"}
    failed = build_report(kernel_ci_data.outcomes(tmp_path / "a", errors=errors), None, False, 1.0)
    doc = kcidb.document(json.loads(json.dumps(failed, default=str)))
    kcidb_io.schema.LATEST.validate(doc)
    patched = [t for t in doc["tests"] if ":patched:" in t["id"]]
    assert {t["status"] for t in patched} == {"MISS"} and len(patched) == 8, "a kernel never built ran nothing"
    assert next(b for b in doc["builds"] if b["comment"] == "kernel 'patched'")["status"] == "FAIL"
    assert any(c.get("valid") is False for c in doc["checkouts"]), "a series that does not apply is an invalid checkout"

    outs = kernel_ci_data.outcomes(tmp_path / "b")
    outs[1].error, outs[1].summary = "guest failed: kernel 'patched' panicked", None
    doc = kcidb.document(json.loads(json.dumps(build_report(outs, None, False, 1.0), default=str)))
    kcidb_io.schema.LATEST.validate(doc)
    clauses = [t for t in doc["tests"] if ":patched:" in t["id"] and ".contract." in t["path"]]
    assert {t["status"] for t in clauses} == {"ERROR"} and "panicked" in clauses[0]["comment"]


def test_kcidb_of_a_host_only_validation(tmp_path):
    """Where QEMU cannot run, the host kernel is validated: no build of ours, still a valid document."""
    import kcidb_io

    from harness.validate.outcome import KernelOutcome

    stock = kernel_ci_data.outcomes(tmp_path)[0]
    host = KernelOutcome("host", "host", stock.out, summary=stock.summary, steps=stock.steps, bench=stock.bench)
    report = build_report([host], None, False, 1.0, qemu_reason="no qemu-system-x86_64")
    doc = kcidb.document(json.loads(json.dumps(report, default=str)))
    kcidb_io.schema.LATEST.validate(doc)
    release = report["kernels"]["host"]["release"]
    assert [b["comment"] for b in doc["builds"]] == [f"the host's running kernel {release} (not built here)"]
    assert {t["status"] for t in doc["tests"] if ".contract." in t["path"]} <= {"PASS", "SKIP", "FAIL"}


def test_kcidb_origin_is_configurable_and_checked(tmp_path, monkeypatch):
    report = json.loads(json.dumps(_report(tmp_path), default=str))
    monkeypatch.setenv(kcidb.ENV_ORIGIN, "my_lab")
    doc = kcidb.document(report)
    ids = [o["id"] for kind in ("checkouts", "builds", "tests") for o in doc[kind]]
    assert all(i.startswith("my_lab:") for i in ids) and {o["origin"] for o in doc["tests"]} == {"my_lab"}
    with pytest.raises(ValueError, match=r"\[a-z0-9_\]\+"):
        kcidb.document(report, origin="My-Lab")
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "validate", "--kcidb-origin", "Bad Origin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "KCIDB origin 'Bad Origin'" in proc.stderr


# -- benchmarks under TCG -------------------------------------------------------------------

HOST_CALIBRATION = {
    # the shape `make bench` writes on a host (harness.timing.bench.calibration_document); figures from
    # the README's `make bench` of 26 Nov 2026, net of the empty section, with their intervals
    "schema": "uffd-harness/calibration/1",
    "created": "2026-11-26T10:00:00Z",
    "tcg": False,
    "models_hardware_assists": True,
    "cpu_model": "Intel(R) Xeon(R) Processor",
    "kernel": "6.18.44-fc-v657",
    "hypervisor_vendor": "KVM",
    "net_medians": {
        "first_touch.young_dirty.read.warm_tlb": 30,
        "first_touch.young_dirty.read": 78,
        "first_touch.old_dirty.read": 866,
        "first_touch.young_clean.write": 698,
        "first_touch.young_dirty.write": 58,
    },
    "net_intervals": {
        "first_touch.young_dirty.read.warm_tlb": [28, 32],
        "first_touch.young_dirty.read": [72, 98],
        "first_touch.old_dirty.read": [856, 880],
        "first_touch.young_clean.write": [694, 704],
        "first_touch.young_dirty.write": [56, 60],
    },
}


def test_tcg_comparison_has_no_verdict_and_projects_from_the_host_calibration(tmp_path, monkeypatch):
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps(HOST_CALIBRATION))
    monkeypatch.setattr(benchmarks, "HOST_CALIBRATION", cal)
    report = _report(tmp_path)
    bench = report["bench"]
    assert bench["emulated"].startswith("emulated:") and bench["rows"]
    assert {r["verdict"] for r in bench["rows"]} == {benchmarks.EMULATED}
    projection = bench["projection"]
    assert projection["available"] and projection["created"] == "2026-11-26T10:00:00Z"
    write = next(r for r in projection["rows"] if r["scenario"] == "free-unprotect-write")
    # WRITE_LIKELY saves the dirty assist: young_clean.write - young_dirty.write, interval by interval arithmetic
    assert write["saved"] == 698 - 58 and (write["saved_lo"], write["saved_hi"]) == (694 - 60, 704 - 56)
    read = next(r for r in projection["rows"] if r["scenario"] == "free-unprotect-read")
    assert read["saved"] == 866 - 78 and (read["saved_lo"], read["saved_hi"]) == (856 - 98, 880 - 72)
    shmem = next(r for r in projection["rows"] if r["scenario"] == "shmem-clean-unprotect-write")
    assert shmem["saved"] == 0, "hints never make a clean shared PTE writable: nothing to save"
    outputs = {
        "markdown": render.render_markdown(report),
        "tap": render.render_tap(report),
        "junit": render.render_junit(report),
        "terminal": render.render_terminal(report, tmp_path),
    }
    for fmt, text in outputs.items():
        low = text.lower()
        assert "faster" not in low and "slower" not in low and "no difference detected" not in low, (
            f"{fmt} prints a timing verdict for a TCG comparison"
        )
    projected = outputs["markdown"].split("### Projection for this host's CPU")[1]
    assert "| free-unprotect-write " in projected and "W " in projected
    assert "[634, 648]" in outputs["markdown"], "the projection carries its interval"
    assert "saves 640 cycles" in outputs["terminal"] and "2026-11-26" in outputs["terminal"]


def test_tcg_comparison_without_a_host_calibration_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "HOST_CALIBRATION", tmp_path / "none.json")
    report = _report(tmp_path)
    assert report["bench"]["projection"]["available"] is False
    assert "make bench" in render.render_markdown(report) and "make bench" in render.render_terminal(report, tmp_path)
    tcg_host = {**HOST_CALIBRATION, "tcg": True}
    (tmp_path / "tcg.json").write_text(json.dumps(tcg_host))
    monkeypatch.setattr(benchmarks, "HOST_CALIBRATION", tmp_path / "tcg.json")
    assert "under TCG" in _report(tmp_path / "again")["bench"]["projection"]["why"], (
        "a host calibration taken under TCG cannot project hardware costs"
    )


def test_hardware_comparison_keeps_its_verdicts(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "HOST_CALIBRATION", tmp_path / "none.json")
    report = _report(tmp_path, tcg=False)
    bench = report["bench"]
    assert not bench["emulated"] and "projection" not in bench
    verdicts = {r["verdict"] for r in bench["rows"]}
    assert verdicts <= {"faster", "slower", "no difference detected"} and verdicts
    assert all(r["diff_lo"] is not None for r in bench["rows"])
    assert "difference 95% CI" in render.render_markdown(report)


# -- LAVA -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lava_schema():
    """LAVA's job validator (Debian's lava-common, system python3); installed as root like the other packages."""
    from harness.vm.build import check_host
    from harness.vm.errors import VmError

    try:
        check_host(LAVA_COMMON)
    except VmError as exc:
        pytest.skip(f"LAVA's job schema: {exc}")

    def validate(job_yaml: Path) -> subprocess.CompletedProcess:
        code = "import sys, yaml, lava_common.schemas as s\ns.validate(yaml.safe_load(open(sys.argv[1])))\n"
        return subprocess.run([SYSTEM_PYTHON, "-c", code, str(job_yaml)], capture_output=True, text=True, timeout=120)

    return validate


@pytest.fixture
def built_kernel(tmp_path):
    """A build directory with kernel 'patched' as `make kernel` leaves it (from the real build.json)."""
    build = tmp_path / "build"
    kdir = build / "kernels" / "patched"
    (kdir / "selftests").mkdir(parents=True)
    (kdir / "uapi/linux").mkdir(parents=True)
    (kdir / "build.json").write_text((kernel_ci_data.DATA / "patched" / "build.json").read_text())
    (kdir / "bzImage").write_bytes(b"\x00" * 512)
    (kdir / "uapi/linux/userfaultfd.h").write_text("/* uapi */\n")
    (kdir / "selftests/uffd-unit-tests").write_bytes(b"\x7fELF")
    return build


def test_lava_job_passes_lavas_schema(tmp_path, built_kernel, lava_schema):
    out = tmp_path / "job.yaml"
    env = {**os.environ, "UFFD_HARNESS_BUILD_DIR": str(built_kernel)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "lava-job",
            "--kernel",
            "patched",
            "--out",
            str(out),
            "--ramdisk-url",
            "https://lab.example/rootfs.cpio.gz",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    checked = lava_schema(out)
    assert checked.returncode == 0, f"LAVA's schema rejects the job: {checked.stderr[-2000:]}"
    import tarfile

    import yaml

    job = yaml.safe_load(out.read_text())
    deploy = job["actions"][0]["deploy"]
    assert job["device_type"] == "qemu" and deploy["images"]["kernel"]["url"].endswith("kernels/patched/bzImage")
    bundle = Path(deploy["images"]["ramdisk"]["overlays"]["uffd-harness"]["url"].removeprefix("file://"))
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
    assert {
        "harness/validate/guest.py",
        "harness/lava.py",
        "build/kernels/patched/build.json",
        "build/kernels/patched/selftests/uffd-unit-tests",
    } <= names
    steps = job["actions"][2]["test"]["definitions"][0]["repository"]["run"]["steps"]
    assert any("harness.lava cases" in s for s in steps)
    # the check is not a rubber stamp: a job without its visibility is refused
    del job["visibility"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(job))
    refused = lava_schema(bad)
    assert refused.returncode != 0 and "visibility" in refused.stderr


def test_lava_job_names_what_it_needs(tmp_path, built_kernel):
    env = {**os.environ, "UFFD_HARNESS_BUILD_DIR": str(built_kernel)}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "lava-job", "--kernel", "patched"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--ramdisk-url is required" in proc.stderr and "pytest" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "lava-job", "--kernel", "nosuch", "--ramdisk-url", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "make kernel KERNEL=nosuch" in proc.stderr


_VALIDATION_JOBS = (
    "import sys; from pathlib import Path; from harness.validate import run; "
    "run._write_lava_jobs(sys.argv[2:], Path(sys.argv[1]), print)"
)


def test_validate_writes_a_lava_job_per_kernel_that_lavas_schema_accepts(tmp_path, built_kernel, lava_schema):
    """validate leaves build/results/lava/<kernel>.yaml (and its bundle) for every kernel it built: without
    a ramdisk URL the placeholder, which the log names; with $UFFD_HARNESS_LAVA_RAMDISK_URL that one."""
    import yaml

    results = tmp_path / "results"
    (results / "lava").mkdir(parents=True)
    (results / "lava" / "old-kernel.yaml").write_text("an earlier run's job\n")
    env = {**os.environ, "UFFD_HARNESS_BUILD_DIR": str(built_kernel)}
    env.pop(lava.ENV_RAMDISK_URL, None)
    proc = subprocess.run(
        [sys.executable, "-c", _VALIDATION_JOBS, str(results), "patched"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    job_path = results / "lava" / "patched.yaml"
    assert sorted(p.name for p in (results / "lava").iterdir()) == ["patched-bundle.tar.gz", "patched.yaml"]
    assert lava.RAMDISK_PLACEHOLDER in proc.stdout and lava.ENV_RAMDISK_URL in proc.stdout, proc.stdout
    job = yaml.safe_load(job_path.read_text())
    assert job["actions"][0]["deploy"]["images"]["ramdisk"]["url"] == lava.RAMDISK_PLACEHOLDER
    assert "linux-source-6.12" in job["job_name"], job["job_name"]
    checked = lava_schema(job_path)
    assert checked.returncode == 0, f"LAVA's schema rejects validate's job: {checked.stderr[-2000:]}"

    env[lava.ENV_RAMDISK_URL] = "https://lab.example/rootfs.cpio"
    proc = subprocess.run(
        [sys.executable, "-c", _VALIDATION_JOBS, str(results), "patched"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "https://lab.example/rootfs.cpio)" in proc.stdout, proc.stdout + proc.stderr
    job = yaml.safe_load(job_path.read_text())
    assert job["actions"][0]["deploy"]["images"]["ramdisk"]["url"] == "https://lab.example/rootfs.cpio"


def test_validate_says_why_it_wrote_no_lava_job(tmp_path, built_kernel):
    """A kernel that cannot be bundled is a line in the log, never the end of the validation."""
    env = {**os.environ, "UFFD_HARNESS_BUILD_DIR": str(built_kernel)}
    proc = subprocess.run(
        [sys.executable, "-c", _VALIDATION_JOBS, str(tmp_path / "results"), "nosuch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LAVA jobs not written" in proc.stdout and "nosuch" in proc.stdout, proc.stdout


def test_guest_results_become_lava_test_cases(tmp_path):
    out = tmp_path / "patched"
    kernel_ci_data.outcomes(tmp_path)  # copies the real results
    cases = lava.lava_cases(out)
    summary = json.loads((out / "summary.json").read_text())
    steps = json.loads((out / "steps.json").read_text())
    bench = json.loads((out / "bench.json").read_text())
    by_set = Counter(c["set"] for c in cases)
    assert by_set["contract"] == 8
    assert by_set["selftests"] == sum(len(r["cases"]) + bool(r.get("error")) for r in steps["selftests"].values())
    assert by_set["bench"] == len(bench["scenarios"])
    for n, clause in summary["clauses"].items():
        case = next(c for c in cases if c["name"] == f"clause_{n}")
        assert case["result"] == {"pass": "pass", "fail": "fail", "absent": "skip"}[clause["result"]]
    measured = [c for c in cases if "measurement" in c]
    assert measured and all(c["units"] == "cycles" and c["result"] == "pass" for c in measured)
    calls = []
    assert lava.emit(cases, run=lambda argv, check: calls.append(argv)) == len(cases)
    assert calls[0] == ["lava-test-set", "start", "contract"] and calls[-1][:2] == ["lava-test-set", "stop"]
    names = [argv[1] for argv in calls if argv[0] == "lava-test-case"]
    assert all(" " not in n for n in names), "lava-test-case takes one word as the name"
    assert len(set(names)) == len(names), "each case once (mkdirty prints one name twice)"
