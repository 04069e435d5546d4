"""The ``uffd-harness`` command line: one verb per job.

Each room of the package that has a verb provides ``register(subparsers)``,
which adds its sub-command and sets ``func`` to a callable taking the parsed
arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
from typing import Callable, Optional

from harness.errors import HarnessError, errno_name

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
        prog="uffd-harness", description="Drive userfaultfd and observe the page-table bits it leaves behind."
    )
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


#: exit status for bad input: a file, an argument or an environment variable the command cannot use
EXIT_BAD_INPUT = 2
#: exit status after a broken pipe (``uffd-harness ... | head -1``): what a shell reports for SIGPIPE
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def describe_error(exc: BaseException) -> str:
    """One line for an error a user can act on: the file or argument, what is wrong, the errno's name."""
    if isinstance(exc, OSError) and not isinstance(exc, HarnessError) and exc.errno is not None:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        also = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{where}{errno_name(exc.errno)} ({exc.strerror}){also}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)) else text


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds as Ctrl-C does, through every ``except KeyboardInterrupt``
    that kills guests (``harness.vm.runner.guests_stopped()``, vm run's) and removes files.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


def report_errors(
    command: Callable[[argparse.Namespace], Optional[int]], args: argparse.Namespace, prog: str = "uffd-harness"
) -> int:
    """Run one verb: its exit status, or one line on stderr and a status for what went wrong.

    This is the one place where bad input stops being an exception: an
    OSError, a ValueError (JSON and schema errors included) or any
    HarnessError becomes ``PROG VERB: message`` and exit status 2; a VmError
    keeps its own status; a broken stdout pipe ends the command quietly.
    Anything else is a bug in the harness, and keeps its traceback.
    """
    from harness.vm.errors import VmError

    verb = " ".join(
        v
        for v in (getattr(args, "command", None), getattr(args, "sim_command", None), getattr(args, "vm_command", None))
        if v
    )
    label = f"{prog} {verb}".strip()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # What a CI system sends when it cancels a job, and what a closed terminal sends.  (SIGKILL
        # cannot be caught: the guest runner's guard process covers that.)
        previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        status = int(command(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return status
    except Terminated as exc:
        print(f"{label}: terminated by {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except VmError as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return exc.exit_status
    except (HarnessError, OSError, ValueError) as exc:
        print(f"{label}: {describe_error(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
