"""``uffd-harness bench`` and ``uffd-harness compare``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from harness.errors import HarnessError, InvalidArgument, errno_name
from harness.process import pin_to_one_cpu
from harness.timing import bench, selftest, stats
from harness.timing.calibrate import Calibration, calibrate
from harness.timing.scenarios import SCENARIOS, Context, select


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


#: ``bench --json`` given alone: print to stdout
_STDOUT = "-"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time first touches, write-protect toggles and fault round trips (cycles)",
        description="Time first touches of PTEs in each young/dirty state, userfaultfd un-protect and "
        "missing-fault round trips, the binding's write-protect toggle and the RFC's mprotect "
        "loop.  Every timed loop runs in C; results come with the TSC calibration.",
    )
    p.add_argument("--rounds", type=_positive, default=8, help="interleaved rounds (default 8)")
    p.add_argument("--pages", type=_positive, default=256, help="pages (samples) per batch (default 256)")
    p.add_argument(
        "--only", action="append", metavar="PREFIX", help="run scenarios whose name starts with PREFIX (repeatable)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the round order and the bootstrap")
    p.add_argument(
        "--json",
        nargs="?",
        const=_STDOUT,
        default=None,
        metavar="PATH",
        help="print the results as JSON on stdout (the tables go to stderr); "
        "'--json PATH' is the old spelling of --json-out PATH (deprecated)",
    )
    p.add_argument(
        "--json-out",
        default=str(bench.DEFAULT_JSON),
        metavar="FILE",
        help=f"write the results' JSON here (default {bench.DEFAULT_JSON}); '' for none",
    )
    p.add_argument(
        "--plot",
        default=str(bench.DEFAULT_PLOT),
        metavar="PATH",
        help=f"PNG of the distributions (default {bench.DEFAULT_PLOT}); '' for none",
    )
    p.add_argument(
        "--calibration",
        default=str(bench.DEFAULT_CALIBRATION),
        metavar="PATH",
        help=f"cost model for the simulator (default {bench.DEFAULT_CALIBRATION}); '' for none",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="touch pages in address order (default: shuffled, so no stride prefetch hides TLB misses)",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument(
        "--self-test",
        action="store_true",
        help="check that the benchmark separates young+dirty from old+clean and repeats",
    )
    p.set_defaults(func=_bench_verb)

    c = subparsers.add_parser(
        "compare",
        help="compare two bench JSON files (B against A)",
        description="Side by side medians, the difference B - A with a bootstrap "
        "95%% interval, and a verdict per scenario.",
    )
    c.add_argument("a", metavar="A.json")
    c.add_argument("b", metavar="B.json")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(func=_compare)


def check_writable(path: str, option: str) -> None:
    """Fail now, not after a run of minutes, if ``path`` cannot be written: create its directory and a scratch file.

    A permission check alone would pass as root on /proc; trying is the only answer.
    """
    target = Path(path)
    if target.is_dir():
        raise InvalidArgument(option, path, "a directory; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InvalidArgument(
            option, path, f"cannot write it: {errno_name(exc.errno or 0)} ({os.strerror(exc.errno or 0)})"
        ) from None


def _bench_verb(args: argparse.Namespace) -> int:
    """``bench``, with ``--json`` printing the document on stdout and the old ``--json PATH`` still accepted."""
    if args.json not in (None, _STDOUT):
        check_writable(args.json, "--json")  # named as typed: the error must not talk of an option not given
        print(
            f"uffd-harness bench: --json PATH is deprecated and will be removed in the next release; "
            f"use --json-out {args.json}",
            file=sys.stderr,
        )
        args.json_out, args.json = args.json, None
    if args.json != _STDOUT:
        return _bench(args)
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # the tables and progress, for a person
        status = _bench(args)
    if getattr(args, "document", None) is not None:
        print(json.dumps(args.document, indent=1), file=stdout)
    return status


def _bench(args: argparse.Namespace) -> int:
    if args.list:
        print(tabulate([[s.name, s.describe] for s in SCENARIOS], headers=["scenario", "what is timed"]))
        return 0
    for option in ("json_out", "plot", "calibration"):
        if getattr(args, option, None):
            check_writable(getattr(args, option), "--" + option.replace("_", "-"))
    scenarios = select(args.only)  # an --only that matches nothing is bad input, said before the run
    # the last CPU of the affinity: the TSC of one CPU, away from CPU 0's interrupts
    pinned = None if args.no_pin else pin_to_one_cpu(max)[0]
    cal = calibrate()
    print("\n".join(bench.calibration_lines(cal, pinned)))
    if args.self_test:
        return _self_test(cal)
    ctx = Context.probe(args.pages, shuffle=not args.sequential, seed=args.seed)
    load_before = bench._loadavg()
    t0 = time.monotonic()
    results = bench.run_scenarios(
        scenarios,
        ctx,
        args.rounds,
        seed=args.seed,
        progress=lambda r, n: print(f"  round {r}/{n}", file=sys.stderr, end="\r"),
    )
    elapsed = time.monotonic() - t0
    print(file=sys.stderr)
    config = {
        "rounds": args.rounds,
        "pages": args.pages,
        "seed": args.seed,
        "only": args.only,
        "order": "address" if args.sequential else "shuffled",
        "pinned_cpu": pinned,
        "elapsed_s": elapsed,
        "loadavg_before": load_before,
        "loadavg_after": bench._loadavg(),
        "argv": sys.argv,
    }
    doc = bench.bench_document(results, cal, config, {})
    print(
        tabulate(
            bench.table_rows(results, cal), headers=bench.TABLE_HEADERS, colalign=("left",) + ("right",) * 8 + ("left",)
        )
    )
    how = (
        "two-level bootstrap (batches, then samples)"
        if args.rounds >= stats.MIN_BATCHES_FOR_CLUSTERING
        else f"bootstrap of samples only (fewer than {stats.MIN_BATCHES_FOR_CLUSTERING} rounds: "
        "batch-to-batch drift is not in the interval)"
    )
    load = f"{load_before[0]:.1f}" if load_before else "?"
    print(
        f"cycles per access or operation; CI: 95% interval of the median, {how}; "
        f"{args.rounds} interleaved rounds in {elapsed:.1f} s; load average {load}"
    )
    for line in bench.derived_lines(doc["derived"]):
        print(line)
    args.document = doc
    if args.json_out:
        print(f"JSON: {bench.write_json(doc, args.json_out)}")
    if args.calibration:
        previous = bench.load_previous_calibration(args.calibration)
        cal_doc = bench.calibration_document(results, cal, previous)
        print(f"calibration: {bench.write_json(cal_doc, args.calibration)}")
    if args.plot:
        path = bench.plot_document(doc, args.plot)
        print(f"plot: {path}" if path else "plot: skipped (matplotlib not installed: pip install '.[bench]')")
    errors = [r.name for r in results.values() if r.status.startswith("error")]
    mislabelled = [r.name for r in results.values() if r.state_errors]
    if errors:
        print(f"uffd-harness bench: failed: {', '.join(errors)}", file=sys.stderr)
    if mislabelled:
        print(
            "uffd-harness bench: the PTE state was not what the scenario name says "
            f"(see the note column): {', '.join(mislabelled)}",
            file=sys.stderr,
        )
    return 1 if errors or mislabelled else 0


#: kselftest's exit status for "skipped"
EXIT_SKIP = 4


def _self_test(cal: Calibration) -> int:
    result = selftest.run()
    lines = selftest.report_lines(result)
    if cal.tcg:
        # QEMU's softmmu sets accessed/dirty bits on its own slow path: a separation here says
        # nothing about hardware assists, so the check can neither pass nor fail.
        print("\n".join(line.replace("FAILED", "(not meaningful)") for line in lines[:-1]))
        print("self-test SKIPPED: under QEMU TCG the figures do not model hardware A/D assists")
        return EXIT_SKIP
    print("\n".join(lines))
    return 0 if result.passed else 1


def _compare(args: argparse.Namespace) -> int:
    a, b = bench.load_document(args.a), bench.load_document(args.b)
    common = set(a["scenarios"]) & set(b["scenarios"])
    if not common:
        raise HarnessError(
            f"{args.a} and {args.b} have no scenario in common (A has {len(a['scenarios'])}, "
            f"B {len(b['scenarios'])}): compare two runs of 'uffd-harness bench' with the same --only"
        )
    ca, cb = a["calibration"], b["calibration"]
    for key in ("cpu_model", "kernel", "hypervisor_vendor", "tcg"):
        if ca.get(key) != cb.get(key):
            print(f"warning: {key} differs: A {ca.get(key)!r}, B {cb.get(key)!r}", file=sys.stderr)
    if abs(ca["tsc_hz"] - cb["tsc_hz"]) > 0.01 * ca["tsc_hz"]:
        print(
            f"warning: TSC rates differ ({ca['tsc_hz'] / 1e6:.0f} vs {cb['tsc_hz'] / 1e6:.0f} MHz): "
            "cycles are not comparable",
            file=sys.stderr,
        )
    rows, skipped = bench.compare_results(bench.results_of(a), bench.results_of(b), seed=args.seed)
    if args.json:
        emulated = bench.emulated_reason(a, b)
        print(
            json.dumps(
                {
                    "a": args.a,
                    "b": args.b,
                    "emulated": emulated,
                    "rows": [{**dataclasses.asdict(r), **({"verdict": "emulated"} if emulated else {})} for r in rows],
                    "not_compared": skipped,
                },
                indent=1,
            )
        )
        return 0
    emulated = bench.emulated_reason(a, b)  # under TCG a difference is not a hardware effect: no verdict
    table = [
        [
            r.name,
            f"{r.median_a:.0f}",
            f"{r.median_b:.0f}",
            f"{r.diff:+.0f}",
            f"[{r.ci_lo:+.0f}, {r.ci_hi:+.0f}]",
            f"{r.ratio:.2f}" if r.ratio else "-",
            "emulated" if emulated else r.verdict if r.verdict == stats.NO_DIFFERENCE else f"B {r.verdict}",
        ]
        for r in rows
    ]
    print(f"A: {args.a} ({a['created']})\nB: {args.b} ({b['created']})")
    print(
        tabulate(
            table,
            headers=["scenario", "median A", "median B", "B - A", "95% CI", "B/A", "verdict"],
            colalign=("left", "right", "right", "right", "right", "right", "left"),
        )
    )
    for line in skipped:
        print(f"not compared: {line}")
    if emulated:
        print(emulated)
    return 0
