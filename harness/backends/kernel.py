"""The kernel backend: real regions, the real userfaultfd, answers from /proc.

Faults are served by a :class:`~harness.handler.FaultHandler` thread with the
policy of :mod:`harness.backends.base` (WP: un-protect the page; MISSING:
UFFDIO_COPY; MINOR: UFFDIO_CONTINUE), so an access never blocks for long.
"""

from __future__ import annotations

import os
import platform
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Optional

from harness import abi
from harness import pte as _pte
from harness.abi import Feature, PagemapBit, RegisterMode
from harness.backends.base import KERNEL, Backend, FaultEvent, ForkedChild, RegionRef
from harness.events import PageFault
from harness.handler import FaultHandler
from harness.memory import PAGE_SIZE, AdjacentRegions, MemoryKind, Region
from harness.process import pin_to_one_cpu, restore_affinity
from harness.pte import IDLE_PAGE, KPAGEFLAGS, PTE, SMAPS, PteState

if TYPE_CHECKING:
    from harness.uffd import Userfaultfd


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
        flags = str(_pte.smaps_vma(region.addr).get("VmFlags", ""))
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
        self._affinity: Optional[set[int]] = None
        if IDLE_PAGE in self._channels:
            self._affinity = pin_to_one_cpu()[1]
        self._regions: list[Region] = []
        self._adjacent: list[AdjacentRegions] = []
        self._uffd: Optional[Userfaultfd] = None
        self._handler: Optional[FaultHandler] = None
        self._seen = 0

    def has_feature(self, feature: Feature) -> bool:
        return feature in offered_features()

    def api(self, features: Iterable[Feature] = ()) -> frozenset:
        from harness.uffd import open_any

        if self._uffd is not None:
            return self._uffd.api(features).offered  # a second UFFDIO_API: the kernel's EINVAL
        self._uffd = open_any(features=None)
        info = self._uffd.api(features)
        self._handler = FaultHandler(self._uffd, self._resolve, poll_interval=0.02).start()
        return info.offered

    @property
    def enabled_features(self) -> frozenset:
        return self._uffd.features if self._uffd is not None else frozenset()

    def _resolve(self, uffd, event) -> None:
        """Resolve a fault in one of this backend's regions by its page size (hugetlb: a whole huge page)."""
        address = getattr(event, "address", None)
        region = next((r for r in self._regions if address is not None and r.addr <= address < r.end), None)
        _resolve(uffd, event, region.page_size if region is not None else PAGE_SIZE)

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

    def create(
        self,
        kind: MemoryKind = MemoryKind.ANON,
        npages: int = 1,
        register: Optional[RegisterMode] = RegisterMode.WP,
        *,
        thp: bool = False,
        large_folio: bool = False,
    ) -> RegionRef:
        region = Region.create(kind, npages, thp=thp, large_folio=large_folio)
        self._regions.append(region)
        ref = RegionRef(len(self._regions) - 1, kind, region.npages, register, thp)
        if large_folio:
            # a VMA with a userfaultfd armed gets single pages (6.12's alloc_anon_folio(): "per-page fault
            # fidelity"; 6.1 allocates no shmem THP there either): the folio is allocated by a first touch
            # before registering.  A shmem THP is then mapped by a PMD (do_set_pmd()).
            region.write() if kind is MemoryKind.ANON else region.read()
        if register is not None:
            self._need_uffd().register(region.addr, region.length, register)
        if large_folio and kind is MemoryKind.SHMEM:
            # write-protecting a file PMD zaps it (change_pmd_range()), leaving a page table, so every
            # later fault maps one PTE of the folio
            uffd = self._need_uffd()
            uffd.writeprotect(region.addr, region.length, protect=True)
            uffd.writeprotect(region.addr, region.length, protect=False)
        return ref

    def create_adjacent(
        self,
        kind: MemoryKind,
        pages: tuple[int, ...],
        boundary_page: int,
        register: Optional[RegisterMode] = RegisterMode.WP,
    ) -> list[RegionRef]:
        group = AdjacentRegions(kind, pages, boundary_page)
        self._adjacent.append(group)
        refs = []
        for region in group.regions:
            self._regions.append(region)
            refs.append(RegionRef(len(self._regions) - 1, kind, region.npages, register))
        if register is not None:
            self._need_uffd().register(group.addr, group.length, register)
        return refs

    def writeprotect_adjacent(
        self,
        refs: list[RegionRef],
        protect: bool,
        *,
        access_likely: bool = False,
        write_likely: bool = False,
        raw_mode: Optional[int] = None,
    ) -> None:
        """One ioctl from the first region's start to the last one's end (they are contiguous)."""
        first, last = self._regions[refs[0].index], self._regions[refs[-1].index]
        self._wp(first.addr, last.end - first.addr, protect, access_likely, write_likely, raw_mode)

    def write_faults(self, r: RegionRef, page: int = 0) -> int:
        return self._regions[r.index].write_faults(page)

    # -- base pages of a THP region (part of a THP: kernel only) -------------------------

    def base_pages(self, r: RegionRef) -> int:
        """How many base pages a region spans (512 per PMD-sized THP page)."""
        region = self._regions[r.index]
        return region.length // PAGE_SIZE

    def writeprotect_base(
        self,
        r: RegionRef,
        first: int,
        count: int,
        protect: bool,
        *,
        access_likely: bool = False,
        write_likely: bool = False,
    ) -> None:
        """UFFDIO_WRITEPROTECT over base pages [first, first+count) of a region (part of a THP)."""
        region = self._regions[r.index]
        if not 0 <= first < first + count <= self.base_pages(r):
            raise IndexError(f"base pages [{first}, +{count}) outside {region!r}")
        self._wp(region.addr + first * PAGE_SIZE, count * PAGE_SIZE, protect, access_likely, write_likely)

    def base_page_states(self, r: RegionRef) -> list[PteState]:
        """pagemap of every base page of a region (present, uffd-wp, ...; young/dirty not filled in)."""
        region = self._regions[r.index]
        out = []
        for entry in _pte.pagemap_entries(region.addr, self.base_pages(r)):
            out.append(_pte.pagemap_state(entry, "pagemap"))
        return out

    def vma_page_counts(self, r: RegionRef) -> dict[str, int]:
        """smaps of the region's VMA in base pages: {"rss", "referenced", "dirty"} (PTE bit or folio flag)."""
        vma = _pte.smaps_vma(self._regions[r.index].addr)
        kb = PAGE_SIZE // 1024
        return {
            "rss": vma.get("Rss", 0) // kb,
            "referenced": vma.get("Referenced", 0) // kb,
            "dirty": (vma.get("Private_Dirty", 0) + vma.get("Shared_Dirty", 0)) // kb,
        }

    def write_faults_base(self, r: RegionRef, page: int) -> int:
        """:meth:`write_faults` for one base page of a region (part of a THP)."""
        region = self._regions[r.index]
        from harness._native import lib

        faults = lib.harness_write_faults(region.addr + page * PAGE_SIZE, 0x5A)
        if faults < 0:
            raise OSError(f"getrusage(RUSAGE_THREAD) around a store to {region!r} base page {page}")
        return int(faults)

    def fork_child(self) -> ForkedChild:
        return _LiveChild(self._regions)

    def reopen(self) -> None:
        """Close the fault handler, the userfaultfd and the regions; keep the CPU pinning."""
        if self._handler is not None:
            self._handler.stop()
            self._handler = None
        for region in self._regions:
            region.close()
        for group in self._adjacent:
            group.close()
        self._regions, self._adjacent, self._seen = [], [], 0
        if self._uffd is not None:
            self._uffd.close()
            self._uffd = None

    def region(self, r: RegionRef) -> Region:
        """The real :class:`Region` behind a reference (kernel backend only)."""
        return self._regions[r.index]

    def read(self, r: RegionRef, page: int = 0) -> int:
        return self._regions[r.index].probe(page, write=False)

    def write(self, r: RegionRef, page: int = 0) -> int:
        return self._regions[r.index].probe(page, write=True)

    def writeprotect(
        self,
        r: RegionRef,
        protect: bool,
        first: int = 0,
        count: Optional[int] = None,
        *,
        access_likely: bool = False,
        write_likely: bool = False,
        raw_mode: Optional[int] = None,
    ) -> None:
        start, length = self._regions[r.index].span(first, count)
        self._wp(start, length, protect, access_likely, write_likely, raw_mode)

    def _wp(
        self,
        start: int,
        length: int,
        protect: bool,
        access_likely: bool = False,
        write_likely: bool = False,
        raw_mode: Optional[int] = None,
    ) -> None:
        """UFFDIO_WRITEPROTECT with the mode the backend's callers describe (``raw_mode``: as is)."""
        mode = abi.writeprotect_mode(protect, access_likely=access_likely, write_likely=write_likely)
        self._need_uffd().writeprotect_mode(start, length, mode if raw_mode is None else raw_mode)

    def copy(self, r: RegionRef, page: int = 0, *, wp: bool = False) -> int:
        return self._need_uffd().copy(self._regions[r.index].page_addr(page), _zero_page_addr(), PAGE_SIZE, wp=wp)

    def zeropage(self, r: RegionRef, page: int = 0) -> int:
        return self._need_uffd().zeropage(self._regions[r.index].page_addr(page), PAGE_SIZE)

    def move(
        self, dst: RegionRef, dst_page: int, src: RegionRef, src_page: int, *, allow_src_holes: bool = False
    ) -> int:
        return self._need_uffd().move(
            self._regions[dst.index].page_addr(dst_page),
            self._regions[src.index].page_addr(src_page),
            PAGE_SIZE,
            allow_src_holes=allow_src_holes,
        )

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
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with the handler thread running
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
        """Like :meth:`observe` per page, but reading /proc/self/smaps once for all of them, or the pte
        channel once per region.

        In a VMA of several pages smaps counts pages: young (dirty) is True when
        every present page counts, False when none does, None when some do
        (which pages, smaps cannot say).  THP and hugetlb regions go page by page.
        """
        if channel == PTE:
            return self.observe_ptes(pages)
        if channel == IDLE_PAGE:
            self._drain_lru()  # once for all the pages (see _drain_lru)
            seen = {
                (index, page): state
                for index, plist in _pages_by_region(pages).items()
                for page, state in zip(plist, _pte.observe_idle(self._regions[index], plist), strict=True)
            }
            return [seen[r.index, page] for r, page in pages]
        if channel != SMAPS or any(r.thp or r.kind.hugetlb for r, _ in pages):
            return [self.observe(r, page, channel) for r, page in pages]
        regions = [self._regions[r.index] for r, _ in pages]
        counts = _smaps_counts({region.addr for region in regions})
        entries = self._pagemap_entries(pages)
        out = []
        for region, (r, page) in zip(regions, pages, strict=True):
            entry = entries[r.index, page]
            present = _pte.pagemap_bit(entry, PagemapBit.PRESENT)
            referenced, dirty, rss = counts.get(region.addr, (0, 0, 0))

            def verdict(count_kb: int) -> Optional[bool]:  # called at once, in this iteration
                if not present or count_kb == 0:  # noqa: B023
                    return False
                return True if count_kb == rss or region.npages == 1 else None  # noqa: B023

            out.append(_pte.pagemap_state(entry, SMAPS, young=verdict(referenced), dirty=verdict(dirty)))
        return out

    def _pagemap_entries(self, pages: list[tuple[RegionRef, int]]) -> dict[tuple[int, int], int]:
        """The pagemap entries of the pages, by (region index, page): one read per region."""
        seen: dict[tuple[int, int], int] = {}
        for index, plist in _pages_by_region(pages).items():
            region, lo = self._regions[index], min(plist)
            entries = _pte.pagemap_entries(region.page_addr(lo), max(plist) - lo + 1)
            seen.update(((index, page), entries[page - lo]) for page in plist)
        return seen

    def observe_ptes(self, pages: list[tuple[RegionRef, int]]) -> list[PteState]:
        """Many pages through the pte channel: one write + read per region (covering its pages asked for)."""
        seen: dict[tuple[int, int], PteState] = {}
        for index, plist in _pages_by_region(pages).items():
            lo, hi = min(plist), max(plist)
            states = _pte.observe_ptes(self._regions[index], lo, hi - lo + 1)
            for page, state in zip(range(lo, hi + 1), states, strict=False):
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
        _pte.check_thp(self._regions[r.index], what)

    def check_large_folio(self, r: RegionRef, what: str = "") -> None:
        _pte.check_large_folio(self._regions[r.index], what)

    def make_old(self, r: RegionRef, page: int = 0) -> None:
        """Make the page's entry old through the instrumentation (hugetlb: the whole huge page's)."""
        region = self._regions[r.index]
        start, length = region.span(page, 1)
        _pte.make_old(start, length // PAGE_SIZE)

    def mark_idle(self, r: RegionRef, page: int = 0, count: int = 1) -> None:
        if IDLE_PAGE in self._channels:
            self._drain_lru()
            _pte.mark_idle(self._regions[r.index], page, count)

    # Idle-page tracking only sees folios on the LRU (page_idle_get_folio()): a
    # folio still in a per-CPU batch is silently skipped when marked, and reads
    # back as "not idle".  So the backend stays on one CPU and drains that
    # CPU's batches (MADV_FREE calls lru_add_drain()) before each use.

    def _drain_lru(self) -> None:
        _pte.drain_this_cpu_lru()

    def events(self) -> list[FaultEvent]:
        if self._handler is None:
            return []
        new = self._handler.events[self._seen :]
        self._seen += len(new)
        out = []
        for event in new:
            if not isinstance(event, PageFault):
                continue
            for index, region in enumerate(self._regions):
                if region.addr and region.addr <= event.address < region.end:
                    kind = "minor" if event.minor else "wp" if event.wp else "missing"
                    out.append(FaultEvent(kind, index, (event.address - region.addr) // region.page_size, event.write))
                    break
        return out

    def close(self) -> None:
        self.reopen()  # the handler, the regions and the userfaultfd
        restore_affinity(self._affinity)
        self._affinity = None


class _LiveChild(ForkedChild):
    """A forked child that keeps its copy-on-write view of the parent's memory until closed.

    It answers checksum requests (an address in, the FNV-1a sum of that page
    out) over two pipes, so a test can see whether a store by the parent
    reached the child's page.  The child runs only the pipe loop and exits
    with os._exit: nothing of the parent's threads (the fault handler) runs
    in it, and without UFFD_FEATURE_EVENT_FORK its VMAs are not registered.
    """

    #: seconds to wait for the child's answer; a child that does not answer is killed
    TIMEOUT = 30.0

    def __init__(self, regions: list[Region]):
        import select  # noqa: F401 - imported before the fork, used by the child too

        from harness._native import lib

        self._regions = regions
        req_r, self._req_w = os.pipe()
        self._ans_r, ans_w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with the handler thread running
            self.pid = os.fork()
        if self.pid == 0:  # the child
            try:
                os.close(self._req_w)
                os.close(self._ans_r)
                while True:
                    data = os.read(req_r, 8)
                    if len(data) < 8 or data == b"\0" * 8:
                        break
                    addr = int.from_bytes(data, "little")
                    os.write(ans_w, int(lib.harness_checksum(addr, PAGE_SIZE)).to_bytes(8, "little"))
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(ans_w)

    def checksum(self, r, page: int = 0) -> Optional[int]:
        import select

        os.write(self._req_w, self._regions[r.index].page_addr(page).to_bytes(8, "little"))
        ready, _, _ = select.select([self._ans_r], [], [], self.TIMEOUT)
        if not ready:
            self.close()
            raise TimeoutError(f"forked child {self.pid} did not answer within {self.TIMEOUT:.0f} s")
        data = os.read(self._ans_r, 8)
        if len(data) < 8:
            raise ChildProcessError(f"forked child {self.pid} died before answering")
        return int.from_bytes(data, "little")

    def close(self) -> None:
        if self.pid <= 0:
            return
        for fd in (self._req_w, self._ans_r):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.waitpid(self.pid, 0)  # EOF on its pipe ends the child's loop
        except ChildProcessError:
            pass
        self.pid = 0


def _pages_by_region(pages: list[tuple[RegionRef, int]]) -> dict[int, list[int]]:
    """{region index: its pages asked for, in the order asked}: channels that read a region at once."""
    out: dict[int, list[int]] = {}
    for r, page in pages:
        out.setdefault(r.index, []).append(page)
    return out


def _smaps_counts(starts: set) -> dict[int, tuple[int, int, int]]:
    """{VMA start: (Referenced kB, Private_Dirty + Shared_Dirty kB, Rss kB)} for the VMAs at ``starts``: one read."""
    return {
        addr: (vma.get("Referenced", 0), vma.get("Private_Dirty", 0) + vma.get("Shared_Dirty", 0), vma.get("Rss", 0))
        for addr, vma in _pte.smaps_vmas(starts).items()
    }


def available_channels() -> list[str]:
    """pte first where the kernel has the instrumentation; smaps always; idle-page and kpageflags
    when this process may use them."""
    channels: list[str] = [PTE] if _pte.pte_channel_available() is None else []
    channels.append(SMAPS)
    if _pte.idle_page_tracking_available() is None and _pte.pfn_visible():
        channels.append(IDLE_PAGE)
    if _pte.kpageflags_available() is None and _pte.pfn_visible():
        channels.append(KPAGEFLAGS)
    return channels


_ZERO_SRC: Optional[bytearray] = None


def _zero_page_addr() -> int:
    """A page of zeros for UFFDIO_COPY to copy from."""
    global _ZERO_SRC
    from harness._native import ffi

    if _ZERO_SRC is None:
        _ZERO_SRC = bytearray(2 * PAGE_SIZE)
    addr = int(ffi.cast("uintptr_t", ffi.from_buffer(_ZERO_SRC)))
    return (addr + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _resolve(uffd, event, page_size: int = PAGE_SIZE) -> None:
    """The fault policy of :mod:`harness.backends.base`, for a page of ``page_size`` bytes."""
    if not isinstance(event, PageFault):
        return
    start = event.address & ~(page_size - 1)
    if event.wp:
        uffd.writeprotect(start, page_size, protect=False)
    elif event.minor:
        uffd.continue_(start, page_size)
    else:
        uffd.copy(start, _zero_page_addr(), page_size)
