"""The kernel's ``uffd-unit-tests`` (tools/testing/selftests/mm/uffd-unit-tests.c, Linux 6.12), in pytest.

:data:`UNIT_CASES` mirrors the selftest's ``uffd_tests[]`` table: each case
names the memory types it runs on and the ``UFFD_FEATURE_*`` bits it needs
(the selftest opens its userfaultfd with exactly those).  Every case runs
on every memory type it names, as ``test_uffd_unit[<case>-<memory type>]``;
a case skips with the exact thing that is missing (a feature bit, huge
pages).  The checks are the selftest's own: contents after COPY / MOVE /
CONTINUE, fault counts, SIGBUS counts, uffd-wp bits in pagemap across
fork(); where the selftest's check is implicit (a fault handler that
would ``err()``), it is spelled out here as an assertion.  A few checks go
further: hugetlb ranges are not offered ZEROPAGE; events-wp counts one WP
fault per page; the FORK / REMAP / REMOVE events and the faulting pages
are checked by address; sigbus-wp's write to a protected page must raise
SIGBUS; minor-wp's pages carry the uffd-wp bit; a read upon a uffd-wp
marker keeps the bit.

Differences from the selftest, on purpose:

* Regions are small (``_NPAGES``), not 32 MB: each fault is served from
  Python.
* ``shmem-private`` is a MAP_PRIVATE mapping of a memfd.  (The 6.12
  selftest's shmem ops map MAP_SHARED for both shmem types.)  So it has no
  alias mapping, and its pages are released with MADV_DONTNEED (MADV_REMOVE
  needs a shared mapping): the same rules as hugetlb-private.
* With ``UFFD_FEATURE_EVENT_FORK``, fork() waits until the monitor has read
  the FORK event (``dup_userfaultfd_complete()``).  CPython's ``os.fork()``
  holds the GIL across the syscall, so a monitor *thread* of the forking
  process could never read it.  Those cases run their body in a forked
  worker that owns the registered memory and passes its userfaultfd to this
  process, whose :class:`~harness.handler.FaultHandler` serves it (see
  :func:`_monitored`).
* Faults are always triggered by the harness's C accessors (which release
  the GIL), never by a Python-level copy, so a FaultHandler thread of the
  same process can serve them.

Not ported: ``minor-collapse`` (needs MADV_COLLAPSE, which neither the
harness nor Python 3.11's mmap module names), ``wp-fork-pin*`` (needs CONFIG_GUP_TEST's
/sys/kernel/debug/gup_test).  The selftest's UFFDIO_API checks run first, as
``test_uffd_api``.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import signal
import socket
import threading
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import pytest

from harness import abi, pte
from harness._native import ffi, lib
from harness.abi import Feature, Ioctl, RegisterMode
from harness.errors import HarnessError, MappingError, UffdError
from harness.events import ForkEvent, PageFault, RemapEvent, RemoveEvent, UffdEvent
from harness.handler import FaultHandler
from harness.memory import PAGE_SIZE, MemoryKind, Region
from harness.process import kill_tree, reap, run_in_child
from harness.uffd import Userfaultfd, open_any, probe_features

#: the selftest's mem_types[], in its order (MemoryKind.FILE is ours, not theirs)
MEM_ALL = (MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE, MemoryKind.HUGETLB, MemoryKind.HUGETLB_PRIVATE)

#: pages per region (the selftest uses 32 MB); even, so halves are exact
_NPAGES = {False: 32, True: 4}  # keyed by kind.hugetlb
#: every wait of this module (workers, handshakes) gives up after this many seconds
_WAIT = 30.0  # generous: a TCG guest on a loaded 2-core host runs a fork + 8 MiB hugetlb mremap slowly
#: a worker's own children give up sooner, so that the worker can still report
_WAIT_CHILD = 25.0
#: PMD-sized chunks moved by move-pmd*, and where the kernel says how big a PMD is
_PMD_CHUNKS = 4
_THP_PMD_SIZE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"


# -- a case: one row of the table (UNIT_CASES, after the case functions) -----------------


@dataclass(frozen=True)
class UnitCase:
    """One row of uffd-unit-tests.c's ``uffd_tests[]``."""

    name: str
    #: the case's function (the selftest's ``uffd_fn``)
    body: Callable[["_Env"], None]
    mems: tuple[MemoryKind, ...]
    #: ``uffd_feature_required``: needed from the kernel, and enabled on the test's userfaultfd
    features: frozenset[Feature]


# -- environment: regions, cleanup, feature checks ------------------------------------


def _missing_features(wanted: Iterable[Feature]) -> list[str]:
    offered = probe_features().offered_bits
    return sorted("UFFD_FEATURE_" + f.value for f in wanted if not offered & f.bit)


class _Env:
    """What a case body gets: its memory kind, regions that are cleaned up, its features."""

    def __init__(self, kind: MemoryKind, make_region, features: frozenset[Feature]):
        self.kind = kind
        self.features = features
        self.npages = _NPAGES[kind.hugetlb]
        self._make_region = make_region
        self._aliases: list[Region] = []

    def region(self, npages: Optional[int] = None) -> Region:
        return self._make_region(self.kind, npages or self.npages)

    def alias(self, region: Region) -> Region:
        alias = region.alias()
        self._aliases.append(alias)
        return alias

    def uffd(self, features: Optional[Iterable[Feature]] = None) -> Userfaultfd:
        return open_any(self.features if features is None else features)

    def close(self) -> None:
        for alias in self._aliases:
            alias.close()


def _params():
    for case in UNIT_CASES:
        for kind in MEM_ALL:
            if kind in case.mems:
                yield pytest.param(case, kind, id=f"{case.name}-{kind.value}")


# -- helpers ----------------------------------------------------------------------------


def _byte(page: int) -> int:
    """The fill byte of source page ``page`` (never zero, so a zero page shows)."""
    return page % 255 + 1


def _fill(region: Region, byte_of: Callable[[int], int] = _byte) -> None:
    for page in range(region.npages):
        region.fill(page, bytes([byte_of(page)]) * region.page_size)


def _contents(region: Region, page: int) -> bytes:
    """The bytes of ``page``; the first touch is a C load, so a FaultHandler thread can serve it."""
    region.read(page, 1)
    return region.data(page)


def _check_page(region: Region, page: int, byte: int, what: str) -> None:
    data = _contents(region, page)
    if data != bytes([byte]) * region.page_size:
        bad = next(i for i, b in enumerate(data) if b != byte)
        raise AssertionError(f"{what}: page {page} of {region!r}: byte {bad} is {data[bad]:#x}, expected {byte:#x}")


def _release(region: Region) -> None:
    """The selftest's release_pages(): MADV_REMOVE on shared mappings, MADV_DONTNEED on private ones."""
    region.madvise(mmap.MADV_REMOVE if region.kind.shared else mmap.MADV_DONTNEED)


def _page_start(region: Region, address: int, base: Optional[int] = None) -> int:
    """Offset in ``region`` of the page holding ``address`` (``base``: where the region now is)."""
    base = region.addr if base is None else base
    return (address - base) & ~(region.page_size - 1)


class _Unexpected:
    """A FaultHandler callback for uffds that should see no event at all."""

    def __call__(self, uffd: Userfaultfd, event: UffdEvent) -> None:
        raise AssertionError(f"unexpected userfaultfd event {event}")


class _Monitor:
    """The selftest's ``uffd_poll_thread()`` + ``uffd_handle_page_fault()``, as a FaultHandler callback.

    MISSING faults are resolved with UFFDIO_COPY from ``src`` (at the same
    offset), WP faults by un-protecting, MINOR faults by flipping every bit of
    the page through the non-registered ``minor_source`` mapping and
    UFFDIO_CONTINUE.  A FORK event starts another FaultHandler on the child's
    userfaultfd (served by this same monitor); REMAP moves where faults are
    expected; REMOVE unregisters the removed range, as the selftest does.
    ``fault`` replaces the page-fault handling (the poison and move cases).
    """

    def __init__(
        self,
        dst: Region,
        src: Optional[Region] = None,
        *,
        apply_wp: bool = False,
        minor_source: Optional[Region] = None,
        fault: Optional[Callable[[Userfaultfd, PageFault], None]] = None,
    ):
        self.dst = dst
        self.src = src
        self.apply_wp = apply_wp
        self.minor_source = minor_source
        self.fault = fault
        self.base = dst.addr
        self.missing_faults = 0
        self.wp_faults = 0
        self.minor_faults = 0
        self.events: list[UffdEvent] = []
        self.children: list[FaultHandler] = []
        self.removed: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, uffd: Userfaultfd, event: UffdEvent) -> None:
        with self._lock:
            self.events.append(event)
        if isinstance(event, ForkEvent):
            self.children.append(FaultHandler(event.uffd, self).start())
        elif isinstance(event, RemapEvent):
            assert event.old == self.base and event.length == self.dst.length, (
                f"REMAP event {event} for a region at {self.base:#x} of {self.dst.length} bytes"
            )
            self.base = event.new
        elif isinstance(event, RemoveEvent):
            self.removed.append((event.start, event.end))
            uffd.unregister(event.start, event.end - event.start)
        elif self.fault is not None:
            self.fault(uffd, event)
        else:
            self._default_fault(uffd, event)

    def _default_fault(self, uffd: Userfaultfd, fault: PageFault) -> None:
        size = self.dst.page_size
        page = fault.address & ~(size - 1)
        if fault.wp:
            uffd.writeprotect(page, size, protect=False)
            self._count("wp_faults")
        elif fault.minor:
            offset = page - self.base
            source = self.minor_source
            source.fill(offset // size, source.data(offset // size).translate(_INVERT))
            assert uffd.continue_(page, size, wp=self.apply_wp) == size, "UFFDIO_CONTINUE: short"
            # Error handling of CONTINUE differs from COPY's: exercise it (continue_range()).
            try:
                uffd.continue_(page, size, wp=self.apply_wp)
            except UffdError as exc:
                assert exc.errno == errno.EEXIST and exc.result == -errno.EEXIST, (
                    f"second UFFDIO_CONTINUE at {page:#x}: {exc} (result {exc.result}), expected EEXIST"
                )
            else:
                raise AssertionError(f"second UFFDIO_CONTINUE at {page:#x} succeeded; expected EEXIST")
            self._count("minor_faults")
        else:
            # The selftest's faulting threads read before they write: a MISSING fault is a read.
            assert not fault.write, f"unexpected write fault at {fault.address:#x} (MISSING faults come from reads)"
            offset = page - self.base
            try:
                copied = uffd.copy(page, self.src.addr + offset, size, wp=self.apply_wp)
            except UffdError as exc:
                if exc.errno == errno.EEXIST:  # raced with another fault: just wake
                    uffd.wake(page, size)
                    return
                if exc.errno in (errno.ENOENT, errno.EAGAIN) and self._was_removed(page):
                    # A fault on a range that REMOVE made us unregister: the unregister
                    # wakes only faults already queued, and one can still slip in between
                    # (under the per-VMA lock).  Wake it: it retries as an ordinary fault.
                    uffd.wake(page, size)
                    return
                raise
            assert copied == size, f"UFFDIO_COPY at {page:#x} copied {copied} of {size} bytes"
            self._count("missing_faults")

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _was_removed(self, address: int) -> bool:
        return any(start <= address < end for start, end in self.removed)

    def of_type(self, kind: type) -> list:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]

    def summary(self) -> str:
        with self._lock:
            last = self.events[-6:]
        return (
            f"served {self.missing_faults} MISSING, {self.wp_faults} WP, {self.minor_faults} MINOR faults "
            f"and {len(self.events)} events, the last: {last}"
        )

    def stop_children(self) -> None:
        """Stop the handlers of forked children's uffds, close those uffds, raise their errors."""
        first: Optional[BaseException] = None
        for handler in self.children:
            try:
                handler.stop()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after closing every fd
                first = first or exc
            handler.uffd.close()
        self.children.clear()
        if first is not None:
            raise first


_INVERT = bytes(255 - i for i in range(256))


def _serve(uffd: Userfaultfd, monitor) -> FaultHandler:
    return FaultHandler(uffd, monitor).start()


def _monitored(
    features: Iterable[Feature], body: Callable[[Userfaultfd], None], monitor: _Monitor, timeout: float = _WAIT
) -> None:
    """Run ``body(uffd)`` in a forked worker that owns ``uffd``, while this process serves ``uffd``.

    The worker opens the userfaultfd (so its mm is the one registered), sends
    it here over a unix socket (SCM_RIGHTS) and waits for the go-ahead; this
    process serves it with ``monitor`` on a FaultHandler thread.  The worker
    is single-threaded, so its fork()s can block on FORK events that this
    process reads.  A failure in the worker is raised here with its message.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    features = list(features)
    pid = os.fork()
    if pid == 0:  # the worker: never return into pytest
        status = 1
        try:
            ours.close()
            theirs.settimeout(timeout)
            try:
                uffd = open_any(features)
                socket.send_fds(theirs, [b"U"], [uffd.fileno()])
                if theirs.recv(1) != b"G":
                    raise HarnessError("the monitor went away before the go-ahead")
                body(uffd)
                status = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                theirs.sendall(f"{type(exc).__name__}: {exc}".encode()[:4000])
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(status)
    theirs.close()
    handler: Optional[FaultHandler] = None
    uffd: Optional[Userfaultfd] = None
    try:
        ours.settimeout(timeout)
        message, fds, _, _ = socket.recv_fds(ours, 4096, 1)
        if not fds:
            raise AssertionError(f"worker failed before handing over its userfaultfd: {message.decode()}")
        uffd = Userfaultfd(fds[0])
        handler = _serve(uffd, monitor)
        ours.sendall(b"G")
        status = reap(pid, timeout, monitor.summary)
        pid = 0
        message = ours.recv(4096).decode(errors="replace")
        if status != 0:
            raise AssertionError(
                f"worker failed (exit status {status}): {message or 'see captured stderr'}; {monitor.summary()}"
            )
    finally:
        if pid:
            kill_tree(pid)
        errors = []
        for stop in ((lambda: handler.stop()) if handler else None, monitor.stop_children):
            if stop is None:
                continue
            try:
                stop()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        if uffd is not None:
            uffd.close()
        ours.close()
        if errors:
            raise errors[0]


# -- the cases --------------------------------------------------------------------------


def _register_ioctls(env: _Env) -> None:
    """uffd_register_ioctls_test(): UFFDIO_REGISTER answers the ioctls each mode allows."""
    dst = env.region(1)
    with env.uffd() as uffd:
        for miss, wp, minor in itertools.product((False, True), repeat=3):
            mode = RegisterMode(0)
            mode |= RegisterMode.MISSING if miss else 0
            mode |= RegisterMode.WP if wp else 0
            mode |= RegisterMode.MINOR if minor else 0
            what = f"register (miss={miss:d}, wp={wp:d}, minor={minor:d}) on {env.kind.value}"
            if (minor and env.kind is MemoryKind.ANON) or not (miss or wp or minor):
                with pytest.raises(UffdError) as raised:
                    uffd.register(dst.addr, dst.page_size, mode)
                assert raised.value.errno == errno.EINVAL, f"{what}: {raised.value}, expected EINVAL"
                continue
            ioctls = uffd.register(dst.addr, dst.page_size, mode)
            expected = {Ioctl.WAKE}
            expected |= {Ioctl.COPY} if miss else set()
            expected |= {Ioctl.WRITEPROTECT} if wp else set()
            expected |= {Ioctl.CONTINUE} if minor else set()
            assert expected <= ioctls, (
                f"{what}: ioctls {sorted(i.name for i in ioctls)} lack {sorted(i.name for i in expected - ioctls)}"
            )
            uffd.unregister(dst.addr, dst.page_size)


def _zeropage(env: _Env) -> None:
    """uffd_zeropage_test(): UFFDIO_ZEROPAGE maps a zero page once, then EEXIST; hugetlb has none (EINVAL)."""
    dst = env.region(1)
    alias = env.alias(dst) if env.kind.shared else None
    with env.uffd() as uffd, FaultHandler(uffd, _Unexpected()):
        has_zeropage = Ioctl.ZEROPAGE in uffd.register(dst.addr, dst.page_size, RegisterMode.MISSING)
        if alias is not None:
            uffd.register(alias.addr, alias.page_size, RegisterMode.MISSING)
        # hugetlb ranges get the basic ioctls only (userfaultfd_register(): basic_ioctls)
        assert has_zeropage == (not env.kind.hugetlb), (
            f"UFFDIO_REGISTER on {env.kind.value}: ZEROPAGE {'offered' if has_zeropage else 'not offered'}"
        )
        if has_zeropage:
            assert uffd.zeropage(dst.addr, dst.page_size) == dst.page_size, "UFFDIO_ZEROPAGE: short"
            # retry_uffdio_zeropage(): again, through the alias when there is one, must be EEXIST
            again = alias if alias is not None else dst
            with pytest.raises(UffdError) as raised:
                uffd.zeropage(again.addr, again.page_size)
            assert (raised.value.errno, raised.value.result) == (errno.EEXIST, -errno.EEXIST), (
                f"second UFFDIO_ZEROPAGE: {raised.value} (result {raised.value.result}), expected EEXIST"
            )
            _check_page(dst, 0, 0, "after UFFDIO_ZEROPAGE")
        else:
            with pytest.raises(UffdError) as raised:
                uffd.zeropage(dst.addr, dst.page_size)
            assert raised.value.result == -errno.EINVAL, (
                f"UFFDIO_ZEROPAGE where not offered: {raised.value} (result {raised.value.result}), expected EINVAL"
            )
        uffd.unregister(dst.addr, dst.page_size)
        if alias is not None:
            uffd.unregister(alias.addr, alias.page_size)


def _move_common(env: _Env, src: Region, dst: Region, chunk: int) -> None:
    """uffd_move_test_common(): MISSING faults resolved by UFFDIO_MOVE of ``chunk`` bytes.

    The data arrives in the destination, the source empties, and there is
    one fault per chunk (a PMD-sized chunk moves in one go).
    """
    size = dst.page_size
    src.madvise(mmap.MADV_DONTFORK)  # the source pages must not be mapped twice
    _fill(src)
    step = chunk // size
    aligned_src, aligned_dst = _align_up(src.addr, chunk), _align_up(dst.addr, chunk)
    src_offs, dst_offs = (aligned_src - src.addr) // size, (aligned_dst - dst.addr) // size
    step_count = src.npages // step - (1 if src_offs or dst_offs else 0)

    def move(uffd: Userfaultfd, fault: PageFault) -> None:
        assert not fault.flags, f"unexpected fault type {fault.flags!r} at {fault.address:#x}"
        offset = (fault.address - aligned_dst) & ~(chunk - 1)
        try:
            moved = uffd.move(aligned_dst + offset, aligned_src + offset, chunk, allow_src_holes=True)
        except UffdError as exc:
            if exc.errno != errno.EEXIST:
                raise
            uffd.wake(aligned_dst + offset, chunk)
            return
        assert moved == chunk, f"UFFDIO_MOVE moved {moved} of {chunk} bytes"
        monitor._count("missing_faults")

    monitor = _Monitor(dst, src, fault=move)
    with env.uffd() as uffd:
        uffd.register(dst.addr, dst.length, RegisterMode.MISSING)
        with FaultHandler(uffd, monitor):
            for nr in range(0, step_count * step, step):
                pages = range(nr, nr + step)
                for i in pages:
                    _check_page(src, src_offs + i, _byte(src_offs + i), "source before the move")
                for i in pages:  # the first read moves the whole chunk
                    _check_page(dst, dst_offs + i, _byte(src_offs + i), "destination after the move")
                for i in pages:
                    _check_page(src, src_offs + i, 0, "source after the move")
    assert (monitor.missing_faults, monitor.minor_faults) == (step_count, 0), (
        f"{monitor.missing_faults} chunks moved and {monitor.minor_faults} minor faults; expected {step_count} and 0"
    )


def _align_up(address: int, align: int) -> int:
    return (address + align - 1) // align * align


def _move(env: _Env) -> None:
    """uffd_move_test(): page by page, from a source kept free of THPs."""
    src, dst = env.region(), env.region()
    src.madvise(mmap.MADV_NOHUGEPAGE)  # prevent_hugepages(): before the source is populated
    _move_common(env, src, dst, dst.page_size)


def _move_pmd_regions(env: _Env) -> tuple[Region, Region, int]:
    """Regions of _PMD_CHUNKS PMDs (one more for alignment), the source asking for THPs."""
    try:
        with open(_THP_PMD_SIZE) as f:
            pmd = int(f.read())
    except OSError:
        pytest.skip("CONFIG_TRANSPARENT_HUGEPAGE is not set")
    npages = (_PMD_CHUNKS + 1) * pmd // PAGE_SIZE
    src, dst = env.region(npages), env.region(npages)
    try:  # request_hugepages(): before the source is populated
        src.madvise(mmap.MADV_HUGEPAGE)
    except MappingError as exc:
        pytest.skip(
            "CONFIG_TRANSPARENT_HUGEPAGE is not set"
            if exc.errno == errno.EINVAL
            else f"madvise(MADV_HUGEPAGE) failed: {exc}"
        )
    return src, dst, pmd


def _move_pmd(env: _Env) -> None:
    """uffd_move_pmd_test(): a PMD-sized chunk per fault, into a THP-eligible destination."""
    src, dst, pmd = _move_pmd_regions(env)
    dst.madvise(mmap.MADV_HUGEPAGE)
    _move_common(env, src, dst, pmd)


def _move_pmd_split(env: _Env) -> None:
    """uffd_move_pmd_split_test(): PMD-sized chunks into a destination that refuses THPs (split on move)."""
    src, dst, pmd = _move_pmd_regions(env)
    dst.madvise(mmap.MADV_NOHUGEPAGE)
    _move_common(env, src, dst, pmd)


def _check_child_wp(dst: Region, with_event: bool, where: str) -> None:
    """pagemap_test_fork(): after fork(), the child keeps the uffd-wp bit only with EVENT_FORK."""

    def child() -> None:
        assert pte.is_uffd_wp(dst.addr) == with_event, (
            f"Detected {'missing' if with_event else 'stall'} uffd-wp bit in child in {where}"
        )

    run_in_child(child, _WAIT_CHILD)


def _wp_fork_body(uffd: Userfaultfd, dst: Region, with_event: bool) -> None:
    """uffd_wp_fork_test_common()."""
    size = dst.page_size
    uffd.register(dst.addr, dst.length, RegisterMode.WP)
    dst.write(0, 1, value=1)
    uffd.writeprotect(dst.addr, size, True)
    assert pte.is_uffd_wp(dst.addr), "uffd-wp bit missing after UFFDIO_WRITEPROTECT"
    _check_child_wp(dst, with_event, "present pte")
    # Zap the page table to test the markers: PAGEOUT works on exclusive private PTEs,
    # DONTNEED plays that role for shared memory.
    if dst.kind.shared:
        dst.dontneed(0, 1)
    else:
        try:
            dst.pageout(0, 1)
        except MappingError:
            pass  # private hugetlb cannot swap: the selftest ignores this too
    assert pte.is_uffd_wp(dst.addr), "uffd-wp bit lost when the pte was zapped or swapped out"
    _check_child_wp(dst, with_event, "zapped pte")
    uffd.writeprotect(dst.addr, size, False)
    assert not pte.is_uffd_wp(dst.addr), "uffd-wp bit still set after un-protecting"
    dst.write(0, 1, value=2)
    assert not pte.is_uffd_wp(dst.addr), "uffd-wp bit set after faulting the page back in"
    uffd.unregister(dst.addr, dst.length)


def _wp_fork(env: _Env) -> None:
    """uffd_wp_fork_test(): without EVENT_FORK the child drops the uffd-wp bits."""
    dst = env.region()
    with env.uffd() as uffd, FaultHandler(uffd, _Unexpected()):
        _wp_fork_body(uffd, dst, with_event=False)


def _wp_fork_with_event(env: _Env) -> None:
    """uffd_wp_fork_with_event_test(): with EVENT_FORK the child inherits the uffd-wp bits."""
    dst = env.region()
    monitor = _Monitor(dst, fault=_Unexpected())
    _monitored(env.features, lambda uffd: _wp_fork_body(uffd, dst, with_event=True), monitor)
    forks = monitor.of_type(ForkEvent)
    assert len(forks) == 2, f"expected one FORK event per fork() (2), got {len(forks)}"
    assert monitor.events == forks, f"events other than FORK: {monitor.events}"


def _wp_unpopulated(env: _Env) -> None:
    """uffd_wp_unpopulated_test(): uffd-wp pte markers on never-touched anonymous memory."""
    dst = env.region()
    size = dst.page_size
    with env.uffd() as uffd, FaultHandler(uffd, _Unexpected()):
        uffd.register(dst.addr, dst.length, RegisterMode.WP)
        uffd.writeprotect(dst.addr, size, True)
        assert pte.is_uffd_wp(dst.addr), "no uffd-wp marker on an unpopulated anonymous pte"
        uffd.writeprotect(dst.addr, size, False)
        assert not pte.is_uffd_wp(dst.addr), "un-protect left the uffd-wp marker"
        uffd.writeprotect(dst.addr, size, True)
        dst.dontneed(0, 1)
        assert not pte.is_uffd_wp(dst.addr), "MADV_DONTNEED did not zap the uffd-wp marker"
        dst.write(0, 1, value=1)
        assert not pte.is_uffd_wp(dst.addr), "uffd-wp bit after faulting in where the marker was zapped"
        dst.dontneed(0, 1)
        # A read upon a marker maps the zero page and keeps the bit (do_anonymous_page()).
        uffd.writeprotect(dst.addr, size, True)
        dst.read(0, 1)
        assert pte.is_uffd_wp(dst.addr), "reading a uffd-wp marker lost the uffd-wp bit"
        dst.dontneed(0, 1)


def _minor(env: _Env, test_wp: bool) -> None:
    """uffd_minor_test_common(): MINOR faults resolved with UFFDIO_CONTINUE show the page cache's data."""
    dst = env.region()
    alias = env.alias(dst)  # the registered side; dst stays unregistered
    mode = RegisterMode.MINOR | (RegisterMode.WP if test_wp else 0)
    with env.uffd() as uffd:
        uffd.register(alias.addr, alias.length, mode)
        # Populating the unregistered side must not raise MINOR faults (counted below).
        _fill(dst, lambda page: page % 255)
        monitor = _Monitor(alias, apply_wp=test_wp, minor_source=dst)
        with FaultHandler(uffd, monitor):
            for page in range(env.npages):
                _check_page(alias, page, ~(page % 255) & 0xFF, "after UFFDIO_CONTINUE")
        if test_wp:  # while registered: closing the uffd clears the bits (userfaultfd_clear_vma())
            unprotected = [p for p in range(env.npages) if not pte.is_uffd_wp(alias.page_addr(p))]
            assert not unprotected, f"UFFDIO_CONTINUE_MODE_WP left pages {unprotected} without the uffd-wp bit"
    assert (monitor.missing_faults, monitor.minor_faults, monitor.wp_faults) == (0, env.npages, 0), (
        f"faults: {monitor.missing_faults} missing, {monitor.minor_faults} minor, {monitor.wp_faults} wp; "
        f"expected 0, {env.npages}, 0"
    )


def _minor_case(env: _Env) -> None:
    _minor(env, test_wp=False)


def _minor_wp_case(env: _Env) -> None:
    _minor(env, test_wp=True)


def _faulting_process_sigbus(uffd: Userfaultfd, src: Region, dst: Region, wp: bool) -> None:
    """faulting_process(1, wp): each MISSING access raises SIGBUS; copy the page and retry."""
    size = dst.page_size
    for page in range((dst.npages + 1) // 2):
        offset = page * size
        sig = dst.probe(page)
        assert sig == signal.SIGBUS, f"page {page}: read of a missing page gave signal {sig}, expected SIGBUS"
        assert uffd.copy(dst.addr + offset, src.addr + offset, size, wp=wp) == size, "UFFDIO_COPY: short"
        assert dst.probe(page) == 0, f"page {page}: read after UFFDIO_COPY still faults"
        _check_page(dst, page, _byte(page), "after UFFDIO_COPY")
        # Write the same value back: with WP this is a WP fault, which SIGBUS reports too.
        sig = dst.probe(page, write=True, value=_byte(page))
        if wp:
            assert sig == signal.SIGBUS, f"page {page}: write to a write-protected page gave signal {sig}"
            uffd.writeprotect(dst.addr + offset, size, False)
            sig = dst.probe(page, write=True, value=_byte(page))
        assert sig == 0, f"page {page}: write after resolving gave signal {sig}"


def _sigbus(env: _Env, wp: bool) -> None:
    """uffd_sigbus_test_common(): with UFFD_FEATURE_SIGBUS faults raise SIGBUS, in a forked child too."""
    src, dst = env.region(), env.region()
    _fill(src)
    mode = RegisterMode.MISSING | (RegisterMode.WP if wp else 0)

    def worker(uffd: Userfaultfd) -> None:
        uffd.register(dst.addr, dst.length, mode)
        _faulting_process_sigbus(uffd, src, dst, wp)
        _release(dst)

        def faulting_process_2() -> None:
            """faulting_process(2, wp): the child's missing pages raise SIGBUS as well."""
            pages = range((dst.npages + 1) // 2)
            signalled = [p for p in pages if dst.probe(p) == signal.SIGBUS]
            assert signalled == list(pages), f"child: SIGBUS on pages {signalled}, expected {list(pages)}"

        run_in_child(faulting_process_2, _WAIT_CHILD)

    monitor = _Monitor(dst, src, apply_wp=wp, fault=_Unexpected())
    _monitored(env.features, worker, monitor)
    assert not monitor.of_type(PageFault), f"userfaults despite UFFD_FEATURE_SIGBUS: {monitor.of_type(PageFault)}"
    assert len(monitor.of_type(ForkEvent)) == 1, f"expected one FORK event, got {monitor.events}"


def _sigbus_case(env: _Env) -> None:
    _sigbus(env, wp=False)


def _sigbus_wp_case(env: _Env) -> None:
    _sigbus(env, wp=True)


def _faulting_process_events(dst: Region) -> None:
    """faulting_process(0, wp): fault every page (half before an mremap, half after), release, see zeros."""

    def touch(page: int) -> None:
        _check_page(dst, page, _byte(page), "memory corruption")
        dst.write(page, 1, value=_byte(page))  # write the same value back: a WP fault if protected

    split = (dst.npages + 1) // 2
    for page in range(split):
        touch(page)
    dst.mremap()
    for page in range(split, dst.npages):
        touch(page)
    _release(dst)
    for page in range(dst.npages):
        _check_page(dst, page, 0, "after release")


def _events(env: _Env, wp: bool) -> None:
    """uffd_events_test_common(): FORK, REMAP and REMOVE events around a child's MISSING faults."""
    src, dst = env.region(), env.region()
    _fill(src)
    mode = RegisterMode.MISSING | (RegisterMode.WP if wp else 0)

    def worker(uffd: Userfaultfd) -> None:
        uffd.register(dst.addr, dst.length, mode)
        run_in_child(lambda: _faulting_process_events(dst), _WAIT_CHILD)

    monitor = _Monitor(dst, src, apply_wp=wp)
    _monitored(env.features, worker, monitor)
    assert monitor.missing_faults == env.npages, (
        f"{monitor.missing_faults} MISSING faults resolved; expected {env.npages} (Fault counts wrong)"
    )
    assert monitor.wp_faults == (env.npages if wp else 0), (
        f"{monitor.wp_faults} WP faults; expected {env.npages if wp else 0}"
    )
    assert len(monitor.of_type(ForkEvent)) == 1, f"expected one FORK event: {monitor.events}"
    remaps = monitor.of_type(RemapEvent)
    assert len(remaps) == 1 and remaps[0].old == dst.addr and remaps[0].new != dst.addr, (
        f"expected one REMAP event away from {dst.addr:#x}: {remaps}"
    )
    removed = monitor.of_type(RemoveEvent)
    assert RemoveEvent(remaps[0].new, remaps[0].new + dst.length) in removed, (
        f"no REMOVE event for the released range [{remaps[0].new:#x}, +{dst.length}): {removed}"
    )
    before = {
        _page_start(dst, f.address) // dst.page_size
        for f in monitor.of_type(PageFault)
        if dst.addr <= f.address < dst.end and not f.wp
    }
    split = (env.npages + 1) // 2
    assert before == set(range(split)), f"MISSING faults before the mremap on pages {sorted(before)}"
    new = remaps[0].new
    after = {
        (f.address - new) // dst.page_size
        for f in monitor.of_type(PageFault)
        if new <= f.address < new + dst.length and not f.wp
    }
    assert after >= set(range(split, env.npages)), f"MISSING faults after the mremap on pages {sorted(after)}"


def _events_case(env: _Env) -> None:
    _events(env, wp=False)


def _events_wp_case(env: _Env) -> None:
    _events(env, wp=True)


def _poison(env: _Env) -> None:
    """uffd_poison_test(): odd pages get a zero page by UFFDIO_COPY, even pages UFFDIO_POISON (SIGBUS)."""
    src, dst = env.region(), env.region()
    _fill(src, lambda page: 0)
    size = dst.page_size

    def poison_or_copy(uffd: Userfaultfd, fault: PageFault) -> None:
        assert not (fault.wp or fault.minor), f"unexpected fault type {fault.flags!r}"
        offset = _page_start(dst, fault.address)
        if offset & size:
            assert uffd.copy(dst.addr + offset, src.addr + offset, size) == size, "UFFDIO_COPY: short"
        else:
            poisoned = uffd.poison(dst.addr + offset, size)
            assert poisoned == size, f"UFFDIO_POISON: unexpected size {poisoned}"

    with env.uffd() as uffd:
        ioctls = uffd.register(dst.addr, dst.length, RegisterMode.MISSING)
        assert {Ioctl.COPY, Ioctl.POISON} <= ioctls, (
            f"registered area doesn't support COPY and POISON ioctls: {sorted(i.name for i in ioctls)}"
        )
        with FaultHandler(uffd, _Monitor(dst, src, fault=poison_or_copy)):
            sigbus = []
            for page in range(env.npages):
                sig = dst.probe(page)
                if sig == signal.SIGBUS:
                    sigbus.append(page)
                    continue
                assert sig == 0, f"page {page}: signal {sig}"
                _check_page(dst, page, 0, "nonzero byte in area_dst")
    assert sigbus == list(range(0, env.npages, 2)), (
        f"SIGBUS on pages {sigbus}; expected the {env.npages // 2} poisoned (even) pages"
    )


# -- the table: uffd-unit-tests.c's uffd_tests[] -----------------------------------------

F = Feature
UNIT_CASES: tuple[UnitCase, ...] = (
    UnitCase(
        "register-ioctls",
        _register_ioctls,
        MEM_ALL,
        frozenset(
            {
                F.MISSING_HUGETLBFS,
                F.MISSING_SHMEM,
                F.PAGEFAULT_FLAG_WP,
                F.WP_HUGETLBFS_SHMEM,
                F.MINOR_HUGETLBFS,
                F.MINOR_SHMEM,
            }
        ),
    ),
    UnitCase("zeropage", _zeropage, MEM_ALL, frozenset()),
    UnitCase("move", _move, (MemoryKind.ANON,), frozenset({F.MOVE})),
    UnitCase("move-pmd", _move_pmd, (MemoryKind.ANON,), frozenset({F.MOVE})),
    UnitCase("move-pmd-split", _move_pmd_split, (MemoryKind.ANON,), frozenset({F.MOVE})),
    UnitCase("wp-fork", _wp_fork, MEM_ALL, frozenset({F.PAGEFAULT_FLAG_WP, F.WP_HUGETLBFS_SHMEM})),
    UnitCase(
        "wp-fork-with-event",
        _wp_fork_with_event,
        MEM_ALL,
        frozenset({F.PAGEFAULT_FLAG_WP, F.WP_HUGETLBFS_SHMEM, F.EVENT_FORK}),
    ),  # when set, the child inherits the uffd-wp bits
    UnitCase("wp-unpopulated", _wp_unpopulated, (MemoryKind.ANON,), frozenset({F.PAGEFAULT_FLAG_WP, F.WP_UNPOPULATED})),
    UnitCase(
        "minor", _minor_case, (MemoryKind.SHMEM, MemoryKind.HUGETLB), frozenset({F.MINOR_HUGETLBFS, F.MINOR_SHMEM})
    ),
    UnitCase(
        "minor-wp",
        _minor_wp_case,
        (MemoryKind.SHMEM, MemoryKind.HUGETLB),
        frozenset({F.MINOR_HUGETLBFS, F.MINOR_SHMEM, F.PAGEFAULT_FLAG_WP, F.WP_UNPOPULATED}),
    ),  # the selftest's stand-in for "minor mode can write-protect": no bit says so
    UnitCase("sigbus", _sigbus_case, MEM_ALL, frozenset({F.SIGBUS, F.EVENT_FORK})),
    UnitCase(
        "sigbus-wp",
        _sigbus_wp_case,
        MEM_ALL,
        frozenset({F.SIGBUS, F.EVENT_FORK, F.PAGEFAULT_FLAG_WP, F.WP_HUGETLBFS_SHMEM}),
    ),
    UnitCase("events", _events_case, MEM_ALL, frozenset({F.EVENT_FORK, F.EVENT_REMAP, F.EVENT_REMOVE})),
    UnitCase(
        "events-wp",
        _events_wp_case,
        MEM_ALL,
        frozenset({F.EVENT_FORK, F.EVENT_REMAP, F.EVENT_REMOVE, F.PAGEFAULT_FLAG_WP, F.WP_HUGETLBFS_SHMEM}),
    ),
    UnitCase("poison", _poison, MEM_ALL, frozenset({F.POISON})),
)
del F


# -- the runner ---------------------------------------------------------------------------

#: BIT_ULL(63), the selftest's "wrong feature bit": no UFFD_FEATURE_* uses it
_UNKNOWN_FEATURE = 1 << 63


@pytest.mark.parametrize("via", ["syscall", "dev"])
def test_uffd_api(via: str):
    """test_uffd_api(): UFFDIO_API refuses an unknown feature bit, then works once, then refuses again.

    (The selftest also sends a wrong ``api`` value; the harness's binding
    always sends UFFD_API, so that check is not made here.)
    """
    assert abi.unknown_feature_bits(_UNKNOWN_FEATURE) == _UNKNOWN_FEATURE, "bit 63 has become a feature"
    try:
        uffd = Userfaultfd.open(features=None, via=via)
    except UffdError as exc:
        pytest.skip(f"cannot open userfaultfd handle ({via}): {exc}")
    with uffd:
        out = ffi.new("uint64_t[2]")
        r = lib.harness_uffd_api(uffd.fileno(), _UNKNOWN_FEATURE, out, out + 1)
        assert r == -errno.EINVAL, f"UFFDIO_API with feature bit 63 returned {r}, expected -EINVAL"
        uffd.api([])  # the failed handshake left the fd usable
        with pytest.raises(UffdError) as raised:
            uffd.api([Feature.PAGEFAULT_FLAG_WP])
        assert raised.value.errno == errno.EINVAL, f"second UFFDIO_API: {raised.value}, expected EINVAL"


@pytest.mark.parametrize("case,kind", list(_params()))
def test_uffd_unit(case: UnitCase, kind: MemoryKind, request, make_region):
    missing = _missing_features(case.features)
    if missing:
        pytest.skip(f"kernel {os.uname().release} lacks {', '.join(missing)}")
    try:  # the selftest skips too when the handshake is refused ("possible lack of privilege")
        open_any(case.features).close()
    except UffdError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES):
            raise
        pytest.skip(f"cannot open a userfaultfd with these features: {exc}")
    if kind.hugetlb:
        request.getfixturevalue("hugepages_reserved")
    env = _Env(kind, make_region, case.features)
    try:
        case.body(env)
    finally:
        env.close()
