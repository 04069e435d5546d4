"""``uffd-harness validate``: from a patch series to a verdict, in one command.

For each kernel (stock 6.12, and 6.12 with the series) it builds the kernel,
boots it once, and inside that one guest runs, each step bounded in time:

1. the kernel-facing pytest tests (the contract clause by clause, PTE
   semantics, bad input, the uffd-unit-tests cases, the differential
   simulator check), with ``--summary-json`` and JUnit XML; ``make vm-test``
   runs the whole suite in a guest;
2. the kernel's own mm selftests built from the same tree;
3. the first-touch benchmarks.

The guests run in parallel, bounded by the machine's cores and memory.
Where QEMU cannot run, it says so in one line and runs the same steps on
the host kernel, whose hint clauses then come from the simulator, labelled.

Results go to ``build/results/``: per kernel a directory with everything the
guest wrote (``console.log`` among them), and ``report.md``, ``report.json``,
``report.tap`` (KTAP) and ``report.junit.xml`` for the whole validation.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from harness.selftests import SELFTESTS, SelftestRun, regressions, run_selftest

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("UFFD_HARNESS_BUILD_DIR", REPO_ROOT / "build")) / "results"

#: what each contract clause says (BRIEF 2.2), for the report
CLAUSES = {
    1: "hint bits without UFFD_FEATURE_ACCESS_HINTS negotiated are rejected with EINVAL",
    2: "un-protect with ACCESS_LIKELY: every present PTE it resolves is young",
    3: "un-protect with WRITE_LIKELY: every PTE it makes writable is dirty and young",
    4: "hints never make a clean shared (shmem / page-cache) PTE writable or dirty",
    5: "un-protect without hints leaves young and dirty as they were",
    6: "hints together with MODE_WP are rejected with EINVAL",
    7: "hints populate nothing: empty PTEs and uffd-wp markers stay",
    8: "where soft-dirty tracking needs the write fault, the PTE is not made writable, so not dirtied",
}

#: the kernel-facing tests a validation runs in each guest (``make vm-test`` runs the whole suite)
VALIDATION_TESTS = ("tests/contract", "tests/test_pte_semantics.py", "tests/test_bad_input.py",
                    "tests/test_uffd_unit.py", "tests/test_differential.py")

#: per-step time limits inside the guest (seconds); TCG is slow, a hang is not
PYTEST_TIMEOUT = 1500
SELFTEST_TIMEOUT = 300
BENCH_TIMEOUT = 600
#: the whole guest: the steps above plus boot
GUEST_TIMEOUT = PYTEST_TIMEOUT + len(SELFTESTS) * SELFTEST_TIMEOUT + BENCH_TIMEOUT + 120
#: what a guest suite leaves out: host_only tests (pyproject.toml: no kernel check of their own, slow under TCG)
GUEST_MARKERS = "not host_only"
#: differential sequences per guest run (the host runs 500)
GUEST_DIFF_EXAMPLES = 100
#: memory of one guest; parallel guests are bounded by the host's free memory
GUEST_MEMORY_MB = 2048

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# inside the guest (or on the host, without QEMU)

def guest_environment(out: Path, in_guest: bool = True) -> dict[str, str]:
    """Environment for test runs whose source tree is read-only (a guest): caches go to ``out``.

    The differential check runs fewer sequences in a guest (TCG is ~10x
    slower than the host) unless UFFD_DIFF_EXAMPLES says otherwise.
    """
    env = {"PYTHONDONTWRITEBYTECODE": "1",
           "HYPOTHESIS_STORAGE_DIRECTORY": str(out / ".hypothesis"),
           "MPLCONFIGDIR": str(out / ".matplotlib")}
    if in_guest:
        env["UFFD_DIFF_EXAMPLES"] = os.environ.get("UFFD_DIFF_EXAMPLES", str(GUEST_DIFF_EXAMPLES))
    return env


def compile_for_guests(log: Log = _log) -> None:
    """Write the tree's bytecode, and pytest's assertion-rewritten test modules, here on the host.

    A guest sees the tree read-only and cannot cache either; without them
    every guest run recompiles and rewrites ~90 modules, which under TCG takes
    about 40 s.  Same interpreter and pytest, so the guest reads these as is.
    Collecting also finds import errors on the host in seconds, not after a boot.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for what, cmd in (("bytecode", [sys.executable, "-m", "compileall", "-q", "harness", "tests"]),
                      ("rewritten tests", [sys.executable, "-m", "pytest", "--collect-only", "-q",
                                           "-p", "no:cacheprovider", "tests", "--ignore", "tests/vm"])):
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            log(f"[validate] could not prepare the {what} for the guests on the host: " + " | ".join(tail))


#: the steps run_steps() knows, in order
STEPS = ("pytest", "selftests", "bench")


def run_steps(out: Path, selftests_dir: Optional[Path], quick: bool = False, log: Log = _log,
              steps_wanted: tuple[str, ...] = STEPS) -> dict:
    """Run the suite, the selftests and the benchmarks; write their results under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **guest_environment(out, in_guest="UFFD_HARNESS_KERNEL" in os.environ)}
    steps: dict[str, Any] = {}

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
    name = os.environ.get("UFFD_HARNESS_KERNEL")
    return f"{name} ({platform.release()})" if name else f"host ({platform.release()})"


def _run_suite(out: Path, quick: bool, env: dict, log: Log) -> dict:
    log(f"[validate] {_where()}: pytest suite")
    pytest_cmd = [sys.executable, "-m", "pytest", *(str(REPO_ROOT / t) for t in VALIDATION_TESTS),
                  "-p", "no:cacheprovider", "-q", "-rfE", "--junitxml", str(out / "junit.xml"),
                  "--summary-json", str(out / "summary.json")]
    pytest_cmd += ["-m", f"not slow and {GUEST_MARKERS}" if quick else GUEST_MARKERS]
    return _run_logged(pytest_cmd, out / "pytest.log", PYTEST_TIMEOUT, env)


def _run_selftests(out: Path, selftests_dir: Optional[Path], log: Log) -> dict:
    selftests: dict[str, Any] = {}
    for name in SELFTESTS:
        log(f"[validate] {_where()}: selftest {name}")
        if selftests_dir is None:
            selftests[name] = SelftestRun(name, None, 0.0, error="no selftests built for this kernel").to_dict()
            continue
        run = run_selftest(selftests_dir / name, timeout=SELFTEST_TIMEOUT)
        (out / f"selftest-{name}.log").write_text(run.log)
        selftests[name] = run.to_dict()
    return selftests


def _run_bench(out: Path, quick: bool, env: dict, log: Log) -> dict:
    log(f"[validate] {_where()}: first-touch benchmarks")
    # No plot here: the host draws it from bench.json (_plot_benches), since under TCG matplotlib's
    # text rendering alone takes about a minute.
    bench_cmd = [sys.executable, "-m", "harness", "bench", "--json", str(out / "bench.json"),
                 "--plot", "", "--calibration", str(out / "calibration.json")]
    if quick or "UFFD_HARNESS_KERNEL" in os.environ:  # TCG: fewer, smaller rounds
        bench_cmd += ["--rounds", "3", "--pages", "64"]
    return _run_logged(bench_cmd, out / "bench.log", BENCH_TIMEOUT, env)


def _run_logged(cmd: list[str], log_path: Path, timeout: float, env: dict) -> dict:
    t0 = time.monotonic()
    with open(log_path, "wb") as logf:
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                  env=env, timeout=timeout, cwd=REPO_ROOT)
            return {"returncode": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
                    "command": shlex.join(cmd)}
        except subprocess.TimeoutExpired:
            return {"returncode": None, "seconds": round(time.monotonic() - t0, 1), "command": shlex.join(cmd),
                    "error": f"timed out after {timeout:.0f} s (killed)"}


# ---------------------------------------------------------------------------
# on the host

@dataclass
class KernelOutcome:
    """Everything one kernel's validation produced (or why it could not)."""

    name: str
    where: str                         #: "guest" or "host"
    out: Path
    build: Optional[dict] = None       #: build.json
    error: str = ""                    #: build or boot failure, with context
    accel: str = ""
    seconds: float = 0.0
    steps: dict = field(default_factory=dict)
    summary: Optional[dict] = None     #: the pytest plugin's summary.json
    bench: Optional[dict] = None

    def load(self) -> None:
        for attr, filename in (("steps", "steps.json"), ("summary", "summary.json"), ("bench", "bench.json")):
            path = self.out / filename
            if path.exists():
                try:
                    setattr(self, attr, json.loads(path.read_text()))
                except json.JSONDecodeError as exc:
                    self.error = self.error or f"{path}: unreadable ({exc})"

    @property
    def clauses(self) -> dict[int, str]:
        if not self.summary:
            return {}
        return {int(n): c["result"] for n, c in self.summary.get("clauses", {}).items()}

    def selftest_runs(self) -> dict[str, SelftestRun]:
        from harness.selftests import CaseResult
        runs = {}
        for name, d in self.steps.get("selftests", {}).items():
            run = SelftestRun(d["name"], d["returncode"], d["seconds"], [CaseResult(**c) for c in d["cases"]],
                              d.get("error", ""))
            runs[name] = run
        return runs


def qemu_unavailable() -> Optional[str]:
    """None when guests can be booted here, else the reason in one line."""
    try:
        from harness.vm.runner import check_runner_host
        check_runner_host()
    except ImportError as exc:
        return f"the vm room is not installed ({exc})"
    except Exception as exc:  # noqa: BLE001 - MissingToolError and friends, all with a message
        return str(exc).splitlines()[0]
    return None


def _build(name: str, patches: Optional[Path], out: Path, log: Log) -> KernelOutcome:
    from harness.vm import build as vm_build
    outcome = KernelOutcome(name, "guest", out)
    try:
        outcome.build = vm_build.build_kernel(name, patches, log=log).info
    except Exception as exc:  # noqa: BLE001 - reported, and the other kernel still runs
        outcome.error = f"build failed: {exc}"
    return outcome


def _boot_and_run(outcome: KernelOutcome, quick: bool, log: Log, cpus: int = 2) -> KernelOutcome:
    from harness.vm import runner
    from harness.vm.build import load_kernel
    t0 = time.monotonic()
    argv = [sys.executable, "-m", "harness.validate", "--guest", str(outcome.out)]
    if quick:
        argv.append("--quick")
    try:
        result = runner.run_in_guest(load_kernel(outcome.name), argv, timeout=GUEST_TIMEOUT, rwdir=outcome.out,
                                     memory=f"{GUEST_MEMORY_MB}M", cpus=cpus, capture=True,
                                     console_log=outcome.out / "console.log", log=log)
        outcome.accel = result.accel
        if result.returncode != 0:
            outcome.error = f"guest command exited {result.returncode}"
    except Exception as exc:  # noqa: BLE001 - GuestPanic, GuestTimeout, ...: reported
        outcome.error = f"guest failed: {exc}"
    outcome.seconds = time.monotonic() - t0
    outcome.load()
    return outcome


def _run_guests(outcomes: list[KernelOutcome], workers: int, quick: bool, log: Log) -> None:
    """Boot each kernel's guest, ``workers`` at a time; Ctrl-C kills them all, leaving nothing behind."""
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
        log(f"[validate] interrupted: killed {runner.kill_all_guests()} guest(s)")
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
            except Exception as exc:  # noqa: BLE001 - a plot is never worth failing the validation
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


def validate(patches: Optional[Path] = None, quick: bool = False, results: Path = RESULTS_DIR,
             log: Log = _log) -> int:
    """The main job; returns the exit status (0: the contract holds and nothing failed)."""
    t0 = time.monotonic()
    results.mkdir(parents=True, exist_ok=True)
    candidate = "patched" if patches is None else candidate_name(patches)
    reason = qemu_unavailable()
    outcomes: list[KernelOutcome] = []
    if reason:
        log(f"[validate] QEMU cannot run here ({reason}): validating on the host kernel "
            f"{platform.release()} and the simulator")
        host = KernelOutcome("host", "host", results / "host")
        t1 = time.monotonic()
        run_steps(host.out, _host_selftests_dir(), quick, log)
        host.seconds = time.monotonic() - t1
        host.load()
        outcomes.append(host)
    else:
        plan = [("stock", None), (candidate, patches)]
        for name, series in plan:
            log(f"[validate] building kernel '{name}'")
            outcomes.append(_build(name, series, results / name, log))
        runnable = [o for o in outcomes if not o.error]
        compile_for_guests(log)
        workers = _parallel_guests()
        log(f"[validate] booting {len(runnable)} guest(s), {workers} at a time")
        _run_guests(runnable, workers, quick, log)
    _plot_benches(outcomes, log)
    report = build_report(outcomes, patches, quick, time.monotonic() - t0, qemu_reason=reason)
    write_report(report, results)
    print(render_terminal(report))
    return 0 if report["ok"] else 1


def _host_selftests_dir() -> Optional[Path]:
    """Selftests built from the 6.12 tree, if a stock build left them (they run on any kernel)."""
    from harness.vm.build import BUILD_DIR
    d = BUILD_DIR / "kernels" / "stock" / "selftests"
    return d if d.is_dir() else None


# ---------------------------------------------------------------------------
# the report

def _verdict(outcomes: list[KernelOutcome], candidate: Optional[KernelOutcome]) -> tuple[str, str]:
    """(kind, line): kind is holds, broken, absent or error."""
    if candidate is None:
        host = outcomes[0] if outcomes else None
        if host and host.summary and host.summary.get("patched"):
            candidate = host
        else:
            return "absent", (f"feature absent: kernel {platform.release()} does not offer "
                              "UFFD_FEATURE_ACCESS_HINTS; clauses 2-4 and 6-8 ran on the simulator only")
    if candidate.error and not candidate.summary:
        return "error", f"error: kernel '{candidate.name}': {candidate.error.splitlines()[0]}"
    if not candidate.summary:
        return "error", f"error: kernel '{candidate.name}' produced no test summary"
    failed = [n for n, r in sorted(candidate.clauses.items()) if r == "fail"]
    if failed:
        return "broken", "contract broken: " + "; ".join(f"clause {n} ({CLAUSES[n]})" for n in failed)
    if not candidate.summary.get("patched"):
        return "absent", f"feature absent: kernel '{candidate.name}' does not offer UFFD_FEATURE_ACCESS_HINTS"
    not_passed = [n for n, r in sorted(candidate.clauses.items()) if r != "pass"]
    if not_passed:
        return "broken", "contract not shown: clauses " + ", ".join(map(str, not_passed)) + " did not run on the kernel"
    return "holds", f"contract holds: kernel '{candidate.name}' keeps all {len(CLAUSES)} clauses"


def build_report(outcomes: list[KernelOutcome], patches: Optional[Path], quick: bool, seconds: float,
                 qemu_reason: Optional[str] = None) -> dict:
    by_name = {o.name: o for o in outcomes}
    stock = by_name.get("stock")
    # The kernel under validation: any guest kernel that is not the stock control.
    candidate = next((o for o in outcomes if o.where == "guest" and o.name != "stock"), None)
    kind, line = _verdict(outcomes, candidate)
    problems = []
    for o in outcomes:
        if o.error:
            problems.append(f"kernel '{o.name}': {o.error.splitlines()[0]}")
        pytest_step = o.steps.get("pytest", {})
        if pytest_step.get("error") or pytest_step.get("returncode") not in (0, None):
            problems.append(f"kernel '{o.name}': pytest suite "
                            + (pytest_step.get("error") or f"exited {pytest_step.get('returncode')}"))
        for name, run in o.selftest_runs().items():
            if run.result == "fail":
                problems.append(f"kernel '{o.name}': selftest {name} "
                                + (run.error or (f"{run.counts()['fail']} case(s) failed" if run.counts()["fail"]
                                                 else f"exited {run.returncode}")))
        bench_step = o.steps.get("bench", {})
        if bench_step.get("error") or bench_step.get("returncode") not in (0, None):
            problems.append(f"kernel '{o.name}': benchmarks "
                            + (bench_step.get("error") or f"exited {bench_step.get('returncode')}"))
    selftest_regressions = {}
    if stock and candidate:
        stock_runs, cand_runs = stock.selftest_runs(), candidate.selftest_runs()
        for name in SELFTESTS:
            if name in stock_runs and name in cand_runs:
                regs = regressions(stock_runs[name], cand_runs[name])
                if regs:
                    selftest_regressions[name] = regs
                    problems.append(f"selftest {name}: regressions on '{candidate.name}': {', '.join(regs)}")
    report = {
        "verdict": {"kind": kind, "line": line},
        "ok": kind == "holds" and not problems,
        "problems": problems,
        "qemu": qemu_reason or "ok",
        "quick": quick,
        "seconds": round(seconds, 1),
        "kernels": {o.name: _kernel_entry(o) for o in outcomes},
        "clauses": {n: {"text": CLAUSES[n], **{o.name: o.clauses.get(n, "error" if o.error else "absent")
                                               for o in outcomes},
                        "observed_via": _per_backend(outcomes, n, "channels"),
                        "memory": _per_backend(outcomes, n, "memory")} for n in CLAUSES},
        "selftest_regressions": selftest_regressions,
        "bench": _bench_comparison(stock, candidate),
        "reproduce": _reproduce(outcomes, patches, quick),
    }
    return report


def _kernel_entry(o: KernelOutcome) -> dict:
    s = o.summary or {}
    return {
        "where": o.where, "error": o.error, "accel": o.accel, "seconds": round(o.seconds, 1),
        "release": s.get("kernel_release", ""), "patched": s.get("patched"),
        "features": s.get("features", {}).get("offered", []),
        "tests": s.get("tests", {}), "backends": s.get("backends", {}),
        "selftests": {name: run.to_dict() for name, run in o.selftest_runs().items()},
        "results_dir": str(o.out),
        "build": o.build,
    }


def _per_backend(outcomes: list[KernelOutcome], n: int, field: str) -> dict:
    """{kernel: {backend: [...]}} of one per-backend field of clause n in each summary (channels, memory)."""
    out = {}
    for o in outcomes:
        clause = (o.summary or {}).get("clauses", {}).get(str(n), {})
        out[o.name] = dict(clause.get(field, {}))
    return out


def _bench_comparison(stock: Optional[KernelOutcome], candidate: Optional[KernelOutcome]) -> dict:
    if not (stock and candidate and stock.bench and candidate.bench):
        return {}
    from harness.timing import bench
    rows, skipped = bench.compare_results(bench.results_of(stock.bench), bench.results_of(candidate.bench))
    return {"rows": [{"name": c.name, "a_median": c.median_a, "b_median": c.median_b, "diff": c.diff,
                      "diff_lo": c.ci_lo, "diff_hi": c.ci_hi, "verdict": c.verdict} for c in rows],
            "not_compared": skipped,
            "stock_calibration": stock.bench.get("calibration"),
            "candidate_calibration": candidate.bench.get("calibration")}


@functools.lru_cache(maxsize=1)
def _qemu_version() -> str:
    try:
        return subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "not installed"


def _reproduce(outcomes: list[KernelOutcome], patches: Optional[Path], quick: bool) -> dict:
    qemu = _qemu_version()
    return {
        "command": "uffd-harness validate" + (f" --patches {patches}" if patches else "") + (" --quick" if quick else ""),
        "host_kernel": platform.release(),
        "qemu": qemu,
        "python": platform.python_version(),
        "builds": {o.name: o.build for o in outcomes if o.build},
    }


def render_markdown(report: dict) -> str:
    from tabulate import tabulate
    names = list(report["kernels"])
    lines = [f"# uffd-harness validation", "", f"**{report['verdict']['line']}**", ""]
    if report["qemu"] != "ok":
        lines += [f"QEMU could not run here ({report['qemu']}); the host kernel was validated, and clauses it "
                  "cannot run came from the simulator.", ""]
    if report["problems"]:
        lines += ["Problems:", ""] + [f"- {p}" for p in report["problems"]] + [""]
    lines += ["## Contract", ""]
    rows = []
    for n, clause in report["clauses"].items():
        memory = clause.get("memory", {})
        via = "; ".join(f"{k}: " + ", ".join(
            f"{b} ({', '.join(ch) or '-'})" + (f" on {', '.join(memory[k][b])}" if memory.get(k, {}).get(b) else "")
            for b, ch in v.items()) for k, v in clause["observed_via"].items() if v)
        rows.append([n, clause["text"]] + [clause.get(k, "") for k in names] + [via])
    lines += [tabulate(rows, headers=["clause", "what"] + names + ["observed via"], tablefmt="github"), ""]
    lines += ["## Kernels", ""]
    krows = []
    for name, k in report["kernels"].items():
        t = k["tests"]
        krows.append([name, k["release"], k["where"] + (f" ({k['accel']})" if k["accel"] else ""),
                      "yes" if k["patched"] else "no" if k["patched"] is not None else "?",
                      f"{t.get('passed', 0)}/{t.get('failed', 0)}/{t.get('skipped', 0)}",
                      ", ".join(f"{b} {c}" for b, c in k["backends"].items()), k["error"] or ""])
    lines += [tabulate(krows, headers=["kernel", "release", "where", "hints", "pass/fail/skip", "backends", "error"],
                       tablefmt="github"), ""]
    lines += ["## Kernel selftests", ""]
    srows = []
    for name, k in report["kernels"].items():
        for test, run in k["selftests"].items():
            c = run["counts"]
            srows.append([name, test, run["result"], c["pass"], c["skip"], c["fail"], run.get("error", "")])
    lines += [tabulate(srows, headers=["kernel", "selftest", "result", "pass", "skip", "fail", "note"],
                       tablefmt="github"), ""]
    if report["selftest_regressions"]:
        lines += ["Regressions from stock: " + "; ".join(f"{t}: {', '.join(c)}" for t, c in
                                                         report["selftest_regressions"].items()), ""]
    bench = report["bench"]
    if bench.get("rows"):
        lines += ["## First-touch benchmarks (stock against candidate)", ""]
        brows = []
        for r in bench["rows"]:
            brows.append([r["name"], f"{r['a_median']:.0f}", f"{r['b_median']:.0f}",
                          _fmt_interval(r["diff_lo"], r["diff_hi"]), r["verdict"]])
        lines += [tabulate(brows, headers=["scenario", "stock median", "candidate median",
                                           "difference 95% CI", "verdict"], tablefmt="github"), ""]
        if bench.get("not_compared"):
            lines += ["Not compared: " + "; ".join(bench["not_compared"]), ""]
        names_with_plots = [n for n, k in report["kernels"].items() if Path(k["results_dir"], "bench.png").exists()]
        if names_with_plots:
            lines += ["Distributions: " + ", ".join(f"`{report['kernels'][n]['results_dir']}/bench.png`"
                                                    for n in names_with_plots), ""]
        cal = bench.get("candidate_calibration") or {}
        if cal.get("tcg"):
            lines += ["These ran under QEMU TCG: the cycle counts do not model hardware accessed/dirty assists.", ""]
    lines += ["## Reproduce", "", "```", json.dumps(report["reproduce"], indent=2), "```", "",
              f"Total time: {report['seconds']} s"]
    return "\n".join(lines) + "\n"


def _fmt_interval(lo, hi) -> str:
    return "" if lo is None or hi is None else f"[{lo:.0f}, {hi:.0f}]"


def render_tap(report: dict) -> str:
    """KTAP: one subtest per kernel with its clauses and selftests, then the verdict."""
    kernels = report["kernels"]
    lines = ["KTAP version 1", f"1..{len(kernels) + 1}"]
    for i, (name, k) in enumerate(kernels.items(), 1):
        cases = []
        for n, clause in report["clauses"].items():
            result = clause.get(name, "absent")
            cases.append((result != "fail" and result != "error",
                          f"clause_{n}", " # SKIP feature absent" if result == "absent" else ""))
        for test, run in k["selftests"].items():
            for case in run["cases"]:
                skip = f" # SKIP {case['reason']}" if case["result"] == "skip" else ""
                cases.append((case["result"] != "fail", f"{test}:{case['name']}".replace(" ", "_"), skip))
            if run.get("error"):
                cases.append((False, f"{test}", f" # {run['error']}"))
        if k["error"]:
            cases.append((False, "boot_and_run", f" # {k['error'].splitlines()[0]}"))
        lines.append(f"    KTAP version 1")
        lines.append(f"    # Subtest: {name}")
        lines.append(f"    1..{len(cases)}")
        for j, (ok, desc, directive) in enumerate(cases, 1):
            lines.append(f"    {'ok' if ok else 'not ok'} {j} {desc}{directive}")
        kernel_ok = all(ok for ok, _, _ in cases)
        lines.append(f"{'ok' if kernel_ok else 'not ok'} {i} {name}")
    lines.append(f"{'ok' if report['ok'] else 'not ok'} {len(kernels) + 1} verdict # {report['verdict']['line']}")
    return "\n".join(lines) + "\n"


def render_junit(report: dict) -> str:
    from xml.sax.saxutils import escape, quoteattr
    cases = []
    for n, clause in report["clauses"].items():
        for name in report["kernels"]:
            result = clause.get(name, "absent")
            body = ""
            if result in ("fail", "error"):
                body = f"<failure message={quoteattr(clause['text'])}/>"
            elif result == "absent":
                body = "<skipped message=\"feature absent\"/>"
            cases.append(f"<testcase classname=\"contract.{escape(name)}\" name=\"clause_{n}\">{body}</testcase>")
    for name, k in report["kernels"].items():
        for test, run in k["selftests"].items():
            for case in run["cases"]:
                body = ("<failure/>" if case["result"] == "fail" else
                        f"<skipped message={quoteattr(case['reason'])}/>" if case["result"] == "skip" else "")
                cases.append(f"<testcase classname=\"selftests.{escape(name)}.{escape(test)}\" "
                             f"name={quoteattr(case['name'])}>{body}</testcase>")
    failures = sum("<failure" in c for c in cases)
    skipped = sum("<skipped" in c for c in cases)
    return ("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
            f"<testsuites><testsuite name=\"uffd-harness-validate\" tests=\"{len(cases)}\" "
            f"failures=\"{failures}\" skipped=\"{skipped}\">\n" + "\n".join(cases) + "\n</testsuite></testsuites>\n")


def render_terminal(report: dict) -> str:
    from tabulate import tabulate
    names = list(report["kernels"])
    rows = [[n, c["text"][:60]] + [c.get(k, "") for k in names] for n, c in report["clauses"].items()]
    out = ["", tabulate(rows, headers=["clause", "what"] + names), ""]
    out += [f"problem: {p}" for p in report["problems"]]
    out += [f"report: {RESULTS_DIR / 'report.md'} (also report.json, report.tap, report.junit.xml)",
            f"total time: {report['seconds']:.0f} s", "", report["verdict"]["line"]]
    return "\n".join(out)


def write_report(report: dict, results: Path) -> None:
    (results / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (results / "report.md").write_text(render_markdown(report))
    (results / "report.tap").write_text(render_tap(report))
    (results / "report.junit.xml").write_text(render_junit(report))


# ---------------------------------------------------------------------------
# one kernel's suite in a guest (make vm-test)

def guest_suite(kernel: str, patches: Optional[Path] = None, pytest_args: tuple[str, ...] = (),
                timeout: float = PYTEST_TIMEOUT + 120, results: Path = RESULTS_DIR, log: Log = _log) -> int:
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
    argv = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests"), "--ignore", str(REPO_ROOT / "tests" / "vm"),
            "-p", "no:cacheprovider", "-rfE", "--junitxml", str(out / "junit.xml"),
            "--summary-json", str(out / "summary.json"), "-m", GUEST_MARKERS, *pytest_args]
    env = {**guest_environment(out), "CI": os.environ.get("CI", "")}
    try:
        kb = vm_build.build_kernel(kernel, patches, log=log)
        compile_for_guests(log)
        log(f"[vm-test] kernel '{kernel}': running the suite in the guest (timeout {timeout:.0f} s)")
        result = runner.run_in_guest(kb, argv, timeout=timeout, rwdir=out, env=env,
                                     console_log=out / "console.log", log=log)
    except VmError as exc:
        log(f"[vm-test] kernel '{kernel}': {exc}")
        return exc.exit_status
    log(f"[vm-test] kernel '{kernel}': pytest exited {result.returncode} after {result.elapsed:.0f} s "
        f"({result.accel}); results in {out}")
    timeline = _guest_timeline(out / "summary.json")
    if timeline:
        log(f"[vm-test] kernel '{kernel}': {timeline}")
    return result.returncode


def _guest_timeline(summary: Path) -> str:
    """One line on how long the guest took to get to its tests, from summary.json ("" without one)."""
    try:
        t = json.loads(summary.read_text())["timeline"]
    except (OSError, ValueError, KeyError):
        return ""
    first = "no test ran" if t["first_test"] is None else f"the first test at {t['first_test']:.1f} s"
    return (f"guest timeline, in seconds since its kernel booted: pytest's Python started at "
            f"{t['process_start']:.1f} s, {first}, the run ended at {t['summary']:.1f} s")


def run_suite(args: argparse.Namespace) -> int:
    patches = Path(args.patches).resolve() if args.patches else None
    return guest_suite(args.kernel, patches, tuple(args.pytest_args))


# ---------------------------------------------------------------------------
# command line

def run(args: argparse.Namespace) -> int:
    if args.guest:
        selftests_dir = None
        kernel = os.environ.get("UFFD_HARNESS_KERNEL")
        if kernel:
            from harness.vm.build import load_kernel
            selftests_dir = load_kernel(kernel).selftests_dir
        run_steps(Path(args.guest), selftests_dir, args.quick)
        return 0
    patches = Path(args.patches).resolve() if args.patches else None
    if patches is not None and not patches.is_dir():
        print(f"uffd-harness validate: --patches {args.patches}: not a directory", file=sys.stderr)
        return 2
    return validate(patches, args.quick)


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="build stock and patched kernels, run every check, report a verdict")
    p.add_argument("--patches", metavar="DIR", help="validate this patch series (a series file or *.patch) "
                                                    "instead of the project's hint patch")
    p.add_argument("--quick", action="store_true", help="skip slow tests, fewer benchmark rounds")
    p.add_argument("--guest", metavar="OUT", help=argparse.SUPPRESS)  # the in-guest half
    p.set_defaults(func=run)
    s = subparsers.add_parser("suite", help="run the pytest suite inside a guest of one kernel (make vm-test)")
    s.add_argument("--kernel", default="patched", help="kernel name: patched, stock, or one built with --patches")
    s.add_argument("--patches", metavar="DIR", help="the series of a kernel other than patched/stock")
    s.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    s.set_defaults(func=run_suite)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m harness.validate")
    parser.add_argument("--patches")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--guest")
    sys.exit(run(parser.parse_args()))
