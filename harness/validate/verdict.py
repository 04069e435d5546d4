"""The verdict and the report document of a validation, from each kernel's outcome.

:func:`build_report` makes ``report.json``'s dictionary; :mod:`harness.validate.report`
renders it for people (Markdown, the terminal) and programs (KTAP, JUnit).
"""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Optional

from harness.selftests import SELFTESTS, regressions
from harness.validate.outcome import KernelOutcome

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
        "benchmarks": {o.name: _bench_scenarios(o.bench) for o in outcomes if o.bench},
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


def _bench_scenarios(doc: dict) -> dict:
    from harness.validate.benchmarks import scenarios_of
    return scenarios_of(doc)


def _bench_comparison(stock: Optional[KernelOutcome], candidate: Optional[KernelOutcome]) -> dict:
    """Stock against candidate; under TCG no verdicts, a projection instead (harness.validate.benchmarks)."""
    if not (stock and candidate and stock.bench and candidate.bench):
        return {}
    from harness.validate import benchmarks
    return benchmarks.comparison(stock.bench, candidate.bench)


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
