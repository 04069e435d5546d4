"""The simulator's page-table entries and folios, and the x86 helpers that change them.

:class:`Folio` and :class:`Pte` are what :mod:`harness.sim.model` keeps per
page; ``pte_mkdirty()`` and ``pte_mkuffd_wp()`` mirror the x86 helpers of the
same names.  Kernel profiles (:mod:`harness.sim.profiles`) use them to say what
a patched ``change_pte_range()`` does, without depending on the model
(the model depends on the profiles).
"""

from __future__ import annotations

from typing import Optional


class Folio:
    __slots__ = ("anon", "zero", "dirty", "referenced", "idle", "anon_exclusive", "mapcount", "swapped", "lazyfree")

    def __init__(self, anon: bool, zero: bool = False, dirty: bool = False):
        self.anon = anon
        self.zero = zero
        self.dirty = dirty  # PG_dirty
        self.referenced = False  # PG_referenced
        self.idle = False  # PG_idle (idle-page tracking)
        self.anon_exclusive = anon and not zero
        self.mapcount = 0
        self.swapped = False  # a shmem page-cache entry that is in swap
        self.lazyfree = False  # MADV_FREE'd: !PG_swapbacked, reclaim may drop it if clean

    def __repr__(self) -> str:
        kind = "zero" if self.zero else "anon" if self.anon else "cache"
        flags = "".join(c for c, on in (("D", self.dirty), ("R", self.referenced), ("X", self.anon_exclusive)) if on)
        return f"<Folio {kind} {flags or '-'}>"


ZERO_FOLIO = Folio(anon=False, zero=True)


class Pte:
    """A non-none page-table entry."""

    __slots__ = (
        "folio",
        "write",
        "young",
        "dirty",
        "uffd_wp",
        "soft_dirty",
        "swap",
        "marker",
        "exclusive",
        "tlb",
        "young_unknown",
        "poison",
    )

    def __init__(
        self,
        folio: Optional[Folio] = None,
        *,
        write: bool = False,
        young: bool = True,
        dirty: bool = False,
        uffd_wp: bool = False,
        soft_dirty: bool = False,
        swap: Optional[Folio] = None,
        marker: bool = False,
        exclusive: bool = False,
    ):
        self.folio = folio  # present when not None
        self.write = write
        self.young = young
        self.dirty = dirty
        self.uffd_wp = uffd_wp
        self.soft_dirty = soft_dirty
        self.swap = swap  # a swap entry: the swapped-out folio
        self.marker = marker  # a PTE marker: PTE_MARKER_UFFD_WP, or POISONED with ``poison``
        self.poison = False  # PTE_MARKER_POISONED (UFFDIO_POISON): accesses get SIGBUS
        self.exclusive = exclusive  # pte_swp_exclusive()
        #: a translation of this PTE may be cached in a TLB (no flush since the last access)
        self.tlb = False
        #: the accessed bit may or may not have been set: an access could have gone
        #: through a cached translation after young was cleared without a flush
        self.young_unknown = False

    @property
    def present(self) -> bool:
        return self.folio is not None

    def __repr__(self) -> str:
        if self.marker:
            return "<Pte marker poisoned>" if self.poison else "<Pte marker uffd-wp>"
        if self.swap is not None:
            return f"<Pte swap{' uffd-wp' if self.uffd_wp else ''}>"
        bits = "".join(
            c
            for c, on in (
                ("W", self.write),
                ("Y", self.young),
                ("D", self.dirty),
                ("U", self.uffd_wp),
                ("S", self.soft_dirty),
            )
            if on
        )
        return f"<Pte {bits or '-'} {self.folio!r}>"


def pte_mkdirty(pte: Pte) -> Pte:
    """x86 pte_mkdirty(): the dirty bit and the soft-dirty bit (when soft-dirty is compiled in)."""
    pte.dirty = True
    pte.soft_dirty = True
    return pte


def pte_mkuffd_wp(pte: Pte) -> Pte:
    """x86 pte_mkuffd_wp(): sets _PAGE_UFFD_WP and write-protects."""
    pte.uffd_wp = True
    pte.write = False
    return pte
