"""The report of a validation, rendered: Markdown and the terminal for people, KTAP and JUnit for programs."""
from __future__ import annotations

import json
from pathlib import Path


def render_markdown(report: dict) -> str:
    from tabulate import tabulate
    names = list(report["kernels"])
    lines = ["# uffd-harness validation", "", f"**{report['verdict']['line']}**", ""]
    origin = report.get("origin") or {}
    if origin.get("tree"):
        lines += [f"Tree `{origin['tree']}`: control `{report.get('control')}` is base {origin['base'][:12]}, "
                  f"the candidate is head {origin['head'][:12]}"
                  + (" with the uncommitted changes of tracked files" if origin.get("dirty") else "")
                  + "; both built from `git archive` of the commits.", ""]
    elif origin.get("identity"):
        lines += [f"Source: {origin['identity']} (control `{report.get('control')}`).", ""]
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
    lines += _coverage_markdown(report)
    lines += ["## Kernels", ""]
    krows = []
    config_notes = []
    for name, k in report["kernels"].items():
        t = k["tests"]
        build = k.get("build") or {}
        absent, not_applied = _config_report(build)
        krows.append([name, k["release"], _source_of(build), k["where"] + (f" ({k['accel']})" if k["accel"] else ""),
                      "yes" if k["patched"] else "no" if k["patched"] is not None else "?",
                      f"{t.get('passed', 0)}/{t.get('failed', 0)}/{t.get('skipped', 0)}",
                      ", ".join(f"{b} {c}" for b, c in k["backends"].items()),
                      (f"{len(absent)} absent, {len(not_applied)} not applied" if build else ""), k["error"] or ""])
        if absent:
            config_notes.append(f"- `{name}` ({build.get('kernel_version', '?')}): not in this version's Kconfig: "
                                + ", ".join(f"`{o}`" for o in absent))
        if not_applied:
            config_notes.append(f"- `{name}` ({build.get('kernel_version', '?')}): set but did not stick "
                                "(a dependency is missing): " + ", ".join(f"`{o}`" for o in not_applied))
    lines += [tabulate(krows, headers=["kernel", "release", "source", "where", "hints", "pass/fail/skip", "backends",
                                       "config fragment", "error"], tablefmt="github"), ""]
    if config_notes:
        lines += ["Options of the config fragment (vm/kernel.config) that are not as written:", ""] + config_notes + [""]
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
    """(absent from the version's Kconfig, set but not applied); builds from before the split list all as not applied."""
    if "config_absent" in build or "config_not_applied" in build:
        return list(build.get("config_absent") or []), list(build.get("config_not_applied") or [])
    return [], list(build.get("config_missing") or [])


def _coverage_markdown(report: dict) -> list[str]:
    """Per clause and kernel: each memory target (kind x shape) it ran on, the backend and the channels."""
    from tabulate import tabulate
    rows = []
    for n, clause in report["clauses"].items():
        for kernel, targets in clause.get("coverage", {}).items():
            for label, c in sorted(targets.items()):
                rows.append([n, kernel, label, c.get("outcome") or "-", c.get("backend") or "-",
                             ", ".join(c.get("channels", [])) or "-"])
        for kernel, gaps in clause.get("gaps", {}).items():
            for gap in gaps:
                rows.append([n, kernel, "not shown", gap, "", ""])
    if not rows:
        return []
    return ["## Coverage", "",
            "Each clause's cases: memory kind and range shape (`-span`: several pages over two VMAs across a "
            "PMD boundary, one ioctl; `-thp`: a PMD-mapped THP), where they ran, and the channels that "
            "observed them (the write probe sees writability on every backend).", "",
            tabulate(rows, headers=["clause", "kernel", "memory", "outcome", "backend", "channels"],
                     tablefmt="github"), ""]


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
        lines.append("    KTAP version 1")
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


def render_terminal(report: dict, results: Path) -> str:
    from tabulate import tabulate
    names = list(report["kernels"])
    rows = [[n, c["text"][:60]] + [c.get(k, "") for k in names] for n, c in report["clauses"].items()]
    out = ["", tabulate(rows, headers=["clause", "what"] + names), ""]
    out += [f"problem: {p}" for p in report["problems"]]
    out += [f"report: {results / 'report.md'} (also report.json, report.tap, report.junit.xml)",
            f"total time: {report['seconds']:.0f} s", "", report["verdict"]["line"]]
    return "\n".join(out)


def write_report(report: dict, results: Path) -> None:
    (results / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (results / "report.md").write_text(render_markdown(report))
    (results / "report.tap").write_text(render_tap(report))
    (results / "report.junit.xml").write_text(render_junit(report))
