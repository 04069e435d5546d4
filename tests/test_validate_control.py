"""validate reuses the control's guest results while nothing that made them changed, and times its phases.

The kernels and guests are fakes (as in test_validate_report.py): the build
step returns a build key, the guest writes the files the in-guest half would
and records which kernel booted with how many cores.  What is checked is the
host-side logic: reuse, invalidation on each input, --fresh-control, and the
phases in report.json and on the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import paths
from harness.selftests import SELFTESTS
from harness.validate import control_cache, guest, run
from harness.validate.outcome import KernelOutcome
from harness.validate.phases import PHASES, GuestTimer, render_phases
from harness.validate.run import GUEST_HUGEPAGES

#: a validation on a fake machine: the same on any kernel (guest suites deselect host_only)
pytestmark = pytest.mark.host_only

STOCK_CLAUSES = {1: "pass", 2: "absent", 3: "absent", 4: "absent", 5: "pass", 6: "absent", 7: "absent", 8: "absent"}


class FakeMachine:
    """The builds and guests of a validation, faked; ``boots`` records (kernel, cpus) per guest booted."""

    def __init__(self, monkeypatch, tmp_path: Path):
        self.keys = {"stock": "stock-key-1", "patched": "patched-key-1"}
        self.boots: list[tuple[str, int]] = []
        self.boot_count = 0
        self.fail_guest: set[str] = set()
        self.code = "code-1"
        self.results = tmp_path / "results"
        monkeypatch.setattr(paths, "BUILD_DIR", tmp_path / "build")
        monkeypatch.setattr(run, "qemu_unavailable", lambda: None)
        monkeypatch.setattr(run, "compile_for_guests", lambda log: None)
        monkeypatch.setattr(run, "_parallel_guests", lambda free_mb=None: 2)
        monkeypatch.setattr(run.os, "cpu_count", lambda: 4)
        monkeypatch.setattr(run, "_build", self._build)
        monkeypatch.setattr(control_cache, "code_hash", lambda root=None: self.code)
        monkeypatch.setattr("harness.vm.build.load_kernel", lambda name: name)
        monkeypatch.setattr("harness.vm.runner.run_in_guest", self._guest)
        #: the kernels each validation wrote LAVA jobs for (the jobs themselves: tests/test_kernel_ci.py)
        self.lava_jobs: list[list[str]] = []
        monkeypatch.setattr(run, "_write_lava_jobs", lambda kernels, results, log: self.lava_jobs.append(kernels))
        for var in [k for k in __import__("os").environ if k.startswith("UFFD_") or k == "CI"]:
            monkeypatch.delenv(var)

    def _build(self, name, patches, out, log):
        return KernelOutcome(name, "guest", out, build={"name": name, "key": self.keys[name]})

    def _guest(self, kernel, argv, *, timeout, rwdir, memory, hugepages, cpus, capture, console_log, log, on_line=None):
        assert hugepages == GUEST_HUGEPAGES, "validate's guests reserve what the suite and selftests side by side need"
        self.boots.append((kernel, cpus))
        for line in (
            "[    0.1] Linux version 6.12",
            f"[validate] {kernel} (6.12.57): pytest suite",
            f"[validate] {kernel} (6.12.57): selftest {SELFTESTS[0]}",
            f"[validate] {kernel} (6.12.57): first-touch benchmarks",
        ):
            if on_line:
                on_line(line)
        self.boot_count += 1
        rwdir.mkdir(parents=True, exist_ok=True)
        patched = kernel != "stock"
        clauses = dict.fromkeys(range(1, 9), "pass") if patched else STOCK_CLAUSES
        summary = {
            "kernel_release": "6.12.57",
            "patched": patched,
            "tests": {"passed": 3},
            "clauses": {str(n): {"result": r} for n, r in clauses.items()},
            "booted": self.boot_count,
        }
        (rwdir / "summary.json").write_text(json.dumps(summary))
        selftests = {
            name: {"name": name, "returncode": 0, "seconds": 2.0, "cases": [], "error": ""} for name in SELFTESTS
        }
        pytest_rc = 1 if kernel in self.fail_guest else 0
        (rwdir / "steps.json").write_text(
            json.dumps(
                {
                    "pytest": {"returncode": pytest_rc, "seconds": 40.0},
                    "selftests": selftests,
                    "bench": {"returncode": 0, "seconds": 30.0},
                }
            )
        )
        console_log.write_text(f"booted {kernel}\n")
        return SimpleNamespace(accel="tcg", returncode=0)

    def validate(self, **kwargs) -> dict:
        run.validate(results=self.results, log=lambda msg: None, **kwargs)
        return json.loads((self.results / "report.json").read_text())

    def booted(self) -> list[str]:
        names, self.boots = [k for k, _ in self.boots], []
        return names


@pytest.fixture
def machine(monkeypatch, tmp_path):
    return FakeMachine(monkeypatch, tmp_path)


def test_an_unchanged_control_is_reused_and_only_the_candidate_boots_with_all_cores(machine, capsys):
    first = machine.validate()
    assert sorted(machine.boots) == [("patched", 2), ("stock", 2)], "the first run boots both, sharing 4 cores"
    assert machine.lava_jobs == [["stock", "patched"]], "a LAVA job for each kernel built"
    assert first["control"]["reused"] is False and first["control"]["stored"] is True
    machine.boots = []

    second = machine.validate()
    assert machine.boots == [("patched", 4)], "only the candidate boots, with every core"
    assert second["control"]["reused"] is True and second["control"]["created"]
    assert second["kernels"]["stock"]["tests"] == {"passed": 3}, "the reused results are in the report"
    assert second["verdict"]["kind"] == "holds"
    assert json.loads((machine.results / "stock" / "summary.json").read_text())["booted"] in (1, 2), (
        "stock's results directory holds the stored results of the first run"
    )
    assert (machine.results / "stock" / "console.log").read_text() == "booted stock\n"
    out = capsys.readouterr().out
    assert f"guest results reused from {second['control']['created']}" in out
    assert "guest results were reused from" in (machine.results / "report.md").read_text()


@pytest.mark.parametrize("change", ["build key", "harness code", "quick", "memory", "cores", "timeouts", "environment"])
def test_any_change_to_an_input_runs_the_control_again(machine, monkeypatch, change):
    machine.validate()
    machine.booted()
    if change == "build key":
        machine.keys["stock"] = "stock-key-2"
    elif change == "harness code":
        machine.code = "code-2"
    elif change == "memory":
        monkeypatch.setattr(run, "GUEST_MEMORY_MB", run.GUEST_MEMORY_MB * 2)
    elif change == "cores":
        monkeypatch.setattr(run.os, "cpu_count", lambda: 8)
    elif change == "timeouts":
        monkeypatch.setattr(run, "PYTEST_TIMEOUT", run.PYTEST_TIMEOUT + 1)
    elif change == "environment":
        monkeypatch.setenv("UFFD_DIFF_EXAMPLES", "7")
    report = machine.validate(quick=change == "quick")
    assert sorted(machine.booted()) == ["patched", "stock"], f"a change of {change} must boot the control again"
    assert report["control"]["reused"] is False and report["control"]["stored"] is True
    assert "changed" in report["control"]["why_run"], report["control"]["why_run"]
    # and the new results are the ones reused next time
    again = machine.validate(quick=change == "quick")
    assert machine.booted() == ["patched"] and again["control"]["reused"] is True


def test_why_the_control_ran_names_the_input_that_changed(machine):
    machine.validate()
    machine.code = "code-2"
    report = machine.validate()
    assert "the harness code or tests" in report["control"]["why_run"]
    assert "the kernel build" not in report["control"]["why_run"]


def test_fresh_control_boots_it_again_and_replaces_what_was_stored(machine):
    machine.validate()
    machine.booted()
    report = machine.validate(fresh_control=True)
    assert sorted(machine.booted()) == ["patched", "stock"]
    assert report["control"]["fresh_control"] is True and report["control"]["reused"] is False
    assert len(control_cache.entries()) == 1, "the fresh results replace the stored ones under the same key"
    reused = machine.validate()
    assert machine.booted() == ["patched"]
    stored = json.loads((machine.results / "stock" / "summary.json").read_text())
    assert stored["booted"] in (3, 4), "the results given again are those of the --fresh-control run"
    assert reused["control"]["reused"] is True


def test_a_control_run_with_a_problem_is_not_kept(machine):
    machine.fail_guest.add("stock")
    report = machine.validate()
    assert report["control"]["stored"] is False
    machine.booted()
    machine.fail_guest.clear()
    machine.validate()
    assert sorted(machine.booted()) == ["patched", "stock"], "a failed control run is never given again"


def test_old_entries_are_pruned_to_the_newest(machine):
    for i in range(control_cache.KEEP + 2):
        machine.code = f"code-{i}"
        machine.validate()
    kept = control_cache.entries()
    assert len(kept) == control_cache.KEEP
    assert kept[0].inputs["code"] == f"code-{control_cache.KEEP + 1}", "the newest entry is kept"


def test_code_hash_changes_with_any_file_under_harness_tests_cbits_and_ignores_bytecode(tmp_path):
    for d in control_cache.CODE_DIRS:
        (tmp_path / d / "sub").mkdir(parents=True)
        (tmp_path / d / "sub" / "a.py").write_text("x = 1\n")
    base = control_cache.code_hash(tmp_path)
    (tmp_path / "harness" / "sub" / "__pycache__").mkdir()
    (tmp_path / "harness" / "sub" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "harness" / "_native.abi3.so").write_bytes(b"\0")
    assert control_cache.code_hash(tmp_path) == base, "bytecode and the built extension follow from the sources"
    for d in control_cache.CODE_DIRS:
        f = tmp_path / d / "sub" / "a.py"
        f.write_text("x = 2\n")
        assert control_cache.code_hash(tmp_path) != base, f"a change under {d}/ must change the hash"
        f.write_text("x = 1\n")
    (tmp_path / "tests" / "new.py").write_text("")
    assert control_cache.code_hash(tmp_path) != base, "a new file changes the hash"


def test_phases_are_in_report_json_and_printed_one_line_each(machine, capsys):
    report = machine.validate()
    phases = report["phases"]
    for key in (
        "check",
        "build_control",
        "build_candidate",
        "boot",
        "suite",
        "selftests",
        "benchmarks",
        "report",
        "total",
    ):
        assert key in phases and phases[key]["seconds"] >= 0, key
    assert set(phases["suite"]["kernels"]) == {"stock", "patched"}, "guest phases are per kernel"
    assert phases["guests_wall"]["parallel"] == 2
    for name in ("stock", "patched"):
        host = json.loads((machine.results / name / "phases.json").read_text())
        assert set(host) == {"boot", "suite", "selftests", "benchmarks"}, "timed on the host, per guest"
    out = capsys.readouterr().out.splitlines()
    start = out.index("where the time went (seconds, wall clock):")
    labels = [
        line.split()[0] if not line.startswith("  build") else " ".join(line.split()[:2]) for line in out[start + 1 :]
    ]
    ran = [label for key, label in PHASES if key != "suite_selftests"]  # the fake guest runs them one by one
    assert labels[: len(ran)] == ran, "one line per phase that ran, in order"

    stored = json.loads((machine.results / "stock" / "phases.json").read_text())
    again = machine.validate()
    assert again["phases"]["suite"]["reused"] == ["stock"]
    assert again["phases"]["suite"]["kernels"]["stock"] == stored["suite"], (
        "a reused kernel shows what its run took when it ran"
    )
    assert f"stock {stored['suite']:.0f} reused" in "\n".join(render_phases(again["phases"]))


def test_without_qemu_the_phases_are_the_host_steps(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(paths, "BUILD_DIR", tmp_path / "build")
    monkeypatch.setattr(run, "qemu_unavailable", lambda: "no qemu-system-x86_64")

    def steps(out, selftests_dir, quick, log):
        out.mkdir(parents=True, exist_ok=True)
        (out / "steps.json").write_text(
            json.dumps({"pytest": {"returncode": 0, "seconds": 12.0}, "bench": {"returncode": 0, "seconds": 3.0}})
        )

    monkeypatch.setattr(run, "run_steps", steps)
    run.validate(results=tmp_path / "results", log=lambda msg: None)
    phases = json.loads((tmp_path / "results" / "report.json").read_text())["phases"]
    assert "boot" not in phases and "build_control" not in phases, "nothing was built or booted"
    assert phases["suite"]["kernels"] == {"host": 12.0} and phases["benchmarks"]["seconds"] == 3.0
    assert "control" not in json.loads((tmp_path / "results" / "report.json").read_text())
    assert "  suite" in capsys.readouterr().out


def test_guest_phases_are_timed_on_the_host_from_the_step_lines(monkeypatch):
    """A TCG guest's clock runs slow on a loaded host: the host times the guest by its console lines."""
    from harness.validate import phases

    clock = iter([100.0, 112.0, 160.0, 161.0, 190.0, 200.0])
    monkeypatch.setattr(phases.time, "monotonic", lambda: next(clock))
    timer = phases.GuestTimer()  # QEMU starts at 100
    timer.on_line("[    1.000] Run /init as init process")  # console: not a step
    timer.on_line("[validate] stock (6.12.57): pytest suite")  # 112
    timer.on_line("[validate] stock (6.12.57): selftest uffd-unit-tests")  # 160
    timer.on_line("[validate] stock (6.12.57): selftest mkdirty")  # not a new phase: no clock read
    timer.on_line("[validate] stock (6.12.57): first-touch benchmarks")  # 161
    assert timer.seconds(end=190.0) == {"boot": 12.0, "suite": 48.0, "selftests": 1.0, "benchmarks": 29.0}


def test_without_step_lines_the_guest_clock_is_the_fallback(tmp_path):
    from harness.validate.phases import guest_seconds

    o = KernelOutcome("host", "host", tmp_path)
    o.steps = {"pytest": {"seconds": 12.0}, "bench": {"seconds": 3.0}}
    assert guest_seconds(o) == {"suite": 12.0, "selftests": 0.0, "benchmarks": 3.0}
    o.host_phases = {"boot": 1.0, "suite": 50.0}
    assert guest_seconds(o) == {"boot": 1.0, "suite": 50.0}


# -- --quick: the selftests beside the suite ---------------------------------------------------


def _fake_steps(monkeypatch, spans: dict):
    """Stand-ins for the suite and the selftests that note when each ran (monotonic start, end)."""
    import time

    def suite(out, quick, env, log, beside=False):
        t0 = time.monotonic()
        time.sleep(0.3)
        spans["pytest"] = (t0, time.monotonic())
        return {"returncode": 0, "seconds": 0.3}

    def selftests(out, selftests_dir, log, beside=False):
        t0 = time.monotonic()
        time.sleep(0.3)
        spans["selftests"] = (t0, time.monotonic())
        return {}

    monkeypatch.setattr(guest, "_run_suite", suite)
    monkeypatch.setattr(guest, "_run_selftests", selftests)


def test_quick_runs_the_selftests_beside_the_suite_with_two_cpus(tmp_path, monkeypatch):
    spans: dict = {}
    _fake_steps(monkeypatch, spans)
    monkeypatch.setattr(guest.os, "cpu_count", lambda: 2)
    lines: list[str] = []
    steps = guest.run_steps(tmp_path, None, quick=True, log=lines.append, steps_wanted=("pytest", "selftests"))
    (s0, s1), (t0, t1) = spans["pytest"], spans["selftests"]
    assert t0 < s1 and s0 < t1, f"the two did not overlap: suite {spans['pytest']}, selftests {spans['selftests']}"
    assert steps["beside"] is True
    assert any(guest.STEP_LINES["beside"] in line for line in lines), lines


@pytest.mark.parametrize("quick, cpus", [(False, 2), (True, 1)])
def test_otherwise_the_selftests_run_after_the_suite(tmp_path, monkeypatch, quick, cpus):
    spans: dict = {}
    _fake_steps(monkeypatch, spans)
    monkeypatch.setattr(guest.os, "cpu_count", lambda: cpus)
    steps = guest.run_steps(tmp_path, None, quick=quick, log=lambda line: None, steps_wanted=("pytest", "selftests"))
    assert spans["selftests"][0] >= spans["pytest"][1]
    assert "beside" not in steps


def test_the_host_times_suite_and_selftests_side_by_side_as_one_phase():
    timer = GuestTimer()
    timer.on_line(f"[validate] patched (6.12.57): {guest.STEP_LINES['beside']}")
    timer.on_line(f"[validate] patched (6.12.57): beside the suite, {guest.STEP_LINES['selftests']}uffd-unit-tests")
    timer.on_line(f"[validate] patched (6.12.57): {guest.STEP_LINES['bench']}")
    assert set(timer.seconds()) == {"boot", "suite_selftests", "benchmarks"}


@pytest.mark.parametrize("quick", [True, False])
def test_quick_leaves_out_slow_tests_and_the_tests_of_the_checks(tmp_path, monkeypatch, quick):
    seen = {}
    monkeypatch.setattr(guest, "_run_logged", lambda cmd, *a, **k: seen.setdefault("cmd", cmd) and {})
    guest._run_suite(tmp_path, quick, {}, lambda line: None)
    cmd = seen["cmd"]
    markers = cmd[len(cmd) - cmd[::-1].index("-m")]  # the last -m: the first is python's -m pytest
    assert ("not slow" in markers and "not checks_the_checks" in markers) == quick, markers
    assert "not host_only" in markers


def test_beside_the_suite_a_file_says_the_selftests_run_until_they_end(tmp_path, monkeypatch):
    """The suite is told (paths.ENV_SELFTESTS_RUNNING) of a file that exists while the selftests run."""
    seen: dict = {}

    def suite(out, quick, env, log, beside=False):
        flag = env.get(paths.ENV_SELFTESTS_RUNNING)
        seen["flag"], seen["there at the start"] = flag, bool(flag) and Path(flag).exists()
        return {"returncode": 0, "seconds": 0.0}

    def selftests(out, selftests_dir, log, beside=False):
        import time

        time.sleep(0.3)
        seen["there while the selftests run"] = Path(seen["flag"]).exists()
        return {}

    monkeypatch.setattr(guest, "_run_suite", suite)
    monkeypatch.setattr(guest, "_run_selftests", selftests)
    monkeypatch.setattr(guest.os, "cpu_count", lambda: 2)
    guest.run_steps(tmp_path, None, quick=True, log=lambda line: None, steps_wanted=("pytest", "selftests"))
    assert seen["there at the start"] and seen["there while the selftests run"], seen
    assert not Path(seen["flag"]).exists(), "the file outlived the selftests"


@pytest.mark.host_only
def test_beside_the_selftests_the_tests_that_change_mm_settings_run_last():
    """With the file named, pytest orders the mm_settings cases (large folios, THP) after all others."""
    import os
    import subprocess
    import sys

    def collected(env_extra: dict) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
            + ["tests/contract/test_contract.py"],
            cwd=paths.REPO_ROOT,
            env={**os.environ, **env_extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [line for line in proc.stdout.splitlines() if "::" in line]

    def settings_case(nodeid: str) -> bool:
        return any(nodeid.endswith(f"-{shape}]") for shape in ("thp", "thp-part", "large-folio"))

    alone = collected({})
    beside = collected({paths.ENV_SELFTESTS_RUNNING: "/nonexistent/selftests-running"})
    assert sorted(alone) == sorted(beside)
    first = next(i for i, nodeid in enumerate(beside) if settings_case(nodeid))
    assert all(settings_case(nodeid) for nodeid in beside[first:]), beside[first:]
    assert not all(settings_case(nodeid) for nodeid in alone[alone.index(beside[first]) :]), "already last"


def test_a_test_that_changes_mm_settings_waits_for_the_selftests(tmp_path, monkeypatch):
    import threading
    import time

    from harness import pytest_plugin

    flag = tmp_path / "running"
    flag.touch()
    monkeypatch.setenv(paths.ENV_SELFTESTS_RUNNING, str(flag))
    threading.Timer(0.5, flag.unlink).start()
    t0 = time.monotonic()
    pytest_plugin.wait_for_the_selftests()
    assert time.monotonic() - t0 >= 0.4 and not flag.exists()

    flag.touch()
    monkeypatch.setattr(pytest_plugin, "SELFTESTS_WAIT_SECONDS", 0.3)
    with pytest.raises(pytest.fail.Exception, match="still run after"):
        pytest_plugin.wait_for_the_selftests()


@pytest.mark.parametrize("second_passes", [True, False])
def test_a_selftest_that_fails_is_run_again_and_a_passing_rerun_is_recorded_as_flaky(
    tmp_path, monkeypatch, second_passes
):
    from harness.selftests import CaseResult, SelftestRun

    built = tmp_path / "selftests"
    built.mkdir()
    (built / "uffd-unit-tests").touch()
    results = [
        SelftestRun(
            "uffd-unit-tests",
            1,
            1.0,
            [CaseResult("zeropage on anon", "pass"), CaseResult("events on anon", "fail")],
            log="first",
        ),
        SelftestRun(
            "uffd-unit-tests",
            0 if second_passes else 1,
            1.0,
            [CaseResult("zeropage on anon", "pass"), CaseResult("events on anon", "pass" if second_passes else "fail")],
            log="second",
        ),
    ]
    runs: list = []

    def fake(binary):
        runs.append(binary.name)
        return results[len(runs) - 1]

    lines: list[str] = []
    monkeypatch.setattr(guest, "_run_selftest_binary", fake)
    steps = guest._run_selftests(tmp_path, built, lines.append)  # the one binary in ``built``
    run = steps["uffd-unit-tests"]
    assert runs == ["uffd-unit-tests", "uffd-unit-tests"]
    assert (tmp_path / "selftest-uffd-unit-tests.first.log").read_text() == "first"
    assert (tmp_path / "selftest-uffd-unit-tests.log").read_text() == "second"
    if second_passes:
        assert run["result"] == "pass" and run["flaky"] == ["events on anon"]
        assert any("recorded as flaky" in line for line in lines), lines
    else:
        assert run["result"] == "fail" and run["flaky"] == []
