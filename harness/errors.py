"""Exceptions that say which operation failed, on which range, and what to do."""

from __future__ import annotations

import errno as _errno
import os
from typing import Optional


def errno_name(code: int) -> str:
    return _errno.errorcode.get(code, f"errno {code}")


def format_range(start: Optional[int], length: Optional[int]) -> str:
    if start is None:
        return ""
    return f" [{start:#x}, +{length})" if length is not None else f" [{start:#x}]"


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""


class OperationError(HarnessError, OSError):
    """A call on a range failed: says which call, which range, the errno's name and what to do.

    ``op`` is the ioctl or call (``"UFFDIO_WRITEPROTECT"``, ``"madvise(MADV_FREE)"``),
    ``start`` and ``length`` the range it was given, ``errno`` the kernel's
    answer, and ``advice`` what the caller can do about it.
    """

    # never None here (OSError's may be): __init__ always passes the code and the message
    errno: int
    strerror: str

    def __init__(self, op: str, code: int, start: Optional[int] = None, length: Optional[int] = None, advice: str = ""):
        self.op = op
        self.start = start
        self.length = length
        self.advice = advice
        message = f"{op}{format_range(start, length)}: {errno_name(code)}"
        message += f": {advice}" if advice else f" ({os.strerror(code)})"
        OSError.__init__(self, code, message)

    def __str__(self) -> str:
        return self.strerror


class UffdError(OperationError):
    """A userfaultfd operation failed."""

    def __init__(
        self,
        op: str,
        code: int,
        start: Optional[int] = None,
        length: Optional[int] = None,
        advice: str = "",
        result: Optional[int] = None,
    ):
        super().__init__(op, code, start, length, advice)
        #: what the kernel wrote back (bytes copied, mapped, moved) before failing
        self.result = result


class UffdClosedError(UffdError):
    """The userfaultfd object was used after :meth:`Userfaultfd.close`."""

    def __init__(self, op: str):
        super().__init__(op, _errno.EBADF, advice="this userfaultfd is closed")


class FeatureUnavailable(UffdError):
    """The kernel does not offer a feature that was asked for."""

    def __init__(self, missing, offered):
        self.missing = frozenset(missing)
        self.offered = frozenset(offered)
        names = ", ".join(sorted(f.name for f in self.missing))
        features = "UFFD_FEATURE_" + names.replace(", ", ", UFFD_FEATURE_")
        super().__init__("UFFDIO_API", _errno.EINVAL, advice=f"kernel {os.uname().release} lacks {features}")


class MappingError(OperationError):
    """A mapping call (mmap, madvise, mprotect, ...) failed."""


class RegionClosedError(MappingError):
    """A :class:`~harness.memory.Region` was used after :meth:`~harness.memory.Region.close`.

    Raised before any address reaches C: a closed region's memory is gone.
    """

    def __init__(self, op: str, region: str):
        super().__init__(op, _errno.EBADF, advice=f"{region} is closed")


class InvalidArgument(HarnessError, ValueError):
    """An argument the kernel would never see: out of range, of the wrong type, or not a known name.

    ``op`` is the call, ``argument`` the parameter's name; the message says
    what was given and what is allowed.
    """

    def __init__(self, op: str, argument: str, message: str):
        self.op = op
        self.argument = argument
        super().__init__(f"{op}: {argument}: {message}")


class DocumentError(HarnessError, ValueError):
    """A file the harness reads is missing, unreadable, not JSON, or not of the expected schema.

    ``path`` is the file; the message names it, says what is wrong and, where
    it can, which command writes a good one.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ObservationUnavailable(HarnessError):
    """A PTE observation channel cannot answer here (and why)."""


class ThpUnavailable(HarnessError):
    """A transparent huge page could not be had here; the message names what is missing."""


class InvalidRanges(HarnessError, ValueError):
    """A list of ranges cannot be a batch: says which range (or which two) and why.

    ``index`` is the offending range's position in the list given, ``other``
    the second one when two overlap.
    """

    def __init__(self, message: str, index: int, other: Optional[int] = None):
        super().__init__(message)
        self.index = index
        self.other = other


class WriteProtectBatchError(UffdError):
    """Some ranges of a batched ``UFFDIO_WRITEPROTECT`` failed; every other range was done.

    ``results`` has one entry per range, in the order given: None where the
    range was done, that range's own :class:`UffdError` (its range, errno and
    advice) where it failed.  ``failures`` lists the ``(index, error)`` pairs;
    ``errno``, ``start`` and ``length`` are those of the first failure.
    """

    #: failures spelled out in the message; the rest are counted
    SHOWN = 3

    def __init__(self, results: list):
        self.results = list(results)
        self.failures = [(i, e) for i, e in enumerate(self.results) if e is not None]
        if not self.failures:
            raise ValueError("WriteProtectBatchError needs at least one failed range")
        first = self.failures[0][1]
        shown = "; ".join(
            f"#{i}{format_range(e.start, e.length)} {errno_name(e.errno)}" + (f": {e.advice}" if e.advice else "")
            for i, e in self.failures[: self.SHOWN]
        )
        more = len(self.failures) - self.SHOWN
        advice = f"{len(self.failures)} of {len(self.results)} ranges failed, the others were done: {shown}" + (
            f"; and {more} more (see .failures)" if more > 0 else ""
        )
        super().__init__(first.op, first.errno, advice=advice)
        self.start, self.length = first.start, first.length
