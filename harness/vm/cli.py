"""Command line of the guest kernels: ``build`` and ``run``.

    python -m harness.vm build --kernel patched|stock|NAME [--patches DIR] [--jobs N]
    python -m harness.vm run --kernel K [--timeout S] [--rwdir DIR] -- CMD...
    python -m harness.vm info --kernel K             # build.json, as JSON
    python -m harness.vm mutant --list               # the mutants of vm/mutants/mutants.py
    python -m harness.vm mutant NAME [NAME...]       # build, boot, run the contract: caught?
    python -m harness.vm mutant NAME --series        # only write build/mutants/NAME/ (for validate --patches)

The main CLI mounts the same commands under ``vm`` via ``register()``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from typing import Sequence


def _count(low: int, high: int):
    """An argparse type: an integer in [low, high] (QEMU and the kernel get nothing they would reject late)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return value

    return parse


_MEMORY = re.compile(r"[1-9][0-9]*[KMGT]?", re.IGNORECASE)


def _memory(text: str) -> str:
    """Guest memory as QEMU's -m takes it: a number with an optional K/M/G/T suffix (no suffix: MiB)."""
    if not _MEMORY.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (examples: 2G, 512M)")
    return text.strip()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def _add_commands(sub: "argparse._SubParsersAction") -> None:
    b = sub.add_parser(
        "build",
        help="build (or reuse) a guest kernel",
        description="Build Debian's linux-source-6.12 from tinyconfig + "
        "vm/kernel.config, with the patch series applied (patched, or any "
        "--patches DIR) or without (stock). Unchanged inputs: reused in "
        "seconds. Output under build/kernels/<name>/.",
    )
    b.add_argument(
        "--kernel",
        default="patched",
        metavar="NAME",
        help="patched (vm/patches), stock (no patches), or any name together with --patches (default: patched)",
    )
    b.add_argument(
        "--patches", metavar="DIR", help="directory with a quilt 'series' file, or *.patch files applied in name order"
    )
    b.add_argument("--jobs", "-j", type=_count(1, 4096), metavar="N", help="make -jN (default: number of CPUs)")
    b.add_argument("--config", metavar="FRAGMENT", help="config fragment instead of vm/kernel.config")
    b.add_argument(
        "--source",
        metavar="6.1|6.12|PATH",
        help="kernel tree: Debian's linux-source-6.12 (default) or "
        "-6.1, or the path of an unpacked tree; on 6.1 the "
        "defaults are named stock-6.1 and patched-6.1 "
        "(vm/patches-6.1)",
    )
    b.add_argument("--json", action="store_true", help="print build.json on stdout when done")
    b.set_defaults(func=_cmd_build)

    r = sub.add_parser(
        "run",
        help="boot a built kernel and run a command in it",
        description="Boot build/kernels/<K>/bzImage with virtme-ng (host root "
        "read-only over 9p, one writable directory) and run CMD; the "
        "command's exit status is this tool's.",
    )
    r.add_argument("--kernel", default="patched", metavar="K")
    r.add_argument(
        "--timeout", type=_seconds, default=600.0, metavar="S", help="kill QEMU after S seconds (default 600)"
    )
    r.add_argument("--rwdir", metavar="DIR", help="writable directory in the guest (default build/results/<K>)")
    r.add_argument("--memory", type=_memory, default="2G", help="guest memory (default 2G)")
    r.add_argument("--cpus", type=_count(1, 256), default=2, help="guest CPUs (default 2)")
    r.add_argument(
        "--hugepages", type=_count(0, 1 << 20), default=32, help="2 MiB huge pages reserved at boot (default 32)"
    )
    r.add_argument("--accel", choices=("kvm", "tcg"), help="skip the KVM probe and use this accelerator")
    r.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="extra environment variable for the command"
    )
    r.add_argument("--append", action="append", default=[], metavar="ARG", help="extra kernel command-line argument")
    r.add_argument("--console", action="store_true", help="show the guest's kernel console too")
    r.add_argument("--dry-run", action="store_true", help="print the vng command line and exit")
    r.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    r.set_defaults(func=_cmd_run)

    i = sub.add_parser("info", help="print a built kernel's build.json")
    i.add_argument("--kernel", default="patched", metavar="K")
    i.set_defaults(func=_cmd_info)

    m = sub.add_parser(
        "mutant",
        help="deliberately broken variants of the series: list, generate, check they are caught",
        description="Each mutant (vm/mutants/mutants.py) is vm/patches with a few substitutions that "
        "break named contract clauses. NAME: generate its series under build/mutants/NAME/, build it "
        "(seeded from the patched kernel's objects), boot it and run tests/contract; exit 0 if every "
        "clause it must break came out 'fail' and no other clause did, 1 if not.",
    )
    m.add_argument("names", nargs="*", metavar="NAME", help="mutants to run (see --list)")
    m.add_argument("--list", action="store_true", help="print the table of mutants and exit")
    m.add_argument("--all", action="store_true", help="run every mutant")
    m.add_argument(
        "--series",
        action="store_true",
        help="only generate the series and print its directory (then: uffd-harness validate --patches DIR)",
    )
    m.add_argument(
        "--parallel",
        type=int,
        default=2,
        metavar="N",
        help="guests at a time (default 2; builds run one at a time meanwhile)",
    )
    m.add_argument(
        "--timeout", type=float, default=900.0, metavar="S", help="kill a guest after S seconds (default 900)"
    )
    m.add_argument(
        "--its-clauses",
        action="store_true",
        help="run only the clauses the mutant must or may break (faster; the others are "
        "then 'not shown', so 'breaks nothing else' is not checked)",
    )
    m.add_argument("--json", action="store_true", help="with --list: the table as JSON")
    m.add_argument(
        "--markdown", action="store_true", help="with --list: the table as Markdown (as vm/mutants/README.md shows it)"
    )
    m.set_defaults(func=_cmd_mutant)


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``vm build|run|info`` to the main command line."""
    p = subparsers.add_parser("vm", help="guest kernels: build, run", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="vm_command", metavar="{build,run,info,mutant}")
    sub.required = True
    _add_commands(sub)


def _cmd_build(args: argparse.Namespace) -> int:
    import time

    from harness.vm.build import build_kernel

    t0 = time.monotonic()
    from harness.vm.sources import resolve

    source = resolve(args.source)
    name = args.kernel
    if args.source and name in ("stock", "patched"):
        name = source.kernel_name(name)  # --kernel stock --source 6.1 -> stock-6.1
    k = build_kernel(name, patches_dir=args.patches, jobs=args.jobs, fragment=args.config, source=source)
    dt = time.monotonic() - t0
    state = "up to date" if k.cached else "built"
    print(
        f"{k.name}: {state} in {dt:.1f} s\n"
        f"  bzImage      {k.path}\n"
        f"  uapi header  {k.uapi_header}\n"
        f"  selftests    {k.selftests_dir}\n"
        f"  patched      {'yes' if k.patched else 'no'}\n"
        f"  key          {k.key[:16]}",
        file=sys.stderr if args.json else sys.stdout,
    )
    _print_config_report(k.info)
    if args.json:
        print(json.dumps(k.info, indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.vm.build import load_kernel
    from harness.vm.runner import choose_accel, guest_environment, run_in_guest, vng_command

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("vm run: no command given (use: -- CMD...)", file=sys.stderr)
        return 2
    env = {}
    for kv in args.env:
        k, sep, v = kv.partition("=")
        if not sep:
            print(f"vm run: --env {kv!r}: expected K=V", file=sys.stderr)
            return 2
        env[k] = v
    kernel = load_kernel(args.kernel)
    if args.dry_run:
        from pathlib import Path

        from harness.vm.build import BUILD_DIR, REPO_ROOT

        accel = args.accel or choose_accel(kernel.path)
        rw = Path(args.rwdir or BUILD_DIR / "results" / kernel.name)
        cmd = vng_command(
            kernel,
            argv,
            accel=accel,
            cwd=REPO_ROOT,
            rwdir=rw,
            env=guest_environment(kernel, rw, accel, env),
            memory=args.memory,
            cpus=args.cpus,
            hugepages=args.hugepages,
            append=args.append,
        )
        print(shlex.join(cmd))
        return 0
    try:
        res = run_in_guest(
            kernel,
            argv,
            timeout=args.timeout,
            rwdir=args.rwdir,
            env=env,
            memory=args.memory,
            cpus=args.cpus,
            hugepages=args.hugepages,
            accel=args.accel,
            show_console=args.console,
            append=args.append,
        )
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (harness.cli.Terminated)
        signum = getattr(exc, "signum", 2)
        print(f"\nvm run: {'interrupted' if signum == 2 else f'terminated by {exc}'}; QEMU killed", file=sys.stderr)
        return 128 + signum
    print(f"[vm] {kernel.name} ({res.accel}): exit {res.returncode} after {res.elapsed:.1f} s", file=sys.stderr)
    return res.returncode


def _print_config_report(info: dict) -> None:
    """The fragment's options this kernel does not have as written, by why (on stderr: stdout may be JSON)."""
    absent = info.get("config_absent")
    not_applied = info.get("config_not_applied")
    if absent is None and not_applied is None:  # built before the split
        absent, not_applied = [], info.get("config_missing") or []
    where = f"{info.get('name')} ({info.get('kernel_version')}, {info.get('source_version')})"
    if absent:
        print(f"  config: {where}: not in this version's Kconfig: {', '.join(absent)}", file=sys.stderr)
    if not_applied:
        print(
            f"  config: {where}: set but did not stick (dependency missing): {', '.join(not_applied)}", file=sys.stderr
        )


def _cmd_info(args: argparse.Namespace) -> int:
    from harness.vm.build import load_kernel

    info = load_kernel(args.kernel).info
    print(json.dumps(info, indent=2))
    _print_config_report(info)
    return 0


def _cmd_mutant(args: argparse.Namespace) -> int:
    from harness.vm import mutants

    if args.list:
        table = mutants.all_mutants()
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "name": m.name,
                            "breaks": m.breaks,
                            "clauses": list(m.clauses),
                            "also": list(m.also),
                            "functions": list(m.functions),
                            "exposed_by": dict(m.exposed_by),
                            "exposure": m.exposure,
                            "pending": m.pending,
                        }
                        for m in table
                    ],
                    indent=2,
                )
            )
            return 0
        if args.markdown:
            print(mutants.markdown_table(), end="")
            return 0
        from tabulate import tabulate

        rows = [
            (
                m.name,
                ",".join(map(str, m.clauses)) + (f" (+{','.join(map(str, m.also))})" if m.also else ""),
                ", ".join(m.functions),
                m.breaks,
            )
            for m in table
        ]
        print(
            tabulate(
                rows, headers=("mutant", "clauses", "changes", "what it breaks"), maxcolwidths=[None, None, 28, 70]
            )
        )
        return 0
    chosen = list(mutants.all_mutants()) if args.all else [mutants.get(n) for n in args.names]
    if not chosen:
        print("vm mutant: name a mutant (or --all, --list)", file=sys.stderr)
        return 2
    if args.series:
        for m in chosen:
            print(mutants.generate(m))
        return 0
    status = 0
    for r in mutants.run_many(chosen, workers=args.parallel, timeout=args.timeout, its_clauses=args.its_clauses):
        m = r.mutant
        if r.error or not r.summary:
            print(
                f"{m.name}: NOT SHOWN: {r.error or f'the guest wrote no summary.json (exit {r.returncode})'}; "
                f"see {r.rwdir}"
            )
            status = 1
            continue
        missed = [n for n in m.clauses if n not in r.caught()]
        extra = r.unexpected()  # a clause outside the selection fails only if its tests ran
        results = " ".join(f"{n}:{v}" for n, v in r.results().items())
        if missed or extra:
            status = 1
            why = []
            if missed:
                why.append(f"clause(s) {','.join(map(str, missed))} not 'fail'")
            if extra:
                why.append(f"clause(s) {','.join(map(str, extra))} failed, which it should not break")
            print(f"{m.name}: NOT CAUGHT as the table says ({'; '.join(why)}): {results}; see {r.rwdir}")
        else:
            print(
                f"{m.name}: caught: clause(s) {','.join(map(str, m.clauses))} fail ({results}); "
                f"build {r.build_seconds:.0f} s, guest {r.guest_seconds:.0f} s"
            )
    return status


def run(args: argparse.Namespace) -> int:
    """Dispatch parsed arguments through the command line's one error boundary (harness.cli.report_errors)."""
    from harness.cli import report_errors

    return report_errors(args.func, args, prog="python -m harness.vm")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.vm",
        description="Build the patched/stock guest kernels and run commands in them under QEMU.",
    )
    sub = parser.add_subparsers(dest="vm_command", metavar="{build,run,info,mutant}")
    sub.required = True
    _add_commands(sub)
    return run(parser.parse_args(argv))
