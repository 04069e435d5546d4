"""The userfaultfd object: open, handshake, register, and every UFFDIO_* ioctl.

Each method maps to one ioctl, returns what the kernel returns (bytes
copied, mapped, moved; the ioctls a range supports) and raises
:class:`~harness.errors.UffdError` naming the ioctl, the range and the errno.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Iterable, Optional

from harness import abi
from harness._native import ffi, lib
from harness.abi import Feature, Ioctl, RegisterMode
from harness.errors import FeatureUnavailable, InvalidArgument, UffdClosedError, UffdError
from harness.events import UffdEvent, decode_events

_wp_ioctl = lib.harness_uffd_writeprotect  # bound once: the hot path of every WP test
_MODE_WP = abi.WRITEPROTECT_MODE_WP
_MODE_DONTWAKE = abi.WRITEPROTECT_MODE_DONTWAKE


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
    return ((os.O_CLOEXEC if cloexec else 0) | (os.O_NONBLOCK if nonblock else 0)
            | (abi.UFFD_USER_MODE_ONLY if user_mode_only else 0))


def _open_advice(code: int, via: str) -> str:
    if code == errno.EPERM:
        return ("not allowed: run as root, set vm.unprivileged_userfaultfd=1, or pass user_mode_only=True"
                if via == "syscall" else "no permission on /dev/userfaultfd")
    if code == errno.ENOSYS:
        return "the kernel was built without CONFIG_USERFAULTFD"
    if code == errno.ENOENT:
        return "/dev/userfaultfd does not exist (Linux < 6.1, or not created)"
    return ""


class Userfaultfd:
    """One userfaultfd.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, fd: int):
        self._fd = fd
        self._features_bits = 0
        self._api: Optional[ApiInfo] = None

    # -- life cycle ---------------------------------------------------------

    @classmethod
    def open(cls, features: Optional[Iterable[Feature]] = (), *, via: str = "syscall",
             cloexec: bool = True, nonblock: bool = True, user_mode_only: bool = False) -> "Userfaultfd":
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
        return UffdError(op, code, start, length, advice=self._advice(op, code, start, length, mode),
                         result=result)

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

    def move(self, dst: int, src: int, length: int, *, dontwake: bool = False,
             allow_src_holes: bool = False) -> int:
        """``UFFDIO_MOVE`` pages from ``src`` to ``dst``; returns bytes moved."""
        mode = (abi.MOVE_MODE_DONTWAKE if dontwake else 0) | (abi.MOVE_MODE_ALLOW_SRC_HOLES if allow_src_holes else 0)
        return self._result_ioctl("UFFDIO_MOVE", lib.harness_uffd_move, dst, length, dst, src, length, mode)

    def writeprotect(self, start: int, length: int, protect: bool = True, *, dontwake: bool = False,
                     access_likely: bool = False, write_likely: bool = False,
                     raw_mode: Optional[int] = None) -> None:
        """``UFFDIO_WRITEPROTECT``: protect, or (``protect=False``) un-protect a range.

        ``access_likely`` / ``write_likely`` are the hints of the patch under
        test (only with ``protect=False`` and the ACCESS_HINTS feature).
        ``raw_mode`` sends a mode word as is, for testing invalid bits.
        """
        if raw_mode is not None:
            mode = raw_mode
        else:
            mode = _MODE_WP if protect else 0
            if dontwake:
                mode |= _MODE_DONTWAKE
            if access_likely or write_likely:
                hints = abi.hint_abi()
                mode |= (hints.access_likely if access_likely else 0) | (hints.write_likely if write_likely else 0)
        try:
            r = _wp_ioctl(self._fd, start, length, mode)
        except (OverflowError, TypeError):      # off the hot path: a try costs nothing until it raises
            raise _bad_range("UFFDIO_WRITEPROTECT", start=start, length=length, mode=mode) from None
        if r:
            if self._fd < 0:
                raise UffdClosedError("UFFDIO_WRITEPROTECT")
            raise self._fail("UFFDIO_WRITEPROTECT", -r, start, length, mode)

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
