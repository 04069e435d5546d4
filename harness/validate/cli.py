"""``uffd-harness validate`` and ``uffd-harness suite``: the verbs, their arguments, their exit status."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from harness.validate.run import validate
    patches = Path(args.patches).resolve() if args.patches else None
    if patches is not None and not patches.is_dir():
        print(f"uffd-harness validate: --patches {args.patches}: not a directory", file=sys.stderr)
        return 2
    from harness.validate import kcidb
    if args.kcidb_origin:
        try:
            os.environ[kcidb.ENV_ORIGIN] = kcidb.check_origin(args.kcidb_origin)
        except ValueError as exc:
            print(f"uffd-harness validate: {exc}", file=sys.stderr)
            return 2
    if not args.json:
        return validate(patches, args.quick, fresh_control=args.fresh_control)
    from harness import paths
    with contextlib.redirect_stdout(sys.stderr):  # the table and progress, for a person
        status = validate(patches, args.quick, fresh_control=args.fresh_control)
    report = paths.RESULTS_DIR / "report.json"
    if report.exists():
        print(report.read_text(), end="")
    return status


def run_suite(args: argparse.Namespace) -> int:
    from harness.validate.run import guest_suite
    patches = Path(args.patches).resolve() if args.patches else None
    return guest_suite(args.kernel, patches, tuple(args.pytest_args))


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="build stock and patched kernels, run every check, report a verdict")
    p.add_argument("--patches", metavar="DIR", help="validate this patch series (a series file or *.patch) "
                                                    "instead of the project's hint patch")
    p.add_argument("--quick", action="store_true", help="skip slow tests, fewer benchmark rounds")
    p.add_argument("--json", action="store_true", help="print report.json on stdout (the table goes to stderr)")
    p.add_argument("--kcidb-origin", metavar="NAME", help="KCIDB origin (CI system name) in report.kcidb.json "
                   "(default $UFFD_HARNESS_KCIDB_ORIGIN or uffd_harness)")
    p.add_argument("--fresh-control", action="store_true",
                   help="boot the control (stock) again even if its stored guest results still fit "
                        "(same kernel build, harness code and tests, --quick, guest settings)")
    p.set_defaults(func=run)
    s = subparsers.add_parser("suite", help="run the pytest suite inside a guest of one kernel (make vm-test)")
    s.add_argument("--kernel", default="patched", help="kernel name: patched, stock, or one built with --patches")
    s.add_argument("--patches", metavar="DIR", help="the series of a kernel other than patched/stock")
    s.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    s.set_defaults(func=run_suite)
