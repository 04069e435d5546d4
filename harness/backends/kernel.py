"""The kernel backend: real regions, the real userfaultfd, answers from /proc.

Faults are served by a :class:`~harness.events.FaultHandler` thread with the
policy of :mod:`harness.backends.base` (WP: un-protect the page; MISSING:
UFFDIO_COPY; MINOR: UFFDIO_CONTINUE), so an access never blocks for long.
"""
from __future__ import annotations

import os
import platform
import warnings
from functools import lru_cache
from typing import Iterable, Optional

from harness import pte as _pte
from harness.abi import Feature, PagemapBit, RegisterMode
from harness.events import FaultHandler, PageFault
from harness.memory import PAGE_SIZE, MemoryKind, Region
from harness.pte import IDLE_PAGE, KPAGEFLAGS, PTE, SMAPS, PteState
from harness.backends.base import KERNEL, Backend, FaultEvent, RegionRef


@lru_cache(maxsize=1)
def offered_features() -> frozenset:
    """What this kernel's UFFDIO_API offers (empty when userfaultfd cannot be opened)."""
    from harness.uffd import probe_features
    try:
        return probe_features().offered
    except OSError:
        return frozenset()


@lru_cache(maxsize=1)
def kernel_soft_dirty() -> bool:
    """CONFIG_MEM_SOFT_DIRTY: a new VMA carries VM_SOFTDIRTY, which smaps shows as "sd"."""
    with Region.create(MemoryKind.ANON, 1) as region:
        flags = _pte.smaps_vma(region.addr).get("VmFlags", "")
    return "sd" in flags.split()


@lru_cache(maxsize=1)
def kernel_swap() -> bool:
    """Whether any swap device is active (/proc/swaps has more than its header)."""
    try:
        with open("/proc/swaps") as f:
            return len(f.read().strip().splitlines()) > 1
    except OSError:
        return False


def kernel_profile_name(features: frozenset) -> str:
    return "patched" if Feature.ACCESS_HINTS in features else "stock"


class KernelBackend(Backend):
    name = KERNEL

    def __init__(self, channels: Optional[Iterable[str]] = None):
        """``channels``: the observation channels to use (default: every one that works here)."""
        self.kernel_release = platform.release()
        self.profile = kernel_profile_name(offered_features())
        self._channels = list(channels) if channels is not None else available_channels()
        self._affinity = None
        self._drain_region: Optional[Region] = None
        if IDLE_PAGE in self._channels:
            self._pin()
        self._regions: list[Region] = []
        self._uffd = None
        self._handler: Optional[FaultHandler] = None
        self._seen = 0

    def has_feature(self, feature: Feature) -> bool:
        return feature in offered_features()

    def api(self, features: Iterable[Feature] = ()) -> frozenset:
        from harness.uffd import open_any
        if self._uffd is not None:
            return self._uffd.api(features).offered   # a second UFFDIO_API: the kernel's EINVAL
        self._uffd = open_any(features=None)
        info = self._uffd.api(features)
        self._handler = FaultHandler(self._uffd, _resolve, poll_interval=0.02).start()
        return info.offered

    @property
    def enabled_features(self) -> frozenset:
        return self._uffd.features if self._uffd is not None else frozenset()

    @property
    def soft_dirty(self) -> bool:
        return kernel_soft_dirty()

    @property
    def swap(self) -> bool:
        return kernel_swap()

    def _need_uffd(self):
        if self._uffd is None:
            self.api(())
        return self._uffd

    def create(self, kind: MemoryKind = MemoryKind.ANON, npages: int = 1,
               register: Optional[RegisterMode] = RegisterMode.WP, *, thp: bool = False) -> RegionRef:
        region = Region.create(kind, npages, thp=thp)
        self._regions.append(region)
        ref = RegionRef(len(self._regions) - 1, kind, npages, register, thp)
        if register is not None:
            self._need_uffd().register(region.addr, region.length, register)
        return ref

    def region(self, r: RegionRef) -> Region:
        """The real :class:`Region` behind a reference (kernel backend only)."""
        return self._regions[r.index]

    def read(self, r: RegionRef, page: int = 0) -> int:
        return self._regions[r.index].probe(page, write=False)

    def write(self, r: RegionRef, page: int = 0) -> int:
        return self._regions[r.index].probe(page, write=True)

    def writeprotect(self, r: RegionRef, protect: bool, first: int = 0, count: Optional[int] = None, *,
                     access_likely: bool = False, write_likely: bool = False,
                     raw_mode: Optional[int] = None) -> None:
        start, length = self._regions[r.index].span(first, count)
        self._need_uffd().writeprotect(start, length, protect, access_likely=access_likely,
                                       write_likely=write_likely, raw_mode=raw_mode)

    def copy(self, r: RegionRef, page: int = 0, *, wp: bool = False) -> int:
        return self._need_uffd().copy(self._regions[r.index].page_addr(page), _zero_page_addr(), PAGE_SIZE, wp=wp)

    def zeropage(self, r: RegionRef, page: int = 0) -> int:
        return self._need_uffd().zeropage(self._regions[r.index].page_addr(page), PAGE_SIZE)

    def move(self, dst: RegionRef, dst_page: int, src: RegionRef, src_page: int, *,
             allow_src_holes: bool = False) -> int:
        return self._need_uffd().move(self._regions[dst.index].page_addr(dst_page),
                                      self._regions[src.index].page_addr(src_page), PAGE_SIZE,
                                      allow_src_holes=allow_src_holes)

    def poison(self, r: RegionRef, page: int = 0) -> int:
        return self._need_uffd().poison(self._regions[r.index].page_addr(page), PAGE_SIZE)

    def madvise(self, r: RegionRef, advice: str, first: int = 0, count: Optional[int] = None) -> None:
        region = self._regions[r.index]
        try:
            call = {"free": region.free, "dontneed": region.dontneed, "pageout": region.pageout}[advice]
        except KeyError:
            raise ValueError(f"unknown advice {advice!r}: free, dontneed or pageout") from None
        call(first, count)

    def mprotect(self, r: RegionRef, prot: int) -> None:
        self._regions[r.index].mprotect(prot)

    def fork(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # fork with the handler thread running
            pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    def clear_refs(self, value: int) -> None:
        _pte.clear_refs(value)

    def channels(self) -> list[str]:
        return list(self._channels)

    def observe(self, r: RegionRef, page: int = 0, channel: str = SMAPS) -> PteState:
        if channel == IDLE_PAGE:
            self._drain_lru()
        return _pte.observe(self._regions[r.index], page, channel)

    def observe_pages(self, pages: list[tuple[RegionRef, int]], channel: str = SMAPS) -> list[PteState]:
        """Like :meth:`observe` per page, but reading /proc/self/smaps once (one-page regions only),
        or the pte channel once per region."""
        if channel == PTE:
            return self.observe_ptes(pages)
        if channel != SMAPS or any(r.npages != 1 or r.thp for r, _ in pages):
            return [self.observe(r, page, channel) for r, page in pages]
        regions = [self._regions[r.index] for r, _ in pages]
        counts = _smaps_counts({region.addr for region in regions})
        out = []
        for region in regions:
            entry = _pte.pagemap_entry(region.addr)
            present = _pte.pagemap_bit(entry, PagemapBit.PRESENT)
            referenced, dirty = counts.get(region.addr, (0, 0))
            out.append(PteState(
                present=present, swapped=_pte.pagemap_bit(entry, PagemapBit.SWAPPED),
                file_shared=_pte.pagemap_bit(entry, PagemapBit.FILE),
                uffd_wp=_pte.pagemap_bit(entry, PagemapBit.UFFD_WP),
                exclusive=_pte.pagemap_bit(entry, PagemapBit.EXCLUSIVE),
                soft_dirty=_pte.pagemap_bit(entry, PagemapBit.SOFT_DIRTY),
                pfn=_pte.pagemap_pfn(entry), young=bool(present and referenced),
                dirty=bool(present and dirty), source=SMAPS))
        return out

    def observe_ptes(self, pages: list[tuple[RegionRef, int]]) -> list[PteState]:
        """Many pages through the pte channel: one write + read per region (covering its pages asked for)."""
        wanted: dict[int, list[int]] = {}
        for r, page in pages:
            wanted.setdefault(r.index, []).append(page)
        seen: dict[tuple[int, int], PteState] = {}
        for index, plist in wanted.items():
            lo, hi = min(plist), max(plist)
            for page, state in zip(range(lo, hi + 1), _pte.observe_ptes(self._regions[index], lo, hi - lo + 1)):
                seen[index, page] = state
        return [seen[r.index, page] for r, page in pages]

    def pte_entries(self, r: RegionRef, first: int = 0, count: Optional[int] = None) -> list[_pte.PteEntry]:
        """The base-page entries of pages [first, first+count) (512 per THP page), from the pte channel."""
        region = self._regions[r.index]
        start, length = region.span(first, count)
        return _pte.read_ptes(start, length // PAGE_SIZE)

    def cross_check(self, r: RegionRef, page: int = 0) -> _pte.CrossCheck:
        """kpageflags, pte, smaps and idle-page of one page, read in that order (:func:`harness.pte.cross_check`)."""
        if IDLE_PAGE in self._channels:
            self._drain_lru()
        return _pte.cross_check(self._regions[r.index], page)

    def thp_mapping(self, r: RegionRef) -> _pte.ThpMapping:
        return _pte.thp_mapping(self._regions[r.index])

    def check_thp(self, r: RegionRef, what: str = "") -> None:
        self._regions[r.index].check_thp(what)

    def mark_idle(self, r: RegionRef, page: int = 0) -> None:
        if IDLE_PAGE in self._channels:
            self._drain_lru()
            _pte.mark_idle(self._regions[r.index], page, 1)

    # Idle-page tracking only sees folios on the LRU (page_idle_get_folio()): a
    # folio still in a per-CPU batch is silently skipped when marked, and reads
    # back as "not idle".  So the backend stays on one CPU and drains that
    # CPU's batches (MADV_FREE calls lru_add_drain()) before each use.

    def _pin(self) -> None:
        try:
            self._affinity = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {min(self._affinity)})
        except (AttributeError, OSError):
            self._affinity = None

    def _drain_lru(self) -> None:
        if self._drain_region is None:
            self._drain_region = Region.create(MemoryKind.ANON, 1)
        self._drain_region.free()

    def events(self) -> list[FaultEvent]:
        if self._handler is None:
            return []
        new = self._handler.events[self._seen:]
        self._seen += len(new)
        out = []
        for event in new:
            if not isinstance(event, PageFault):
                continue
            for index, region in enumerate(self._regions):
                if region.addr and region.addr <= event.address < region.end:
                    kind = "minor" if event.minor else "wp" if event.wp else "missing"
                    out.append(FaultEvent(kind, index, (event.address - region.addr) // region.page_size,
                                          event.write))
                    break
        return out

    def close(self) -> None:
        if self._handler is not None:
            self._handler.stop()
            self._handler = None
        for region in self._regions:
            region.close()
        self._regions = []
        if self._drain_region is not None:
            self._drain_region.close()
            self._drain_region = None
        if self._uffd is not None:
            self._uffd.close()
            self._uffd = None
        if self._affinity is not None:
            try:
                os.sched_setaffinity(0, self._affinity)
            except OSError:
                pass
            self._affinity = None


def _smaps_counts(starts: set) -> dict[int, tuple[int, int]]:
    """{VMA start: (Referenced kB, Private_Dirty + Shared_Dirty kB)} for the VMAs starting at ``starts``.

    The file is read once and searched for each VMA's header line (parsing
    every line of a few thousand is what made per-page observation slow).
    """
    with open("/proc/self/smaps") as f:
        text = f.read()
    out = {}
    for addr in starts:
        at = text.find(f"{addr:x}-")
        while at > 0 and text[at - 1] != "\n":
            at = text.find(f"{addr:x}-", at + 1)
        if at < 0:
            continue
        stop = text.find("VmFlags:", at)
        referenced = dirty = 0
        for line in text[at:stop].splitlines()[1:]:
            key, _, value = line.partition(":")
            if key == "Referenced":
                referenced = int(value.split()[0])
            elif key in ("Private_Dirty", "Shared_Dirty"):
                dirty += int(value.split()[0])
        out[addr] = (referenced, dirty)
    return out


def available_channels() -> list[str]:
    """pte first where the kernel has the instrumentation; smaps always; idle-page and kpageflags
    when this process may use them."""
    channels = [PTE] if _pte.pte_channel_available() is None else []
    channels.append(SMAPS)
    if _pte.idle_page_tracking_available() is None and _pte.pfn_visible():
        channels.append(IDLE_PAGE)
    if _pte.kpageflags_available() is None and _pte.pfn_visible():
        channels.append(KPAGEFLAGS)
    return channels


def unavailable_channels() -> dict[str, str]:
    """Why each missing channel is missing (for skip messages and reports)."""
    reasons = {}
    for channel, check in ((PTE, _pte.pte_channel_available), (IDLE_PAGE, _pte.idle_page_tracking_available),
                           (KPAGEFLAGS, _pte.kpageflags_available)):
        reason = check()
        if reason:
            reasons[channel] = reason
    return reasons


_ZERO_SRC: Optional[bytearray] = None


def _zero_page_addr() -> int:
    """A page of zeros for UFFDIO_COPY to copy from."""
    global _ZERO_SRC
    from harness._native import ffi
    if _ZERO_SRC is None:
        _ZERO_SRC = bytearray(2 * PAGE_SIZE)
    addr = int(ffi.cast("uintptr_t", ffi.from_buffer(_ZERO_SRC)))
    return (addr + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _resolve(uffd, event) -> None:
    """The fault policy of :mod:`harness.backends.base`."""
    if not isinstance(event, PageFault):
        return
    start = event.address & ~(PAGE_SIZE - 1)
    if event.wp:
        uffd.writeprotect(start, PAGE_SIZE, protect=False)
    elif event.minor:
        uffd.continue_(start, PAGE_SIZE)
    else:
        uffd.copy(start, _zero_page_addr(), PAGE_SIZE)
