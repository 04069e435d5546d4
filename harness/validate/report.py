"""The report of a validation, rendered: Markdown and the terminal for people, KTAP and JUnit for programs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tabulate import tabulate

from harness.timing import stats


def render_markdown(report: dict) -> str:
    names = list(report["kernels"])
    lines = ["# uffd-harness validation", "", f"**{report['verdict']['line']}**", ""]
    origin = report.get("origin") or {}
    if origin.get("tree"):
        lines += [
            f"Tree `{origin['tree']}`: control `{report.get('control_kernel')}` is base {origin['base'][:12]}, "
            f"the candidate is head {origin['head'][:12]}"
            + (" with the uncommitted changes of tracked files" if origin.get("dirty") else "")
            + "; both built from `git archive` of the commits.",
            "",
        ]
    elif origin.get("identity"):
        lines += [f"Source: {origin['identity']} (control `{report.get('control_kernel')}`).", ""]
    if report["qemu"] != "ok":
        lines += [
            f"QEMU could not run here ({report['qemu']}); the host kernel was validated, and clauses it "
            "cannot run came from the simulator.",
            "",
        ]
    if report["problems"]:
        lines += ["Problems:", ""] + [f"- {p}" for p in report["problems"]] + [""]
    control = report.get("control") or {}
    if control.get("reused"):
        lines += [
            f"The control's ({control['kernel']}) guest results were reused from {control['created']}: "
            "its kernel build, the harness code and tests, `--quick` and the guest settings are unchanged "
            "(`--fresh-control` boots it again).",
            "",
        ]
    lines += ["## Contract", ""]
    rows = []
    for n, clause in report["clauses"].items():
        memory = clause.get("memory", {})
        via = "; ".join(
            f"{k}: "
            + ", ".join(
                f"{b} ({', '.join(ch) or '-'})" + (f" on {', '.join(memory[k][b])}" if memory.get(k, {}).get(b) else "")
                for b, ch in v.items()
            )
            for k, v in clause["observed_via"].items()
            if v
        )
        rows.append([n, clause["text"]] + [clause.get(k, "") for k in names] + [via])
    lines += [tabulate(rows, headers=["clause", "what"] + names + ["observed via"], tablefmt="github"), ""]
    lines += _coverage_markdown(report)
    lines += ["## Kernels", ""]
    krows = []
    config_notes = []
    for name, k in report["kernels"].items():
        t = k["tests"]
        build = k.get("build") or {}
        absent, not_applied = _config_report(build)
        krows.append(
            [
                name,
                k["release"],
                _source_of(build),
                k["where"] + (f" ({k['accel']})" if k["accel"] else ""),
                "yes" if k["patched"] else "no" if k["patched"] is not None else "?",
                f"{t.get('passed', 0)}/{t.get('failed', 0)}/{t.get('skipped', 0)}",
                ", ".join(f"{b} {c}" for b, c in k["backends"].items()),
                k.get("pte_channel", "?"),
                (f"{len(absent)} absent, {len(not_applied)} not applied" if build else ""),
                k["error"] or "",
            ]
        )
        if absent:
            config_notes.append(
                f"- `{name}` ({build.get('kernel_version', '?')}): not in this version's Kconfig: "
                + ", ".join(f"`{o}`" for o in absent)
            )
        if not_applied:
            config_notes.append(
                f"- `{name}` ({build.get('kernel_version', '?')}): set but did not stick "
                "(a dependency is missing): " + ", ".join(f"`{o}`" for o in not_applied)
            )
    lines += [
        tabulate(
            krows,
            headers=[
                "kernel",
                "release",
                "source",
                "where",
                "hints",
                "pass/fail/skip",
                "backends",
                "pte channel",
                "config fragment",
                "error",
            ],
            tablefmt="github",
        ),
        "",
    ]
    if config_notes:
        lines += ["Options of the config fragment (vm/kernel.config) that are not as written:", ""]
        lines += config_notes + [""]
    lines += ["## Kernel selftests", ""]
    srows = []
    for name, k in report["kernels"].items():
        for test, run in k["selftests"].items():
            c = run["counts"]
            note = run.get("error", "") or (
                f"flaky: {', '.join(run['flaky'])} failed in a first run, passed in a second"
                if run.get("flaky")
                else ""
            )
            srows.append([name, test, run["result"], c["pass"], c["skip"], c["fail"], note])
    lines += [
        tabulate(srows, headers=["kernel", "selftest", "result", "pass", "skip", "fail", "note"], tablefmt="github"),
        "",
    ]
    if report["selftest_regressions"]:
        lines += [
            "Regressions from stock: "
            + "; ".join(f"{t}: {', '.join(c)}" for t, c in report["selftest_regressions"].items()),
            "",
        ]
    lines += _markdown_bench(report)
    lines += [
        "## Reproduce",
        "",
        "```",
        json.dumps(report["reproduce"], indent=2),
        "```",
        "",
        f"Total time: {report['seconds']} s",
    ]
    return "\n".join(lines) + "\n"


def _source_of(build: dict) -> str:
    """Where a kernel's tree came from, short: "linux-source-6.1 6.1.192-3", "git 1a2b3c4d5e6f" + series."""
    src = build.get("source") or {}
    if src.get("kind") == "git":
        text = f"git {src.get('commit', '')[:12]}"
    else:
        text = build.get("source_version", "")
    if build.get("patches"):
        text += f" + {len(build['patches'])} patch(es)"
    return text


def _config_report(build: dict) -> tuple[list[str], list[str]]:
    """(absent from the version's Kconfig, set but not applied); older builds list all as not applied."""
    if "config_absent" in build or "config_not_applied" in build:
        return list(build.get("config_absent") or []), list(build.get("config_not_applied") or [])
    return [], list(build.get("config_missing") or [])


def _markdown_bench(report: dict) -> list[str]:
    """The benchmark section: measured medians; a verdict only where the hardware was measured."""
    bench = report["bench"]
    if not bench.get("rows"):
        return []
    lines = ["## First-touch benchmarks (stock against candidate)", ""]
    if bench.get("emulated"):
        lines += [
            f"**{bench['emulated']}.** The medians below are what the emulator measured; they are not compared.",
            "",
        ]
        brows = [[r["name"], f"{r['a_median']:.0f}", f"{r['b_median']:.0f}"] for r in bench["rows"]]
        lines += [
            tabulate(brows, headers=["scenario", "stock median (TCG)", "candidate median (TCG)"], tablefmt="github"),
            "",
        ]
    else:
        brows = [
            [
                r["name"],
                f"{r['a_median']:.0f}",
                f"{r['b_median']:.0f}",
                _fmt_interval(r["diff_lo"], r["diff_hi"]),
                r["verdict"],
            ]
            for r in bench["rows"]
        ]
        lines += [
            tabulate(
                brows,
                headers=["scenario", "stock median", "candidate median", "difference 95% CI", "verdict"],
                tablefmt="github",
            ),
            "",
        ]
    if bench.get("not_compared"):
        lines += ["Not compared: " + "; ".join(bench["not_compared"]), ""]
    names_with_plots = [n for n, k in report["kernels"].items() if Path(k["results_dir"], "bench.png").exists()]
    if names_with_plots:
        lines += [
            "Distributions: "
            + ", ".join(f"`{report['kernels'][n]['results_dir']}/bench.png`" for n in names_with_plots),
            "",
        ]
    if bench.get("emulated"):
        lines += _markdown_projection(bench.get("projection") or {})
    return lines


def _markdown_projection(projection: dict) -> list[str]:
    lines = ["### Projection for this host's CPU (simulator cost model, not a measurement)", ""]
    if not projection.get("available"):
        return lines + [
            f"No projection: {projection.get('why', 'not computed')}; to make one, {projection.get('how', '')}.",
            "",
        ]
    lines += [
        f"From the host calibration `{projection['source']}` of {projection['created']} "
        f"({projection['cpu_model']}, kernel {projection['kernel']}): cycles per first touch after an "
        "un-protect, priced by the simulator's cost model (harness/sim/cost.py) with and without the hint.",
        "",
    ]
    rows = [
        [
            r["scenario"],
            r["hints"],
            f"{r['without']:.0f}",
            f"{r['with']:.0f}",
            f"{r['saved']:.0f}",
            _fmt_interval(r["saved_lo"], r["saved_hi"]) or "none (calibration without intervals)",
            " vs ".join(r["bench"]),
        ]
        for r in projection["rows"]
    ]
    lines += [
        tabulate(
            rows,
            headers=["scenario", "hint", "without", "with", "projected saving", "95% interval", "bench counterparts"],
            tablefmt="github",
        ),
        "",
    ]
    return lines


def _terminal_bench(report: dict) -> list[str]:
    bench = report.get("bench") or {}
    if not bench.get("rows"):
        return []
    if not bench.get("emulated"):
        judged = [r for r in bench["rows"] if r["verdict"] != stats.NO_DIFFERENCE]
        return [f"bench: {len(bench['rows'])} scenarios compared, {len(judged)} with a difference (report.md)"]
    out = [f"bench: {bench['emulated']}"]
    projection = bench.get("projection") or {}
    if not projection.get("available"):
        return out + [f"bench: no projection: {projection.get('why')}; {projection.get('how')}"]
    for r in projection["rows"]:
        if r["bench"]:
            interval = _fmt_interval(r["saved_lo"], r["saved_hi"])
            out.append(
                f"bench: projection ({projection['created']} host calibration, cost model): "
                f"{r['scenario']} with hint {r['hints']} saves {r['saved']:.0f} cycles"
                + (f" (95% {interval})" if interval else "")
            )
    return out


def _coverage_markdown(report: dict) -> list[str]:
    """Per clause and kernel: each memory target (kind x shape) it ran on, the backend and the channels."""
    rows = []
    for n, clause in report["clauses"].items():
        for kernel, targets in clause.get("coverage", {}).items():
            for label, c in sorted(targets.items()):
                rows.append(
                    [
                        n,
                        kernel,
                        label,
                        c.get("outcome") or "-",
                        c.get("backend") or "-",
                        ", ".join(c.get("channels", [])) or "-",
                    ]
                )
        for kernel, gaps in clause.get("gaps", {}).items():
            for gap in gaps:
                rows.append([n, kernel, "not shown", gap, "", ""])
    if not rows:
        return []
    return [
        "## Coverage",
        "",
        "Each clause's cases: memory kind and range shape (`-span`: several pages over two VMAs across a "
        "PMD boundary, one ioctl; `-thp`: a PMD-mapped THP), where they ran, and the channels that "
        "observed them (the write probe sees writability on every backend).",
        "",
        tabulate(rows, headers=["clause", "kernel", "memory", "outcome", "backend", "channels"], tablefmt="github"),
        "",
    ]


def _fmt_interval(lo, hi) -> str:
    return "" if lo is None or hi is None else f"[{lo:.0f}, {hi:.0f}]"


#: what a KTAP test name may hold: kunit.py's parser reads a description up to the first '#'
_KTAP_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:+-]+")


def _ktap_name(text: str) -> str:
    """A KTAP test name: no '#' (it starts a directive), no spaces, one line."""
    return _KTAP_NAME_UNSAFE.sub("_", text).strip("_") or "unnamed"


def _ktap_note(text: str) -> str:
    """A directive's or diagnostic's text on one line (a newline would end the result line)."""
    return " ".join(str(text).split())


def render_tap(report: dict) -> str:
    """KTAP: one subtest per kernel with its clauses and selftests, then the verdict.

    Checked by the kernel's own parser (``tools/testing/kunit/kunit.py parse``,
    tests/vm/test_kernel_ci.py): names carry no '#', absent clauses and skipped
    cases are ``ok ... # SKIP reason``, and a clause that could not run because
    its kernel did not (build failure, panic) is ``not ok`` with the reason.
    """
    kernels = report["kernels"]
    lines = ["KTAP version 1", f"1..{len(kernels) + 1}"]
    for i, (name, k) in enumerate(kernels.items(), 1):
        cases = []
        for n, clause in report["clauses"].items():
            result = clause.get(name, "absent")
            directive = ""
            if result == "absent":
                directive = " # SKIP feature absent"
            elif result == "error":
                directive = " # " + _ktap_note(f"not run: {(k['error'] or 'kernel did not run').splitlines()[0]}")
            cases.append((result not in ("fail", "error"), f"clause_{n}", directive))
        for test, run in k["selftests"].items():
            for case in run["cases"]:
                skip = f" # SKIP {_ktap_note(case['reason'])}" if case["result"] == "skip" else ""
                cases.append((case["result"] != "fail", _ktap_name(f"{test}:{case['name']}"), skip))
            if run.get("error"):
                cases.append((False, _ktap_name(test), f" # {_ktap_note(run['error'])}"))
        if k["error"]:
            cases.append((False, "boot_and_run", f" # {_ktap_note(k['error'].splitlines()[0])}"))
        lines.append("    KTAP version 1")
        lines.append(f"    # Subtest: {_ktap_name(name)}")
        lines.append(f"    1..{len(cases)}")
        for j, (ok, desc, directive) in enumerate(cases, 1):
            lines.append(f"    {'ok' if ok else 'not ok'} {j} {desc}{directive}")
        kernel_ok = all(ok for ok, _, _ in cases)
        lines.append(f"{'ok' if kernel_ok else 'not ok'} {i} {_ktap_name(name)}")
    bench = report.get("bench") or {}
    if bench.get("emulated"):
        # a diagnostic, not a test: under TCG a timing comparison has no result to report
        lines.append(f"# bench: {_ktap_note(bench['emulated'])}")
    lines.append(
        f"{'ok' if report['ok'] else 'not ok'} {len(kernels) + 1} verdict # {_ktap_note(report['verdict']['line'])}"
    )
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
                body = '<skipped message="feature absent"/>'
            cases.append(f'<testcase classname="contract.{escape(name)}" name="clause_{n}">{body}</testcase>')
    for name, k in report["kernels"].items():
        for test, run in k["selftests"].items():
            for case in run["cases"]:
                body = (
                    "<failure/>"
                    if case["result"] == "fail"
                    else f"<skipped message={quoteattr(case['reason'])}/>"
                    if case["result"] == "skip"
                    else ""
                )
                cases.append(
                    f'<testcase classname="selftests.{escape(name)}.{escape(test)}" '
                    f"name={quoteattr(case['name'])}>{body}</testcase>"
                )
    failures = sum("<failure" in c for c in cases)
    skipped = sum("<skipped" in c for c in cases)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuites><testsuite name="uffd-harness-validate" tests="{len(cases)}" '
        f'failures="{failures}" skipped="{skipped}">\n' + "\n".join(cases) + "\n</testsuite></testsuites>\n"
    )


def render_terminal(report: dict, results: Path) -> str:
    names = list(report["kernels"])
    rows = [[n, c["text"][:60]] + [c.get(k, "") for k in names] for n, c in report["clauses"].items()]
    out = ["", tabulate(rows, headers=["clause", "what"] + names), ""]
    out += [f"problem: {p}" for p in report["problems"]]
    out += _terminal_bench(report)
    out += [
        f"report: {results / 'report.md'} (also report.json, report.tap, report.junit.xml, report.kcidb.json)",
        f"total time: {report['seconds']:.0f} s",
        "",
        report["verdict"]["line"],
    ]
    return "\n".join(out)


def write_report(report: dict, results: Path) -> None:
    """report.json, .md, .tap, .junit.xml and .kcidb.json (origin from UFFD_HARNESS_KCIDB_ORIGIN)."""
    from harness.validate import kcidb

    (results / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    # KCIDB from the document as written (JSON keys are strings), so report.json alone reproduces it
    (results / "report.kcidb.json").write_text(
        json.dumps(kcidb.document(json.loads((results / "report.json").read_text())), indent=1) + "\n"
    )
    (results / "report.md").write_text(render_markdown(report))
    (results / "report.tap").write_text(render_tap(report))
    (results / "report.junit.xml").write_text(render_junit(report))
