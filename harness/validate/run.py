"""The host half of ``uffd-harness validate``: build each kernel, boot it, collect, judge, report.

For each kernel (stock 6.12, and 6.12 with the series) it builds the kernel,
boots it once, and inside that one guest runs :mod:`harness.validate.guest`:
the kernel-facing pytest tests, the kernel's own mm selftests built from the
same tree and the first-touch benchmarks, each step bounded in time.  The
guests run in parallel, bounded by the machine's cores and memory.  Where
QEMU cannot run, it says so in one line and runs the same steps on the host
kernel, whose hint clauses then come from the simulator, labelled.

Results go to ``build/results/``: per kernel a directory with everything the
guest wrote (``console.log`` among them), and ``report.md``, ``report.json``,
``report.tap`` (KTAP) and ``report.junit.xml`` for the whole validation.

:func:`guest_suite` is ``make vm-test``: the whole pytest suite in one guest.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from harness import paths
from harness.errors import HarnessError
from harness.selftests import SELFTESTS
from harness.validate import control_cache
from harness.validate.guest import (
    BENCH_TIMEOUT,
    DESELECT_6_1,
    GUEST_MARKERS,
    PYTEST_TIMEOUT,
    SELFTEST_TIMEOUT,
    Log,
    _log,
    deselect_args,
    guest_environment,
    run_steps,
)
from harness.validate.outcome import KernelOutcome
from harness.validate.phases import GuestTimer, PhaseClock, phases_document, render_phases
from harness.validate.report import render_terminal, write_report
from harness.validate.verdict import build_report

#: the whole guest: the steps above plus boot
GUEST_TIMEOUT = PYTEST_TIMEOUT + len(SELFTESTS) * SELFTEST_TIMEOUT + BENCH_TIMEOUT + 120
#: memory of one guest; parallel guests are bounded by the host's free memory
GUEST_MEMORY_MB = 2048
#: 2 MiB huge pages each guest reserves at boot: with --quick the selftests run beside the suite
#: (guest.run_steps), and uffd-unit-tests' hugetlb cases take 32 while a hugetlb case of the suite takes 16
GUEST_HUGEPAGES = 64


def compile_for_guests(log: Log = _log) -> None:
    """Write the tree's bytecode, and pytest's assertion-rewritten test modules, here on the host.

    A guest sees the tree read-only and cannot cache either; without them
    every guest run recompiles and rewrites ~90 modules, which under TCG takes
    about 40 s.  Same interpreter and pytest, so the guest reads these as is.
    Collecting also finds import errors on the host in seconds, not after a boot.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for what, cmd in (
        ("bytecode", [sys.executable, "-m", "compileall", "-q", "harness", "tests"]),
        (
            "rewritten tests",
            [
                sys.executable,
                "-m",
                "pytest",
                "--collect-only",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests",
                "--ignore",
                "tests/vm",
            ],
        ),
    ):
        proc = subprocess.run(
            cmd, cwd=paths.REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            log(f"[validate] could not prepare the {what} for the guests on the host: " + " | ".join(tail))


def qemu_unavailable() -> Optional[str]:
    """None when guests can be booted here, else the reason in one line."""
    try:
        from harness.vm.runner import check_runner_host

        check_runner_host()
    except ImportError as exc:
        return f"the vm room is not installed ({exc})"
    except (HarnessError, OSError, subprocess.SubprocessError) as exc:  # MissingToolError and friends
        return str(exc).splitlines()[0]
    return None


def _build(
    name: str, patches: Optional[Path], out: Path, log: Log, source=None, seed_from: Optional[str] = "auto"
) -> KernelOutcome:
    from harness.vm import build as vm_build

    outcome = KernelOutcome(name, "guest", out)
    try:
        outcome.build = vm_build.build_kernel(name, patches, log=log, source=source, seed_from=seed_from).info
    except (HarnessError, OSError, subprocess.SubprocessError) as exc:  # reported; the other kernel still runs
        outcome.error = f"build failed: {exc}"
    return outcome


def _boot_and_run(outcome: KernelOutcome, quick: bool, log: Log, cpus: int = 2) -> KernelOutcome:
    from harness.vm import runner
    from harness.vm.build import load_kernel

    t0 = time.monotonic()
    timer = GuestTimer()
    argv = [sys.executable, "-m", "harness.validate.guest", str(outcome.out)]
    if quick:
        argv.append("--quick")
    try:
        result = runner.run_in_guest(
            load_kernel(outcome.name),
            argv,
            timeout=GUEST_TIMEOUT,
            rwdir=outcome.out,
            memory=f"{GUEST_MEMORY_MB}M",
            hugepages=GUEST_HUGEPAGES,
            cpus=cpus,
            capture=True,
            console_log=outcome.out / "console.log",
            log=log,
            on_line=timer.on_line,
        )
        outcome.accel = result.accel
        if result.returncode != 0:
            outcome.error = f"guest command exited {result.returncode}"
    except (HarnessError, OSError, subprocess.SubprocessError) as exc:  # GuestPanic, GuestTimeout, ...
        outcome.error = f"guest failed: {exc}"
    outcome.seconds = time.monotonic() - t0
    (outcome.out / "phases.json").unlink(missing_ok=True)
    timer.write(outcome.out)
    outcome.load()
    return outcome


def _run_guests(outcomes: list[KernelOutcome], workers: int, quick: bool, log: Log) -> None:
    """Boot each kernel's guest, ``workers`` at a time; Ctrl-C (SIGTERM, SIGHUP) kills them all and boots no more."""
    from harness.vm import runner

    cpus = max(1, (os.cpu_count() or 1) // workers)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(_boot_and_run, o, quick, log, cpus) for o in outcomes]
        for future in futures:
            while True:
                try:
                    future.result(timeout=1.0)  # a short wait keeps the main thread responsive to Ctrl-C
                    break
                except concurrent.futures.TimeoutError:
                    continue
    except KeyboardInterrupt:
        # no queued kernel boots when a killed guest's worker comes free, nor a guest that was starting
        with runner.guests_stopped() as killed:
            log(f"[validate] interrupted: killed {killed} guest(s)")
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _plot_benches(outcomes: list[KernelOutcome], log: Log) -> None:
    """Draw each kernel's bench.png from its bench.json, here on the host."""
    from harness.timing import bench

    for o in outcomes:
        if o.bench:
            try:
                bench.plot_document(o.bench, o.out / "bench.png")
            except (ImportError, OSError, ValueError, RuntimeError) as exc:  # a plot never fails a validation
                log(f"[validate] {o.name}: no plot ({exc})")


def _parallel_guests(free_mb: Optional[int] = None) -> int:
    """How many guests at once: one per core, as memory allows (each TCG guest is one busy thread)."""
    import psutil

    free_mb = free_mb if free_mb is not None else psutil.virtual_memory().available // 2**20
    return max(1, min(os.cpu_count() or 1, free_mb // (GUEST_MEMORY_MB + 512)))


def candidate_name(patches: Path) -> str:
    """The build name of a user's series: ``candidate-`` and a hash of its patches.

    Two different series keep two cached builds instead of rebuilding each
    other; an unreadable series is named plainly, and its build step reports why.
    """
    from harness.vm.build import read_series
    from harness.vm.errors import VmError

    try:
        series = read_series(patches)
    except VmError:
        return "candidate"
    digest = hashlib.sha256()
    for patch in series:
        digest.update(patch.name.encode() + b"\0" + patch.read_bytes() + b"\0")
    return f"candidate-{digest.hexdigest()[:10]}" if series else "candidate"


def validate(
    patches: Optional[Path] = None,
    quick: bool = False,
    results: Path = paths.RESULTS_DIR,
    log: Log = _log,
    fresh_control: bool = False,
    *,
    source=None,
    tree=None,
) -> int:
    """The main job; returns the exit status (0: the contract holds and nothing failed).

    The control's guest results are reused when nothing that made them
    changed (:mod:`harness.validate.control_cache`; ``fresh_control`` runs it
    again), and the candidate then boots alone, with every core.

    ``source`` (harness.vm.sources: None for 6.12, "6.1", a path) is the tree
    both kernels are built from; ``tree`` (a :class:`harness.validate.tree.TreePlan`)
    replaces both: its base is the control, its head the candidate.
    """
    from harness.vm import sources

    t0 = time.monotonic()
    clock = PhaseClock()
    results.mkdir(parents=True, exist_ok=True)
    if patches is not None:
        with clock("check"):
            problem = _series_problem(patches, log)
        if problem:
            log(f"uffd-harness validate: --patches {patches}: {problem}")
            return 2
    if tree is not None:
        src = tree.source
        control_name, candidate = tree.control, tree.candidate
        # the head is the base's archive plus the commits: seeded from the base, it compiles what they change
        plan = [(control_name, None, None), (candidate, tree.series, control_name)]
        origin = {"kind": "git", **tree.describe()}
        for note in tree.notes:
            log(f"[validate] {note}")
    else:
        src = sources.resolve(source)
        control_name = src.kernel_name("stock")
        if patches is None and src.default_series is None:
            raise sources.SourceError(
                f"--source {source}: no hint series of the project's for this tree; give --patches DIR"
            )
        candidate = (
            src.kernel_name("patched")
            if patches is None
            else (candidate_name(patches) + ("" if control_name == "stock" else f"-{src.label}"))
        )
        plan = [(control_name, None, "auto"), (candidate, patches, "auto")]
        origin = {"kind": src.kind, "source": src.label, "identity": src.identity}
    _clear_results(results, ["host", control_name, candidate], log)
    with clock("check"):
        reason = qemu_unavailable()
    outcomes: list[KernelOutcome] = []
    control: dict = {}
    guests_wall, workers = None, 1
    if reason:
        log(
            f"[validate] QEMU cannot run here ({reason}): validating on the host kernel "
            f"{platform.release()} and the simulator"
        )
        host = KernelOutcome("host", "host", results / "host")
        t1 = time.monotonic()
        run_steps(host.out, _host_selftests_dir(), quick, log)
        host.seconds = time.monotonic() - t1
        host.load()
        outcomes.append(host)
    else:
        for name, series, seed in plan:
            log(f"[validate] building kernel '{name}' from {src.label}")
            with clock("build_control" if name == control_name else "build_candidate", name):
                # the default (6.12, seeded "auto") calls _build as it always has
                extra = {} if (tree is None and source is None) else {"source": src, "seed_from": seed}
                outcomes.append(_build(name, series, results / name, log, **extra))
        with clock("check"):
            compile_for_guests(log)
        runnable = [o for o in outcomes if not o.error]
        parallel = _parallel_guests()
        control = _reuse_control(outcomes[0], runnable, parallel, quick, fresh_control, log)
        runnable = [o for o in runnable if not o.reused]
        workers = min(parallel, max(1, len(runnable)))
        log(f"[validate] booting {len(runnable)} guest(s), {workers} at a time")
        t_guests = time.monotonic()
        _run_guests(runnable, workers, quick, log)
        guests_wall = time.monotonic() - t_guests
        _store_control(outcomes[0], control, log)
    with clock("report"):
        _plot_benches(outcomes, log)
        report = build_report(
            outcomes,
            patches,
            quick,
            time.monotonic() - t0,
            qemu_reason=reason,
            control_kernel=control_name,
            origin=origin,
        )
    if control:
        report["control"] = {k: v for k, v in control.items() if k != "inputs"}
    report["phases"] = phases_document(clock, outcomes, time.monotonic() - t0, guests_wall, workers)
    write_report(report, results)
    _write_lava_jobs([o.name for o in outcomes if o.where == "guest" and o.build], results, log)
    print(render_terminal(report, results))
    if control.get("reused"):
        print(
            f"control '{control['kernel']}': guest results reused from {control['created']} "
            "(same kernel build, harness code and tests, --quick and guest settings; --fresh-control reruns it)"
        )
    print("\n".join(render_phases(report["phases"])))
    return 0 if report["ok"] else 1


def _write_lava_jobs(kernels: list[str], results: Path, log: Log) -> None:
    """A LAVA job per kernel built (harness.lava), for a lab to run the same validation; never fatal."""
    from harness import lava

    if not kernels:
        return
    try:
        jobs = lava.write_validation_jobs(kernels, results)
    except (HarnessError, OSError, ImportError) as exc:
        log(f"[validate] LAVA jobs not written: {exc}")
        return
    ramdisk = os.environ.get(lava.ENV_RAMDISK_URL)
    log(
        f"[validate] LAVA jobs: {', '.join(str(j) for j in jobs)} (bundles beside them; ramdisk "
        + (
            f"{ramdisk})"
            if ramdisk
            else f"{lava.RAMDISK_PLACEHOLDER}: set ${lava.ENV_RAMDISK_URL} or edit the "
            "job, see the README's LAVA section)"
        )
    )


def _series_problem(patches: Path, log: Log) -> Optional[str]:
    """Why ``patches`` cannot be validated (one line), found before any kernel is built; None if it applies.

    The series is applied to a scratch tree of the files it touches
    (:func:`harness.vm.build.check_series`): a directory without patches, a
    series naming a missing file or a patch that does not apply are reported
    in seconds, not after a stock build and boot.  The host tools come first:
    the check needs the source tarball.
    """
    from harness.vm import build as vm_build
    from harness.vm.errors import VmError

    try:
        vm_build.check_host(log=log)
        patches_found = vm_build.check_series(patches)
    except VmError as exc:
        return str(exc).splitlines()[0]
    log(f"[validate] --patches {patches}: {len(patches_found)} patch(es) apply to {vm_build.SOURCE_DIRNAME}")
    return None


#: what a validation writes at the top of the results directory (calibration.json and bench.json of
#: `make bench` on the host stay: they are the host's, not this run's)
REPORT_FILES = ("report.md", "report.json", "report.tap", "report.junit.xml")


def _clear_results(results: Path, kernels: list[str], log: Log) -> None:
    """Start from an empty results directory: no earlier run's summary can speak for this one."""
    import shutil

    removed = 0
    for name in [*kernels, "lava"]:
        if (results / name).exists():
            shutil.rmtree(results / name)
            removed += 1
    for name in REPORT_FILES:
        if (results / name).exists():
            (results / name).unlink()
            removed += 1
    if removed:
        log(f"[validate] removed {removed} result(s) of an earlier run from {results}")


def _guest_timeouts() -> dict[str, float]:
    return {"guest": GUEST_TIMEOUT, "pytest": PYTEST_TIMEOUT, "selftest": SELFTEST_TIMEOUT, "bench": BENCH_TIMEOUT}


def _reuse_control(
    stock: KernelOutcome, runnable: list[KernelOutcome], parallel: int, quick: bool, fresh: bool, log: Log
) -> dict:
    """Give the control its stored guest results when its inputs are unchanged; {} when it cannot run.

    The key includes the cores the control gets when it does run: the
    machine's, shared among the guests that would run together.
    """
    if stock not in runnable or not stock.build or not stock.build.get("key"):
        return {}
    cpus = max(1, (os.cpu_count() or 1) // min(parallel, len(runnable)))
    inp = control_cache.inputs(
        stock.build["key"],
        quick=quick,
        memory_mb=GUEST_MEMORY_MB,
        cpus=cpus,
        timeouts=_guest_timeouts(),
        hugepages=GUEST_HUGEPAGES,
    )
    note = {
        "kernel": stock.name,
        "inputs": inp,
        "key": control_cache.key_of(inp),
        "reused": False,
        "fresh_control": fresh,
    }
    if fresh:
        log(f"[validate] control '{stock.name}': --fresh-control: running it again")
        return {**note, "why_run": "--fresh-control"}
    entry = control_cache.lookup(inp)
    if entry is None:
        why = control_cache.why_not(inp)
        log(f"[validate] control '{stock.name}': running it ({why})")
        return {**note, "why_run": why}
    entry.restore(stock)
    log(
        f"[validate] control '{stock.name}': reusing its guest results of {entry.created} (same kernel build, "
        "harness code and tests, --quick and guest settings); --fresh-control runs it again"
    )
    return {**note, "reused": True, "created": entry.created, "results_from": str(entry.path)}


def _store_control(stock: KernelOutcome, control: dict, log: Log) -> None:
    """Keep the control's results of a clean guest run for the next validation."""
    if not control or control.get("reused"):
        return
    why = control_cache.cacheable(stock)
    if why:
        control["stored"] = False
        log(f"[validate] control '{stock.name}': results not kept for reuse: {why}")
        return
    entry = control_cache.store(stock, control["inputs"])
    control["stored"] = True
    log(f"[validate] control '{stock.name}': results kept for reuse in {entry.path}")


def _host_selftests_dir() -> Optional[Path]:
    """Selftests built from the 6.12 tree, if a stock build left them (they run on any kernel)."""
    d = paths.KERNELS_DIR / "stock" / "selftests"
    return d if d.is_dir() else None


def _deselect_for(source) -> list[str]:
    """pytest arguments that leave out what a 6.1 guest cannot run (each printed with its reason)."""
    from harness.vm import sources

    if source is None or sources.resolve(source).version != "6.1":
        return []
    return deselect_args("6.1")


def guest_suite(
    kernel: str,
    patches: Optional[Path] = None,
    pytest_args: tuple[str, ...] = (),
    timeout: float = PYTEST_TIMEOUT + 120,
    results: Path = paths.RESULTS_DIR,
    log: Log = _log,
    source=None,
) -> int:
    """Build ``kernel``, boot it, run the pytest suite in it as root; return pytest's exit status.

    Leaves ``junit.xml``, ``summary.json`` and ``console.log`` in ``results/<kernel>/``.
    """
    from harness.vm import build as vm_build
    from harness.vm import runner
    from harness.vm.errors import VmError

    out = results / kernel
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("junit.xml", "summary.json", "console.log"):
        (out / stale).unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        str(paths.REPO_ROOT / "tests"),
        "--ignore",
        str(paths.REPO_ROOT / "tests" / "vm"),
        "-p",
        "no:cacheprovider",
        "-rfE",
        "--junitxml",
        str(out / "junit.xml"),
        "--summary-json",
        str(out / "summary.json"),
        "-m",
        GUEST_MARKERS,
        *_deselect_for(source),
        *pytest_args,
    ]
    if _deselect_for(source):
        log(f"[vm-test] kernel '{kernel}': Linux 6.1 guest: {len(DESELECT_6_1)} test group(s) deselected:")
        for nodeid, why in DESELECT_6_1.items():
            log(f"[vm-test]   {nodeid}: {why}")
    env = {**guest_environment(out), "CI": os.environ.get("CI", "")}
    try:
        kb = vm_build.build_kernel(kernel, patches, log=log, source=source)
        compile_for_guests(log)
        log(f"[vm-test] kernel '{kernel}': running the suite in the guest (timeout {timeout:.0f} s)")
        result = runner.run_in_guest(
            kb, argv, timeout=timeout, rwdir=out, env=env, console_log=out / "console.log", log=log
        )
    except VmError as exc:
        log(f"[vm-test] kernel '{kernel}': {exc}")
        return exc.exit_status
    log(
        f"[vm-test] kernel '{kernel}': pytest exited {result.returncode} after {result.elapsed:.0f} s "
        f"({result.accel}); results in {out}"
    )
    timeline = _guest_timeline(out / "summary.json")
    if timeline:
        log(f"[vm-test] kernel '{kernel}': {timeline}")
    return result.returncode


def _guest_timeline(summary: Path) -> str:
    """One line on how long the guest took to get to its tests, from summary.json ("" without one)."""
    from harness.reports import load_summary

    try:
        t = load_summary(summary)["timeline"]
    except (HarnessError, OSError, ValueError, KeyError):
        return ""
    first = "no test ran" if t["first_test"] is None else f"the first test at {t['first_test']:.1f} s"
    return (
        f"guest timeline, in seconds since its kernel booted: pytest's Python started at "
        f"{t['process_start']:.1f} s, {first}, the run ended at {t['summary']:.1f} s"
    )
