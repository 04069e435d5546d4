"""Exceptions of the kernel builder and the guest runner.

Each one carries the context a person needs to act on it: which package to
install, which patch hunk failed, what the guest console said last.
"""

from __future__ import annotations

from typing import Sequence

from harness.errors import HarnessError


class VmError(HarnessError):
    """Base class of everything `harness.vm` raises on purpose (one family with the rest: HarnessError)."""

    #: process exit status the command line uses for this error
    exit_status = 1


class BadInput(VmError):
    """An argument a vm verb cannot use as given (a kernel name, a kernel without its series): exit status 2,
    as for any bad argument of the command line."""

    exit_status = 2


class SeriesError(BadInput):
    """A patch series that cannot be used as given: not a directory, an unreadable or binary series file, a
    missing patch, no patches."""


class MissingToolError(VmError):
    """A host tool or file is missing; says what to install and how."""

    exit_status = 3

    def __init__(self, missing: Sequence[str], packages: Sequence[str], install_command: str | None = None):
        self.missing = list(missing)
        self.packages = list(packages)
        self.install_command = install_command or ("apt-get install -y " + " ".join(self.packages))
        super().__init__(f"missing {', '.join(self.missing)}: install with: {self.install_command}")


class PatchApplyError(VmError):
    """A patch of the series does not apply to the pristine tree."""

    exit_status = 4

    def __init__(self, patch: str, target: str | None, hunk: str | None, output: str):
        self.patch = patch
        self.target = target
        self.hunk = hunk
        self.output = output
        where = f"file {target}" if target else "an unknown file"
        what = f"hunk {hunk}" if hunk else "the patch"
        super().__init__(
            f"patch {patch} does not apply: {what} FAILED in {where}\n--- patch(1) said:\n{output.rstrip()}"
        )


class KernelBuildError(VmError):
    """make failed; the message ends with the tail of the build log."""

    exit_status = 5

    def __init__(self, step: str, log_path: str, tail: Sequence[str]):
        self.step = step
        self.log_path = log_path
        self.tail = list(tail)
        super().__init__(f"kernel build step '{step}' failed; full log: {log_path}\n" + "\n".join(self.tail))


class KernelNotBuilt(VmError):
    """The runner was asked to boot a kernel that has not been built."""

    exit_status = 6


class GuestError(VmError):
    """The guest did not run the command to completion."""

    exit_status = 7

    def __init__(self, message: str, console_tail: Sequence[str]):
        self.console_tail = list(console_tail)
        super().__init__(message + "\n--- last console lines:\n" + "\n".join(self.console_tail))


class GuestPanic(GuestError):
    """The guest kernel panicked ("Kernel panic" on the console)."""

    exit_status = 8


class GuestTimeout(GuestError):
    """The guest ran past its timeout and was killed."""

    exit_status = 9
