"""Bad input at the command line: one line on stderr naming the file or argument, exit status 2, no traceback.

Also: answers that used to be wrong (a NaN sample read as "no difference",
a named calibration file silently replaced by the defaults, a negative cost)
and checks that came too late (an unwritable --json found after the run).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

from harness.cli import main
from harness.sim.cost import CostModel
from harness.timing.documents import BENCH_SCHEMA, CALIBRATION_SCHEMA

#: the same on any kernel; second interpreters (guest suites deselect host_only)
pytestmark = pytest.mark.host_only

SCENARIO = "first_touch.old_clean.write"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``uffd-harness ARGV`` run in this process (argparse exits included)."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2, f"exit status {status}, not 2; stderr: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, f"expected one line of error, got {lines}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def bench_doc(samples: dict[str, list], tsc_hz=3e9) -> dict:
    """A bench JSON as ``uffd-harness bench`` writes it, with the given samples (one batch each)."""

    def scenario(values):
        return {
            "group": "first_touch",
            "describe": "",
            "unit": "cycles",
            "status": "ok",
            "fault_free": True,
            "summary": None,
            "round_medians": [],
            "batch_sizes": [len(values)],
            "faults": 0,
            "state_errors": [],
            "samples": values,
        }

    return {
        "schema": BENCH_SCHEMA,
        "created": "2026-12-03T00:00:00Z",
        "config": {},
        "host": {},
        "calibration": {"tsc_hz": tsc_hz, "cpu_model": "x", "kernel": "k", "hypervisor_vendor": None, "tcg": False},
        "scenarios": {name: scenario(values) for name, values in samples.items()},
        "derived": {},
    }


def write(tmp_path, name: str, doc) -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


# -- compare ----------------------------------------------------------------------------------

GOOD = [100.0 + i % 7 for i in range(64)]
BAD_BENCH = {
    "a-list": [1, 2],
    "null": None,
    "no-tsc": {**bench_doc({SCENARIO: GOOD}), "calibration": {}},
    "tsc-string": bench_doc({SCENARIO: GOOD}, tsc_hz="fast"),
    "tsc-zero": bench_doc({SCENARIO: GOOD}, tsc_hz=0),
    "samples-strings": bench_doc({SCENARIO: ["a", "b"]}),
    "samples-nan": bench_doc({SCENARIO: [float("nan")] * 64}),
    "scenarios-list": {**bench_doc({}), "scenarios": []},
    "calibration-doc": {"schema": CALIBRATION_SCHEMA, "medians": {}},
}


@pytest.mark.parametrize("case", sorted(BAD_BENCH))
def test_compare_rejects_a_bad_bench_file_naming_it(tmp_path, capsys, case):
    good = write(tmp_path, "good.json", bench_doc({SCENARIO: GOOD}))
    bad = write(tmp_path, "bad.json", BAD_BENCH[case])
    status, out, err = run_cli(["compare", good, bad], capsys)
    assert_one_line_error(status, err, "bad.json")
    assert "no difference" not in out


def test_compare_of_a_nan_sample_is_not_no_difference(tmp_path, capsys):
    a = write(tmp_path, "a.json", bench_doc({SCENARIO: GOOD}))
    b = write(
        tmp_path,
        "b.json",
        bench_doc({SCENARIO: GOOD[:-1] + [math.nan]})
        .__repr__()
        .replace("nan", "NaN")
        .replace("'", '"')
        .replace("None", "null")
        .replace("True", "true")
        .replace("False", "false"),
    )
    status, out, err = run_cli(["compare", a, b], capsys)
    assert_one_line_error(status, err, "b.json", "samples[63]", "finite number")


def test_compare_with_no_scenario_in_common_is_an_error(tmp_path, capsys):
    a = write(tmp_path, "a.json", bench_doc({SCENARIO: GOOD}))
    b = write(tmp_path, "b.json", bench_doc({"first_touch.young_dirty.read": GOOD}))
    status, out, err = run_cli(["compare", a, b], capsys)
    assert_one_line_error(status, err, "no scenario in common")


@pytest.mark.parametrize("content", ["", "{", "\x00\xff\xfe", "[]"], ids=["empty", "truncated", "binary", "list"])
def test_compare_of_garbage_names_the_file(tmp_path, capsys, content):
    good = write(tmp_path, "good.json", bench_doc({SCENARIO: GOOD}))
    bad = tmp_path / "garbage.json"
    bad.write_bytes(content.encode("latin-1"))
    status, _, err = run_cli(["compare", str(bad), good], capsys)
    assert_one_line_error(status, err, "garbage.json")


def test_compare_of_a_directory_or_missing_file(tmp_path, capsys):
    status, _, err = run_cli(["compare", str(tmp_path), str(tmp_path / "nope.json")], capsys)
    assert_one_line_error(status, err, str(tmp_path), "directory")
    status, _, err = run_cli(
        ["compare", write(tmp_path, "g.json", bench_doc({SCENARIO: GOOD})), str(tmp_path / "nope.json")], capsys
    )
    assert_one_line_error(status, err, "nope.json", "ENOENT")


# -- the simulator ----------------------------------------------------------------------------


@pytest.mark.timeout(30)  # the bug was a run that never ends: fail in seconds, not at the suite's 300 s
@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "0", "1e9", "banana"])
def test_sim_bench_refuses_endless_or_meaningless_durations(capsys, seconds):
    t0 = time.monotonic()
    status, _, err = run_cli(["sim", "bench", "--seconds", seconds], capsys)
    assert time.monotonic() - t0 < 5
    assert_one_line_error(status, err, "--seconds")


def test_sim_bench_unknown_profile(capsys):
    status, _, err = run_cli(["sim", "bench", "--seconds", "0.01", "--profile", "nosuch"], capsys)
    assert_one_line_error(status, err, "nosuch", "known: access-hints")


def test_sim_profiles_env_naming_no_module(capsys, monkeypatch):
    from harness.sim import profiles

    monkeypatch.setattr(profiles, "_user_loaded", False)
    monkeypatch.setenv(profiles.USER_PROFILES_ENV, "x,/nonexistent/profile.py")
    status, _, err = run_cli(["sim", "profiles"], capsys)
    assert_one_line_error(status, err, "UFFD_HARNESS_SIM_PROFILES", "'x'")


CALIBRATIONS = {
    "missing": None,
    "empty-object": "{}",
    "a-bench-json": json.dumps(bench_doc({SCENARIO: GOOD})),
    "garbage": "not json at all",
    "a-list": "[1, 2]",
    "null": "null",
    "negative-cost": json.dumps({"schema": CALIBRATION_SCHEMA, "cost_model": {"dirty_assist": -4904}}),
    "string-median": json.dumps({"schema": CALIBRATION_SCHEMA, "net_medians": {SCENARIO: "fast"}}),
}


@pytest.mark.parametrize("case", sorted(CALIBRATIONS))
def test_sim_run_rejects_a_bad_calibration_instead_of_using_defaults(tmp_path, capsys, case):
    path = tmp_path / "cal.json"
    if CALIBRATIONS[case] is not None:
        path.write_text(CALIBRATIONS[case])
    status, out, err = run_cli(["sim", "run", "free-unprotect-write", "--calibration", str(path)], capsys)
    assert_one_line_error(status, err, "cal.json")
    assert "cost model" not in out, "a cost model was printed for a file that is not one"


def test_sim_run_calibration_directory_and_binary(tmp_path, capsys):
    binary = tmp_path / "cal.bin"
    binary.write_bytes(bytes(range(256)))
    for path in (tmp_path, binary):
        status, _, err = run_cli(["sim", "run", "free-unprotect-write", "--calibration", str(path)], capsys)
        assert_one_line_error(status, err, str(path))


def test_negative_net_medians_do_not_make_negative_costs():
    """A net median below zero (an access cheaper than the timer's noise) is a cost of 0, never negative."""
    model = CostModel.from_calibration(
        {
            "schema": CALIBRATION_SCHEMA,
            "net_medians": {
                "first_touch.young_dirty.read.warm_tlb": -30.0,
                "first_touch.young_dirty.read": -4904.0,
                "uffd.missing_roundtrip.py_handler": -1.0,
            },
        }
    )
    assert min(model.base_access, model.tlb_walk, model.uffd_round_trip) >= 0
    assert "-" not in model.hardware_access(young=True, dirty=True, write=False).__repr__()


# -- bench -------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--json", "--json-out", "--plot", "--calibration"])
def test_bench_checks_its_output_paths_before_the_run(capsys, option):
    """``--json PATH`` (the issue's spelling, now deprecated) included: the error names the option as typed."""
    t0 = time.monotonic()
    status, out, err = run_cli(["bench", "--rounds", "50", option, "/proc/nope/b.json", "--no-pin"], capsys)
    assert_one_line_error(status, err, option, "/proc/nope/b.json")
    assert "TSC" not in out, "the bench calibrated (started its run) before checking where to write"
    assert time.monotonic() - t0 < 5


def test_bench_only_matching_nothing_is_refused_before_the_run(capsys):
    status, out, err = run_cli(["bench", "--only", "nosuch", "--no-pin"], capsys)
    assert_one_line_error(status, err, "nosuch", "bench --list")
    assert "TSC" not in out, "the bench calibrated (started its run) before checking --only"


def test_bench_output_path_that_is_a_directory(tmp_path, capsys):
    status, _, err = run_cli(["bench", "--json-out", str(tmp_path), "--no-pin"], capsys)
    assert_one_line_error(status, err, "--json-out", "a directory")


# -- broken pipes ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["info", "--json"], ["sim", "profiles"], ["bench", "--list"], ["sim", "scenarios"]])
def test_a_closed_pipe_ends_the_command_quietly(argv):
    """``uffd-harness ... | head -1``: the reader is gone before the first write (the worst case of the race)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "harness", *argv], stdout=w, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(w)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141, f"exit status {proc.returncode}, not 141 (128 + SIGPIPE): {proc.stderr}"
