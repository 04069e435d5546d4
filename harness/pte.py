"""PTE observation: what user space can learn about one page's page-table entry.

Channels (``PteState.source`` names the one that answered young/dirty):

``smaps``
    ``/proc/self/smaps`` per VMA: ``Referenced`` counts pages whose PTE is
    young *or* whose folio is referenced; ``Private_Dirty``/``Shared_Dirty``
    count PTE-dirty *or* folio-dirty pages (``smaps_account()`` in
    fs/proc/task_mmu.c).  Exact for a one-page VMA, which is why regions
    under test are one page per VMA; no privilege needed.
``idle-page``
    ``/sys/kernel/mm/page_idle/bitmap`` (root, CONFIG_IDLE_PAGE_TRACKING):
    "young" means "accessed since :func:`mark_idle`", which also clears the
    young bits.  Reading the bitmap clears them again (``page_idle_clear_pte_refs()``).
``kpageflags``
    ``/proc/kpageflags`` (root): folio flags; ``dirty`` is PG_dirty of the
    folio, which a dirty PTE only reaches on unmap or reclaim.

A THP region (``Region.create(..., thp=True)``) has one "page" per PMD:
smaps' Referenced / Private_Dirty of its VMA are the PMD's young / dirty
(``smaps_pmd_entry()``), idle-page tracking marks and reads the head PFN
(``page_idle_clear_pte_refs_one()`` clears PMD young bits too), and
:func:`thp_mapping` says whether it is still PMD-mapped.
"""
from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, replace
from typing import Optional

from harness import abi
from harness._native import ffi, lib
from harness.abi import KPageFlag, PagemapBit, PageCategory
from harness.errors import HarnessError, ObservationUnavailable, UffdError
from harness.memory import PAGE_SIZE, Region

SMAPS = "smaps"
IDLE_PAGE = "idle-page"
KPAGEFLAGS = "kpageflags"
CHANNELS = (SMAPS, IDLE_PAGE, KPAGEFLAGS)

_IDLE_BITMAP = "/sys/kernel/mm/page_idle/bitmap"
_KPAGEFLAGS = "/proc/kpageflags"


@dataclass(frozen=True)
class PteState:
    """One page's PTE as observed (or, from the simulator, as modelled)."""

    present: bool
    swapped: bool
    file_shared: bool
    uffd_wp: bool
    exclusive: bool
    soft_dirty: bool
    #: page frame number, None without CAP_SYS_ADMIN (pagemap shows 0)
    pfn: Optional[int]
    #: accessed bit; None when the channel cannot tell
    young: Optional[bool]
    #: dirty bit; None when the channel cannot tell
    dirty: Optional[bool]
    #: which channel answered young/dirty: smaps, idle-page, kpageflags, or sim
    source: str
    #: writable in the page table; only the simulator can see this
    writable: Optional[bool] = None

    def bits(self) -> dict[str, Optional[bool]]:
        """The observable bits, for comparing a kernel answer with a model's."""
        return {"present": self.present, "swapped": self.swapped, "uffd_wp": self.uffd_wp,
                "soft_dirty": self.soft_dirty, "young": self.young, "dirty": self.dirty}


# -- pagemap --------------------------------------------------------------------

def pagemap_entries(addr: int, npages: int, pid: str = "self") -> list[int]:
    """Raw 64-bit pagemap entries of ``npages`` base pages from ``addr``."""
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        data = os.pread(f.fileno(), 8 * npages, (addr // PAGE_SIZE) * 8)
    if len(data) != 8 * npages:
        raise HarnessError(f"/proc/{pid}/pagemap: short read at {addr:#x}")
    return list(struct.unpack(f"<{npages}Q", data))


def pagemap_entry(addr: int) -> int:
    return pagemap_entries(addr, 1)[0]


def pagemap_bit(entry: int, bit: PagemapBit) -> bool:
    return bool(entry >> bit & 1)


def pagemap_pfn(entry: int) -> Optional[int]:
    """The PFN of a present entry, or None when hidden (unprivileged) or not present."""
    if not pagemap_bit(entry, PagemapBit.PRESENT):
        return None
    return (entry & abi.PAGEMAP_PFN_MASK) or None


def is_present(addr: int) -> bool:
    return pagemap_bit(pagemap_entry(addr), PagemapBit.PRESENT)


def is_uffd_wp(addr: int) -> bool:
    return pagemap_bit(pagemap_entry(addr), PagemapBit.UFFD_WP)


def is_soft_dirty(addr: int) -> bool:
    return pagemap_bit(pagemap_entry(addr), PagemapBit.SOFT_DIRTY)


def is_swapped(addr: int) -> bool:
    return pagemap_bit(pagemap_entry(addr), PagemapBit.SWAPPED)


# -- smaps ----------------------------------------------------------------------

def smaps_vma(addr: int, pid: str = "self") -> dict[str, int]:
    """The smaps fields (in kB) of the VMA containing ``addr``; ``VmFlags`` as a string."""
    with open(f"/proc/{pid}/smaps") as f:
        lines = iter(f.read().splitlines())
    for line in lines:
        head = line.split(maxsplit=1)[0]
        if "-" not in head or ":" in head:
            continue
        lo, hi = (int(x, 16) for x in head.split("-"))
        if lo <= addr < hi:
            fields: dict = {"start": lo, "end": hi}
            for field in lines:
                key, _, value = field.partition(":")
                if key == "VmFlags":
                    fields[key] = value.strip()
                    return fields
                fields[key] = int(value.split()[0])
            return fields
    raise HarnessError(f"/proc/{pid}/smaps: no VMA contains {addr:#x}")


def _smaps_young_dirty(region: Region, page: int) -> tuple[Optional[bool], Optional[bool]]:
    vma = smaps_vma(region.page_addr(page))
    rss = vma.get("Rss", 0)
    referenced = vma.get("Referenced", 0)
    dirty = vma.get("Private_Dirty", 0) + vma.get("Shared_Dirty", 0)
    vma_pages = (vma["end"] - vma["start"]) // region.page_size

    def verdict(count: int) -> Optional[bool]:
        if count == 0:
            return False
        if vma_pages == 1 or count == rss:
            return True  # one page in the VMA, or every present page counts
        return None      # some pages of a larger VMA: cannot say which
    if region.kind.hugetlb:
        # smaps accounts hugetlb pages separately (Shared/Private_Hugetlb): no young/dirty there
        return None, None
    return verdict(referenced), verdict(dirty)


# -- idle-page tracking and kpageflags (root) -------------------------------------

def idle_page_tracking_available() -> Optional[str]:
    """None if idle-page tracking works here, else why not."""
    if not os.path.exists(_IDLE_BITMAP):
        return "kernel lacks CONFIG_IDLE_PAGE_TRACKING (no /sys/kernel/mm/page_idle/bitmap)"
    if not os.access(_IDLE_BITMAP, os.R_OK | os.W_OK):
        return "not root (page_idle/bitmap needs CAP_SYS_ADMIN)"
    return None


def kpageflags_available() -> Optional[str]:
    if not os.path.exists(_KPAGEFLAGS):
        return "kernel lacks CONFIG_PROC_PAGE_MONITOR (no /proc/kpageflags)"
    if not os.access(_KPAGEFLAGS, os.R_OK):
        return "not root (/proc/kpageflags needs CAP_SYS_ADMIN)"
    return None


def pfn_visible() -> bool:
    """Whether pagemap shows PFNs to this process (CAP_SYS_ADMIN)."""
    probe = bytearray(1)
    buf = ffi.from_buffer(probe)
    addr = int(ffi.cast("uintptr_t", buf))
    return pagemap_pfn(pagemap_entry(addr)) is not None


def _require(reason: Optional[str]) -> None:
    if reason:
        raise ObservationUnavailable(reason)


def _pfn_of(region: Region, page: int) -> int:
    entry = pagemap_entry(region.page_addr(page))
    if not pagemap_bit(entry, PagemapBit.PRESENT):
        raise ObservationUnavailable(f"page {page} of {region!r} is not present: it has no PFN")
    pfn = pagemap_pfn(entry)
    if pfn is None:
        raise ObservationUnavailable("pagemap hides PFNs from this process (needs CAP_SYS_ADMIN)")
    return pfn


def mark_idle(region: Region, first: int = 0, count: Optional[int] = None) -> None:
    """Mark the present pages idle: clears their young bits; later accesses show as young.

    A folio still in a per-CPU LRU batch is not on an LRU list yet, and
    ``page_idle_get_folio()`` ignores it: the mark would silently not take.
    So each mark is checked with kpageflags' IDLE bit; if it did not take,
    this CPU's batch is drained (any madvise that calls ``lru_add_drain()``)
    and the mark retried.  A page in another CPU's batch still fails, with
    :class:`ObservationUnavailable` saying to pin the process to one CPU.
    """
    _require(idle_page_tracking_available())
    count = region.npages - first if count is None else count
    fd = os.open(_IDLE_BITMAP, os.O_RDWR)
    try:
        for page in range(first, first + count):
            if not is_present(region.page_addr(page)):
                continue
            pfn = _pfn_of(region, page)
            for attempt in range(2):
                # The bitmap is written in 8-byte words; a set bit marks that PFN idle.
                os.pwrite(fd, struct.pack("<Q", 1 << (pfn % 64)), (pfn // 64) * 8)
                if kpageflags_available() is not None or KPageFlag.IDLE in kpageflags(pfn):
                    break
                if attempt == 0:
                    _drain_this_cpu_lru()
            else:
                raise ObservationUnavailable(
                    f"page {page} of {region!r} (pfn {pfn:#x}) could not be marked idle: it is not on an LRU "
                    "list yet (another CPU's batch); pin the process to one CPU (os.sched_setaffinity)")
    finally:
        os.close(fd)


def _drain_this_cpu_lru() -> None:
    """Push this CPU's LRU batches to the lists: MADV_COLD calls ``lru_add_drain()`` (mm/madvise.c)."""
    with Region.create() as spare:
        spare.write()
        spare.madvise(lib.MADV_COLD)


def page_idle(pfn: int) -> bool:
    """True if the page was not accessed since it was marked idle (clears young bits)."""
    _require(idle_page_tracking_available())
    fd = os.open(_IDLE_BITMAP, os.O_RDONLY)
    try:
        word, = struct.unpack("<Q", os.pread(fd, 8, (pfn // 64) * 8))
    finally:
        os.close(fd)
    return bool(word >> (pfn % 64) & 1)


def kpageflags(pfn: int) -> frozenset[KPageFlag]:
    _require(kpageflags_available())
    fd = os.open(_KPAGEFLAGS, os.O_RDONLY)
    try:
        word, = struct.unpack("<Q", os.pread(fd, 8, pfn * 8))
    finally:
        os.close(fd)
    return frozenset(flag for flag in KPageFlag if word >> flag & 1)


# -- the one-stop call ------------------------------------------------------------

def observe(region: Region, page: int = 0, channel: str = SMAPS) -> PteState:
    """The state of one page's PTE, young/dirty through ``channel``.

    ``idle-page`` answers "young since :func:`mark_idle`" and leaves dirty to
    kpageflags; ``kpageflags`` answers from folio flags (see the module doc).
    """
    entry = pagemap_entry(region.page_addr(page))
    present = pagemap_bit(entry, PagemapBit.PRESENT)
    state = PteState(
        present=present,
        swapped=pagemap_bit(entry, PagemapBit.SWAPPED),
        file_shared=pagemap_bit(entry, PagemapBit.FILE),
        uffd_wp=pagemap_bit(entry, PagemapBit.UFFD_WP),
        exclusive=pagemap_bit(entry, PagemapBit.EXCLUSIVE),
        soft_dirty=pagemap_bit(entry, PagemapBit.SOFT_DIRTY),
        pfn=pagemap_pfn(entry),
        young=None, dirty=None, source=channel,
    )
    if not present:
        return replace(state, young=False, dirty=False)
    if channel == SMAPS:
        young, dirty = _smaps_young_dirty(region, page)
        return replace(state, young=young, dirty=dirty)
    pfn = _pfn_of(region, page)
    if channel == IDLE_PAGE:
        flags = kpageflags(pfn) if kpageflags_available() is None else frozenset()
        return replace(state, young=not page_idle(pfn),
                       dirty=(KPageFlag.DIRTY in flags) if flags else None)
    if channel == KPAGEFLAGS:
        flags = kpageflags(pfn)
        return replace(state, young=KPageFlag.REFERENCED in flags, dirty=KPageFlag.DIRTY in flags)
    raise ValueError(f"unknown observation channel {channel!r}; use one of {', '.join(CHANNELS)}")


def observe_all(region: Region, channel: str = SMAPS) -> list[PteState]:
    return [observe(region, page, channel) for page in range(region.npages)]


def clear_refs(value: int = abi.CLEAR_REFS_ALL, pid: str = "self") -> None:
    """Write ``value`` to /proc/PID/clear_refs: 1 clears young bits, 4 soft-dirty bits."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write(f"{value}\n")


def clear_soft_dirty() -> None:
    clear_refs(abi.CLEAR_REFS_SOFT_DIRTY)


# -- THP: PMD-mapped or not ----------------------------------------------------------

@dataclass(frozen=True)
class ThpMapping:
    """How a THP region is mapped, seen through smaps, PAGEMAP_SCAN and (root) pagemap + kpageflags."""

    size_kb: int
    #: smaps Rss of the region's VMA
    rss_kb: int
    #: smaps AnonHugePages: PMD-mapped anonymous THPs only (a split PMD leaves PTE-mapped ones out)
    anon_huge_kb: int
    #: 4 KiB pagemap entries present / with uffd-wp
    present: int
    uffd_wp: int
    #: PAGEMAP_SCAN: the whole region has PAGE_IS_HUGE (set for PMD-mapped entries); None without PAGEMAP_SCAN
    scan_huge: Optional[bool]
    #: pagemap + kpageflags (root): each PMD's 512 PFNs are one aligned run, with KPF_THP on its first and
    #: last page; None when PFNs or kpageflags are hidden, or nothing is present
    thp_folio: Optional[bool]

    @property
    def pmd_mapped(self) -> bool:
        """smaps' answer: every byte of the region is in PMD-mapped THPs."""
        return self.anon_huge_kb == self.size_kb

    @property
    def populated(self) -> bool:
        return self.present > 0 or self.rss_kb > 0

    def disagreement(self) -> Optional[str]:
        """None when the channels agree that the region is, or is not, PMD-mapped."""
        if self.scan_huge is not None and self.scan_huge != self.pmd_mapped:
            return (f"smaps says {'' if self.pmd_mapped else 'not '}PMD-mapped (AnonHugePages {self.anon_huge_kb} "
                    f"of {self.size_kb} kB), PAGEMAP_SCAN says {'' if self.scan_huge else 'not '}huge")
        if self.pmd_mapped and self.thp_folio is False:
            return (f"smaps says PMD-mapped (AnonHugePages {self.anon_huge_kb} kB), kpageflags shows no THP "
                    "folio behind it")
        return None

    def __str__(self) -> str:
        extra = "" if self.scan_huge is None else f", PAGEMAP_SCAN huge={self.scan_huge}"
        extra += "" if self.thp_folio is None else f", kpageflags THP={self.thp_folio}"
        return (f"AnonHugePages {self.anon_huge_kb} of {self.size_kb} kB, Rss {self.rss_kb} kB, "
                f"{self.present} of {self.size_kb * 1024 // PAGE_SIZE} base pages present{extra}")


def thp_mapping(region: Region) -> ThpMapping:
    """How ``region`` (a THP region) is mapped now: PMD, PTEs, or not at all."""
    vma = smaps_vma(region.addr)
    entries = pagemap_entries(region.addr, region.length // PAGE_SIZE)
    present = [e for e in entries if pagemap_bit(e, PagemapBit.PRESENT)]
    try:
        scanned = pagemap_scan(region.addr, region.length, return_mask=int(PageCategory.HUGE))
        huge = sum(r.end - r.start for r in scanned if r.categories & PageCategory.HUGE)
        scan_huge: Optional[bool] = huge == region.length
    except UffdError:
        scan_huge = None
    thp_folio: Optional[bool] = None
    if present and pfn_visible() and kpageflags_available() is None:
        per_thp = region.page_size // PAGE_SIZE
        thp_folio = True
        for first in range(0, len(entries), per_thp):
            pfns = [pagemap_pfn(e) for e in entries[first:first + per_thp]]
            head = pfns[0]
            # one THP: all present, one run of PFNs from an aligned head, THP on head and tail
            if head is None or head % per_thp or pfns != list(range(head, head + per_thp)) \
                    or not all(KPageFlag.THP in kpageflags(pfn) for pfn in (head, pfns[-1])):
                thp_folio = False
                break
    return ThpMapping(size_kb=region.length // 1024, rss_kb=vma.get("Rss", 0),
                      anon_huge_kb=vma.get("AnonHugePages", 0), present=len(present),
                      uffd_wp=sum(pagemap_bit(e, PagemapBit.UFFD_WP) for e in entries),
                      scan_huge=scan_huge, thp_folio=thp_folio)


# -- PAGEMAP_SCAN -----------------------------------------------------------------

@dataclass(frozen=True)
class ScanRegion:
    start: int
    end: int
    categories: PageCategory


def pagemap_scan(start: int, length: int, *, category_mask: int = 0, category_inverted: int = 0,
                 anyof_mask: int = 0, return_mask: int = int(PageCategory(~0 & 0xFF)),
                 flags: int = 0, max_pages: int = 0, max_regions: int = 256) -> list[ScanRegion]:
    """The ``PAGEMAP_SCAN`` ioctl (Linux 6.7+) over [start, start+length)."""
    vec = ffi.new("struct page_region[]", max_regions)
    arg = ffi.new("struct pm_scan_arg *")
    arg.flags = flags
    arg.start = start
    arg.end = start + length
    arg.vec = int(ffi.cast("uintptr_t", vec))
    arg.vec_len = max_regions
    arg.max_pages = max_pages
    arg.category_inverted = category_inverted
    arg.category_mask = category_mask
    arg.category_anyof_mask = anyof_mask
    arg.return_mask = return_mask
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        n = lib.harness_pagemap_scan(f.fileno(), arg)
    if n < 0:
        raise UffdError("PAGEMAP_SCAN", -n, start, length,
                        advice="the kernel has no PAGEMAP_SCAN (Linux 6.7+)" if -n == errno.ENOTTY else "")
    return [ScanRegion(vec[i].start, vec[i].end, PageCategory(vec[i].categories)) for i in range(n)]

