"""The simulator backend: the same interface, answered by :mod:`harness.sim.model`.

``observe(channel="sim")`` gives the modelled PTE itself (``source="sim"``,
``writable`` filled in); the other channels give what that /proc file would
show for it (``source="sim/smaps"``, ...), so a test can compare like with like.
"""

from __future__ import annotations

from typing import Iterable, Optional

from harness.abi import Feature, RegisterMode
from harness.backends.base import SIM, SIMULATOR, Backend, FaultEvent, ForkedChild, RegionRef
from harness.memory import PAGE_SIZE, MemoryKind
from harness.pte import IDLE_PAGE, KPAGEFLAGS, SMAPS, PteState
from harness.sim import profiles
from harness.sim.model import Mm, Vma


class SimBackend(Backend):
    name = SIMULATOR

    def __init__(
        self, profile: profiles.Profile | str = profiles.ACCESS_HINTS, *, soft_dirty: bool = True, swap: bool = True
    ):
        self._profile = profiles.get(profile) if isinstance(profile, str) else profile
        self.mm = Mm(self._profile, soft_dirty=soft_dirty, swap=swap)
        self.kernel_release = self._profile.release
        self.profile = self._profile.name
        self._vmas: list[Vma] = []
        self._seen = 0

    def has_feature(self, feature: Feature) -> bool:
        return feature in self._profile.features

    def api(self, features: Iterable[Feature] = ()) -> frozenset:
        self.mm.open_uffd()
        return self.mm.api(features)

    @property
    def enabled_features(self) -> frozenset:
        return self.mm.features

    @property
    def soft_dirty(self) -> bool:
        return self.mm.soft_dirty_config

    @property
    def swap(self) -> bool:
        return self.mm.swap_config

    def create(
        self,
        kind: MemoryKind = MemoryKind.ANON,
        npages: int = 1,
        register: Optional[RegisterMode] = RegisterMode.WP,
        *,
        thp: bool = False,
        large_folio: bool = False,
    ) -> RegionRef:
        if thp or large_folio:
            raise NotImplementedError(
                "the simulator does not model transparent huge pages or large folios: their checks run on the "
                "kernel backend only"
            )
        vma = self.mm.mmap(kind, npages)
        self._vmas.append(vma)
        ref = RegionRef(len(self._vmas) - 1, kind, npages, register)
        if register is not None:
            self.mm.register(vma.start, npages * PAGE_SIZE, register)
        return ref

    def _addr(self, r: RegionRef, page: int) -> int:
        if not 0 <= page < r.npages:
            raise IndexError(f"page {page} outside a region of {r.npages} pages")
        return self._vmas[r.index].start + page * PAGE_SIZE

    def _span(self, r: RegionRef, first: int, count: Optional[int]) -> tuple[int, int]:
        count = r.npages - first if count is None else count
        return self._vmas[r.index].start + first * PAGE_SIZE, count * PAGE_SIZE

    def read(self, r: RegionRef, page: int = 0) -> int:
        return self.mm.access(self._addr(r, page), False)

    def write(self, r: RegionRef, page: int = 0) -> int:
        return self.mm.access(self._addr(r, page), True)

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
        start, length = self._span(r, first, count)
        self.mm.writeprotect(
            start, length, protect, access_likely=access_likely, write_likely=write_likely, raw_mode=raw_mode
        )

    def copy(self, r: RegionRef, page: int = 0, *, wp: bool = False) -> int:
        return self.mm.copy(self._addr(r, page), PAGE_SIZE, wp=wp)

    def zeropage(self, r: RegionRef, page: int = 0) -> int:
        return self.mm.zeropage(self._addr(r, page), PAGE_SIZE)

    def move(
        self, dst: RegionRef, dst_page: int, src: RegionRef, src_page: int, *, allow_src_holes: bool = False
    ) -> int:
        return self.mm.move(
            self._addr(dst, dst_page), self._addr(src, src_page), PAGE_SIZE, allow_src_holes=allow_src_holes
        )

    def poison(self, r: RegionRef, page: int = 0) -> int:
        return self.mm.poison(self._addr(r, page), PAGE_SIZE)

    def madvise(self, r: RegionRef, advice: str, first: int = 0, count: Optional[int] = None) -> None:
        self.mm.madvise(self._vmas[r.index], advice, first, count)

    def mprotect(self, r: RegionRef, prot: int) -> None:
        self.mm.mprotect(self._vmas[r.index], prot)

    def fork(self) -> None:
        self.mm.fork()

    def fork_child(self) -> ForkedChild:
        """copy_present_ptes() as for a child that stays: the model keeps no child memory to read."""
        self.mm.fork()
        return _ModelChild()

    def write_faults(self, r: RegionRef, page: int = 0) -> int:
        """The model's PTE says whether the store faults: present, writable and not uffd-wp takes none."""
        pte = self._vmas[r.index].ptes[page]
        faults = 0 if pte is not None and pte.folio is not None and pte.write and not pte.uffd_wp else 1
        sig = self.write(r, page)
        if sig:
            raise AssertionError(f"a store to {r} page {page} got signal {sig}")
        return faults

    def reopen(self) -> None:
        """A new address space on the same profile: regions and the userfaultfd go with the old one."""
        self.close()
        self.mm = Mm(self._profile, soft_dirty=self.mm.soft_dirty_config, swap=self.mm.swap_config)
        self._vmas = []
        self._seen = 0

    def clear_refs(self, value: int) -> None:
        self.mm.clear_refs(value)

    def channels(self) -> list[str]:
        return [SIM, SMAPS, IDLE_PAGE]

    def observe(self, r: RegionRef, page: int = 0, channel: str = SIM) -> PteState:
        vma = self._vmas[r.index]
        bits = self.mm.pagemap_bits(vma, page)
        present = bits["present"]
        pte = vma.ptes[page] if present else None  # pagemap says present only for a PTE that maps a folio
        writable = bool(pte is not None and pte.write)
        if channel == SIM:
            young = bool(pte is not None and pte.young)
            dirty = bool(pte is not None and pte.dirty)
        elif channel == SMAPS:
            young, dirty = self.mm.smaps_young_dirty(vma, page) if present else (False, False)
        elif channel == IDLE_PAGE:
            young = bool(present and not self.mm.read_idle(vma, page))
            folio = pte.folio if pte is not None else None
            dirty = bool(folio is not None and folio.dirty)  # kpageflags' PG_dirty
        elif channel == KPAGEFLAGS:
            folio = pte.folio if pte is not None else None
            young = bool(folio is not None and folio.referenced)
            dirty = bool(folio is not None and folio.dirty)
        else:
            raise ValueError(f"unknown channel {channel!r}")
        source = SIM if channel == SIM else f"{SIM}/{channel}"
        return PteState(
            present=present,
            swapped=bits["swapped"],
            file_shared=bits["file_shared"],
            uffd_wp=bits["uffd_wp"],
            exclusive=bits["exclusive"],
            soft_dirty=bits["soft_dirty"],
            pfn=None,
            young=young,
            dirty=dirty,
            source=source,
            writable=writable,
        )

    def uncertain_fields(self, r: RegionRef, page: int = 0) -> frozenset:
        """Fields of the smaps view the model cannot predict: ``young`` after an access that may
        have gone through a TLB entry cached before young was cleared without a flush."""
        vma = self._vmas[r.index]
        pte = vma.ptes[page]
        if pte is not None and pte.folio is not None and pte.young_unknown and not pte.folio.referenced:
            return frozenset({"young"})
        return frozenset()

    def mark_idle(self, r: RegionRef, page: int = 0, count: int = 1) -> None:
        for p in range(page, page + count):
            self.mm.mark_idle(self._vmas[r.index], p)

    def events(self) -> list[FaultEvent]:
        new = self.mm.events[self._seen :]
        self._seen = len(self.mm.events)
        out = []
        for kind, addr, write in new:
            for index, vma in enumerate(self._vmas):
                if vma.start <= addr < vma.end:
                    out.append(FaultEvent(kind, index, (addr - vma.start) // PAGE_SIZE, write))
                    break
        return out

    def close(self) -> None:
        for vma in self._vmas:
            if vma in self.mm.vmas:
                self.mm.munmap(vma)


class _ModelChild(ForkedChild):
    """The simulator's forked child: it exists only as the parent's lost exclusivity."""

    def checksum(self, r: RegionRef, page: int = 0) -> None:
        return None

    def close(self) -> None:
        pass
