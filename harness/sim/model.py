"""The simulator's model of one process's page tables, following Linux 6.12.

Objects
-------
:class:`Folio`
    A page of memory: anonymous, page cache (shmem), or the shared zero
    page.  Carries the folio flags user space can see through smaps
    (``referenced``, ``dirty``) and ``anon_exclusive`` (PageAnonExclusive).
:class:`Pte`
    One page-table entry: present (``folio`` set), a swap entry
    (``swap`` set), or a uffd-wp marker (``marker``).  ``None`` in a VMA's
    ``ptes`` list is ``pte_none()``.
:class:`Vma`
    One mapping (the harness makes one VMA per region): kind, VM_WRITE,
    VM_SHARED, the uffd registration (VM_UFFD_MISSING / WP / MINOR) and
    VM_SOFTDIRTY.
:class:`Mm`
    An address space: VMAs, the userfaultfd context (features, and a fault
    handler that resolves faults the way the kernel backend's handler does),
    and the machine's configuration (soft-dirty compiled in, swap present).

Every operation names the kernel function it mirrors.  Errors are raised as
:class:`~harness.errors.UffdError` / :class:`~harness.errors.MappingError`
with the errno the kernel returns, so a test can treat both backends alike.

x86 facts the model relies on: ``vm_page_prot`` includes ``_PAGE_ACCESSED``
(new PTEs are young); ``pte_mkdirty()`` sets ``_PAGE_SOFT_DIRTY`` too, the
hardware dirty bit does not; ``pte_mkuffd_wp()`` also write-protects.
"""

from __future__ import annotations

import errno
import signal
from typing import Callable, Optional

from harness import abi
from harness.abi import Feature, RegisterMode
from harness.errors import MappingError, UffdError
from harness.memory import PAGE_SIZE, MemoryKind
from harness.operations import Hints
from harness.sim import profiles as _profiles
from harness.sim.pgtable import ZERO_FOLIO, Folio, Pte, pte_mkdirty, pte_mkuffd_wp  # noqa: F401 - also the model's public names
from harness.sim.profiles import Profile

# Fault kinds, as the events list names them.
MISSING = "missing"
WP = "wp"
MINOR = "minor"

_RETRY_LIMIT = 8


class ShmemFile:
    """A shmem inode's page cache: index -> folio."""

    __slots__ = ("cache",)

    def __init__(self):
        self.cache: dict[int, Folio] = {}


class Vma:
    __slots__ = (
        "start",
        "npages",
        "kind",
        "shared",
        "anon",
        "file",
        "vm_read",
        "vm_write",
        "uffd_missing",
        "uffd_wp",
        "uffd_minor",
        "vm_softdirty",
        "ptes",
        "has_anon_vma",
        "name",
    )

    def __init__(self, start: int, npages: int, kind: MemoryKind, name: str = ""):
        if kind.hugetlb:
            raise NotImplementedError(f"the simulator does not model {kind.value} memory yet")
        # a tmpfs file (MemoryKind.FILE) is shmem too: vma_is_shmem(), the same fault and mfill paths
        self.start = start
        self.npages = npages
        self.kind = kind
        self.shared = kind.shared
        self.anon = kind is MemoryKind.ANON
        self.file = None if self.anon else ShmemFile()
        self.vm_read = True
        self.vm_write = True
        self.uffd_missing = self.uffd_wp = self.uffd_minor = False
        self.vm_softdirty = True  # new VMAs start with VM_SOFTDIRTY (tracking not armed)
        self.ptes: list[Optional[Pte]] = [None] * npages
        self.has_anon_vma = False
        self.name = name

    @property
    def end(self) -> int:
        return self.start + self.npages * PAGE_SIZE

    @property
    def registered(self) -> bool:
        return self.uffd_missing or self.uffd_wp or self.uffd_minor

    @property
    def page_cache(self) -> dict[int, Folio]:
        """The shmem file's page cache (vma->vm_file->f_mapping); an anonymous VMA has none."""
        if self.file is None:
            raise TypeError(f"{self!r} is anonymous: it has no page cache")
        return self.file.cache

    def __repr__(self) -> str:
        return f"<Vma {self.kind.value} {self.start:#x}+{self.npages}p>"


class Mm:
    """One simulated address space with (at most) one userfaultfd.

    ``soft_dirty``: CONFIG_MEM_SOFT_DIRTY (the host has none, the guest has it).
    ``swap``: whether there is swap for MADV_PAGEOUT to write to.
    ``handler``: called as ``handler(mm, kind, addr, write)`` for each fault
    delivered to user space; the default resolves it the way
    :mod:`harness.backends.kernel` does (see :meth:`resolve_fault`).
    """

    _NEXT_BASE = 0x7F00_0000_0000

    def __init__(
        self,
        profile: Profile | str = _profiles.STOCK,
        *,
        soft_dirty: bool = True,
        swap: bool = True,
        handler: Optional[Callable] = None,
    ):
        self.profile = _profiles.get(profile) if isinstance(profile, str) else profile
        self.soft_dirty_config = soft_dirty
        self.swap_config = swap
        self.vmas: list[Vma] = []
        self.features: frozenset = frozenset()
        self.api_done = False
        self.uffd_open = False
        self.events: list[tuple] = []
        self.handler = handler if handler is not None else Mm.resolve_fault
        self._next = Mm._NEXT_BASE
        #: page_ops: pages an operation visited; faults: kernel faults taken by accesses
        self.stats = {"page_ops": 0, "faults": 0}

    # -- mappings -----------------------------------------------------------------

    def mmap(self, kind: MemoryKind, npages: int, name: str = "") -> Vma:
        """A new VMA between guard pages (as :meth:`harness.memory.Region.create` maps)."""
        start = self._next + PAGE_SIZE
        self._next = start + (npages + 1) * PAGE_SIZE
        vma = Vma(start, npages, kind, name)
        self.vmas.append(vma)
        return vma

    def munmap(self, vma: Vma) -> None:
        for i in range(vma.npages):
            self._zap_one(vma, i, drop_markers=True)
        self.vmas.remove(vma)

    def find_vma(self, addr: int) -> Optional[Vma]:
        for vma in self.vmas:
            if vma.start <= addr < vma.end:
                return vma
        return None

    def _vma_page(self, addr: int) -> tuple[Optional[Vma], int]:
        vma = self.find_vma(addr)
        if vma is None:
            return None, -1
        return vma, (addr - vma.start) // PAGE_SIZE

    # -- VMA predicates (include/linux/userfaultfd_k.h, mm/internal.h, mm/vma.h) ----

    def soft_dirty_enabled(self, vma: Vma) -> bool:
        """vma_soft_dirty_enabled(): compiled in and VM_SOFTDIRTY clear."""
        return self.soft_dirty_config and not vma.vm_softdirty

    def pte_needs_soft_dirty_wp(self, vma: Vma, pte: Pte) -> bool:
        return self.soft_dirty_enabled(vma) and not pte.soft_dirty

    def wants_writenotify(self, vma: Vma) -> bool:
        """vma_wants_writenotify() for shmem: soft-dirty or uffd-wp tracking (shmem has no page_mkwrite)."""
        if not (vma.shared and vma.vm_write):
            return False
        return self.soft_dirty_enabled(vma) or vma.uffd_wp

    def page_prot_write(self, vma: Vma) -> bool:
        """Whether vm_page_prot has the write bit: shared writable mappings without write-notify."""
        return vma.shared and vma.vm_write and not self.wants_writenotify(vma)

    def wants_manual_write_upgrade(self, vma: Vma) -> bool:
        """vma_wants_manual_pte_write_upgrade() (mm/vma.h).

        Private: VM_WRITE.  Shared: vma_wants_writenotify(vma, vma->vm_page_prot),
        which for shmem is always false -- when write-notify is wanted (uffd-wp,
        soft-dirty) vm_page_prot has already lost its write bit, so the check
        ``vm_page_prot != vm_pgprot_modify(vm_page_prot, vm_flags)`` returns
        false; when it is not wanted, shmem cannot write back.  So un-protect
        (and mprotect) never write-upgrade shmem PTEs: a write takes the fault.
        Found by the contract tests on the patched 6.12 guest.
        """
        if vma.shared:
            return False
        return vma.vm_write

    def use_markers(self, vma: Vma) -> bool:
        """userfaultfd_wp_use_markers(): file-backed always, anon with WP_UNPOPULATED."""
        if not vma.uffd_wp:
            return False
        if not vma.anon:
            return True
        return Feature.WP_UNPOPULATED in self.features

    def can_change_pte_writable(self, vma: Vma, pte: Pte) -> bool:
        """can_change_pte_writable() (mm/mprotect.c)."""
        if not vma.vm_write:
            return False
        if not vma.vm_read:  # pte_protnone()
            return False
        if self.pte_needs_soft_dirty_wp(vma, pte):
            return False
        if vma.uffd_wp and pte.uffd_wp:  # userfaultfd_pte_wp()
            return False
        if self.profile.upgrade_needs_dirty and not pte.dirty:
            return False  # 6.1: "if (pte_protnone(pte) || !pte_dirty(pte)) return false"
        if not vma.shared:
            folio = pte.folio
            return folio is not None and folio.anon and not folio.zero and folio.anon_exclusive
        return pte.dirty

    # -- installing PTEs --------------------------------------------------------------

    def _new_pte(self, vma: Vma, folio: Folio, *, write_fault: bool, uffd_wp: bool) -> Pte:
        """set_pte_range() / do_anonymous_page(): mk_pte(vm_page_prot) is young on x86."""
        pte = Pte(folio, write=self.page_prot_write(vma), young=True)
        if write_fault:
            pte_mkdirty(pte)
            pte.write = vma.vm_write  # maybe_mkwrite()
        if uffd_wp:
            pte_mkuffd_wp(pte)
        folio.mapcount += 1
        return pte

    # -- accesses (mm/memory.c) ---------------------------------------------------------

    def access(self, addr: int, write: bool) -> int:
        """A load or store to ``addr``: 0, or the signal the access would get."""
        self.stats["page_ops"] += 1
        vma, i = self._vma_page(addr)
        if vma is None:
            return signal.SIGSEGV
        # the hardware and then handle_mm_fault(), retried until the access completes
        for _ in range(_RETRY_LIMIT):
            if not vma.vm_read or (write and not vma.vm_write):
                return signal.SIGSEGV  # access_error() in arch/x86/mm/fault.c
            pte = vma.ptes[i]
            if pte is not None and pte.folio is not None:
                if not write or pte.write:
                    # The hardware completes it: the accessed-bit assist (and for a write the
                    # dirty-bit assist; hardware sets D, not soft-dirty).  clear_refs 1 and
                    # idle marking clear young without a TLB flush, so a cached translation
                    # may complete the access without setting A: then young is unknown.
                    if not pte.young:
                        if pte.tlb:
                            pte.young_unknown = True
                        pte.young = True
                    if write:
                        pte.dirty = True
                    pte.tlb = True
                    return 0
                result = self.do_wp_page(vma, i, pte)
            elif pte is not None and pte.swap is not None:
                result = self.do_swap_page(vma, i, pte, write)
            else:
                result = self.do_pte_missing(vma, i, pte, write)
            self.stats["faults"] += 1
            if result:
                return result
        raise RuntimeError(f"simulated access to {addr:#x} did not complete after {_RETRY_LIMIT} faults")

    def _deliver(self, vma: Vma, i: int, kind: str, write: bool) -> None:
        """handle_userfault(): queue the event and let the handler resolve it; the access retries."""
        addr = vma.start + i * PAGE_SIZE
        self.events.append((kind, addr, write))
        self.handler(self, kind, addr, write)

    def do_wp_page(self, vma: Vma, i: int, pte: Pte) -> int:
        """do_wp_page(): a write to a present, read-only PTE."""
        if vma.uffd_wp and pte.uffd_wp:
            if Feature.WP_ASYNC in self.features:
                pte.uffd_wp = False  # the async mode resolves it in place
            else:
                self._deliver(vma, i, WP, True)
                return 0
        folio = pte.folio
        assert folio is not None, "do_wp_page() is called for a present PTE only"
        if vma.shared:
            self.wp_page_reuse(vma, pte)  # wp_page_shared(): shmem has no page_mkwrite
            folio.dirty = True  # fault_dirty_shared_page()
            return 0
        if folio.anon and not folio.zero and (folio.anon_exclusive or folio.mapcount == 1):
            folio.anon_exclusive = True  # wp_can_reuse_anon_folio()
            self.wp_page_reuse(vma, pte)
            return 0
        self.wp_page_copy(vma, i, pte)
        return 0

    def wp_page_reuse(self, vma: Vma, pte: Pte) -> None:
        """wp_page_reuse(): pte_mkyoung(), maybe_mkwrite(pte_mkdirty())."""
        pte.young = True
        pte.young_unknown = False
        pte_mkdirty(pte)
        pte.write = vma.vm_write

    def wp_page_copy(self, vma: Vma, i: int, pte: Pte) -> None:
        """wp_page_copy(): a new exclusive anonymous page, young, dirty, writable."""
        assert pte.folio is not None, "wp_page_copy() is called for a present PTE only"
        if not pte.folio.zero:
            pte.folio.mapcount -= 1
        vma.has_anon_vma = True
        new = Folio(anon=True)
        vma.ptes[i] = self._new_pte(vma, new, write_fault=True, uffd_wp=False)

    def do_pte_missing(self, vma: Vma, i: int, pte: Optional[Pte], write: bool) -> int:
        """do_pte_missing() via handle_pte_marker() for a uffd-wp marker."""
        if pte is not None and pte.poison:
            return signal.SIGBUS  # handle_pte_marker(): PTE_MARKER_POISONED
        marker_wp = pte is not None and pte.marker
        if marker_wp and not vma.uffd_wp:
            vma.ptes[i] = None  # pte_marker_clear(): a leftover marker
            return 0
        if vma.anon:
            return self.do_anonymous_page(vma, i, write, marker_wp)
        return self.do_fault(vma, i, write, marker_wp)

    def do_anonymous_page(self, vma: Vma, i: int, write: bool, orig_uffd_wp: bool) -> int:
        if not write:
            # the zero page for reads; missing faults go to user space inside the PT lock
            if vma.uffd_missing:
                self._deliver(vma, i, MISSING, False)
                return 0
            pte = Pte(ZERO_FOLIO, write=False, young=True)
        else:
            if vma.uffd_missing:
                self._deliver(vma, i, MISSING, True)
                return 0
            vma.has_anon_vma = True
            folio = Folio(anon=True)
            pte = Pte(folio, young=True)
            if vma.vm_write:
                pte_mkdirty(pte)
                pte.write = True
            folio.mapcount = 1
        if orig_uffd_wp:  # vmf_orig_pte_uffd_wp()
            pte_mkuffd_wp(pte)
        vma.ptes[i] = pte
        return 0

    def shmem_fault(self, vma: Vma, i: int, write: bool) -> Optional[Folio]:
        """shmem_fault() -> shmem_get_folio_gfp(): the page-cache folio, or None after a uffd event."""
        cache = vma.page_cache
        folio = cache.get(i)
        if folio is not None and folio.swapped:
            folio.swapped = False  # shmem_swapin_folio(): back in memory, dirty
            folio.dirty = True
        if folio is None:
            if vma.uffd_missing:
                self._deliver(vma, i, MISSING, write)
                return None
            folio = Folio(anon=False)  # a new clean, zeroed page
            cache[i] = folio
        elif vma.uffd_minor:
            self._deliver(vma, i, MINOR, write)
            return None
        return folio

    def do_fault(self, vma: Vma, i: int, write: bool, orig_uffd_wp: bool) -> int:
        """do_read_fault() / do_cow_fault() / do_shared_fault() for shmem."""
        folio = self.shmem_fault(vma, i, write)
        if folio is None:
            return 0
        if not write:
            vma.ptes[i] = self._new_pte(vma, folio, write_fault=False, uffd_wp=orig_uffd_wp)
            return 0
        if not vma.shared:  # do_cow_fault(): copy into a new anonymous page
            vma.has_anon_vma = True
            vma.ptes[i] = self._new_pte(vma, Folio(anon=True), write_fault=True, uffd_wp=orig_uffd_wp)
            return 0
        vma.ptes[i] = self._new_pte(vma, folio, write_fault=True, uffd_wp=orig_uffd_wp)
        folio.dirty = True  # fault_dirty_shared_page()
        return 0

    def do_swap_page(self, vma: Vma, i: int, pte: Pte, write: bool) -> int:
        """do_swap_page(): swap the folio back in.

        A write fault frees the swap slot (should_try_to_free_swap() ->
        folio_free_swap(), which dirties the folio); after a read fault the
        folio stays in the swap cache, clean (seen on the guest with zram swap).
        """
        folio = pte.swap
        assert folio is not None, "do_swap_page() is called for a swap entry only"
        folio.swapped = False
        if write:
            folio.dirty = True
        new = Pte(folio, young=True, soft_dirty=pte.soft_dirty)
        if pte.uffd_wp:
            new.uffd_wp = True
        folio.mapcount += 1
        if pte.exclusive or folio.mapcount == 1:
            if vma.vm_write and not (vma.uffd_wp and new.uffd_wp) and not self.pte_needs_soft_dirty_wp(vma, new):
                new.write = True
                if write:
                    pte_mkdirty(new)
            folio.anon_exclusive = True
        vma.ptes[i] = new
        return 0

    # -- the fault handler ----------------------------------------------------------------

    @staticmethod
    def resolve_fault(mm: "Mm", kind: str, addr: int, write: bool) -> None:
        """The harness's standard handler: WP -> un-protect the page (no hints);
        MISSING -> UFFDIO_COPY one page; MINOR -> UFFDIO_CONTINUE."""
        if kind == WP:
            mm.writeprotect(addr, PAGE_SIZE, protect=False)
        elif kind == MISSING:
            mm.copy(addr, PAGE_SIZE)
        else:
            mm.continue_(addr, PAGE_SIZE)

    # -- userfaultfd (fs/userfaultfd.c, mm/userfaultfd.c) --------------------------------------

    def open_uffd(self) -> None:
        self.uffd_open = True

    def api(self, features=()) -> frozenset:
        """UFFDIO_API: enable ``features``; EINVAL for one the profile lacks or a second call."""
        wanted = frozenset(features)
        if self.api_done:
            raise UffdError("UFFDIO_API", errno.EINVAL, advice="UFFDIO_API was already done on this fd")
        missing = wanted - self.profile.features
        if missing:
            names = ", ".join(sorted(f.name for f in missing))
            raise UffdError("UFFDIO_API", errno.EINVAL, advice=f"profile {self.profile.name} lacks {names}")
        self.features = wanted
        self.api_done = True
        return self.profile.features

    def _validate_range(self, op: str, start: int, length: int) -> None:
        """validate_range(): page-aligned, non-empty."""
        if start % PAGE_SIZE or length % PAGE_SIZE or length <= 0:
            raise UffdError(
                op,
                errno.EINVAL,
                start,
                length,
                advice=f"start and length must be non-zero multiples of the page size ({PAGE_SIZE})",
            )

    def _vmas_in(self, start: int, end: int) -> list[Vma]:
        return [v for v in self.vmas if v.start < end and start < v.end]

    def register(self, start: int, length: int, mode: RegisterMode) -> None:
        """userfaultfd_register(): the range must be covered by VMAs; MINOR only for shmem (vma_can_userfault())."""
        self._validate_range("UFFDIO_REGISTER", start, length)
        mode = RegisterMode(mode)
        if not mode:
            raise UffdError("UFFDIO_REGISTER", errno.EINVAL, start, length, advice="no mode")
        vmas = self._vmas_in(start, start + length)
        covered = sum(min(v.end, start + length) - max(v.start, start) for v in vmas)
        if covered != length:
            raise UffdError("UFFDIO_REGISTER", errno.EINVAL, start, length, advice="the range has holes")
        for v in vmas:
            if v.start < start or v.end > start + length:
                raise NotImplementedError("the simulator registers whole VMAs only")
            if mode & RegisterMode.MINOR and v.anon:
                raise UffdError("UFFDIO_REGISTER", errno.EINVAL, start, length, advice="MINOR is not for anon")
        for v in vmas:
            v.uffd_missing = bool(mode & RegisterMode.MISSING)
            v.uffd_wp = bool(mode & RegisterMode.WP)
            v.uffd_minor = bool(mode & RegisterMode.MINOR)

    def unregister(self, start: int, length: int) -> None:
        """userfaultfd_unregister(): drops uffd-wp bits and markers (uffd_wp_range(..., false))."""
        self._validate_range("UFFDIO_UNREGISTER", start, length)
        for v in self._vmas_in(start, start + length):
            if v.uffd_wp:
                for i, pte in enumerate(v.ptes):
                    if pte is None or pte.poison:
                        continue
                    if pte.marker:
                        v.ptes[i] = None
                    else:
                        pte.uffd_wp = False
            v.uffd_missing = v.uffd_wp = v.uffd_minor = False

    def writeprotect(
        self,
        start: int,
        length: int,
        protect: bool = True,
        *,
        dontwake: bool = False,
        access_likely: bool = False,
        write_likely: bool = False,
        raw_mode: Optional[int] = None,
    ) -> None:
        """userfaultfd_writeprotect() -> mwriteprotect_range() -> uffd_wp_range() -> change_pte_range()."""
        op = "UFFDIO_WRITEPROTECT"
        if raw_mode is None:
            mode = abi.writeprotect_mode(
                protect, dontwake=dontwake, access_likely=access_likely, write_likely=write_likely
            )
        else:
            mode = raw_mode
        self._validate_range(op, start, length)
        hints = Hints.from_mode(mode)
        code = self.profile.check_wp_mode(mode, self.features, hints)
        if code:
            advice = ""
            if hints and Feature.ACCESS_HINTS not in self.features:
                advice = "the ACCESS_HINTS feature was not negotiated"
            elif hints and mode & abi.WRITEPROTECT_MODE_WP:
                advice = "access hints apply only when un-protecting (without MODE_WP)"
            raise UffdError(op, code, start, length, advice=advice)
        enable_wp = bool(mode & abi.WRITEPROTECT_MODE_WP)
        end = start + length
        vmas = self._vmas_in(start, end)
        if not vmas:
            raise UffdError(op, errno.ENOENT, start, length, advice="the range is not registered")
        for vma in vmas:  # mwriteprotect_range(): every VMA must be uffd-wp
            if not vma.uffd_wp:
                raise UffdError(
                    op, errno.ENOENT, start, length, advice="the range is not (fully) registered with this userfaultfd"
                )
        for vma in vmas:
            first = max(0, (start - vma.start) // PAGE_SIZE)
            last = min(vma.npages, (end - vma.start) // PAGE_SIZE)
            self._uffd_wp_range(vma, first, last, enable_wp, hints)

    def _uffd_wp_range(self, vma: Vma, first: int, last: int, enable_wp: bool, hints: Hints) -> None:
        """uffd_wp_range() + change_pte_range() with MM_CP_UFFD_WP or MM_CP_UFFD_WP_RESOLVE."""
        try_writable = not enable_wp and self.profile.uffd_try_change_writable and self.wants_manual_write_upgrade(vma)
        prot_write = self.page_prot_write(vma)
        if self.profile.uffd_newprot_from_vm_flags:
            # 6.1 uffd_wp_range(): vm_get_page_prot(vm_flags [& ~VM_WRITE]); only shared VMAs get the write bit
            prot_write = not enable_wp and vma.shared and vma.vm_write
        resolve_hook = self.profile.uffd_wp_resolve
        ptes = vma.ptes
        self.stats["page_ops"] += last - first
        for i in range(first, last):
            pte = ptes[i]
            if pte is None:
                if enable_wp and self.use_markers(vma):
                    ptes[i] = Pte(None, marker=True, uffd_wp=True, young=False)
                continue
            if pte.folio is not None:
                old_write, old_dirty = pte.write, pte.dirty
                pte.write = prot_write and vma.vm_read  # pte_modify(oldpte, newprot)
                if enable_wp:
                    pte_mkuffd_wp(pte)
                else:
                    pte.uffd_wp = False
                    made_writable = False
                    if try_writable and not pte.write and self.can_change_pte_writable(vma, pte):
                        pte.write = True
                        made_writable = True
                    if hints:
                        self._resolve_hook(resolve_hook, pte, vma, hints, made_writable)
                if pte.write != old_write or (old_dirty and not pte.dirty):
                    pte.tlb = False  # pte_needs_flush(): RW changed or D cleared
            elif pte.poison:
                continue  # poisoned entries are left alone
            elif pte.marker:
                if not enable_wp:
                    ptes[i] = None  # drop the marker; the next fault is not trapped
            else:  # a swap entry
                pte.uffd_wp = enable_wp

    @staticmethod
    def _resolve_hook(hook, pte: Pte, vma: Vma, hints: Hints, made_writable: bool) -> None:
        """Call a profile's uffd_wp_resolve(); a young bit it sets is no longer unknown."""
        unknown = pte.young_unknown
        if unknown:
            pte.young = False
        hook(pte, vma, hints, made_writable)
        if unknown:
            if pte.young:
                pte.young_unknown = False
            else:
                pte.young = True

    def _mfill_vma(self, op: str, dst: int, length: int, wp: bool) -> Vma:
        """uffd_mfill_lock() and the checks at the top of mfill_atomic()."""
        self._validate_range(op, dst, length)
        vma = self.find_vma(dst)
        if vma is None or dst + length > vma.end or not vma.registered:
            raise UffdError(
                op, errno.ENOENT, dst, length, advice="the range is not (fully) registered with this userfaultfd"
            )
        if wp and not vma.uffd_wp:
            raise UffdError(op, errno.EINVAL, dst, length, advice="MODE_WP needs a WP-registered range")
        return vma

    def copy(self, dst: int, length: int, *, wp: bool = False) -> int:
        """UFFDIO_COPY: mfill_atomic_pte_copy() (private) / shmem_mfill_atomic_pte() (shared)."""
        return self._mfill("UFFDIO_COPY", dst, length, wp, zero=False)

    def zeropage(self, dst: int, length: int) -> int:
        """UFFDIO_ZEROPAGE: the zero page (private) or a new zeroed page-cache page (shared)."""
        return self._mfill("UFFDIO_ZEROPAGE", dst, length, False, zero=True)

    def _mfill(self, op: str, dst: int, length: int, wp: bool, zero: bool) -> int:
        vma = self._mfill_vma(op, dst, length, wp)
        first = (dst - vma.start) // PAGE_SIZE
        done = 0
        for i in range(first, first + length // PAGE_SIZE):
            self.stats["page_ops"] += 1
            pte = vma.ptes[i]
            if vma.shared:
                code = self._shmem_mfill(vma, i, wp)
            elif zero:
                # mfill_atomic_pte_zeropage(): pte_none() strictly, a marker is EEXIST
                code = errno.EEXIST if pte is not None else 0
                if not code:
                    vma.ptes[i] = Pte(ZERO_FOLIO, write=False, young=True)
            else:
                code = errno.EEXIST if (pte is not None and not pte.marker) else 0
                if not code:
                    vma.has_anon_vma = True
                    vma.ptes[i] = self._install_mfill(vma, Folio(anon=True), wp, page_in_cache=False)
            if code:
                raise UffdError(op, code, dst, length, advice="a page is already mapped there", result=done)
            done += PAGE_SIZE
        return done

    def _shmem_mfill(self, vma: Vma, i: int, wp: bool) -> int:
        """shmem_mfill_atomic_pte(): a new page-cache page; EEXIST if the file has one there."""
        if i in vma.page_cache:
            return errno.EEXIST
        pte = vma.ptes[i]
        if pte is not None and not pte.marker:
            return errno.EEXIST
        folio = Folio(anon=False)
        vma.page_cache[i] = folio
        vma.ptes[i] = self._install_mfill(vma, folio, wp, page_in_cache=True)
        return 0

    def _install_mfill(self, vma: Vma, folio: Folio, wp: bool, page_in_cache: bool) -> Pte:
        """mfill_atomic_install_pte(): always dirty; writable if VM_WRITE (not for cache pages in private VMAs)."""
        writable = vma.vm_write and not (page_in_cache and not vma.shared)
        pte = pte_mkdirty(Pte(folio, young=True, write=writable))
        if wp:
            pte_mkuffd_wp(pte)
        folio.mapcount += 1
        return pte

    def continue_(self, dst: int, length: int, *, wp: bool = False) -> int:
        """UFFDIO_CONTINUE (mfill_atomic_pte_continue()): map the existing page-cache page."""
        op = "UFFDIO_CONTINUE"
        vma = self._mfill_vma(op, dst, length, wp)
        if vma.anon:
            raise UffdError(op, errno.EINVAL, dst, length, advice="CONTINUE is for shmem")
        first = (dst - vma.start) // PAGE_SIZE
        done = 0
        for i in range(first, first + length // PAGE_SIZE):
            folio = vma.page_cache.get(i)
            pte = vma.ptes[i]
            if folio is None:
                raise UffdError(op, errno.EFAULT, dst, length, advice="no page-cache page there", result=done)
            if pte is not None and not pte.marker:
                raise UffdError(op, errno.EEXIST, dst, length, advice="a page is already mapped there", result=done)
            vma.ptes[i] = self._install_mfill(vma, folio, wp, page_in_cache=True)
            done += PAGE_SIZE
        return done

    def poison(self, dst: int, length: int) -> int:
        """UFFDIO_POISON (mfill_atomic_pte_poison()): a POISONED marker where the PTE is none."""
        op = "UFFDIO_POISON"
        if op in self.profile.lacks_ioctls:
            raise UffdError(op, errno.EINVAL, dst, length, advice=f"profile {self.profile.name} has no {op}")
        vma = self._mfill_vma(op, dst, length, False)
        first = (dst - vma.start) // PAGE_SIZE
        done = 0
        for i in range(first, first + length // PAGE_SIZE):
            if vma.ptes[i] is not None:  # refuse to overwrite any PTE, even a uffd-wp marker
                raise UffdError(op, errno.EEXIST, dst, length, advice="a page is already mapped there", result=done)
            marker = Pte(None, marker=True, young=False)
            marker.poison = True
            vma.ptes[i] = marker
            done += PAGE_SIZE
        return done

    def move(self, dst: int, src: int, length: int, *, allow_src_holes: bool = False) -> int:
        """UFFDIO_MOVE (move_pages() -> move_pages_pte()): anonymous pages only, one by one.

        The destination PTE is made fresh (move_present_pte()): young (vm_page_prot),
        writable, soft-dirty, dirty only if the source was; the source's uffd-wp bit is lost.
        """
        op = "UFFDIO_MOVE"
        if op in self.profile.lacks_ioctls:
            raise UffdError(op, errno.EINVAL, dst, length, advice=f"profile {self.profile.name} has no {op}")
        self._validate_range(op, dst, length)
        self._validate_range(op, src, length)
        dst_vma, src_vma = self.find_vma(dst), self.find_vma(src)
        if dst_vma is None or src_vma is None:
            raise UffdError(op, errno.ENOENT, dst, length, advice="no mapping there")
        if src + length > src_vma.end or dst + length > dst_vma.end:
            raise UffdError(op, errno.EINVAL, dst, length, advice="the ranges must each lie in one VMA")
        # validate_move_areas(): same access, writable, registered destination, anonymous both
        if (
            (src_vma.vm_read, src_vma.vm_write) != (dst_vma.vm_read, dst_vma.vm_write)
            or not src_vma.vm_write
            or not dst_vma.registered
            or not (src_vma.anon and dst_vma.anon)
        ):
            raise UffdError(
                op,
                errno.EINVAL,
                dst,
                length,
                advice="UFFDIO_MOVE needs two writable anonymous VMAs, the destination registered",
            )
        done = 0
        for k in range(length // PAGE_SIZE):
            self.stats["page_ops"] += 1
            di = (dst - dst_vma.start) // PAGE_SIZE + k
            si = (src - src_vma.start) // PAGE_SIZE + k
            dpte, spte = dst_vma.ptes[di], src_vma.ptes[si]
            code = 0
            if dpte is not None:
                code = errno.EEXIST
            elif spte is None:
                if not allow_src_holes:
                    code = errno.ENOENT
            elif spte.folio is not None and spte.folio.zero:
                src_vma.ptes[si] = None  # move_zeropage_pte()
                dst_vma.ptes[di] = Pte(ZERO_FOLIO, young=True)
            elif spte.folio is not None:
                folio = spte.folio
                if not folio.anon or not folio.anon_exclusive:
                    code = errno.EBUSY
                else:  # move_present_pte()
                    src_vma.ptes[si] = None
                    new = Pte(folio, young=True, write=True, dirty=spte.dirty, soft_dirty=True)
                    dst_vma.ptes[di] = new
                    dst_vma.has_anon_vma = True
            elif spte.swap is not None:
                if not spte.exclusive:
                    code = errno.EBUSY
                else:  # move_swap_pte()
                    src_vma.ptes[si] = None
                    dst_vma.ptes[di] = Pte(None, swap=spte.swap, soft_dirty=True, exclusive=True, young=False)
            else:
                code = errno.EFAULT  # a marker: non_swap_entry()
            if code:
                raise UffdError(op, code, dst, length, advice=errno.errorcode.get(code, ""), result=done)
            done += PAGE_SIZE
        return done

    def wake(self, start: int, length: int) -> None:
        """UFFDIO_WAKE: validate_range(); nothing waits in the simulator."""
        self._validate_range("UFFDIO_WAKE", start, length)

    # -- madvise (mm/madvise.c) ----------------------------------------------------------------

    def madvise(self, vma: Vma, advice: str, first: int = 0, count: Optional[int] = None) -> None:
        count = vma.npages - first if count is None else count
        self.stats["page_ops"] += count
        if advice == "free":
            if not vma.anon:
                raise MappingError(
                    "madvise(MADV_FREE)",
                    errno.EINVAL,
                    vma.start + first * PAGE_SIZE,
                    count * PAGE_SIZE,
                    advice="MADV_FREE is for anonymous private memory",
                )
            for i in range(first, first + count):
                self._madvise_free_one(vma, i)
        elif advice == "dontneed":
            for i in range(first, first + count):
                self._zap_one(vma, i)
        elif advice == "pageout":
            for i in range(first, first + count):
                if self.profile.pageout_makes_old:
                    self._pageout_makes_old(vma, i)
                self._pageout_one(vma, i)
        else:
            raise ValueError(f"unknown advice {advice!r}: free, dontneed or pageout")

    def _madvise_free_one(self, vma: Vma, i: int) -> None:
        """madvise_free_pte_range(): old and clean, folio clean and lazyfree; swap entries dropped."""
        pte = vma.ptes[i]
        if pte is not None and pte.poison:
            vma.ptes[i] = None  # poisoned entries are cleared
            return
        if pte is None or pte.marker:
            return
        if pte.swap is not None:
            vma.ptes[i] = None
            return
        folio = pte.folio
        assert folio is not None, "a PTE that is neither a marker nor a swap entry maps a folio"
        if folio.zero:
            return
        if folio.dirty:
            if folio.mapcount != 1:
                return
            folio.dirty = False
        if pte.young or pte.dirty:
            pte.tlb = False  # clear_young_dirty_ptes() + tlb_remove_tlb_entries()
        pte.young = False
        pte.young_unknown = False
        pte.dirty = False
        folio.referenced = False  # folio_mark_lazyfree() -> lru_lazyfree()
        folio.lazyfree = True

    def _zap_one(self, vma: Vma, i: int, drop_markers: bool = False) -> None:
        """zap_pte_range(): anon pages go; page-cache pages stay in the file, dirty/accessed from the PTE."""
        pte = vma.ptes[i]
        if pte is None:
            return
        was_wp = pte.uffd_wp or (pte.marker and not pte.poison)
        if pte.folio is not None and not pte.folio.zero:
            folio = pte.folio
            folio.mapcount -= 1
            if not folio.anon:
                if pte.dirty:
                    folio.dirty = True  # zap_present_folio_ptes(): folio_mark_dirty()
                if pte.young:
                    self._mark_accessed(folio)
        vma.ptes[i] = None
        # zap_install_uffd_wp_if_needed(): file-backed uffd-wp PTEs leave a marker
        if not drop_markers and not vma.anon and vma.uffd_wp and was_wp:
            vma.ptes[i] = Pte(None, marker=True, uffd_wp=True, young=False)

    @staticmethod
    def _mark_accessed(folio: Folio) -> None:
        """folio_mark_accessed(): the first call sets PG_referenced (the second activates; not modelled)."""
        folio.referenced = True

    def _pageout_makes_old(self, vma: Vma, i: int) -> None:
        """6.1's madvise_cold_or_pageout_pte_range(): a present PTE of a normal page mapped once is made
        old before the page is isolated for reclaim (the zero page and shared pages are passed over)."""
        pte = vma.ptes[i]
        if pte is not None and pte.folio is not None and not pte.folio.zero and pte.folio.mapcount == 1:
            pte.young = False

    def _pageout_one(self, vma: Vma, i: int) -> None:
        """madvise_pageout -> reclaim_pages(): needs swap for anonymous pages."""
        pte = vma.ptes[i]
        if pte is None or pte.folio is None or pte.folio.zero:
            return
        folio = pte.folio
        folio.referenced = False
        if folio.anon and folio.lazyfree:
            # try_to_unmap_one(): a clean MADV_FREE'd folio is discarded, swap or no swap
            # (references are ignored for MADV_PAGEOUT); one written since is re-marked swap-backed
            if pte.dirty or folio.dirty:
                folio.dirty = True
                folio.lazyfree = False
                return
            folio.mapcount -= 1
            vma.ptes[i] = None
            return
        if folio.anon:
            if not self.swap_config or folio.mapcount != 1:
                return  # folio_alloc_swap() fails: the page stays
            vma.ptes[i] = Pte(
                None,
                swap=folio,
                uffd_wp=pte.uffd_wp,
                soft_dirty=pte.soft_dirty,
                exclusive=folio.anon_exclusive,
                young=False,
            )
            folio.mapcount = 0
            folio.swapped = True
            folio.dirty = False
            return
        # a page-cache page: try_to_unmap_one(), then shmem_writepage() (to swap, or kept dirty)
        if pte.dirty:
            folio.dirty = True
        folio.mapcount -= 1
        vma.ptes[i] = None
        if vma.uffd_wp and pte.uffd_wp:
            vma.ptes[i] = Pte(None, marker=True, uffd_wp=True, young=False)
        if folio.mapcount == 0 and self.swap_config and folio.dirty:
            folio.swapped = True
        elif folio.mapcount == 0 and not folio.dirty:
            vma.page_cache.pop(i, None)  # a clean shmem page is simply dropped

    # -- mprotect (mm/mprotect.c) ----------------------------------------------------------------

    def mprotect(self, vma: Vma, prot: int) -> None:
        """mprotect_fixup() -> change_protection(newprot, MM_CP_TRY_CHANGE_WRITABLE if wanted)."""
        from harness.memory import PROT_READ, PROT_WRITE

        self.stats["page_ops"] += vma.npages
        vm_read, vm_write = bool(prot & (PROT_READ | PROT_WRITE)), bool(prot & PROT_WRITE)
        if (vm_read, vm_write) == (vma.vm_read, vma.vm_write):
            return  # mprotect_fixup(): newflags == oldflags changes nothing, flushes nothing
        vma.vm_read, vma.vm_write = vm_read, vm_write
        try_writable = self.wants_manual_write_upgrade(vma)
        prot_write = self.page_prot_write(vma) and vma.vm_read
        for pte in vma.ptes:
            if pte is None or pte.folio is None:
                continue
            old_write = pte.write
            pte.write = prot_write and not (vma.uffd_wp and pte.uffd_wp)
            if try_writable and not pte.write and self.can_change_pte_writable(vma, pte):
                pte.write = True
            if pte.write != old_write:
                pte.tlb = False

    # -- /proc/self/clear_refs (fs/proc/task_mmu.c) ----------------------------------------------------

    def clear_refs(self, value: int) -> None:
        """1: clear young (PTE, PG_referenced, PG_young); 4: clear soft-dirty and arm tracking."""
        if value == abi.CLEAR_REFS_ALL:
            for vma in self.vmas:
                self.stats["page_ops"] += vma.npages
                for pte in vma.ptes:
                    if pte is None or pte.folio is None or pte.folio.zero:
                        continue  # vm_normal_page() is NULL for the zero page
                    pte.young = False  # ptep_test_and_clear_young(): no TLB flush
                    pte.young_unknown = False
                    pte.folio.referenced = False
        elif value == abi.CLEAR_REFS_SOFT_DIRTY:
            if not self.soft_dirty_config:
                return
            for vma in self.vmas:
                self.stats["page_ops"] += vma.npages
                vma.vm_softdirty = False  # vm_flags_clear(VM_SOFTDIRTY); vma_set_page_prot()
                for pte in vma.ptes:
                    if pte is None or pte.marker:
                        continue
                    if pte.folio is not None:
                        pte.write = False  # clear_soft_dirty(): pte_wrprotect(), pte_clear_soft_dirty()
                        pte.tlb = False  # flush_tlb_mm()
                    pte.soft_dirty = False
        else:
            raise ValueError(f"clear_refs value {value} is not modelled (1 or 4)")

    # -- fork (kernel/fork.c dup_mmap() -> copy_page_range()) ----------------------------------

    def fork(self) -> None:
        """A child is forked and exits at once.

        copy_present_ptes(): the parent's writable COW PTEs are write-protected
        and anonymous folios lose PageAnonExclusive; when the child exits, the
        mapcounts drop back.  Shared VMAs without an anon_vma are not copied.
        Without EVENT_FORK the child's VMAs are unregistered: nothing to see.
        """
        for vma in self.vmas:
            for pte in vma.ptes:
                if pte is not None:
                    pte.tlb = False  # dup_mmap(): flush_tlb_mm(oldmm)
            if vma.shared or not vma.has_anon_vma:
                continue
            for pte in vma.ptes:
                if pte is None:
                    continue
                if pte.folio is not None:
                    folio = pte.folio
                    if folio.anon and not folio.zero:
                        folio.anon_exclusive = False
                        pte.write = False
                elif pte.swap is not None:
                    pte.exclusive = False

    # -- idle page tracking (mm/page_idle.c) ------------------------------------------------------------

    def mark_idle(self, vma: Vma, i: int) -> None:
        """page_idle_bitmap_write(): clear the PTE's young bit (a young one leaves PG_young,
        which smaps counts as Referenced) and set PG_idle."""
        pte = vma.ptes[i]
        if pte is not None and pte.folio is not None and not pte.folio.zero:
            if pte.young:
                pte.young = False  # ptep_clear_young_notify(): no TLB flush on x86
                pte.folio.referenced = True  # folio_set_young() in page_idle_clear_pte_refs_one()
            pte.young_unknown = False
            pte.folio.idle = True

    def read_idle(self, vma: Vma, i: int) -> bool:
        """page_idle_bitmap_read(): for an idle folio, a young PTE is cleared and ends the idleness."""
        pte = vma.ptes[i]
        if pte is None or pte.folio is None or pte.folio.zero:
            return False
        folio = pte.folio
        if folio.idle and pte.young:
            pte.young = False
            folio.idle = False
            folio.referenced = True  # folio_set_young()
        return folio.idle

    # -- reporting ----------------------------------------------------------------------------

    def pagemap_bits(self, vma: Vma, i: int) -> dict:
        """What /proc/self/pagemap shows (pte_to_pagemap_entry())."""
        pte = vma.ptes[i]
        sd_vma = self.soft_dirty_config and vma.vm_softdirty
        if pte is None:
            return dict(
                present=False, swapped=False, file_shared=False, uffd_wp=False, exclusive=False, soft_dirty=sd_vma
            )
        if pte.folio is None:
            return dict(
                present=False,
                swapped=True,
                file_shared=False,
                uffd_wp=pte.uffd_wp,
                exclusive=False,
                soft_dirty=sd_vma or (self.soft_dirty_config and pte.swap is not None and pte.soft_dirty),
            )
        folio = pte.folio
        return dict(
            present=True,
            swapped=False,
            file_shared=not folio.anon and not folio.zero,
            uffd_wp=pte.uffd_wp,
            exclusive=(not folio.zero and folio.mapcount == 1),
            soft_dirty=sd_vma or (self.soft_dirty_config and pte.soft_dirty),
        )

    def smaps_young_dirty(self, vma: Vma, i: int) -> tuple[bool, bool]:
        """smaps_account(): Referenced = pte_young || PG_young || PG_referenced; Dirty = pte_dirty || PG_dirty.

        The zero page is not a "normal" page: smaps does not count it at all.
        """
        pte = vma.ptes[i]
        if pte is None or pte.folio is None or pte.folio.zero:
            return False, False
        folio = pte.folio
        return (pte.young or folio.referenced), (pte.dirty or folio.dirty)
