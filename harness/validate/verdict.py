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

from harness.backends.contract import CONTRACT
from harness.reports import REPORT_SCHEMA
from harness.selftests import regressions
from harness.validate.outcome import KernelOutcome

#: what each contract clause says (BRIEF 2.2), from the one table
CLAUSES = {n: clause.text for n, clause in CONTRACT.items()}

#: verdict kinds; only HOLDS exits 0
HOLDS, BROKEN, NOT_SHOWN, ABSENT, ERROR = "holds", "broken", "not shown", "absent", "error"


def _verdict(outcomes: list[KernelOutcome], candidate: Optional[KernelOutcome], evidence: list[str]) -> tuple[str, str]:
    """(kind, line): kind is holds, broken, not shown, absent or error.

    ``evidence``: problems seen by checks other than the contract tests (the
    suite's other tests, the selftests, the benchmarks' state checks, a
    crashed or timed-out step).  Evidence against the contract that maps to
    no clause can never leave the verdict at "holds": it makes it "not
    shown", so the headline and the exit status always agree.
    """
    if candidate is None:
        host = outcomes[0] if outcomes else None
        if host and host.summary and host.summary.get("patched"):
            candidate = host
        else:
            return ABSENT, (
                f"feature absent: kernel {platform.release()} does not offer "
                "UFFD_FEATURE_ACCESS_HINTS; clauses 2-4 and 6-8 ran on the simulator only"
            )
    failed = [n for n, r in sorted(candidate.clauses.items()) if r == "fail"]
    if failed:
        return BROKEN, "contract broken: " + "; ".join(f"clause {n} ({CLAUSES[n]})" for n in failed)
    if candidate.error:
        return ERROR, f"error: kernel '{candidate.name}': {candidate.error.splitlines()[0]}"
    if not candidate.summary:
        return ERROR, f"error: kernel '{candidate.name}' produced no test summary"
    if not candidate.summary.get("patched"):
        return ABSENT, f"feature absent: kernel '{candidate.name}' does not offer UFFD_FEATURE_ACCESS_HINTS"
    missing = [n for n in CLAUSES if n not in candidate.clauses]
    not_passed = [n for n, r in sorted(candidate.clauses.items()) if r != "pass"] + missing
    if not_passed:
        gaps = candidate.clause_gaps()
        detail = "; ".join(
            f"clause {n}: " + (", ".join(gaps.get(n, [])[:2]) or candidate.clauses.get(n, "did not run"))
            for n in sorted(not_passed)
        )
        return NOT_SHOWN, f"contract not shown: {detail}"
    if evidence:
        return NOT_SHOWN, f"contract not shown: every clause passed, but {evidence[0]}"
    return HOLDS, f"contract holds: kernel '{candidate.name}' keeps all {len(CLAUSES)} clauses"


def build_report(
    outcomes: list[KernelOutcome],
    patches: Optional[Path],
    quick: bool,
    seconds: float,
    qemu_reason: Optional[str] = None,
    control_kernel: str = "stock",
    origin: Optional[dict] = None,
) -> dict:
    """``control_kernel``: the name of the unpatched kernel (stock, stock-6.1, git-<base>);
    ``origin``: where both came from (source, or the tree and its commits), for the report."""
    by_name = {o.name: o for o in outcomes}
    stock = by_name.get(control_kernel)
    # The kernel under validation: any guest kernel that is not the control.
    candidate = next((o for o in outcomes if o.where == "guest" and o.name != control_kernel), None)
    problems = []
    for o in outcomes:
        if o.error:
            problems.append(f"kernel '{o.name}': {o.error.splitlines()[0]}")
        pytest_step = o.steps.get("pytest", {})
        if pytest_step.get("error") or pytest_step.get("returncode") not in (0, None):
            problems.append(
                f"kernel '{o.name}': pytest suite "
                + (pytest_step.get("error") or f"exited {pytest_step.get('returncode')}")
            )
        for name, run in o.selftest_runs().items():
            if run.result == "fail":
                problems.append(
                    f"kernel '{o.name}': selftest {name} "
                    + (
                        run.error
                        or (
                            f"{run.counts()['fail']} case(s) failed"
                            if run.counts()["fail"]
                            else f"exited {run.returncode}"
                        )
                    )
                )
        bench_step = o.steps.get("bench", {})
        if bench_step.get("error") or bench_step.get("returncode") not in (0, None):
            problems.append(
                f"kernel '{o.name}': benchmarks "
                + (bench_step.get("error") or f"exited {bench_step.get('returncode')}")
            )
    selftest_regressions = {}
    same_source = bool(
        stock
        and candidate
        and (stock.build or {}).get("source_version") == (candidate.build or {}).get("source_version")
    )
    if stock and candidate and not same_source:
        problems.append(
            f"selftests of '{stock.name}' and '{candidate.name}' come from different sources "
            f"({(stock.build or {}).get('source_version')} vs "
            f"{(candidate.build or {}).get('source_version')}): "
            "not compared"
        )
    if stock and candidate and same_source:
        # like with like: same-named selftests of the same source (6.1 has userfaultfd, 6.12 uffd-unit-tests)
        stock_runs, cand_runs = stock.selftest_runs(), candidate.selftest_runs()
        for name in sorted(set(stock_runs) & set(cand_runs)):
            if name in stock_runs and name in cand_runs:
                regs = regressions(stock_runs[name], cand_runs[name])
                if regs:
                    selftest_regressions[name] = regs
                    problems.append(f"selftest {name}: regressions on '{candidate.name}': {', '.join(regs)}")
    kind, line = _verdict(outcomes, candidate, problems)
    report = {
        "schema": REPORT_SCHEMA,
        "verdict": {"kind": kind, "line": line},
        "ok": kind == HOLDS and not problems,
        "problems": problems,
        "qemu": qemu_reason or "ok",
        "quick": quick,
        "seconds": round(seconds, 1),
        "kernels": {o.name: _kernel_entry(o) for o in outcomes},
        "clauses": {
            n: {
                "text": CLAUSES[n],
                **{o.name: o.clauses.get(n, "error" if o.error else "absent") for o in outcomes},
                "observed_via": _per_backend(outcomes, n, "channels"),
                "memory": _per_backend(outcomes, n, "memory"),
                "coverage": _per_backend(outcomes, n, "coverage"),
                "gaps": {o.name: o.clause_gaps().get(n, []) for o in outcomes if o.clause_gaps().get(n)},
            }
            for n in CLAUSES
        },
        "selftest_regressions": selftest_regressions,
        "bench": _bench_comparison(stock, candidate),
        "benchmarks": {o.name: _bench_scenarios(o.bench) for o in outcomes if o.bench},
        "reproduce": _reproduce(outcomes, patches, quick, origin),
        "control_kernel": control_kernel,
        "origin": origin or {},
    }
    return report


def _kernel_entry(o: KernelOutcome) -> dict:
    s = o.summary or {}
    return {
        "where": o.where,
        "error": o.error,
        "accel": o.accel,
        "seconds": round(o.seconds, 1),
        "release": s.get("kernel_release", ""),
        "patched": s.get("patched"),
        "features": s.get("features", {}).get("offered", []),
        "tests": s.get("tests", {}),
        "backends": s.get("backends", {}),
        "selftests": {name: run.to_dict() for name, run in o.selftest_runs().items()},
        "results_dir": str(o.out),
        "build": o.build,
        "pte_channel": _pte_channel(o),
    }


def _pte_channel(o: KernelOutcome) -> str:
    """Whether this kernel had the pte channel (vm/instrumentation, named by hash), or why not."""
    build = o.build or {}
    status = build.get("pte_channel") or {}
    if status.get("available"):
        files = ", ".join(
            f"{i['file']} (sha256 {i['sha256'][:12]})" for i in build.get("instrumentation", []) if isinstance(i, dict)
        )
        return f"yes: {files or 'vm/instrumentation'}"
    if o.where == "host":
        return "no: the host kernel lacks the uffd-harness instrumentation patch (vm/instrumentation)"
    return f"no: {status.get('reason') or 'no build.json says'}"


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
        return subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "not installed"


def _reproduce(
    outcomes: list[KernelOutcome], patches: Optional[Path], quick: bool, origin: Optional[dict] = None
) -> dict:
    qemu = _qemu_version()
    origin = origin or {}
    where = ""
    if origin.get("tree"):
        where = f" --tree {origin['tree']} --base {origin['base']} --head {origin['head']}" + (
            " --dirty" if origin.get("dirty") else ""
        )
    elif origin.get("source") and origin.get("source") != "6.12":
        where = f" --source {origin['source']}"
    return {
        "command": (
            "uffd-harness validate"
            + where
            + (f" --patches {patches}" if patches else "")
            + (" --quick" if quick else "")
        ),
        "host_kernel": platform.release(),
        "qemu": qemu,
        "python": platform.python_version(),
        "builds": {o.name: o.build for o in outcomes if o.build},
    }
