"""Memory regions: one VMA each, of the kinds userfaultfd handles differently.

Accesses are done in C (``cbits/memory.c``), one load or store per page, so
a "read" never writes and a "write" never reads first.
"""

from __future__ import annotations

import enum
import operator
import os
import re
import tempfile
import weakref
from typing import Optional

from harness._native import ffi, lib
from harness.errors import HarnessError, InvalidArgument, MappingError, RegionClosedError, ThpUnavailable

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PROT_NONE = lib.PROT_NONE
PROT_READ = lib.PROT_READ
PROT_WRITE = lib.PROT_WRITE
PROT_RW = PROT_READ | PROT_WRITE


class MemoryKind(enum.Enum):
    """The memory types of the kernel's uffd selftests (``mem_types`` in uffd-unit-tests.c)."""

    ANON = "anon"
    SHMEM = "shmem"  # memfd, MAP_SHARED
    SHMEM_PRIVATE = "shmem-private"  # memfd, MAP_PRIVATE
    FILE = "file"  # a tmpfs file, MAP_SHARED
    FILE_PRIVATE = "file-private"  # a tmpfs file, MAP_PRIVATE
    HUGETLB = "hugetlb"  # memfd MFD_HUGETLB, MAP_SHARED
    HUGETLB_PRIVATE = "hugetlb-private"  # memfd MFD_HUGETLB, MAP_PRIVATE

    @property
    def shared(self) -> bool:
        return self in (MemoryKind.SHMEM, MemoryKind.FILE, MemoryKind.HUGETLB)

    @property
    def file_backed(self) -> bool:
        return self is not MemoryKind.ANON

    @property
    def hugetlb(self) -> bool:
        return self in (MemoryKind.HUGETLB, MemoryKind.HUGETLB_PRIVATE)


def default_hugepage_size() -> int:
    """Hugepagesize from /proc/meminfo, in bytes."""
    return _meminfo().get("Hugepagesize", 2048) * 1024


def free_hugepages() -> int:
    """HugePages_Free from /proc/meminfo: hugetlb regions need some."""
    return _meminfo().get("HugePages_Free", 0)


def _meminfo() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0])
    return values


# -- transparent huge pages -------------------------------------------------------

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
#: khugepaged's pause between scans, in milliseconds (tests/conftest.py's khugepaged_paused lengthens it)
KHUGEPAGED_SLEEP_MS = f"{THP_SYSFS}/khugepaged/scan_sleep_millisecs"


def _read_text(path: str) -> Optional[str]:
    """A sysfs or procfs file's text, None when it does not exist (tests replace this to fake settings)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def sysfs_choice(path: str) -> Optional[str]:
    """The selected word of a sysfs choice file ("always [madvise] never" -> "madvise"), None without it."""
    return _selected(_read_text(path))


def _selected(text: Optional[str]) -> Optional[str]:
    """The [selected] word of a sysfs choice ("always [madvise] never" -> "madvise")."""
    if text is None:
        return None
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else text.strip()


def thp_pmd_size() -> int:
    """The size of a PMD-mapped THP in bytes (hpage_pmd_size; 2 MiB on x86-64)."""
    text = _read_text(f"{THP_SYSFS}/hpage_pmd_size")
    return int(text) if text and text.strip().isdigit() else 2 << 20


def thp_unavailable() -> Optional[str]:
    """None when an anonymous MADV_HUGEPAGE mapping may get a PMD-sized THP here, else what is missing.

    Reads the settings only: whether a free 2 MiB block exists shows at the
    fault (see :func:`harness.pte.check_thp`).
    """
    if _read_text(f"{THP_SYSFS}/enabled") is None:
        return f"kernel lacks CONFIG_TRANSPARENT_HUGEPAGE (no {THP_SYSFS}/enabled)"
    enabled = sysfs_choice(f"{THP_SYSFS}/enabled")
    per_size_path = f"{THP_SYSFS}/hugepages-{thp_pmd_size() // 1024}kB/enabled"
    per_size = sysfs_choice(per_size_path)  # Linux 6.8+; "inherit" defers to enabled
    if per_size not in (None, "inherit"):
        if per_size == "never":
            return f"PMD-sized THP disabled: {per_size_path} = never (echo inherit > {per_size_path}, as root)"
    elif enabled == "never":
        return f"THP disabled: {THP_SYSFS}/enabled = never (echo madvise > {THP_SYSFS}/enabled, as root)"
    status = _read_text("/proc/self/status") or ""
    match = re.search(r"^THP_enabled:\s*(\d+)", status, re.M)
    if match and match.group(1) == "0":
        return "THP disabled for this process (prctl(PR_SET_THP_DISABLE); /proc/self/status THP_enabled: 0)"
    return None


#: the anonymous mTHP size of large-folio regions: the smallest multi-page size x86-64 offers in
#: /sys/kernel/mm/transparent_hugepage/hugepages-<size>kB (Linux 6.8 and later)
MTHP_SIZE = 64 * 1024


def large_folio_size(kind: MemoryKind) -> int:
    """The folio size of a large-folio region of ``kind``: an anonymous mTHP, or a PMD-sized shmem THP."""
    if kind is MemoryKind.ANON:
        return MTHP_SIZE
    if kind is MemoryKind.SHMEM:
        return thp_pmd_size()
    raise HarnessError(f"large-folio regions are anonymous (mTHP) or shmem (shmem THP), not {kind.value}")


#: the sysfs file that lets MADV_HUGEPAGE memory of a kind have large folios, and the value that does it
#: (both off by default; the tests' fixture writes it for its module, as root, and puts it back)
LARGE_FOLIO_SETTINGS = {
    MemoryKind.ANON: (f"{THP_SYSFS}/hugepages-{MTHP_SIZE // 1024}kB/enabled", "madvise"),
    MemoryKind.SHMEM: (f"{THP_SYSFS}/shmem_enabled", "advise"),
}


def large_folio_unavailable(kind: MemoryKind) -> Optional[str]:
    """None when a MADV_HUGEPAGE region of ``kind`` may get large folios here, else what is missing."""
    large_folio_size(kind)  # names the kinds there are none of
    path, value = LARGE_FOLIO_SETTINGS[kind]
    setting = sysfs_choice(path)
    what = f"{MTHP_SIZE // 1024} KiB anonymous mTHP" if kind is MemoryKind.ANON else "shmem THP"
    if setting is None:
        since = "Linux 6.8 or later" if kind is MemoryKind.ANON else "CONFIG_TRANSPARENT_HUGEPAGE"
        return f"the kernel offers no {what} (no {path}: {since})"
    if setting == "inherit":
        return thp_unavailable()
    if setting in ("never", "deny"):
        return f"{what} disabled: {path} = {setting} (echo {value} > {path}, as root)"
    return None


def _vmstat(name: str) -> Optional[int]:
    for line in (_read_text("/proc/vmstat") or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return None


def _tmpfs_dir() -> str:
    """A tmpfs directory for FILE regions (/dev/shm when it is tmpfs)."""
    with open("/proc/mounts") as f:
        mounts = {fields[1]: fields[2] for fields in (line.split() for line in f)}
    for candidate in ("/dev/shm", "/run", "/tmp"):
        if mounts.get(candidate) == "tmpfs" and os.access(candidate, os.W_OK):
            return candidate
    raise HarnessError("no writable tmpfs mount (/dev/shm, /run, /tmp) for a tmpfs-file region")


class _Owned:
    """The mapping (guards included) and fd a Region owns, released once.

    Kept apart from the Region so that the finalizer of a Region dropped
    without :meth:`Region.close` can release them without a reference to it.
    """

    __slots__ = ("start", "length", "fd")

    def __init__(self, start: int, length: int, fd: int):
        self.start, self.length, self.fd = start, length, fd

    def release(self) -> None:
        start, length, fd = self.start, self.length, self.fd
        self.start = self.length = 0
        self.fd = -1
        try:
            if length and lib.munmap(ffi.cast("void *", start), length) != 0:
                raise MappingError("munmap", ffi.errno, start, length)
        finally:
            if fd >= 0:
                os.close(fd)


class Region:
    """``npages`` pages of one memory kind, mapped as one VMA.

    Pages are numbered from 0; ``count=None`` means "to the end".  Every
    access checks its pages against the region and the region against
    :meth:`close` before an address reaches C, so a closed region or a range
    past the end raises instead of crashing the interpreter.  A region
    dropped without :meth:`close` is unmapped by a finalizer.
    """

    def __init__(
        self,
        kind: MemoryKind,
        addr: int,
        npages: int,
        page_size: int,
        fd: int = -1,
        prot: int = PROT_RW,
        guarded: bool = False,
        thp: bool = False,
        folio_size: int = 0,
    ):
        self.kind = kind
        #: anonymous, MADV_HUGEPAGE, one "page" per PMD-sized THP (see :meth:`create`)
        self.thp = thp
        #: base pages over large folios of this many bytes, each mapped by PTEs (see :meth:`create`); 0: not
        self.folio_size = folio_size
        self._thp_fallbacks = _vmstat("thp_fault_fallback") if thp else None
        self._guarded = guarded
        self.addr = addr
        self.npages = npages
        self.page_size = page_size
        self.fd = fd
        self.prot = prot
        self._owned = _Owned(0, 0, fd)
        self._set_owned_range()
        self._finalizer = weakref.finalize(self, self._owned.release)

    @property
    def _guard_size(self) -> int:
        """One guard each side, as wide as the alignment the region was mapped with."""
        return self.folio_size or self.page_size

    def _set_owned_range(self) -> None:
        guard = self._guard_size if self._guarded else 0
        self._owned.start, self._owned.length = self.addr - guard, self.length + 2 * guard

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _check_open(self, op: str) -> None:
        if not self._finalizer.alive:
            raise RegionClosedError(op, f"{self.kind.value} region of {self.npages} pages")

    @property
    def length(self) -> int:
        return self.npages * self.page_size

    @property
    def end(self) -> int:
        return self.addr + self.length

    @classmethod
    def create(
        cls,
        kind: MemoryKind = MemoryKind.ANON,
        npages: int = 1,
        *,
        prot: int = PROT_RW,
        thp: bool = False,
        large_folio: bool = False,
        at: Optional[int] = None,
    ) -> "Region":
        """``npages`` pages of ``kind`` in one VMA between guard pages.

        ``thp=True`` (anonymous only): ``npages`` PMD-sized pages (2 MiB on
        x86-64), PMD-aligned, with ``MADV_HUGEPAGE``, not populated; the
        first write to each makes it a PMD-mapped THP where the kernel finds
        a free 2 MiB block, which :func:`harness.pte.check_thp` verifies.  Raises
        :class:`~harness.errors.ThpUnavailable` when the THP settings forbid it.

        ``large_folio=True`` (anonymous or shmem): ``npages`` large folios of
        :func:`large_folio_size` each, mapped by PTEs: a region of base pages
        (``npages`` times the folio's pages), aligned to the folio size, with
        ``MADV_HUGEPAGE``, not populated.  The first write to anonymous memory
        allocates a 64 KiB mTHP where the kernel offers it; shmem allocates a
        PMD-sized THP in the page cache (which the first fault may map by a
        PMD: write-protecting a file PMD zaps it, and later faults map PTEs).
        :func:`harness.pte.check_large_folio` verifies what the kernel did.
        Raises :class:`~harness.errors.ThpUnavailable` when the settings forbid it.

        ``at``: map exactly there (``MAP_FIXED``), over address space the caller
        reserved and keeps (no guard pages): how :func:`adjacent_regions` lays
        VMAs side by side.
        """
        if isinstance(npages, bool) or not isinstance(npages, int):
            raise InvalidArgument("Region.create", "npages", f"a number of pages, not {npages!r}")
        if npages <= 0:
            raise InvalidArgument("Region.create", "npages", f"a region needs at least one page, not {npages}")
        # mmap takes a size_t and the reservation adds guards: say so here, not with an OverflowError from C
        if thp and large_folio:
            raise InvalidArgument(
                "Region.create", "large_folio", "a region is PMD-mapped THPs or large folios, not both"
            )
        unit = (
            thp_pmd_size()
            if thp
            else large_folio_size(kind)
            if large_folio
            else default_hugepage_size()
            if kind.hugetlb
            else PAGE_SIZE
        )
        if (npages + 3) * unit > _MAX_MAPPING:
            raise InvalidArgument(
                "Region.create",
                "npages",
                f"{npages} pages do not fit in an address space ({_MAX_MAPPING + 1:#x} bytes)",
            )
        if thp:
            return cls._create_thp(kind, npages, prot)
        if large_folio:
            return cls._create_large_folios(kind, npages, prot)
        page_size = default_hugepage_size() if kind.hugetlb else PAGE_SIZE
        if kind.hugetlb and free_hugepages() < npages:
            raise HarnessError(
                f"{kind.value} region of {npages} pages: only {free_hugepages()} free huge pages "
                "(reserve some: sysctl vm.nr_hugepages=N, as root)"
            )
        length = npages * page_size
        fd = -1
        try:
            if kind is MemoryKind.ANON:
                flags, map_fd = lib.MAP_PRIVATE | lib.MAP_ANONYMOUS, -1
            elif kind in (MemoryKind.FILE, MemoryKind.FILE_PRIVATE):
                fd, path = tempfile.mkstemp(prefix="uffd-harness-", dir=_tmpfs_dir())
                os.unlink(path)
                _ftruncate(fd, length, kind)
                flags, map_fd = (lib.MAP_SHARED if kind is MemoryKind.FILE else lib.MAP_PRIVATE), fd
            else:
                memfd_flags = os.MFD_CLOEXEC | (os.MFD_HUGETLB if kind.hugetlb else 0)
                fd = os.memfd_create(f"uffd-harness-{kind.value}", memfd_flags)
                _ftruncate(fd, length, kind)
                flags = lib.MAP_SHARED if kind.shared else lib.MAP_PRIVATE
                map_fd = fd
            if at is None:
                addr = _map_between_guards(length, page_size, prot, flags, map_fd, kind.value)
            else:
                addr = _map_fixed(at, length, prot, flags, map_fd, kind.value)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return cls(kind, addr, npages, page_size, fd, prot, guarded=at is None)

    @classmethod
    def _create_thp(cls, kind: MemoryKind, npages: int, prot: int) -> "Region":
        if kind is not MemoryKind.ANON:
            raise HarnessError(
                f"THP regions are anonymous only, not {kind.value} "
                "(shmem THP depends on shmem_enabled and is not covered)"
            )
        reason = thp_unavailable()
        if reason:
            raise ThpUnavailable(f"anon THP region: {reason}")
        page_size = thp_pmd_size()
        length = npages * page_size
        addr = _map_between_guards(length, page_size, prot, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS, -1, "anon THP")
        region = cls(kind, addr, npages, page_size, -1, prot, guarded=True, thp=True)
        try:
            region.madvise(lib.MADV_HUGEPAGE)
        except BaseException:
            region.close()
            raise
        return region

    @classmethod
    def _create_large_folios(cls, kind: MemoryKind, nfolios: int, prot: int) -> "Region":
        reason = large_folio_unavailable(kind)
        if reason:
            raise ThpUnavailable(f"{kind.value} large-folio region: {reason}")
        folio_size = large_folio_size(kind)
        length = nfolios * folio_size
        fd = -1
        try:
            if kind is MemoryKind.ANON:
                flags = lib.MAP_PRIVATE | lib.MAP_ANONYMOUS
            else:
                fd = os.memfd_create(f"uffd-harness-{kind.value}-thp", os.MFD_CLOEXEC)
                _ftruncate(fd, length, kind)
                flags = lib.MAP_SHARED
            addr = _map_between_guards(length, folio_size, prot, flags, fd, f"{kind.value} large folios")
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        region = cls(kind, addr, length // PAGE_SIZE, PAGE_SIZE, fd, prot, guarded=True, folio_size=folio_size)
        try:
            region.madvise(lib.MADV_HUGEPAGE)
        except BaseException:
            region.close()
            raise
        return region

    def thp_fallback_reason(self) -> str:
        """Why the first fault of this THP region mapped 4 KiB pages, as far as /proc/vmstat and the THP
        settings tell (:func:`harness.pte.check_thp` asks once the mapping shows no THP)."""
        block = f"{self.page_size >> 20} MiB block"
        advice = "compact memory (echo 1 > /proc/sys/vm/compact_memory) or free some"
        fallbacks = _vmstat("thp_fault_fallback")
        if fallbacks is None or self._thp_fallbacks is None:
            return (
                f"the fault mapped 4 KiB pages, most likely for want of a free {block} (this kernel has no "
                f"thp_fault_fallback in /proc/vmstat to confirm it: CONFIG_VM_EVENT_COUNTERS); {advice}"
            )
        if fallbacks > self._thp_fallbacks:
            return (
                f"no free {block}: the fault fell back to 4 KiB pages (/proc/vmstat thp_fault_fallback "
                f"{self._thp_fallbacks} -> {fallbacks}); {advice}"
            )
        defrag = sysfs_choice(f"{THP_SYSFS}/defrag")
        return (
            f"the fault mapped 4 KiB pages and the kernel did not say why (thp_fault_fallback unchanged, "
            f"defrag = {defrag})"
        )

    def alias(self, prot: int = PROT_RW) -> "Region":
        """A second MAP_SHARED mapping of the same file (for MINOR faults and page-cache tests)."""
        self._check_open("mmap(alias)")
        if self.fd < 0:
            raise HarnessError(f"{self.kind.value} region has no file to map twice")
        ptr = lib.mmap(ffi.NULL, self.length, prot, lib.MAP_SHARED, self.fd, 0)
        if ptr == ffi.cast("void *", -1):
            raise MappingError("mmap(alias)", ffi.errno, None, self.length)
        return Region(self.kind, int(ffi.cast("uintptr_t", ptr)), self.npages, self.page_size, -1, prot)

    # -- addresses ----------------------------------------------------------

    def page_addr(self, page: int) -> int:
        """The address of ``page``; raises if the region is closed or the page outside it."""
        self._check_open("Region access")
        _check_index("page", page)
        if not 0 <= page < self.npages:
            raise IndexError(f"page {page} outside a region of {self.npages} pages")
        return self.addr + page * self.page_size

    def span(self, first: int = 0, count: Optional[int] = None) -> tuple[int, int]:
        """(start, length) of pages [first, first+count); raises if closed or outside the region."""
        self._check_open("Region access")
        _check_index("first", first)
        count = self.npages - first if count is None else count
        _check_index("count", count)
        if count < 0 or first < 0 or first + count > self.npages:
            raise IndexError(f"pages [{first}, +{count}) outside a region of {self.npages} pages")
        return self.addr + first * self.page_size, count * self.page_size

    # -- accesses -----------------------------------------------------------

    def read(self, first: int = 0, count: Optional[int] = None) -> None:
        """Load one byte of each page (faults in, makes young; never dirties)."""
        start, length = self.span(first, count)
        lib.harness_read_pages(start, length // self.page_size, self.page_size)

    def write(self, first: int = 0, count: Optional[int] = None, value: int = 0x5A) -> None:
        """Store ``value`` into the first byte of each page (makes young and dirty)."""
        start, length = self.span(first, count)
        lib.harness_write_pages(start, length // self.page_size, self.page_size, value & 0xFF)

    def probe(self, page: int = 0, write: bool = False, value: int = 0x5A) -> int:
        """One access that may fault with a signal: 0 if it completed, else the signal number."""
        return lib.harness_probe_access(self.page_addr(page), int(write), value & 0xFF)

    def write_faults(self, page: int = 0, value: int = 0x5A) -> int:
        """Store to a page and return how many page faults the store took: 0 means the PTE was writable."""
        faults = lib.harness_write_faults(self.page_addr(page), value & 0xFF)
        if faults < 0:
            raise OSError(ffi.errno, f"getrusage(RUSAGE_THREAD) around a store to {self!r} page {page}")
        return int(faults)

    def data(self, page: int = 0, length: Optional[int] = None) -> bytes:
        """A copy of the bytes of a page (this reads the page)."""
        start = self.page_addr(page)
        length = self.page_size if length is None else length
        _check_index("length", length)
        if not 0 <= length <= self.end - start:
            raise IndexError(f"{length} bytes from page {page} run past the end of a region of {self.npages} pages")
        # memcpy through lib, not ffi.buffer: cffi drops the GIL around lib
        # calls, so a fault served by a FaultHandler thread cannot deadlock.
        out = ffi.new("char[]", length)
        lib.memcpy(out, ffi.cast("void *", start), length)
        return ffi.buffer(out)[:]

    def fill(self, page: int, data: bytes) -> None:
        """Write ``data`` at the start of ``page`` (a write access)."""
        start = self.page_addr(page)
        if len(data) > self.end - start:
            raise IndexError(f"{len(data)} bytes from page {page} run past the end of a region of {self.npages} pages")
        lib.memcpy(ffi.cast("void *", start), ffi.from_buffer(data), len(data))

    def checksum(self, first: int = 0, count: Optional[int] = None) -> int:
        start, length = self.span(first, count)
        return lib.harness_checksum(start, length)

    # -- madvise / mprotect ----------------------------------------------------

    def madvise(self, advice: int, first: int = 0, count: Optional[int] = None) -> None:
        start, length = self.span(first, count)
        if lib.madvise(ffi.cast("void *", start), length, advice) != 0:
            raise MappingError(f"madvise({_advice_name(advice)})", ffi.errno, start, length)

    def free(self, first: int = 0, count: Optional[int] = None) -> None:
        """MADV_FREE: anonymous PTEs stay present and writable but become old and clean."""
        self.madvise(lib.MADV_FREE, first, count)

    def dontneed(self, first: int = 0, count: Optional[int] = None) -> None:
        self.madvise(lib.MADV_DONTNEED, first, count)

    def pageout(self, first: int = 0, count: Optional[int] = None) -> None:
        self.madvise(lib.MADV_PAGEOUT, first, count)

    def mprotect(self, prot: int, first: int = 0, count: Optional[int] = None) -> None:
        start, length = self.span(first, count)
        if lib.mprotect(ffi.cast("void *", start), length, prot) != 0:
            raise MappingError("mprotect", ffi.errno, start, length)
        if first == 0 and length == self.length:
            self.prot = prot

    def mremap(self, npages: Optional[int] = None) -> int:
        """Move the mapping to a new place between new guard pages; returns the new address.

        A same-size mremap(MREMAP_MAYMOVE) does not move at all (do_mremap()
        returns early), and hugetlb mappings may not grow: so the move is
        MREMAP_FIXED onto a fresh reservation.  The old guards are given back.
        A userfaultfd with EVENT_REMAP sees one REMAP event.
        """
        self._check_open("mremap")
        npages = self.npages if npages is None else npages
        _check_index("npages", npages)
        if npages <= 0:
            raise InvalidArgument("Region.mremap", "npages", f"at least one page, not {npages}")
        new_length = npages * self.page_size
        guard = self._guard_size
        spot = _map_between_guards(
            new_length, guard, PROT_NONE, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | lib.MAP_NORESERVE, -1, "mremap target"
        )
        ptr = lib.mremap(
            ffi.cast("void *", self.addr),
            self.length,
            new_length,
            lib.MREMAP_MAYMOVE | lib.MREMAP_FIXED,
            ffi.cast("void *", spot),
        )
        if ptr == ffi.cast("void *", -1):
            code = ffi.errno
            lib.munmap(ffi.cast("void *", spot - guard), new_length + 2 * guard)
            raise MappingError("mremap", code, self.addr, self.length)
        if self._guarded:
            lib.munmap(ffi.cast("void *", self.addr - guard), guard)
            lib.munmap(ffi.cast("void *", self.addr + self.length), guard)
        self.addr, self.npages, self._guarded = spot, npages, True
        self._set_owned_range()
        return self.addr

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Unmap the region and close its file; every later access raises :class:`RegionClosedError`."""
        if self._finalizer.detach() is None:
            return  # already closed
        self.fd = -1
        self._owned.release()

    def __enter__(self) -> "Region":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "closed" if self.closed else f"{self.addr:#x}"
        return f"<Region {self.kind.value}{' THP' if self.thp else ''} {where} {self.npages}x{self.page_size}>"


#: the largest mapping (guards included) asked of mmap: its length is a size_t, and past 2^63 an ssize_t fails
_MAX_MAPPING = (1 << 63) - 1


def _check_index(name: str, value) -> None:
    """Page numbers and lengths are ints: a float or a str would reach C as garbage or an OverflowError."""
    try:
        operator.index(value)
    except TypeError:
        raise InvalidArgument("Region", name, f"an int, not {value!r}") from None


def _ftruncate(fd: int, length: int, kind: MemoryKind) -> None:
    try:
        os.ftruncate(fd, length)
    except OSError as exc:
        raise MappingError(f"ftruncate({kind.value} file)", exc.errno or 0, None, length) from None


def _map_between_guards(length: int, align: int, prot: int, flags: int, fd: int, what: str) -> int:
    """Map ``length`` bytes with an inaccessible page on each side; return the address.

    The guards stop the kernel from merging the region's VMA with a
    neighbour (``vma_merge()``), so the region is exactly one VMA and smaps'
    per-VMA counts are per-region counts.
    """
    reserve_len = length + 3 * align
    reserve = lib.mmap(ffi.NULL, reserve_len, PROT_NONE, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | lib.MAP_NORESERVE, -1, 0)
    if reserve == ffi.cast("void *", -1):
        raise MappingError(f"mmap(reserve for {what})", ffi.errno, None, reserve_len)
    base = int(ffi.cast("uintptr_t", reserve))
    addr = (base + 2 * align - 1) // align * align  # >= base + align, aligned
    ptr = lib.mmap(ffi.cast("void *", addr), length, prot, flags | lib.MAP_FIXED, fd, 0)
    if ptr == ffi.cast("void *", -1):
        code = ffi.errno
        lib.munmap(reserve, reserve_len)
        raise MappingError(f"mmap({what})", code, addr, length)
    # Keep one guard page each side; give back the rest of the reservation.
    head = addr - align - base
    if head:
        lib.munmap(reserve, head)
    tail_start = addr + length + align
    tail_len = base + reserve_len - tail_start
    if tail_len:
        lib.munmap(ffi.cast("void *", tail_start), tail_len)
    return addr


def _map_fixed(addr: int, length: int, prot: int, flags: int, fd: int, what: str) -> int:
    """Map ``length`` bytes exactly at ``addr`` (over the caller's own reservation)."""
    ptr = lib.mmap(ffi.cast("void *", addr), length, prot, flags | lib.MAP_FIXED, fd, 0)
    if ptr == ffi.cast("void *", -1):
        raise MappingError(f"mmap({what}, MAP_FIXED)", ffi.errno, addr, length)
    return addr


class AdjacentRegions:
    """Regions of one kind mapped side by side, one VMA each, inside one reservation.

    ``boundary_page``: the index (counted over all the regions' pages) of the
    first page after a PMD boundary, so that one range over all of them
    crosses a page-table boundary inside a VMA *and* a VMA boundary: the two
    places where a page-table walk restarts (change_pmd_range() calls
    change_pte_range() once per PMD; mwriteprotect_range() walks each VMA).
    The VMAs do not merge: file-backed kinds each have their own file, and
    anonymous ones differ in VM_DONTDUMP (MADV_DONTDUMP on every second one).
    """

    def __init__(self, kind: MemoryKind, pages: tuple[int, ...], boundary_page: int):
        if kind.hugetlb:
            raise HarnessError("adjacent hugetlb regions are not laid out here: each huge page is its own PMD")
        if not 0 < boundary_page < sum(pages):
            raise ValueError(f"the PMD boundary must fall inside the {sum(pages)} pages, not at {boundary_page}")
        pmd = thp_pmd_size()
        total = sum(pages) * PAGE_SIZE
        reserve_len = total + 2 * pmd + 2 * PAGE_SIZE
        reserve = lib.mmap(
            ffi.NULL, reserve_len, PROT_NONE, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | lib.MAP_NORESERVE, -1, 0
        )
        if reserve == ffi.cast("void *", -1):
            raise MappingError("mmap(reserve for adjacent regions)", ffi.errno, None, reserve_len)
        self._reserve: Optional[tuple[int, int]] = (int(ffi.cast("uintptr_t", reserve)), reserve_len)
        boundary = (self._reserve[0] + PAGE_SIZE + pmd + pmd - 1) // pmd * pmd
        self.addr = boundary - boundary_page * PAGE_SIZE
        self.regions: list[Region] = []
        try:
            at = self.addr
            for i, n in enumerate(pages):
                region = Region.create(kind, n, at=at)
                self.regions.append(region)
                if kind is MemoryKind.ANON and i % 2:
                    region.madvise(lib.MADV_DONTDUMP)
                at += n * PAGE_SIZE
        except BaseException:
            self.close()
            raise

    @property
    def length(self) -> int:
        return sum(r.length for r in self.regions)

    def close(self) -> None:
        for region in self.regions:
            region.close()
        self.regions = []
        if self._reserve:
            start, length = self._reserve
            lib.munmap(ffi.cast("void *", start), length)  # what the regions did not cover
            self._reserve = None


def _advice_name(advice: int) -> str:
    for name in (
        "MADV_FREE",
        "MADV_DONTNEED",
        "MADV_PAGEOUT",
        "MADV_HUGEPAGE",
        "MADV_NOHUGEPAGE",
        "MADV_POPULATE_READ",
        "MADV_POPULATE_WRITE",
    ):
        if getattr(lib, name) == advice:
            return name
    return str(advice)
