"""The interface a test drives: act on regions, observe PTEs, read events.

A test written against :class:`Backend` runs unchanged on the running kernel
(:mod:`harness.backends.kernel`) or on the simulator
(:mod:`harness.backends.sim`).  Pages are addressed as (region, page index);
errors are the kernel's (:class:`~harness.errors.UffdError`,
:class:`~harness.errors.MappingError`, with ``.errno``) on both backends.

Faults that reach user space are resolved by one fixed policy, the same on
both backends: a WP fault un-protects its page (no hints), a MISSING fault
is filled with ``UFFDIO_COPY``, a MINOR fault with ``UFFDIO_CONTINUE``.
Each one is recorded as a :class:`FaultEvent`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterable, Optional

from harness.abi import Feature, RegisterMode
from harness.memory import MemoryKind
from harness.pte import IDLE_PAGE, KPAGEFLAGS, PTE, SMAPS, Channel, PteState

#: the simulator's own channel: the modelled PTE bits themselves
SIM = Channel.SIM

#: which PteState fields each channel reports *about the PTE* (kpageflags
#: reports folio flags, idle-page's dirty comes from kpageflags: neither is a PTE view;
#: smaps and idle-page count folio flags too, only the pte channel reads the entry alone)
CHANNEL_FIELDS: dict[str, tuple[str, ...]] = {
    PTE: ("young", "dirty", "writable"),
    SIM: ("young", "dirty", "writable"),
    SMAPS: ("young", "dirty"),
    IDLE_PAGE: ("young",),
    KPAGEFLAGS: (),
}

KERNEL = "kernel"
SIMULATOR = "sim"


@dataclass(frozen=True)
class FaultEvent:
    """A fault delivered to user space: ``kind`` is "missing", "wp" or "minor"."""

    kind: str
    region: int
    page: int
    write: bool

    def __str__(self) -> str:
        return f"{self.kind}{'/write' if self.write else '/read'}@r{self.region}p{self.page}"


@dataclass
class RegionRef:
    """A region made by a backend: its index in the backend, kind and size."""

    index: int
    kind: MemoryKind
    npages: int
    register: Optional[RegisterMode]
    #: a THP region: each "page" is a PMD-sized transparent huge page (kernel backend only)
    thp: bool = False


class ForkedChild(abc.ABC):
    """A child made by :meth:`Backend.fork_child`: it can say what its copy of a page holds."""

    @abc.abstractmethod
    def checksum(self, r: RegionRef, page: int = 0) -> Optional[int]:
        """The child's view of a page (None where the backend cannot tell)."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the child (and reap it)."""


class Backend(abc.ABC):
    """One address space with at most one userfaultfd, on the kernel or the simulator."""

    #: "kernel" or "sim"
    name: str
    #: the release of the kernel (or the simulated one)
    kernel_release: str
    #: "stock"/"patched" for the kernel, the profile name for the simulator
    profile: str

    @abc.abstractmethod
    def has_feature(self, feature: Feature) -> bool:
        """Whether UFFDIO_API would offer ``feature``."""

    @abc.abstractmethod
    def api(self, features: Iterable[Feature] = ()) -> frozenset:
        """Open the userfaultfd and do the UFFDIO_API handshake; returns the features offered."""

    @property
    @abc.abstractmethod
    def enabled_features(self) -> frozenset: ...

    @abc.abstractmethod
    def create(
        self,
        kind: MemoryKind = MemoryKind.ANON,
        npages: int = 1,
        register: Optional[RegisterMode] = RegisterMode.WP,
        *,
        thp: bool = False,
        large_folio: bool = False,
    ) -> RegionRef:
        """A new region (its own VMA), registered with ``register`` unless None.

        ``thp=True``: ``npages`` PMD-sized anonymous pages with MADV_HUGEPAGE,
        not populated (see :meth:`harness.memory.Region.create`).
        ``large_folio=True``: ``npages`` large folios (an anonymous mTHP or a
        shmem THP) whose base pages are the region's pages, each folio in place
        and mapped by PTEs, or not mapped at all (shmem): what
        :meth:`check_large_folio` checks after the caller's set-up.  Only the
        kernel backend has either; the simulator raises NotImplementedError.
        """

    @abc.abstractmethod
    def read(self, r: RegionRef, page: int = 0) -> int:
        """Load from a page: 0, or the signal the access got."""

    @abc.abstractmethod
    def write(self, r: RegionRef, page: int = 0) -> int:
        """Store to a page: 0, or the signal the access got."""

    @abc.abstractmethod
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
        """UFFDIO_WRITEPROTECT over pages [first, first+count)."""

    def protect(self, r: RegionRef, first: int = 0, count: Optional[int] = None) -> None:
        self.writeprotect(r, True, first, count)

    def unprotect(
        self,
        r: RegionRef,
        first: int = 0,
        count: Optional[int] = None,
        *,
        access_likely: bool = False,
        write_likely: bool = False,
    ) -> None:
        self.writeprotect(r, False, first, count, access_likely=access_likely, write_likely=write_likely)

    @abc.abstractmethod
    def copy(self, r: RegionRef, page: int = 0, *, wp: bool = False) -> int: ...

    @abc.abstractmethod
    def zeropage(self, r: RegionRef, page: int = 0) -> int: ...

    @abc.abstractmethod
    def move(
        self, dst: RegionRef, dst_page: int, src: RegionRef, src_page: int, *, allow_src_holes: bool = False
    ) -> int:
        """UFFDIO_MOVE one page from ``src`` to ``dst``."""

    @abc.abstractmethod
    def poison(self, r: RegionRef, page: int = 0) -> int:
        """UFFDIO_POISON one page: later accesses get SIGBUS."""

    @abc.abstractmethod
    def madvise(self, r: RegionRef, advice: str, first: int = 0, count: Optional[int] = None) -> None:
        """``advice`` is "free", "dontneed" or "pageout"."""

    @abc.abstractmethod
    def mprotect(self, r: RegionRef, prot: int) -> None: ...

    @abc.abstractmethod
    def fork(self) -> None:
        """Fork a child that exits at once (what that leaves behind in the parent is the point)."""

    @abc.abstractmethod
    def clear_refs(self, value: int) -> None:
        """Write ``value`` to /proc/self/clear_refs (process-wide: every region)."""

    @abc.abstractmethod
    def channels(self) -> list[str]:
        """The observation channels that work here, in the order they should be read."""

    @abc.abstractmethod
    def observe(self, r: RegionRef, page: int = 0, channel: str = SMAPS) -> PteState: ...

    @abc.abstractmethod
    def mark_idle(self, r: RegionRef, page: int = 0, count: int = 1) -> None:
        """Idle-page tracking: mark pages [page, page + count) idle (clears their young bits)."""

    def make_old(self, r: RegionRef, page: int = 0) -> None:
        """Clear the young bit of the page's entry itself (the pte channel's mkold); kernel backend only."""
        raise NotImplementedError(f"the {self.name} backend does not model hugetlb, the one user of make_old")

    def thp_mapping(self, r: RegionRef):
        """How a THP region is mapped now (:class:`harness.pte.ThpMapping`); kernel backend only."""
        raise NotImplementedError(f"the {self.name} backend does not model transparent huge pages")

    def check_thp(self, r: RegionRef, what: str = "") -> None:
        """Raise :class:`~harness.errors.ThpUnavailable` unless the THP region is PMD-mapped."""
        raise NotImplementedError(f"the {self.name} backend does not model transparent huge pages")

    def check_large_folio(self, r: RegionRef, what: str = "") -> None:
        """Raise :class:`~harness.errors.ThpUnavailable` unless the region is large folios mapped by PTEs."""
        raise NotImplementedError(f"the {self.name} backend does not model large folios")

    @abc.abstractmethod
    def events(self) -> list[FaultEvent]:
        """The faults delivered since the last call (drained)."""

    @property
    @abc.abstractmethod
    def soft_dirty(self) -> bool:
        """Whether soft-dirty tracking exists (CONFIG_MEM_SOFT_DIRTY)."""

    @property
    @abc.abstractmethod
    def swap(self) -> bool:
        """Whether MADV_PAGEOUT can write anonymous pages to swap."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- ranges over several VMAs, writability, fork ------------------------------------

    def create_adjacent(
        self,
        kind: MemoryKind,
        pages: tuple[int, ...],
        boundary_page: int,
        register: Optional[RegisterMode] = RegisterMode.WP,
    ) -> list[RegionRef]:
        """Regions of ``kind`` side by side, one VMA each, whose joint range crosses a PMD boundary
        before page ``boundary_page`` (see :class:`harness.memory.AdjacentRegions`).

        The simulator has no page tables above the PTE: there they are just regions.
        """
        return [self.create(kind, n, register) for n in pages]

    def writeprotect_adjacent(
        self,
        refs: list[RegionRef],
        protect: bool,
        *,
        access_likely: bool = False,
        write_likely: bool = False,
        raw_mode: Optional[int] = None,
    ) -> None:
        """UFFDIO_WRITEPROTECT over regions made by :meth:`create_adjacent`: one ioctl on the kernel."""
        for r in refs:
            self.writeprotect(r, protect, access_likely=access_likely, write_likely=write_likely, raw_mode=raw_mode)

    @abc.abstractmethod
    def write_faults(self, r: RegionRef, page: int = 0) -> int:
        """Store to a page; the page faults the store took (0: its PTE was present and writable)."""

    @abc.abstractmethod
    def fork_child(self) -> "ForkedChild":
        """Fork a child that stays alive, sharing this address space copy-on-write, until closed."""

    def reopen(self) -> None:
        """Close the userfaultfd and every region, so that the next :meth:`api` negotiates anew."""
        raise NotImplementedError(f"the {self.name} backend cannot reopen its userfaultfd")

    def observe_channels(self, r: RegionRef, page: int = 0) -> dict[str, PteState]:
        """The page seen through every available channel (destructive ones last)."""
        return {channel: self.observe(r, page, channel) for channel in self.channels()}

    def observe_pages(self, pages: list[tuple[RegionRef, int]], channel: str = SMAPS) -> list[PteState]:
        """Several pages through one channel (backends may read /proc once for all of them)."""
        return [self.observe(r, page, channel) for r, page in pages]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.kernel_release} profile={self.profile}>"
