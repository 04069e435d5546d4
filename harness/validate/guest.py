"""The in-guest half of ``uffd-harness validate``: run the suite, the selftests and the benchmarks.

The host boots each kernel once and runs ``python -m harness.validate.guest
OUT [--quick]`` in it (or calls :func:`run_steps` directly on the host when
QEMU cannot run).  Each step is bounded in time and writes its results under
``OUT``: ``junit.xml`` and ``summary.json`` from pytest, ``selftest-*.log``,
``bench.json``, and ``steps.json`` with each step's exit status and seconds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from harness import paths
from harness.selftests import KNOWN_SELFTESTS, SELFTESTS, SelftestRun, run_selftest, run_userfaultfd

#: the kernel-facing tests a validation runs in each guest (``make vm-test`` runs the whole suite)
VALIDATION_TESTS = (
    "tests/contract",
    "tests/test_pte_semantics.py",
    "tests/test_pte_channel.py",
    "tests/test_bad_input.py",
    "tests/test_uffd_unit.py",
    "tests/test_differential.py",
)

#: per-step time limits inside the guest (seconds); TCG is slow, a hang is not
PYTEST_TIMEOUT = 1500
SELFTEST_TIMEOUT = 300
BENCH_TIMEOUT = 600
#: what a guest suite leaves out: host_only tests (pyproject.toml: no kernel check of their own, slow under TCG)
GUEST_MARKERS = "not host_only"
#: differential sequences per guest run (the host runs 500)
GUEST_DIFF_EXAMPLES = 100

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def guest_environment(out: Path, in_guest: bool = True) -> dict[str, str]:
    """Environment for test runs whose source tree is read-only (a guest): caches go to ``out``.

    The differential check runs fewer sequences in a guest (TCG is ~10x
    slower than the host) unless UFFD_DIFF_EXAMPLES says otherwise.
    """
    env = {
        "PYTHONDONTWRITEBYTECODE": "1",
        "HYPOTHESIS_STORAGE_DIRECTORY": str(out / ".hypothesis"),
        "MPLCONFIGDIR": str(out / ".matplotlib"),
    }
    if in_guest:
        env[paths.ENV_DIFF_EXAMPLES] = os.environ.get(paths.ENV_DIFF_EXAMPLES, str(GUEST_DIFF_EXAMPLES))
    return env


def _contract_targets_6_1_lacks() -> dict[str, str]:
    """The contract's targets that Linux 6.1 cannot have, from its table: spans (one ioctl over two VMAs,
    which 6.1 refuses) and large folios (no anonymous mTHP before Linux 6.8, no shmem THP given)."""
    from harness.backends.contract import CONTRACT, Shape
    from harness.memory import MemoryKind

    span = (
        "span: 6.1's UFFDIO_WRITEPROTECT takes one VMA only (ENOENT across two: mwriteprotect_range() "
        "uses find_dst_vma())"
    )
    mthp = "anon large folio: 6.1 has no anonymous mTHP (hugepages-<size>kB came in Linux 6.8)"
    shmem_thp = (
        "shmem large folio: 6.1 gave the MADV_HUGEPAGE memfd 4 KiB pages with shmem_enabled=advise (measured in "
        "patched-6.1, 7 Dec 2026; why not investigated)"
    )
    out = {}
    for n, c in CONTRACT.items():
        for t in c.targets():
            nodeid = f"tests/contract/test_contract.py::test_contract_clause[clause{n}-{t.label}]"
            if t.shape is Shape.SPAN:
                out[nodeid] = span
            elif t.shape is Shape.LARGE_FOLIO:
                out[nodeid] = mthp if t.kind is MemoryKind.ANON else shmem_thp
    return out


#: what a guest suite (make vm-test, and validate's own tests) on Linux 6.1 leaves out, and why.
#: Measured on stock-6.1 (`make vm-test KERNEL=stock SOURCE=6.1`, 3 Dec 2026): each entry failed or
#: skipped there, for a feature 6.1 lacks or a 6.12 rule the
#: test hard-wires.  Under CI=true a skip is a failure, so these are deselected and printed, never skipped.
#: (pytest's --deselect takes node-id prefixes.)
DESELECT_6_1: dict[str, str] = {
    **_contract_targets_6_1_lacks(),
    "tests/contract/test_spans.py": "6.1's UFFDIO_WRITEPROTECT takes one VMA only (ENOENT across two: "
    "mwriteprotect_range() uses find_dst_vma())",
    "tests/contract/test_thp.py": "needs WP_UNPOPULATED (clause 7) and 6.12's write-upgrade of a PMD on un-protect",
    "tests/contract/test_large_folio.py": "its regions need anonymous mTHP (Linux 6.8) and a shmem THP, which 6.1 "
    "did not give (see the contract's large-folio targets)",
    "tests/test_timing.py::test_first_touch_batches_are_plausible_and_fault_free": "assumes 6.12's un-protect "
    "write-upgrade (no fault on the first store)",
    "tests/test_uffd_unit.py::test_uffd_unit[move-": "6.1 lacks UFFD_FEATURE_MOVE",
    "tests/test_uffd_unit.py::test_uffd_unit[poison-": "6.1 lacks UFFD_FEATURE_POISON",
    "tests/test_uffd_unit.py::test_uffd_unit[wp-unpopulated-": "6.1 lacks UFFD_FEATURE_WP_UNPOPULATED",
    "tests/test_uffd_unit.py::test_uffd_unit[minor-wp-": "6.1 lacks UFFD_FEATURE_WP_UNPOPULATED",
    "tests/test_pte_channel.py::test_a_wp_unpopulated_marker_shows_uffd_wp_and_no_page": (
        "6.1 lacks UFFD_FEATURE_WP_UNPOPULATED"
    ),
    "tests/test_uffd_unit.py::test_uffd_unit[wp-fork-hugetlb-private]": "6.1 keeps the uffd-wp bit of a private "
    "hugetlb PTE in a fork()ed child without EVENT_FORK (a 6.1 behaviour the test reports)",
    "tests/test_differential.py::test_known_sequences_agree[young-after-clear-refs-without-flush]": (
        "the sequence negotiates WP_UNPOPULATED, which 6.1 lacks"
    ),
    "tests/test_differential.py::test_known_sequences_agree[free-drops-swap-entry]": "needs WP_UNPOPULATED",
    "tests/test_differential.py::test_known_sequences_agree[poison-markers]": "needs WP_UNPOPULATED and POISON",
    "tests/test_differential.py::test_known_sequences_agree[move-": "needs WP_UNPOPULATED and MOVE",
    "tests/test_backends.py::test_summary_json_and_terminal_counts": "asserts that the kernel offers WP_UNPOPULATED",
}


def deselect_args(version: Optional[str]) -> list[str]:
    """``--deselect`` arguments for a kernel built from Debian base ``version`` (only 6.1 has any)."""
    if version != "6.1":
        return []
    return [arg for nodeid in DESELECT_6_1 for arg in ("--deselect", nodeid)]


def _kernel_base_version() -> Optional[str]:
    """The Debian base of the kernel this guest booted (its build.json), or None on the host."""
    name = os.environ.get(paths.ENV_KERNEL)
    if not name:
        return None
    from harness.vm.documents import load_build_info

    try:
        info = load_build_info(paths.KERNELS_DIR / name / "build.json")
    except ValueError:  # DocumentError: absent or damaged, so no base to go by
        return None
    return (info.get("source") or {}).get("debian_version")


#: the steps run_steps() knows, in order
STEPS = ("pytest", "selftests", "bench")
#: what each step's progress line says after "[validate] <kernel>: " (the host times guests by these lines)
STEP_LINES = {
    "pytest": "pytest suite",
    "selftests": "selftest ",
    "bench": "first-touch benchmarks",
    # --quick with two CPUs: the two run at once, one line for both (the host times them as one phase)
    "beside": "suite and selftests side by side",
}


#: in a guest's results directory while its selftests run beside the suite (paths.ENV_SELFTESTS_RUNNING)
SELFTESTS_RUNNING_FILE = ".selftests-running"


def run_steps(
    out: Path,
    selftests_dir: Optional[Path],
    quick: bool = False,
    log: Log = _log,
    steps_wanted: tuple[str, ...] = STEPS,
) -> dict:
    """Run the suite, the selftests and the benchmarks; write their results under ``out``.

    With ``quick`` and two CPUs or more, the selftests (C, threaded) run beside
    the suite (Python, one CPU most of the time) instead of after it: the edit
    loop's guest then takes about the suite's time.  They share the machine's
    huge pages (uffd-unit-tests takes 32 at once, a hugetlb case of the suite
    16), which is why validate's guests reserve ``harness.validate.run.GUEST_HUGEPAGES``.
    """
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **guest_environment(out, in_guest=paths.in_guest())}
    steps: dict[str, Any] = {}

    beside = quick and "pytest" in steps_wanted and "selftests" in steps_wanted and (os.cpu_count() or 1) >= 2
    if beside:
        log(f"[validate] {_where()}: {STEP_LINES['beside']}")
        # The selftests must see the kernel's default mm settings (uffd-unit-tests' shmem cases failed
        # with shmem_enabled=advise), which some suite tests change for their module: while this file
        # exists the suite runs those last and they wait for it to go (tests/conftest.py).
        running = out / SELFTESTS_RUNNING_FILE
        running.touch()

        def selftests_then_release() -> dict:
            try:
                return _run_selftests(out, selftests_dir, log, beside=True)
            finally:
                running.unlink(missing_ok=True)

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            selftests = pool.submit(selftests_then_release)
            suite_env = {**env, paths.ENV_SELFTESTS_RUNNING: str(running)}
            steps["pytest"] = _run_suite(out, quick, suite_env, log, beside=True)
            steps["selftests"] = selftests.result()
        steps["beside"] = True
    else:
        if "pytest" in steps_wanted:
            steps["pytest"] = _run_suite(out, quick, env, log)
        if "selftests" in steps_wanted:
            steps["selftests"] = _run_selftests(out, selftests_dir, log)
    if "bench" in steps_wanted:
        steps["bench"] = _run_bench(out, quick, env, log)
    steps["kernel_release"] = platform.release()
    (out / "steps.json").write_text(json.dumps(steps, indent=2) + "\n")
    return steps


def _where() -> str:
    """Which kernel a step runs on, for progress lines: both guests run 6.12, so their names tell them apart."""
    name = os.environ.get(paths.ENV_KERNEL)
    return f"{name} ({platform.release()})" if name else f"host ({platform.release()})"


def _run_suite(out: Path, quick: bool, env: dict, log: Log, beside: bool = False) -> dict:
    if not beside:
        log(f"[validate] {_where()}: {STEP_LINES['pytest']}")
    pytest_cmd = [
        sys.executable,
        "-m",
        "pytest",
        *(str(paths.REPO_ROOT / t) for t in VALIDATION_TESTS),
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        "--junitxml",
        str(out / "junit.xml"),
        "--summary-json",
        str(out / "summary.json"),
    ]
    # --quick: no slow test, and no test of the checks themselves (they give no clause result)
    pytest_cmd += ["-m", f"not slow and not checks_the_checks and {GUEST_MARKERS}" if quick else GUEST_MARKERS]
    pytest_cmd += deselect_args(_kernel_base_version())
    return _run_logged(pytest_cmd, out / "pytest.log", PYTEST_TIMEOUT, env)


def _selftests_built(selftests_dir: Optional[Path]) -> tuple[str, ...]:
    """The selftests this kernel's tree had (6.1: userfaultfd; 6.12: uffd-unit-tests, mkdirty, pagemap_ioctl)."""
    if selftests_dir is None or not selftests_dir.is_dir():
        return SELFTESTS
    built = tuple(t for t in KNOWN_SELFTESTS if (selftests_dir / t).exists())
    return built or SELFTESTS


def _run_selftests(out: Path, selftests_dir: Optional[Path], log: Log, beside: bool = False) -> dict:
    selftests: dict[str, Any] = {}
    for name in _selftests_built(selftests_dir):
        # beside the suite, not a step line of its own (the host's timer takes the first of each)
        log(f"[validate] {_where()}: {'beside the suite, ' if beside else ''}{STEP_LINES['selftests']}{name}")
        if selftests_dir is None:
            selftests[name] = SelftestRun(name, None, 0.0, error="no selftests built for this kernel").to_dict()
            continue
        run = _run_selftest_binary(selftests_dir / name)
        if run.result == "fail" and not run.error:
            # uffd-unit-tests' events case once failed (UFFDIO_COPY: ENOENT) on a kernel whose control
            # passed it, and its err() ends the whole binary, so every later case is lost.  A failure
            # that does not come back in a second run is recorded as flaky, with the first run's log.
            first = run
            (out / f"selftest-{name}.first.log").write_text(first.log)
            run = _run_selftest_binary(selftests_dir / name)
            if run.result != "fail":
                run.flaky = [c.name for c in first.cases if c.result == "fail"] or [f"exit status {first.returncode}"]
                log(
                    f"[validate] {_where()}: selftest {name}: {', '.join(run.flaky)} failed, then passed when run "
                    f"again: recorded as flaky (first run: selftest-{name}.first.log)"
                )
        (out / f"selftest-{name}.log").write_text(run.log)
        selftests[name] = run.to_dict()
    return selftests


def _run_selftest_binary(binary: Path) -> SelftestRun:
    # 6.1's monolithic test takes a memory type per run; the others run once
    if binary.name == "userfaultfd":
        return run_userfaultfd(binary, timeout=SELFTEST_TIMEOUT)
    return run_selftest(binary, timeout=SELFTEST_TIMEOUT)


def _run_bench(out: Path, quick: bool, env: dict, log: Log) -> dict:
    log(f"[validate] {_where()}: {STEP_LINES['bench']}")
    # No plot here: the host draws it from bench.json (_plot_benches), since under TCG matplotlib's
    # text rendering alone takes about a minute.
    bench_cmd = [
        sys.executable,
        "-m",
        "harness",
        "bench",
        "--json-out",
        str(out / "bench.json"),
        "--plot",
        "",
        "--calibration",
        str(out / "calibration.json"),
    ]
    if quick or paths.in_guest():  # TCG: fewer, smaller rounds
        bench_cmd += ["--rounds", "3", "--pages", "64"]
    return _run_logged(bench_cmd, out / "bench.log", BENCH_TIMEOUT, env)


def _run_logged(cmd: list[str], log_path: Path, timeout: float, env: dict) -> dict:
    t0 = time.monotonic()
    with open(log_path, "wb") as logf:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                cwd=paths.REPO_ROOT,
            )
            return {
                "returncode": proc.returncode,
                "seconds": round(time.monotonic() - t0, 1),
                "command": shlex.join(cmd),
            }
        except subprocess.TimeoutExpired:
            return {
                "returncode": None,
                "seconds": round(time.monotonic() - t0, 1),
                "command": shlex.join(cmd),
                "error": f"timed out after {timeout:.0f} s (killed)",
            }


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m harness.validate.guest OUT [--quick]``: the steps, in the kernel this runs on."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.validate.guest", description="the in-guest half of uffd-harness validate"
    )
    parser.add_argument("out", type=Path, help="directory for the results (writable in the guest)")
    parser.add_argument("--quick", action="store_true", help="skip slow tests, fewer benchmark rounds")
    args = parser.parse_args(argv)
    selftests_dir = None
    kernel = os.environ.get(paths.ENV_KERNEL)
    if kernel:
        from harness.vm.build import load_kernel

        selftests_dir = load_kernel(kernel).selftests_dir
    run_steps(args.out, selftests_dir, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
