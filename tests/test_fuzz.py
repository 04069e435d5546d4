"""Generated garbage at every file reader, the command-line verbs that read files, and the Python API.

The contract under test (issue 13): no traceback, no hang, exit status 2 (or
a VmError's own status) or a typed exception, and no fd or mapping leaked.
Examples are bounded and derandomized, so the run is the same every time and
all of this stays well under a minute on the host.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence
from unittest import mock

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import reports
from harness.abi import Feature, RegisterMode
from harness.cli import main
from harness.errors import DocumentError, HarnessError, RegionClosedError
from harness.memory import PAGE_SIZE, MemoryKind, Region
from harness.process import run_in_child
from harness.sim.cost import CostModel
from harness.timing import bench, documents
from harness.uffd import Userfaultfd
from harness.vm import build as vmbuild
from harness.vm.documents import load_build_info

#: the same on any kernel (files, command lines): guest suites deselect host_only
host_only = pytest.mark.host_only

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- documents ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=24,
)

GOOD_SCENARIO = {
    "group": "first_touch",
    "describe": "",
    "unit": "cycles",
    "status": "ok",
    "fault_free": True,
    "summary": None,
    "round_medians": [100.0],
    "batch_sizes": [4],
    "faults": 0,
    "state_errors": [],
    "samples": [100.0, 101.0, 99.0, 100.0],
}
VALID = {
    "bench": {
        "schema": documents.BENCH_SCHEMA,
        "created": "2026-12-03T00:00:00Z",
        "config": {},
        "calibration": {"tsc_hz": 3e9, "cpu_model": "x", "kernel": "k", "tcg": False},
        "scenarios": {"first_touch.old_clean.write": GOOD_SCENARIO},
        "derived": {},
    },
    "calibration": {
        "schema": documents.CALIBRATION_SCHEMA,
        "tsc_hz": 3e9,
        "empty_cycles": 40.0,
        "net_medians": {"first_touch.young_dirty.read.warm_tlb": 10.0, "first_touch.young_dirty.read": 50.0},
        "net_intervals": {
            "first_touch.young_dirty.read.warm_tlb": [8.0, 12.0],
            "first_touch.young_dirty.read": [45, 55],
        },
        "cost_model": {"minor_fault": 900},
    },
    "build": {"key": "0" * 64, "patched": True, "config_missing": []},
    "summary": {
        "kernel_release": "6.12",
        "patched": False,
        "tests": {"passed": 1},
        "timeline": {"summary": 3.0},
        "clauses": {"1": {"result": "pass", "backends": {"kernel": 1}}},
    },
    "report": {"verdict": {"kind": "holds", "line": "x"}, "ok": True, "problems": [], "kernels": {}, "clauses": {}},
}


@st.composite
def mutated(draw, doc):
    """``doc`` with one value somewhere in it replaced by garbage, or one key removed."""
    doc = json.loads(json.dumps(doc))
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append(path + [key])
                walk(value, path + [key])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                paths.append(path + [i])
                walk(value, path + [i])

    walk(doc, [])
    path = draw(st.sampled_from(paths))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return doc


def file_contents(family: str):
    return st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        mutated(VALID[family]).map(lambda v: json.dumps(v).encode()),
        st.just(json.dumps(VALID[family]).encode()),
    )


def _write(content: bytes) -> Path:
    fd, name = tempfile.mkstemp(prefix="uffd-harness-fuzz-", suffix=".json")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return Path(name)


def _use(family: str, doc) -> None:
    """What the harness does with a document that passed its reader: must not fail for the document's sake."""
    if family == "bench":
        for result in bench.results_of(doc).values():
            if result.ok:
                result.batches, bench.stats.median(result.samples)
    elif family == "calibration":
        for bound in ("median", "low", "high"):  # the projection's bounds unpack net_intervals
            try:
                model = CostModel.from_calibration(doc, bound=bound)
            except KeyError:  # documented: a median without its interval (a calibration older than them)
                continue
            costs = model.hardware_access(young=False, dirty=False, write=True)
            assert all(v >= 0 for v in costs.values()), costs


READERS = {
    "bench": documents.load_bench,
    "calibration": documents.load_calibration,
    "build": load_build_info,
    "summary": reports.load_summary,
    "report": reports.load_report,
}


@host_only
@pytest.mark.parametrize("family", sorted(READERS))
def test_every_reader_answers_a_document_or_a_document_error(family):
    @FUZZ
    @given(content=file_contents(family))
    def check(content):
        path = _write(content)
        try:
            try:
                doc = READERS[family](path)
            except DocumentError as exc:
                assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
                return
            _use(family, doc)
        finally:
            path.unlink()

    check()


# -- command-line verbs that read files ----------------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    out = io.StringIO()
    # a verb may set the environment for its children (validate: the KCIDB origin): not for the next example
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), mock.patch.dict(os.environ):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse
            status = exc.code if isinstance(exc.code, int) else 1
    return status, err.getvalue()


def _assert_clean(status: int, err: str, allowed=(0, 2), argv: Sequence[str] = ()) -> None:
    """No traceback, an allowed status, and for bad input one line (after argparse's usage), counted in "\n":
    a "\r" is not a line break on a terminal, and the newlines of an argument echoed back are the user's own."""
    assert "Traceback" not in err, err
    assert status in allowed, f"exit status {status}: {err}"
    if status == 2:
        lines = [line for line in err.split("\n") if line and not line.startswith(("usage:", " "))]
        assert len(lines) <= 1 + sum(word.count("\n") for word in argv), err
        assert lines, "exit status 2 without a word on stderr"


@host_only
@FUZZ
@given(a=file_contents("bench"), b=file_contents("bench"))
def test_compare_of_generated_files(a, b):
    pa, pb = _write(a), _write(b)
    try:
        t0 = time.monotonic()
        status, err = _run(["compare", str(pa), str(pb)])
        assert time.monotonic() - t0 < 30, "compare hung (or the machine is badly overloaded)"
        _assert_clean(status, err)
    finally:
        pa.unlink()
        pb.unlink()


@host_only
@FUZZ
@given(content=file_contents("calibration"), hints=st.sampled_from(["", "A", "W", "AW"]))
def test_sim_run_of_generated_calibrations(content, hints):
    path = _write(content)
    try:
        status, err = _run(["sim", "run", "free-unprotect-write", "--calibration", str(path), "--hints", hints])
        _assert_clean(status, err)
    finally:
        path.unlink()


@host_only
def test_vm_info_and_run_of_generated_build_json(monkeypatch, tmp_path):
    monkeypatch.setattr(vmbuild, "BUILD_DIR", tmp_path)
    kdir = tmp_path / "kernels" / "k"
    kdir.mkdir(parents=True)
    (kdir / "bzImage").write_bytes(b"")

    @FUZZ
    @given(content=file_contents("build"))
    def check(content):
        (kdir / "build.json").write_bytes(content)
        for argv in (
            ["vm", "info", "--kernel", "k"],
            ["vm", "run", "--kernel", "k", "--dry-run", "--accel", "tcg", "--", "true"],
        ):
            status, err = _run(argv)
            # 6: KernelNotBuilt (rebuild); 3: vng missing on this host for a good build.json's --dry-run
            _assert_clean(status, err, allowed=(0, 2, 3, 6))

    check()


GARBAGE = st.one_of(
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "-1",
            "0",
            "1e999",
            "",
            "-",
            "--",
            "banana",
            "\x00",
            "/proc/nope/x.json",
            "/",
            "access-hints",
            "nosuch",
            "A",
            "stock",
        ]
    ),
    st.text(max_size=8),
)
#: verb -> the options it takes (drawn with garbage values, so most draws reach the verb's own checks)
#: and the words that end its argv, so that a verb that builds or boots is refused before it does
VERBS = {
    ("sim", "run"): ["--profile", "--calibration", "--hints", "free-unprotect-write"],
    ("sim", "bench"): ["--profile"],
    ("sim", "profiles"): ["--json"],
    ("sim", "scenarios"): [],
    ("compare",): ["--seed"],
    ("vm", "info"): ["--kernel"],
    ("vm", "run", "--dry-run"): ["--kernel", "--cpus", "--memory", "--hugepages", "--timeout", "--env", "--accel"],
    ("vm", "build"): ["--jobs", "--config"],
    ("bench", "--list"): ["--json", "--rounds", "--pages"],
    ("info",): ["--json"],
    ("validate",): ["--source", "--base", "--head", "--kcidb-origin", "--patches"],
    ("suite",): ["--kernel", "--patches"],
    ("lava-job",): ["--out", "--ramdisk-url", "--kernel-url", "--bundle-url"],
    ("vm", "mutant"): ["--parallel", "--timeout"],
}
#: the last word wins: each of these refuses the run (or lists) before anything is built, booted or written
TAILS = {
    ("sim", "bench"): ["--seconds", "0.01"],  # never a long run
    ("vm", "build"): ["--kernel", "stock", "--patches", "/nonexistent"],
    ("validate",): ["--tree", "/nonexistent/fuzz-tree"],
    ("suite",): ["--source", "/nonexistent/fuzz-source"],
    ("lava-job",): ["--kernel", "no-such-kernel-fuzz"],
    ("vm", "mutant"): ["--list"],
}
#: exit statuses a verb may end with: done, bad input, and the vm errors' own (3 a missing tool, 6 a kernel to
#: (re)build: vm info/run of a kernel named by garbage)
STATUSES = (0, 2, 3, 6)


@host_only
@settings(FUZZ, max_examples=300)
@given(verb=st.sampled_from(sorted(VERBS)), data=st.data())
def test_generated_argv_at_every_verb(verb, data):
    """No traceback, bounded time, a known exit status and one line for bad input, whatever follows a verb
    (verbs that build or boot end with words that refuse the run: TAILS)."""
    options = VERBS[verb]
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(options), GARBAGE), max_size=3)) if options else []
    loose = data.draw(st.lists(GARBAGE, max_size=2))
    argv = list(verb) + [word for pair in pairs for word in pair] + loose + TAILS.get(verb, [])
    t0 = time.monotonic()
    status, err = _run(argv)
    assert time.monotonic() - t0 < 20, f"{argv} took {time.monotonic() - t0:.0f} s"
    assert "Traceback" not in err, f"{argv}: {err}"
    _assert_clean(status, err, allowed=STATUSES, argv=argv)


# -- the Python API ----------------------------------------------------------------------------

OFFSETS = st.one_of(
    st.integers(-2, 6).map(lambda n: ("page", n)),
    st.integers(-10, 10).map(lambda n: ("byte", n)),
    st.sampled_from(
        [
            ("abs", 0),
            ("abs", -1),
            ("abs", 2**64),
            ("abs", 2**64 - PAGE_SIZE),
            ("abs", 2**80),
            ("abs", 1 << 47),
            ("abs", 1.5),
            ("abs", None),
        ]
    ),
)
LENGTHS = st.one_of(
    st.integers(-1, 5).map(lambda n: n * PAGE_SIZE),
    st.integers(-3, 3),
    st.sampled_from([2**64, 2**64 - PAGE_SIZE, 2**63, 1.0, "4096"]),
)
MODES = st.one_of(st.integers(0, 16), st.integers(-1, 2**65), st.sampled_from([1 << 2, 1 << 3, 1 << 63]))
FEATURES = st.lists(
    st.one_of(st.sampled_from(list(Feature)), st.sampled_from(["EVENT_FORK", "nosuch", "", 3])), max_size=3
)
OPS = st.sampled_from(
    ["register", "unregister", "wake", "writeprotect", "zeropage", "copy", "continue_", "poison", "move", "api"]
)


def _api_fuzz():
    """Runs in a forked child: a crash is a test failure naming the signal, not the end of the test run."""
    from hypothesis import given as given_
    from hypothesis import settings as settings_

    @settings_(max_examples=100, deadline=None, derandomize=True, database=None)
    @given_(features=FEATURES, calls=st.lists(st.tuples(OPS, OFFSETS, LENGTHS, MODES, st.booleans()), max_size=6))
    def check(features, calls):
        with Region.create(MemoryKind.ANON, 4) as region:
            region.write()
            try:
                uffd = Userfaultfd.open(features)
            except (HarnessError, OSError):
                return
            with uffd:
                for op, (how, offset), length, mode, flag in calls:
                    start = {
                        "page": lambda: region.addr + offset * PAGE_SIZE,
                        "byte": lambda: region.addr + offset,
                        "abs": lambda: offset,
                    }[how]()
                    call = {
                        "register": lambda: uffd.register(start, length, RegisterMode(mode & 7) if mode >= 0 else mode),
                        "unregister": lambda: uffd.unregister(start, length),
                        "wake": lambda: uffd.wake(start, length),
                        "writeprotect": lambda: (
                            uffd.writeprotect(start, length) if flag else uffd.writeprotect_mode(start, length, mode)
                        ),
                        "zeropage": lambda: uffd.zeropage(start, length),
                        "copy": lambda: uffd.copy(start, region.addr, length),
                        "continue_": lambda: uffd.continue_(start, length),
                        "poison": lambda: uffd.poison(start, length),
                        "move": lambda: uffd.move(start, region.addr, length),
                        "api": lambda: uffd.api(features),
                    }[op]
                    try:
                        call()
                    except (HarnessError, OSError):
                        pass  # typed: UffdError, InvalidArgument, FeatureUnavailable
                # whatever was registered: the region must still be readable without a handler hanging
                with contextlib.suppress(HarnessError, OSError):
                    uffd.unregister(region.addr, region.length)

    check()


@host_only  # the argument checks it fuzzes are the binding's, before the kernel; under TCG 60 s is too few
def test_generated_ranges_modes_and_features_at_the_uffd_api():
    proc = psutil.Process()
    before = proc.num_fds(), len(proc.memory_maps(grouped=False))
    run_in_child(_api_fuzz, timeout=60)
    after = proc.num_fds(), len(proc.memory_maps(grouped=False))
    assert after[0] == before[0] and abs(after[1] - before[1]) <= 4, f"fds/mappings {before} -> {after}"


REGION_CALLS = st.sampled_from(
    ["read", "write", "checksum", "data", "fill", "probe", "free", "dontneed", "mprotect", "close", "page_addr", "span"]
)
INDICES = st.one_of(st.integers(-3, 6), st.none(), st.sampled_from([2**64, 1.5, "1", True]))


def _named_region_mappings() -> list[str]:
    """The lines of /proc/self/maps that are a shmem or tmpfs-file region's (memfd and file names say so)."""
    with open("/proc/self/maps") as f:
        return [line.strip() for line in f if "uffd-harness-" in line]


def _region_fuzz() -> None:
    """Runs in a forked child: a region that hands C a freed address or a length past the end is a test failure
    naming SIGSEGV, not the end of the test run (or of a guest's whole suite)."""
    from hypothesis import given as given_

    @FUZZ
    @given_(
        kind=st.sampled_from([MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.FILE]),
        npages=st.one_of(st.integers(-1, 4), st.sampled_from([2**62, 2**40, 1.5])),
        calls=st.lists(st.tuples(REGION_CALLS, INDICES, INDICES), max_size=8),
    )
    def check(kind, npages, calls):
        proc = psutil.Process()
        fds = proc.num_fds()
        try:
            region = Region.create(kind, npages)
        except (HarnessError, OSError, ValueError):
            assert proc.num_fds() == fds, "a failed Region.create leaked an fd"
            assert not _named_region_mappings(), "a failed Region.create left a mapping"
            return
        try:
            for name, a, b in calls:
                call = {
                    "read": lambda: region.read(a or 0, b),
                    "write": lambda: region.write(a or 0, b),
                    "checksum": lambda: region.checksum(a or 0, b),
                    "data": lambda: region.data(a or 0, b if isinstance(b, int) and b >= 0 else None),
                    "fill": lambda: region.fill(a or 0, b"x" * (b if isinstance(b, int) and 0 <= b < 9000 else 1)),
                    "probe": lambda: region.probe(a or 0),
                    "free": lambda: region.free(a or 0, b),
                    "dontneed": lambda: region.dontneed(a or 0, b),
                    "mprotect": lambda: region.mprotect(3, a or 0, b),
                    "close": region.close,
                    "page_addr": lambda: region.page_addr(a),
                    "span": lambda: region.span(a or 0, b),
                }[name]
                closed = region.closed and name != "close"  # closing twice is harmless; anything else refuses
                try:
                    call()
                except RegionClosedError:
                    assert closed, f"{name} on an open region raised RegionClosedError"
                except (HarnessError, OSError, IndexError, ValueError) as exc:
                    assert not closed, f"{name} on a closed region raised {exc!r}, not RegionClosedError"
                else:
                    assert not closed, f"{name} on a closed region did not raise RegionClosedError"
        finally:
            region.close()
        assert proc.num_fds() == fds, "a closed region kept its fd"
        assert not _named_region_mappings(), f"a closed region kept its mapping: {_named_region_mappings()}"

    check()


def test_generated_region_calls_are_typed_errors_and_leak_nothing():
    # generous for a loaded TCG guest (the host takes about a second); pytest's own timeout is 300 s
    run_in_child(_region_fuzz, timeout=240)
