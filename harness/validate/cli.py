"""``uffd-harness validate`` and ``uffd-harness suite``: the verbs, their arguments, their exit status."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path


def _bad(message: str) -> int:
    """Bad input: one line, exit status 2, nothing built and nothing in the user's tree touched."""
    print(f"uffd-harness validate: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from harness.validate.run import validate
    from harness.vm.sources import SourceError

    patches = Path(args.patches).resolve() if args.patches else None
    if patches is not None and not patches.is_dir():
        return _bad(f"--patches {args.patches}: not a directory")
    from harness.validate import kcidb

    if args.kcidb_origin:
        try:
            os.environ[kcidb.ENV_ORIGIN] = kcidb.check_origin(args.kcidb_origin)
        except ValueError as exc:
            return _bad(str(exc))
    tree = None
    if args.tree is None and (args.base or args.head or args.dirty):
        return _bad("--base, --head and --dirty go with --tree PATH (a git tree to validate)")
    try:
        if args.tree is not None:
            if args.source or patches:
                return _bad("--tree brings its own commits: drop --source and --patches")
            from harness.validate.tree import plan_tree

            tree = plan_tree(Path(args.tree), base=args.base, head=args.head, dirty=args.dirty)
        if not args.json:
            return validate(patches, args.quick, fresh_control=args.fresh_control, source=args.source, tree=tree)
        from harness import paths

        with contextlib.redirect_stdout(sys.stderr):  # the table and progress, for a person
            status = validate(patches, args.quick, fresh_control=args.fresh_control, source=args.source, tree=tree)
    except SourceError as exc:
        return _bad(str(exc))
    report = paths.RESULTS_DIR / "report.json"
    if report.exists():
        print(report.read_text(), end="")
    return status


def run_suite(args: argparse.Namespace) -> int:
    from harness.validate.run import guest_suite
    from harness.vm.sources import SourceError, resolve

    patches = Path(args.patches).resolve() if args.patches else None
    try:
        source = resolve(args.source)
    except SourceError as exc:
        print(f"uffd-harness suite: {exc}", file=sys.stderr)
        return 2
    kernel = source.kernel_name(args.kernel) if args.source and args.kernel in ("stock", "patched") else args.kernel
    return guest_suite(kernel, patches, tuple(args.pytest_args), source=source)


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="build stock and patched kernels, run every check, report a verdict")
    p.add_argument(
        "--patches",
        metavar="DIR",
        help="validate this patch series (a series file or *.patch) instead of the project's hint patch",
    )
    p.add_argument(
        "--source",
        metavar="6.1|6.12|PATH",
        help="the base both kernels are built from: Debian's linux-source-6.12 (default) or -6.1 "
        "(with vm/patches-6.1), or the path of an unpacked tree (with --patches)",
    )
    p.add_argument(
        "--tree",
        metavar="PATH",
        help="a git kernel tree: its --head is the candidate, its --base "
        "the control (built from the commits; the tree is only read)",
    )
    p.add_argument(
        "--base",
        metavar="REF",
        help="with --tree: the control commit (default: the merge-base with the branch's upstream)",
    )
    p.add_argument("--head", metavar="REF", help="with --tree: the candidate commit (default: HEAD)")
    p.add_argument(
        "--dirty",
        action="store_true",
        help="with --tree: include uncommitted changes to tracked files (default: left out, and said so)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="skip slow tests and the tests of the checks themselves, fewer benchmark rounds",
    )
    p.add_argument("--json", action="store_true", help="print report.json on stdout (the table goes to stderr)")
    p.add_argument(
        "--kcidb-origin",
        metavar="NAME",
        help="KCIDB origin (CI system name) in report.kcidb.json (default $UFFD_HARNESS_KCIDB_ORIGIN or uffd_harness)",
    )
    p.add_argument(
        "--fresh-control",
        action="store_true",
        help="boot the control (stock) again even if its stored guest results still fit "
        "(same kernel build, harness code and tests, --quick, guest settings)",
    )
    p.set_defaults(func=run)
    s = subparsers.add_parser("suite", help="run the pytest suite inside a guest of one kernel (make vm-test)")
    s.add_argument("--kernel", default="patched", help="kernel name: patched, stock, or one built with --patches")
    s.add_argument("--patches", metavar="DIR", help="the series of a kernel other than patched/stock")
    s.add_argument(
        "--source",
        metavar="6.1|6.12|PATH",
        help="the tree the kernel is built from (default 6.12); with 6.1, stock and patched "
        "mean stock-6.1 and patched-6.1",
    )
    s.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    s.set_defaults(func=run_suite)
