"""The ``uffd-harness`` command line: one verb per job.

Each room of the package that has a verb provides ``register(subparsers)``,
which adds its sub-command and sets ``func`` to a callable taking the parsed
arguments and returning the exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

#: modules that add verbs, in the order ``--help`` lists them
COMMAND_MODULES = (
    "harness.info",
    "harness.vm.cli",
    "harness.sim.cli",
    "harness.timing.cli",
    "harness.validate.cli",
    "harness.lava",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uffd-harness",
        description="Drive userfaultfd and observe the page-table bits it leaves behind.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that room is not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("uffd-harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
