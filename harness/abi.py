"""The userfaultfd ABI, by name.

Every number here comes from the compiled extension, which took it from
``<linux/userfaultfd.h>`` (or, for values newer than that header, from the
named fallbacks in ``cbits/uffd_compat.h``).  The access/write hints of the
patch under test are the exception that proves the rule: other proposals
claim the same bits, so their values can be re-read from a kernel tree's
``include/uapi/linux/userfaultfd.h`` with :func:`use_uapi_header` (or the
``UFFD_HARNESS_UAPI_HEADER`` environment variable, which the guest runner
sets).
"""

from __future__ import annotations

import ast
import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from harness import paths
from harness._native import lib

UFFD_API = lib.UFFD_API
UFFD_USER_MODE_ONLY = lib.UFFD_USER_MODE_ONLY

#: environment variable naming the uapi header whose hint values to use
UAPI_HEADER_ENV = paths.ENV_UAPI_HEADER


class Feature(enum.Enum):
    """A ``UFFD_FEATURE_*`` bit, by name.  ``.bit`` gives its value."""

    PAGEFAULT_FLAG_WP = "PAGEFAULT_FLAG_WP"
    EVENT_FORK = "EVENT_FORK"
    EVENT_REMAP = "EVENT_REMAP"
    EVENT_REMOVE = "EVENT_REMOVE"
    MISSING_HUGETLBFS = "MISSING_HUGETLBFS"
    MISSING_SHMEM = "MISSING_SHMEM"
    EVENT_UNMAP = "EVENT_UNMAP"
    SIGBUS = "SIGBUS"
    THREAD_ID = "THREAD_ID"
    MINOR_HUGETLBFS = "MINOR_HUGETLBFS"
    MINOR_SHMEM = "MINOR_SHMEM"
    EXACT_ADDRESS = "EXACT_ADDRESS"
    WP_HUGETLBFS_SHMEM = "WP_HUGETLBFS_SHMEM"
    WP_UNPOPULATED = "WP_UNPOPULATED"
    POISON = "POISON"
    WP_ASYNC = "WP_ASYNC"
    MOVE = "MOVE"
    #: the patch under test; its bit is taken from the active :class:`HintAbi`
    ACCESS_HINTS = "ACCESS_HINTS"

    @property
    def bit(self) -> int:
        if self is Feature.ACCESS_HINTS:
            return hint_abi().feature
        return getattr(lib, "UFFD_FEATURE_" + self.value)


def as_feature(feature, op: str = "UFFDIO_API") -> Feature:
    """``feature`` as a :class:`Feature`: one already, or its name ("EVENT_FORK", "UFFD_FEATURE_EVENT_FORK").

    Anything else raises :class:`~harness.errors.InvalidArgument` listing the names.
    """
    if isinstance(feature, Feature):
        return feature
    if isinstance(feature, str):
        name = feature.strip().upper().removeprefix("UFFD_FEATURE_")
        if name in Feature.__members__:
            return Feature[name]
    from harness.errors import InvalidArgument

    raise InvalidArgument(op, "features", f"{feature!r} is not a feature; known: {', '.join(Feature.__members__)}")


def feature_bits(features: Iterable[Feature]) -> int:
    bits = 0
    for feature in features:
        bits |= as_feature(feature).bit
    return bits


def features_from_bits(bits: int) -> frozenset[Feature]:
    """Decode a features word; bits with no name are ignored (see :func:`unknown_feature_bits`)."""
    return frozenset(f for f in Feature if bits & f.bit)


def unknown_feature_bits(bits: int) -> int:
    return bits & ~feature_bits(Feature)


class Ioctl(enum.IntEnum):
    """A userfaultfd ioctl; the value is its ``_UFFDIO_*`` number (a bit in ioctl masks)."""

    REGISTER = lib._UFFDIO_REGISTER
    UNREGISTER = lib._UFFDIO_UNREGISTER
    WAKE = lib._UFFDIO_WAKE
    COPY = lib._UFFDIO_COPY
    ZEROPAGE = lib._UFFDIO_ZEROPAGE
    MOVE = lib._UFFDIO_MOVE
    WRITEPROTECT = lib._UFFDIO_WRITEPROTECT
    CONTINUE = lib._UFFDIO_CONTINUE
    POISON = lib._UFFDIO_POISON
    API = lib._UFFDIO_API

    @property
    def ioctl_name(self) -> str:
        return "UFFDIO_" + self.name


def ioctls_from_mask(mask: int) -> frozenset[Ioctl]:
    return frozenset(i for i in Ioctl if mask & (1 << i.value))


class RegisterMode(enum.IntFlag):
    MISSING = lib.UFFDIO_REGISTER_MODE_MISSING
    WP = lib.UFFDIO_REGISTER_MODE_WP
    MINOR = lib.UFFDIO_REGISTER_MODE_MINOR


class Event(enum.IntEnum):
    PAGEFAULT = lib.UFFD_EVENT_PAGEFAULT
    FORK = lib.UFFD_EVENT_FORK
    REMAP = lib.UFFD_EVENT_REMAP
    REMOVE = lib.UFFD_EVENT_REMOVE
    UNMAP = lib.UFFD_EVENT_UNMAP


class PagefaultFlag(enum.IntFlag):
    WRITE = lib.UFFD_PAGEFAULT_FLAG_WRITE
    WP = lib.UFFD_PAGEFAULT_FLAG_WP
    MINOR = lib.UFFD_PAGEFAULT_FLAG_MINOR


class PageCategory(enum.IntFlag):
    """``PAGE_IS_*`` categories of the ``PAGEMAP_SCAN`` ioctl."""

    WPALLOWED = lib.PAGE_IS_WPALLOWED
    WRITTEN = lib.PAGE_IS_WRITTEN
    FILE = lib.PAGE_IS_FILE
    PRESENT = lib.PAGE_IS_PRESENT
    SWAPPED = lib.PAGE_IS_SWAPPED
    PFNZERO = lib.PAGE_IS_PFNZERO
    HUGE = lib.PAGE_IS_HUGE
    SOFT_DIRTY = lib.PAGE_IS_SOFT_DIRTY


# Mode bits of the range ioctls.
COPY_MODE_DONTWAKE = lib.UFFDIO_COPY_MODE_DONTWAKE
COPY_MODE_WP = lib.UFFDIO_COPY_MODE_WP
ZEROPAGE_MODE_DONTWAKE = lib.UFFDIO_ZEROPAGE_MODE_DONTWAKE
WRITEPROTECT_MODE_WP = lib.UFFDIO_WRITEPROTECT_MODE_WP
WRITEPROTECT_MODE_DONTWAKE = lib.UFFDIO_WRITEPROTECT_MODE_DONTWAKE
CONTINUE_MODE_DONTWAKE = lib.UFFDIO_CONTINUE_MODE_DONTWAKE
CONTINUE_MODE_WP = lib.UFFDIO_CONTINUE_MODE_WP
POISON_MODE_DONTWAKE = lib.UFFDIO_POISON_MODE_DONTWAKE
MOVE_MODE_DONTWAKE = lib.UFFDIO_MOVE_MODE_DONTWAKE
MOVE_MODE_ALLOW_SRC_HOLES = lib.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES
PM_SCAN_WP_MATCHING = lib.PM_SCAN_WP_MATCHING
PM_SCAN_CHECK_WPASYNC = lib.PM_SCAN_CHECK_WPASYNC


@dataclass(frozen=True)
class HintAbi:
    """Where the access/write hints live in the ABI of the kernel being driven."""

    feature: int
    access_likely: int
    write_likely: int
    #: the header the values came from, or "built-in defaults"
    source: str
    #: False when ``source`` is a header that does not define the hints
    defined: bool = True


_DEFAULT_HINT_ABI = HintAbi(
    feature=lib.UFFD_FEATURE_ACCESS_HINTS,
    access_likely=lib.UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY,
    write_likely=lib.UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY,
    source="built-in defaults (cbits/uffd_compat.h)",
)
_HINT_NAMES = {
    "feature": "UFFD_FEATURE_ACCESS_HINTS",
    "access_likely": "UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY",
    "write_likely": "UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY",
}
_active_hint_abi: Optional[HintAbi] = None


def _eval_c_int(expr: str) -> int:
    """Evaluate a constant uapi expression such as ``((__u64)1<<2)``."""
    expr = re.sub(r"\(\s*__u(8|16|32|64)\s*\)", "", expr)
    expr = re.sub(r"(?<=\d)[uUlL]+\b", "", expr)
    tree = ast.parse(expr.strip(), mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.LShift, ast.BitOr, ast.UnaryOp, ast.Invert)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ValueError(f"not a constant integer expression: {expr!r}")
    return int(eval(compile(tree, "<uapi>", "eval")))  # only ints and << | ~ survive the walk


def parse_uapi_header(path: os.PathLike | str) -> HintAbi:
    """Read the hint values from a kernel tree's ``include/uapi/linux/userfaultfd.h``.

    A header without them (a stock tree) yields the built-in defaults with
    ``defined=False``: such a kernel lacks the feature, and the defaults are
    what the harness sends to show that it refuses them.
    """
    path = Path(path)
    text = path.read_text()
    values = {}
    for field, name in _HINT_NAMES.items():
        m = re.search(rf"^\s*#\s*define\s+{name}\s+(.+?)\s*(?:/\*.*)?$", text, re.MULTILINE)
        if m:
            values[field] = _eval_c_int(m.group(1))
    if not values:
        return HintAbi(**{f: getattr(_DEFAULT_HINT_ABI, f) for f in _HINT_NAMES}, source=str(path), defined=False)
    missing = sorted(_HINT_NAMES[f] for f in _HINT_NAMES if f not in values)
    if missing:
        raise ValueError(f"{path}: defines some access hints but not {', '.join(missing)}")
    return HintAbi(
        feature=values["feature"],
        access_likely=values["access_likely"],
        write_likely=values["write_likely"],
        source=str(path),
    )


def check_hint_abi(hints: HintAbi) -> None:
    """Raise ValueError unless the hint values can be told apart from every bit they share a word with.

    Each mode hint must be one bit, distinct from the other hint and from
    ``MODE_WP`` and ``MODE_DONTWAKE`` (a hint on the WP bit would turn an
    un-protect into a protect); the feature must be one bit that no named
    feature uses, and not bit 31 (internal to fs/userfaultfd.c).
    """
    where = hints.source
    taken = {
        "UFFDIO_WRITEPROTECT_MODE_WP": WRITEPROTECT_MODE_WP,
        "UFFDIO_WRITEPROTECT_MODE_DONTWAKE": WRITEPROTECT_MODE_DONTWAKE,
    }
    for field_name in ("access_likely", "write_likely"):
        name, value = _HINT_NAMES[field_name], getattr(hints, field_name)
        if value <= 0 or value & (value - 1) or value >= 1 << 64:
            raise ValueError(f"{where}: {name} = {value:#x} is not a single bit of a 64-bit mode word")
        for other, bit in taken.items():
            if value == bit:
                raise ValueError(f"{where}: {name} = {value:#x} is the bit of {other}")
        taken[name] = value
    feature = hints.feature
    if feature <= 0 or feature & (feature - 1) or feature >= 1 << 31:
        raise ValueError(
            f"{where}: UFFD_FEATURE_ACCESS_HINTS = {feature:#x} is not one of bits 0..30 "
            "(ctx->features is an unsigned int, and bit 31 is internal)"
        )
    for known in Feature:
        if known is not Feature.ACCESS_HINTS and known.bit == feature:
            raise ValueError(
                f"{where}: UFFD_FEATURE_ACCESS_HINTS = {feature:#x} is the bit of UFFD_FEATURE_{known.value}"
            )


def use_uapi_header(path: os.PathLike | str | None) -> HintAbi:
    """Drive the kernel with the hint values of ``path`` (None: back to the defaults).

    Values that collide with another bit of the same word raise ValueError
    naming the header, and the hints in force stay as they were.
    """
    global _active_hint_abi
    hints = _DEFAULT_HINT_ABI if path is None else parse_uapi_header(path)
    check_hint_abi(hints)
    _active_hint_abi = hints
    return _active_hint_abi


def set_hint_abi(hints: HintAbi) -> HintAbi:
    """Put ``hints`` in force (e.g. to restore what :func:`hint_abi` returned earlier)."""
    global _active_hint_abi
    _active_hint_abi = hints
    return hints


def hint_abi() -> HintAbi:
    """The hint values in force: from ``$UFFD_HARNESS_UAPI_HEADER`` if set, else the defaults."""
    if _active_hint_abi is None:
        return use_uapi_header(os.environ.get(UAPI_HEADER_ENV) or None)
    return _active_hint_abi


def writeprotect_mode(
    protect: bool, *, dontwake: bool = False, access_likely: bool = False, write_likely: bool = False
) -> int:
    """The ``UFFDIO_WRITEPROTECT`` mode word: MODE_WP when protecting, DONTWAKE, and the hint bits in force.

    The one place a write-protect mode word is composed (the binding, its
    batched path and the simulator all call it), so a hint bit taken from a
    kernel tree's header (:func:`use_uapi_header`) reaches every caller.
    """
    mode = (WRITEPROTECT_MODE_WP if protect else 0) | (WRITEPROTECT_MODE_DONTWAKE if dontwake else 0)
    if access_likely or write_likely:
        hints = hint_abi()
        mode |= (hints.access_likely if access_likely else 0) | (hints.write_likely if write_likely else 0)
    return mode


class PagemapBit(enum.IntEnum):
    """Bits of a ``/proc/PID/pagemap`` entry.

    These have no uapi header: they are ``PM_*`` in fs/proc/task_mmu.c and
    documented in Documentation/admin-guide/mm/pagemap.rst, so they are
    spelled out here, once.
    """

    SOFT_DIRTY = 55
    EXCLUSIVE = 56  # page exclusively mapped (PM_MMAP_EXCLUSIVE)
    UFFD_WP = 57
    GUARD = 58  # guard region (6.14+)
    FILE = 61  # file page or shared anon (PM_FILE)
    SWAPPED = 62
    PRESENT = 63


PAGEMAP_PFN_MASK = (1 << 55) - 1


class KPageFlag(enum.IntEnum):
    """Bits of ``/proc/kpageflags`` (folio flags, not PTE bits)."""

    REFERENCED = lib.KPF_REFERENCED
    DIRTY = lib.KPF_DIRTY
    LRU = lib.KPF_LRU
    ACTIVE = lib.KPF_ACTIVE
    ANON = lib.KPF_ANON
    SWAPCACHE = lib.KPF_SWAPCACHE
    SWAPBACKED = lib.KPF_SWAPBACKED
    THP = lib.KPF_THP
    ZERO_PAGE = lib.KPF_ZERO_PAGE
    IDLE = lib.KPF_IDLE
    HUGE = lib.KPF_HUGE
    NOPAGE = lib.KPF_NOPAGE
    COMPOUND_HEAD = lib.KPF_COMPOUND_HEAD
    COMPOUND_TAIL = lib.KPF_COMPOUND_TAIL


#: values written to /proc/PID/clear_refs (fs/proc/task_mmu.c, enum clear_refs_types)
CLEAR_REFS_ALL = 1
CLEAR_REFS_SOFT_DIRTY = 4
CLEAR_REFS_MM_HIWATER_RSS = 5
