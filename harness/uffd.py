"""The userfaultfd object: open, handshake, register, and every UFFDIO_* ioctl.

Each method maps to one ioctl, returns what the kernel returns (bytes
copied, mapped, moved; the ioctls a range supports) and raises
:class:`~harness.errors.UffdError` naming the ioctl, the range and the errno.
"""

from __future__ import annotations

import errno
import operator
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from harness import abi
from harness._native import ffi, lib
from harness.abi import Feature, Ioctl, RegisterMode
from harness.errors import (
    FeatureUnavailable,
    InvalidArgument,
    InvalidRanges,
    UffdClosedError,
    UffdError,
    WriteProtectBatchError,
)
from harness.events import UffdEvent, decode_events

_wp_ioctl = lib.harness_uffd_writeprotect  # bound once: the hot path of every WP test
_wp_issue = lib.harness_wp_request_issue  # a prepared request: the one-argument call
_wp_many = lib.harness_uffd_writeprotect_many
_MODE_WP = abi.WRITEPROTECT_MODE_WP


@dataclass(frozen=True)
class ApiInfo:
    """What ``UFFDIO_API`` answered.

    The kernel writes back every feature it *offers*; only those asked for
    are *enabled* on the fd (``ctx->features`` in fs/userfaultfd.c).
    """

    enabled: frozenset[Feature]
    offered: frozenset[Feature]
    ioctls: frozenset[Ioctl]
    #: the raw offered word, including bits this harness has no name for
    offered_bits: int


def open_flags(*, cloexec: bool = True, nonblock: bool = True, user_mode_only: bool = False) -> int:
    return (
        (os.O_CLOEXEC if cloexec else 0)
        | (os.O_NONBLOCK if nonblock else 0)
        | (abi.UFFD_USER_MODE_ONLY if user_mode_only else 0)
    )


def _open_advice(code: int, via: str) -> str:
    if code == errno.EPERM:
        return (
            "not allowed: run as root, set vm.unprivileged_userfaultfd=1, or pass user_mode_only=True"
            if via == "syscall"
            else "no permission on /dev/userfaultfd"
        )
    if code == errno.ENOSYS:
        return "the kernel was built without CONFIG_USERFAULTFD"
    if code == errno.ENOENT:
        return "/dev/userfaultfd does not exist (Linux < 6.1, or not created)"
    return ""


class Userfaultfd:
    """One userfaultfd.  Use as a context manager, or call :meth:`close`."""

    # slots, not a __dict__: writeprotect()'s prepared path reads four of them per call
    __slots__ = ("_fd", "_features_bits", "_api", "_wp_start", "_wp_length", "_wp_on", "_wp_off", "_wp_seen")

    def __init__(self, fd: int):
        self._fd = fd
        self._features_bits = 0
        self._api: Optional[ApiInfo] = None
        # The range writeprotect() issues as prepared requests (None: none), its protect and
        # un-protect requests, and the last range it was given.  Four attributes, not a tuple:
        # fewer bytecodes on the hot path.
        self._wp_start: Optional[int] = None
        self._wp_length: Optional[int] = None
        self._wp_on = self._wp_off = None
        self._wp_seen: Optional[tuple[int, int]] = None

    # -- life cycle ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        features: Optional[Iterable[Feature]] = (),
        *,
        via: str = "syscall",
        cloexec: bool = True,
        nonblock: bool = True,
        user_mode_only: bool = False,
    ) -> "Userfaultfd":
        """Open a userfaultfd by the syscall or through ``/dev/userfaultfd`` (``via="dev"``).

        With ``features`` not None (the default is none), the ``UFFDIO_API``
        handshake is done too; pass ``features=None`` to do it yourself.
        """
        flags = open_flags(cloexec=cloexec, nonblock=nonblock, user_mode_only=user_mode_only)
        if via == "syscall":
            fd = lib.harness_uffd_open_syscall(flags)
        elif via == "dev":
            fd = lib.harness_uffd_open_dev(flags)
        else:
            raise ValueError(f"via must be 'syscall' or 'dev', not {via!r}")
        if fd < 0:
            op = "userfaultfd()" if via == "syscall" else "USERFAULTFD_IOC_NEW"
            raise UffdError(op, -fd, advice=_open_advice(-fd, via))
        uffd = cls(fd)
        if features is not None:
            try:
                uffd.api(features)
            except BaseException:
                uffd.close()
                raise
        return uffd

    def fileno(self) -> int:
        if self._fd < 0:
            raise UffdClosedError("fileno")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            self._wp_start = self._wp_length = None  # its prepared requests name this fd
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> "Userfaultfd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        names = ",".join(sorted(f.name for f in self.features)) or "-"
        return f"<Userfaultfd {state} features={names}>"

    def _check(self, op: str) -> int:
        if self._fd < 0:
            raise UffdClosedError(op)
        return self._fd

    def _fail(self, op: str, code: int, start=None, length=None, mode: int = 0, result=None) -> UffdError:
        return UffdError(op, code, start, length, advice=self._advice(op, code, start, length, mode), result=result)

    def _advice(self, op: str, code: int, start, length, mode: int) -> str:
        """Say what a failure most likely means, from what we know of this fd."""
        page = os.sysconf("SC_PAGE_SIZE")
        if code == errno.EINVAL and op != "UFFDIO_API" and self._api is None:
            # userfaultfd_ioctl() refuses every ioctl but UFFDIO_API on an fd not yet initialized
            return "UFFDIO_API was not done on this fd: Userfaultfd.open(features) does it, unless features=None"
        if code == errno.EINVAL:
            if start is not None and (start % page or (length is not None and length % page)):
                return f"start and length must be multiples of the page size ({page})"
            if length == 0:
                return "the range is empty"
            if op == "UFFDIO_WRITEPROTECT":
                hints = mode & (abi.hint_abi().access_likely | abi.hint_abi().write_likely)
                if hints and not self._features_bits & abi.hint_abi().feature:
                    return "the ACCESS_HINTS feature was not negotiated"
                if hints and mode & _MODE_WP:
                    return "access hints apply only when un-protecting (without MODE_WP)"
            if op == "UFFDIO_API" and self._api is not None:
                return "UFFDIO_API was already done on this fd"
        if code == errno.ENOENT and op != "UFFDIO_API":
            return "the range is not (fully) registered with this userfaultfd"
        if code == errno.EEXIST:
            return "a page is already mapped there"
        if code == errno.EBUSY and op == "UFFDIO_REGISTER":
            return "part of the range is registered with another userfaultfd: unregister it there first"
        if code == errno.EAGAIN:
            return "the mm changed under the ioctl (retry), or the range is partly done"
        if code == errno.EPERM and op == "UFFDIO_API":
            return "EVENT_FORK needs CAP_SYS_PTRACE"
        return ""

    # -- handshake ----------------------------------------------------------

    def api(self, features: Iterable[Feature] = ()) -> ApiInfo:
        """``UFFDIO_API``: enable ``features`` (by name); returns what the kernel answered.

        A feature the kernel lacks raises :class:`FeatureUnavailable` naming it.
        """
        fd = self._check("UFFDIO_API")
        wanted = frozenset(abi.as_feature(f) for f in features)
        feats = ffi.new("uint64_t *")
        ioctls = ffi.new("uint64_t *")
        r = lib.harness_uffd_api(fd, abi.feature_bits(wanted), feats, ioctls)
        if r < 0:
            if -r == errno.EINVAL and self._api is None and wanted:
                offered = probe_features()
                missing = {f for f in wanted if f.bit & ~offered.offered_bits}
                if missing:
                    raise FeatureUnavailable(missing, offered.offered)
            raise self._fail("UFFDIO_API", -r)
        self._features_bits = abi.feature_bits(wanted)
        self._api = ApiInfo(wanted, abi.features_from_bits(feats[0]), abi.ioctls_from_mask(ioctls[0]), feats[0])
        return self._api

    @property
    def features(self) -> frozenset[Feature]:
        """The features enabled on this fd (empty before :meth:`api`)."""
        return self._api.enabled if self._api else frozenset()

    def has(self, feature: Feature) -> bool:
        return bool(self._features_bits & feature.bit)

    # -- ranges -------------------------------------------------------------

    def register(self, start: int, length: int, mode: RegisterMode = RegisterMode.MISSING) -> frozenset[Ioctl]:
        """``UFFDIO_REGISTER``; returns the ioctls the range now supports."""
        fd = self._check("UFFDIO_REGISTER")
        ioctls = ffi.new("uint64_t *")
        try:
            r = lib.harness_uffd_register(fd, start, length, int(mode), ioctls)
        except (OverflowError, TypeError):
            raise _bad_range("UFFDIO_REGISTER", start=start, length=length, mode=mode) from None
        if r < 0:
            raise self._fail("UFFDIO_REGISTER", -r, start, length)
        return abi.ioctls_from_mask(ioctls[0])

    def unregister(self, start: int, length: int) -> None:
        fd = self._check("UFFDIO_UNREGISTER")
        try:
            r = lib.harness_uffd_unregister(fd, start, length)
        except (OverflowError, TypeError):
            raise _bad_range("UFFDIO_UNREGISTER", start=start, length=length) from None
        if r < 0:
            raise self._fail("UFFDIO_UNREGISTER", -r, start, length)

    def wake(self, start: int, length: int) -> None:
        fd = self._check("UFFDIO_WAKE")
        try:
            r = lib.harness_uffd_wake(fd, start, length)
        except (OverflowError, TypeError):
            raise _bad_range("UFFDIO_WAKE", start=start, length=length) from None
        if r < 0:
            raise self._fail("UFFDIO_WAKE", -r, start, length)

    def _result_ioctl(self, op: str, call, start: int, length: int, *args) -> int:
        out = ffi.new("int64_t *")
        fd = self._check(op)
        try:
            r = call(fd, *args, out)
        except (OverflowError, TypeError):
            raise _bad_range(op, start=start, length=length, arguments=args) from None
        if r < 0:
            raise self._fail(op, -r, start, length, result=out[0])
        return out[0]

    def copy(self, dst: int, src: int, length: int, *, dontwake: bool = False, wp: bool = False) -> int:
        """``UFFDIO_COPY`` from ``src`` (an address) to ``dst``; returns bytes copied."""
        mode = (abi.COPY_MODE_DONTWAKE if dontwake else 0) | (abi.COPY_MODE_WP if wp else 0)
        return self._result_ioctl("UFFDIO_COPY", lib.harness_uffd_copy, dst, length, dst, src, length, mode)

    def zeropage(self, start: int, length: int, *, dontwake: bool = False) -> int:
        """``UFFDIO_ZEROPAGE``; returns bytes mapped."""
        mode = abi.ZEROPAGE_MODE_DONTWAKE if dontwake else 0
        return self._result_ioctl("UFFDIO_ZEROPAGE", lib.harness_uffd_zeropage, start, length, start, length, mode)

    def continue_(self, start: int, length: int, *, dontwake: bool = False, wp: bool = False) -> int:
        """``UFFDIO_CONTINUE`` (resolve a minor fault); returns bytes mapped."""
        mode = (abi.CONTINUE_MODE_DONTWAKE if dontwake else 0) | (abi.CONTINUE_MODE_WP if wp else 0)
        return self._result_ioctl("UFFDIO_CONTINUE", lib.harness_uffd_continue, start, length, start, length, mode)

    def poison(self, start: int, length: int, *, dontwake: bool = False) -> int:
        """``UFFDIO_POISON``: later accesses get SIGBUS; returns bytes poisoned."""
        mode = abi.POISON_MODE_DONTWAKE if dontwake else 0
        return self._result_ioctl("UFFDIO_POISON", lib.harness_uffd_poison, start, length, start, length, mode)

    def move(self, dst: int, src: int, length: int, *, dontwake: bool = False, allow_src_holes: bool = False) -> int:
        """``UFFDIO_MOVE`` pages from ``src`` to ``dst``; returns bytes moved."""
        mode = (abi.MOVE_MODE_DONTWAKE if dontwake else 0) | (abi.MOVE_MODE_ALLOW_SRC_HOLES if allow_src_holes else 0)
        return self._result_ioctl("UFFDIO_MOVE", lib.harness_uffd_move, dst, length, dst, src, length, mode)

    def writeprotect(self, start: int, length: int, protect: bool = True) -> None:
        """``UFFDIO_WRITEPROTECT``: protect, or (``protect=False``) un-protect a range, without hints.

        The hot path of every write-protect test and benchmark, so it takes
        nothing else: an un-protect with the hints of the patch under test,
        or DONTWAKE, is :meth:`unprotect`; a mode word as is (invalid bits,
        hints with MODE_WP) is :meth:`writeprotect_mode`; many ranges at
        once, :meth:`writeprotect_many`.  A call on the range of the
        previous call prepares that range's two requests, and later calls
        with the same ``start`` and ``length`` objects issue one with a
        one-argument C call (``binding.wp_toggle.python`` against
        ``.cffi_floor`` in ``bench``).  Each parameter of this method cost
        the toggle about 1% of the floor under CPython 3.11.
        """
        if start is self._wp_start and length is self._wp_length:
            r = _wp_issue(self._wp_on if protect else self._wp_off)
        else:
            r = self._writeprotect_unprepared(start, length, protect)
        if r:
            raise self._wp_failure(-r, start, length, _MODE_WP if protect else 0)

    def unprotect(
        self,
        start: int,
        length: int,
        *,
        access_likely: bool = False,
        write_likely: bool = False,
        dontwake: bool = False,
    ) -> None:
        """``UFFDIO_WRITEPROTECT`` without MODE_WP: un-protect a range, with the hints of the patch under test
        (they need the ACCESS_HINTS feature) and DONTWAKE as asked."""
        self.writeprotect_mode(
            start,
            length,
            abi.writeprotect_mode(False, dontwake=dontwake, access_likely=access_likely, write_likely=write_likely),
        )

    def writeprotect_mode(self, start: int, length: int, mode: int) -> None:
        """``UFFDIO_WRITEPROTECT`` with ``mode`` as is (:func:`harness.abi.writeprotect_mode` composes one):
        any bits, for the kernel to judge, as tests of invalid modes need."""
        r = self._wp_call(start, length, mode)
        if r:
            raise self._wp_failure(-r, start, length, mode)

    def _wp_call(self, start: int, length: int, mode: int) -> int:
        """The ioctl; 0 or -errno.  A range or mode that is no unsigned 64-bit integer is InvalidArgument."""
        try:
            return _wp_ioctl(self._fd, start, length, mode)
        except (OverflowError, TypeError):  # off the hot path: a try costs nothing until it raises
            raise _bad_range("UFFDIO_WRITEPROTECT", start=start, length=length, mode=mode) from None

    def _wp_failure(self, code: int, start: int, length: int, mode: int) -> UffdError:
        if self._fd < 0:
            return UffdClosedError("UFFDIO_WRITEPROTECT")
        return self._fail("UFFDIO_WRITEPROTECT", code, start, length, mode)

    def _writeprotect_unprepared(self, start: int, length: int, protect: bool) -> int:
        """Issue :meth:`writeprotect`'s ioctl with all its arguments; prepare a range seen twice in a row."""
        r = self._wp_call(start, length, _MODE_WP if protect else 0)
        if not r:
            if start == self._wp_start and length == self._wp_length:
                # the prepared range in other int objects: keep its requests, match these next time
                self._wp_start, self._wp_length = start, length
            elif (start, length) == self._wp_seen:
                self._wp_on, self._wp_off = (
                    ffi.new("struct harness_wp_request *", {"fd": self._fd, "start": start, "len": length, "mode": m})
                    for m in (_MODE_WP, 0)
                )
                self._wp_start, self._wp_length = start, length
            else:
                self._wp_seen = (start, length)
        return r

    def writeprotect_many(
        self,
        ranges: Union[Iterable[tuple[int, int]], "PreparedRanges"],
        protect: bool = True,
        *,
        dontwake: bool = False,
        access_likely: bool = False,
        write_likely: bool = False,
        check: bool = True,
    ) -> list[Optional[UffdError]]:
        """``UFFDIO_WRITEPROTECT`` on many ranges in one call: the loop runs in C.

        ``ranges`` are ``(start, length)`` pairs, or a :class:`PreparedRanges`
        made once and given again (no conversion per call); all get the same
        mode, composed as :meth:`unprotect` composes it.  Every range is
        tried, in order, whatever happened to the others (each ioctl takes
        and drops the mmap lock on its own).  Returns one entry per range, in
        the order given: None where it was done, its own :class:`UffdError`
        (range, errno, advice) where it failed.  With ``check`` (the default)
        a failure raises :class:`WriteProtectBatchError` carrying them all,
        after every range was tried.  No ranges: ``[]``, and no ioctl.

        Overlapping ranges and ranges that are not pairs of integers in
        [0, 2**64) raise :class:`InvalidRanges` before any ioctl; alignment
        and registration are the kernel's to judge, range by range.
        """
        fd = self._check("UFFDIO_WRITEPROTECT")
        batch = ranges if isinstance(ranges, PreparedRanges) else PreparedRanges(ranges)
        n = batch.count
        if not n:
            return []
        mode = abi.writeprotect_mode(protect, dontwake=dontwake, access_likely=access_likely, write_likely=write_likely)
        results: list[Optional[UffdError]] = [None] * n
        if _wp_many(fd, batch.array, n, mode, batch.errs):
            for i, (code, r) in enumerate(zip(batch.errs, batch.array, strict=False)):
                if code:
                    results[i] = self._fail("UFFDIO_WRITEPROTECT", code, r.start, r.len, mode)
            if check:
                raise WriteProtectBatchError(results)
        return results

    # -- events -------------------------------------------------------------

    def read_events(self, max_events: int = 16) -> list[UffdEvent]:
        """Read the pending events (none if there are none, on a non-blocking fd)."""
        fd = self._check("read")
        buf = ffi.new("struct harness_uffd_event[]", max_events)
        n = lib.harness_uffd_read_events(fd, buf, max_events)
        if n < 0:
            if -n == errno.EAGAIN:
                return []
            raise UffdError("read", -n, advice="reading userfaultfd events")
        return decode_events(buf, n, self._adopt_fork_fd)

    def _adopt_fork_fd(self, fd: int) -> "Userfaultfd":
        child = Userfaultfd(fd)
        child._features_bits = self._features_bits
        child._api = self._api
        return child


def _bad_range(op: str, **values) -> InvalidArgument:
    """The argument that is no unsigned 64-bit integer (cffi would say only OverflowError or TypeError)."""
    flat = dict(values)
    for i, value in enumerate(flat.pop("arguments", ()) or ()):
        flat.setdefault(f"argument {i + 1}", value)
    for name, value in flat.items():
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64
        if not ok:
            return InvalidArgument(op, name, f"{value!r} is not an integer in 0..2**64-1")
    return InvalidArgument(op, "arguments", f"not unsigned 64-bit integers: {values!r}")


class PreparedRanges:
    """``(start, length)`` pairs checked once and held as a C array, for :meth:`Userfaultfd.writeprotect_many`.

    Checked here, before any ioctl: every range is a pair of integers in
    [0, 2**64), and no two non-empty ranges overlap (a batch names each
    page once, so each range's result is its own).  Raises
    :class:`InvalidRanges` naming the range.  Alignment, emptiness and
    registration are the kernel's to judge: such a range gets its own EINVAL
    or ENOENT from :meth:`Userfaultfd.writeprotect_many`.  One call at a
    time may use a PreparedRanges: it holds the per-range errno of the last.
    """

    __slots__ = ("array", "errs", "count")

    def __init__(self, ranges: Iterable[tuple[int, int]]):
        pairs = ranges if isinstance(ranges, (list, tuple)) else list(ranges)
        self.count = len(pairs)
        try:
            # cffi fills each two-field struct from a pair, in C, and refuses longer items; shorter
            # ones it would pad with zeros, hence the len() check
            if pairs and min(map(len, pairs)) < 2:
                raise ValueError("a range with fewer than two items")
            self.array = ffi.new("struct harness_wp_range[]", pairs)
        except (TypeError, ValueError, OverflowError):
            _name_bad_range(pairs)  # raises, naming the range
            raise
        #: each range's errno after writeprotect_many (0: done)
        self.errs = ffi.new("int32_t[]", self.count)
        if self.count > 1:
            first, second = ffi.new("size_t *"), ffi.new("size_t *")
            r = lib.harness_wp_ranges_overlap(self.array, self.count, first, second)
            if r < 0:
                raise MemoryError(f"checking {self.count} ranges for overlaps: {errno.errorcode.get(-r, -r)}")
            if r:
                a, b = first[0], second[0]
                raise InvalidRanges(
                    f"ranges #{a} [{pairs[a][0]:#x}, +{pairs[a][1]}) and #{b} [{pairs[b][0]:#x}, +{pairs[b][1]}) "
                    "overlap: name each page once, so that each range's result is its own",
                    a,
                    b,
                )

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.array[i].start, self.array[i].len

    def __repr__(self) -> str:
        return f"<PreparedRanges {self.count} ranges>"


def _name_bad_range(pairs) -> None:
    """Raise InvalidRanges for the first item of ``pairs`` that is not a (start, length) pair in [0, 2**64)."""
    for i, item in enumerate(pairs):
        try:
            start, length = item
            start, length = operator.index(start), operator.index(length)
        except (TypeError, ValueError):
            raise InvalidRanges(f"range #{i}: expected a (start, length) pair of integers, got {item!r}", i) from None
        if not (0 <= start < 1 << 64 and 0 <= length < 1 << 64):
            raise InvalidRanges(f"range #{i} [{start:#x}, +{length}): start and length must lie in [0, 2**64)", i)


def open_any(features: Optional[Iterable[Feature]] = ()) -> Userfaultfd:
    """Open a userfaultfd whichever way this process is allowed to.

    The syscall first; when that is refused (unprivileged, with
    ``vm.unprivileged_userfaultfd=0``) the syscall with UFFD_USER_MODE_ONLY,
    then ``/dev/userfaultfd``.  The last error is raised if all fail.
    """
    last: Optional[UffdError] = None
    for via, user_mode_only in (("syscall", False), ("syscall", True), ("dev", False)):
        try:
            return Userfaultfd.open(features, via=via, user_mode_only=user_mode_only)
        except UffdError as exc:
            # Only a refused open is a reason to try the next way: an fd that opened and then failed
            # UFFDIO_API (EPERM for EVENT_FORK without CAP_SYS_PTRACE) would fail the same way.
            if exc.op == "UFFDIO_API" or exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOENT):
                raise
            last = exc
    assert last is not None
    raise last


def probe_features() -> ApiInfo:
    """The features and ioctls this kernel offers (a throw-away fd asks for none)."""
    with open_any(features=()) as uffd:
        assert uffd._api is not None, "open() with features=() made the UFFDIO_API handshake"
        return uffd._api
