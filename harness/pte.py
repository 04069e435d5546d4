"""PTE observation: what user space can learn about one page's page-table entry.

Channels (``PteState.source`` names the one that answered young/dirty):

``pte``
    ``/sys/kernel/debug/uffd_harness/pte`` (root, debugfs, and a kernel with
    the uffd-harness instrumentation patch, ``vm/instrumentation``: every
    guest kernel the harness builds has it, no distribution kernel does).
    The page-table entry itself: present, writable, young, dirty, uffd-wp,
    soft-dirty, the level (pte / pmd / pud) and, for a non-present entry,
    what its swap entry is.  No folio flag enters it, nothing is cleared by
    reading it.  :func:`read_ptes` reads a range in one write + read.
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

import enum
import errno
import os
import re
import struct
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Iterable, Optional

from harness import abi
from harness import memory as _memory
from harness._native import ffi, lib
from harness.abi import KPageFlag, PageCategory, PagemapBit
from harness.errors import HarnessError, ObservationUnavailable, ThpUnavailable, UffdError
from harness.memory import PAGE_SIZE, Region


class Channel(enum.StrEnum):
    """Where a page's state is read from (a str: its value is the name reports and JSON use)."""

    PTE = "pte"  #: the page-table entry itself (the instrumentation's debugfs file)
    SMAPS = "smaps"  #: /proc/self/smaps page counts of the VMA (folio flags too)
    IDLE_PAGE = "idle-page"  #: idle-page tracking (folio flags too)
    KPAGEFLAGS = "kpageflags"  #: /proc/kpageflags: folio flags only
    SIM = "sim"  #: the simulator's modelled PTE


PTE, SMAPS, IDLE_PAGE, KPAGEFLAGS = Channel.PTE, Channel.SMAPS, Channel.IDLE_PAGE, Channel.KPAGEFLAGS
#: the kernel's channels
CHANNELS = (PTE, SMAPS, IDLE_PAGE, KPAGEFLAGS)

#: the instrumentation's debugfs file (vm/instrumentation, mm/uffd_harness_pte.c)
PTE_DEBUGFS = "/sys/kernel/debug/uffd_harness/pte"
#: the instrumentation's one writer: clears the accessed bit of the caller's entries (hugetlb included)
MKOLD_DEBUGFS = "/sys/kernel/debug/uffd_harness/mkold"
_DEBUGFS = "/sys/kernel/debug"
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
    #: which channel answered young/dirty: pte, smaps, idle-page, kpageflags, or sim
    source: str
    #: writable in the page table: the pte channel and the simulator see it, None elsewhere
    writable: Optional[bool] = None

    def bits(self) -> dict[str, Optional[bool]]:
        """The observable bits, for comparing a kernel answer with a model's."""
        return {
            "present": self.present,
            "swapped": self.swapped,
            "uffd_wp": self.uffd_wp,
            "soft_dirty": self.soft_dirty,
            "young": self.young,
            "dirty": self.dirty,
        }


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
    vma = smaps_vmas([addr], pid).get(addr)
    if vma is None:
        raise HarnessError(f"/proc/{pid}/smaps: no VMA contains {addr:#x}")
    return vma


def smaps_vmas(addrs: Iterable[int], pid: str = "self") -> dict[int, dict]:
    """{addr: the smaps fields of the VMA containing it} for each address some VMA contains, from one read.

    A process has hundreds of VMAs and a contract case reads smaps dozens of
    times, so only the wanted VMAs are parsed: an address that starts its
    VMA (a region's, usually) is found by its header line, any other by a
    walk over the header lines.
    """
    with open(f"/proc/{pid}/smaps", "rb") as f:
        text = "\n" + f.read().decode()
    out: dict[int, dict] = {}
    for addr in set(addrs):
        at = text.find(f"\n{addr:x}-") + 1 or _smaps_header_containing(text, addr)
        if at:
            out[addr] = _smaps_fields(text, at)
    return out


def _smaps_header_containing(text: str, addr: int) -> int:
    """Where the header line of the VMA containing ``addr`` starts in ``text`` (smaps after a newline); 0 if none."""
    at = 1
    while at:
        lo, _, rest = text[at : at + 40].partition("-")
        if int(lo, 16) <= addr < int(rest.partition(" ")[0], 16):
            return at
        flags_at = text.find("\nVmFlags:", at)  # each VMA's last line: the next header follows it
        at = text.find("\n", flags_at + 1) + 1 if flags_at >= 0 else 0
        at = at if at < len(text) else 0
    return 0


def _smaps_fields(text: str, at: int) -> dict:
    """The fields (kB, ``VmFlags`` a string) of the VMA whose header line starts at ``at``, with its start and end."""
    eol = text.find("\n", at)
    lo, _, hi = text[at:eol].split(maxsplit=1)[0].partition("-")
    fields: dict = {"start": int(lo, 16), "end": int(hi, 16)}
    flags_at = text.find("\nVmFlags:", eol)  # the last line of each VMA
    for line in text[eol + 1 : flags_at].splitlines():
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0])
    fields["VmFlags"] = text[flags_at + len("\nVmFlags:") :].partition("\n")[0].strip()
    return fields


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
        return None  # some pages of a larger VMA: cannot say which

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
    return _visible_pfn(entry)


#: why a present page's pagemap entry has no PFN
_PFNS_HIDDEN = "pagemap hides PFNs from this process (needs CAP_SYS_ADMIN)"


def _visible_pfn(entry: int) -> int:
    """The PFN of a present page's pagemap entry; :class:`ObservationUnavailable` where it is hidden."""
    pfn = pagemap_pfn(entry)
    if pfn is None:
        raise ObservationUnavailable(_PFNS_HIDDEN)
    return pfn


def mark_idle(region: Region, first: int = 0, count: Optional[int] = None) -> None:
    """Mark the present pages idle: clears their young bits; later accesses show as young.

    A folio still in a per-CPU LRU batch is not on an LRU list yet, and
    ``page_idle_get_folio()`` ignores it: the mark would silently not take.
    So each mark is checked with kpageflags' IDLE bit; if it did not take,
    this CPU's batch is drained (any madvise that calls ``lru_add_drain()``)
    and the mark retried.  A page in another CPU's batch still fails, with
    :class:`ObservationUnavailable` saying to pin the process to one CPU.
    A large folio is marked once, through its head page (the one the bitmap
    takes), which clears the young bit of every PTE that maps the folio.
    """
    _require(idle_page_tracking_available())
    count = region.npages - first if count is None else count
    entries = pagemap_entries(region.page_addr(first), count) if count else []
    present = [_visible_pfn(e) for e in entries if pagemap_bit(e, PagemapBit.PRESENT)]
    tails = {pfn for pfn, f in zip(present, _flags_if_readable(present), strict=True) if KPageFlag.COMPOUND_TAIL in f}
    fd = os.open(_IDLE_BITMAP, os.O_RDWR)
    marked: set[int] = set()
    previous = head = -1
    try:
        for page, entry in zip(range(first, first + count), entries, strict=True):
            if not pagemap_bit(entry, PagemapBit.PRESENT):
                previous = -1
                continue
            pfn = _visible_pfn(entry)
            # a tail page right after a page of its folio is in that folio
            if pfn in tails:
                head = head if pfn == previous + 1 else _folio_head_pfn(pfn)
            else:
                head = pfn
            previous = pfn
            if head in marked:
                continue
            marked.add(head)
            pfn = head
            for attempt in range(2):
                # The bitmap is written in 8-byte words; a set bit marks that PFN idle.
                os.pwrite(fd, struct.pack("<Q", 1 << (pfn % 64)), (pfn // 64) * 8)
                if kpageflags_available() is not None or KPageFlag.IDLE in kpageflags(pfn):
                    break
                if attempt == 0:
                    drain_this_cpu_lru()
            else:
                raise ObservationUnavailable(
                    f"page {page} of {region!r} (pfn {pfn:#x}) could not be marked idle: it is not on an LRU "
                    "list yet (another CPU's batch); pin the process to one CPU (os.sched_setaffinity)"
                )
    finally:
        os.close(fd)


def _flags_if_readable(pfns: list[int]) -> list[frozenset[KPageFlag]]:
    """kpageflags of the pages, or no flags for each where kpageflags cannot be read (then nothing can tell
    a tail page)."""
    try:
        return kpageflags_many(pfns)
    except ObservationUnavailable:
        return [frozenset()] * len(pfns)


def _is_tail_page(pfn: int) -> bool:
    """A tail page of a large folio: idle-page tracking neither marks nor reads it (page_idle_get_folio()
    returns no folio for it), so the head page answers for the whole folio.  False where kpageflags
    cannot be read (then nothing can tell a tail page)."""
    try:
        return KPageFlag.COMPOUND_TAIL in kpageflags(pfn)
    except ObservationUnavailable:
        return False


def _folio_head_pfn(pfn: int) -> int:
    """The PFN of the head page of ``pfn``'s folio (``pfn`` itself for a small folio).

    A folio of 2^k pages starts at a PFN aligned to 2^k, so the head is the
    first of ``pfn`` rounded down to 2, 4, 8, ... pages that is no tail page:
    a few kpageflags reads, not one per page before ``pfn``.
    """
    if not _is_tail_page(pfn):
        return pfn
    order = 1
    while _is_tail_page(pfn >> order << order):
        order += 1
    return pfn >> order << order


def drain_this_cpu_lru() -> None:
    """Push this CPU's LRU batches to the lists: MADV_COLD calls ``lru_add_drain()`` (mm/madvise.c)."""
    with Region.create() as spare:
        spare.write()
        spare.madvise(lib.MADV_COLD)


def page_idle(pfn: int) -> bool:
    """True if the page was not accessed since it was marked idle (clears young bits)."""
    return pages_idle([pfn])[0]


def pages_idle(pfns: list[int]) -> list[bool]:
    """:func:`page_idle` of many pages: one open, each 8-byte word of the bitmap read once."""
    _require(idle_page_tracking_available())
    fd = os.open(_IDLE_BITMAP, os.O_RDONLY)
    words: dict[int, int] = {}
    try:
        for index in sorted({pfn // 64 for pfn in pfns}):
            (words[index],) = struct.unpack("<Q", os.pread(fd, 8, index * 8))
    finally:
        os.close(fd)
    return [bool(words[pfn // 64] >> (pfn % 64) & 1) for pfn in pfns]


def kpageflags(pfn: int) -> frozenset[KPageFlag]:
    return kpageflags_many([pfn])[0]


def kpageflags_many(pfns: list[int]) -> list[frozenset[KPageFlag]]:
    """kpageflags of many pages: one open, one read per run of consecutive PFNs (a large folio is one run).

    THP, large folios and whole ranges read hundreds of pages; a file opened
    per page cost seconds of every guest suite under TCG.
    """
    try:
        fd = os.open(_KPAGEFLAGS, os.O_RDONLY)
    except OSError:
        _require(kpageflags_available())  # says what is missing (checked only then)
        raise
    words: dict[int, int] = {}
    try:
        for first, count in _runs(pfns):
            data = os.pread(fd, 8 * count, first * 8)
            if len(data) != 8 * count:
                raise HarnessError(f"{_KPAGEFLAGS}: short read at pfn {first:#x} ({len(data)} of {8 * count} bytes)")
            words.update(zip(range(first, first + count), struct.unpack(f"<{count}Q", data), strict=True))
    finally:
        os.close(fd)
    return [_flags_of_word(words[pfn]) for pfn in pfns]


def _runs(pfns: list[int]) -> list[tuple[int, int]]:
    """The distinct PFNs as (first, count) runs of consecutive numbers, in ascending order."""
    runs: list[tuple[int, int]] = []
    for pfn in sorted(set(pfns)):
        if runs and runs[-1][0] + runs[-1][1] == pfn:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((pfn, 1))
    return runs


@lru_cache(maxsize=256)
def _flags_of_word(word: int) -> frozenset[KPageFlag]:
    """The flags of a kpageflags word (few distinct words: the pages of one region look alike)."""
    return frozenset(flag for flag in KPageFlag if word >> flag & 1)


# -- the pte channel (vm/instrumentation) -------------------------------------------

#: the levels a line of the pte file names: where the kernel's walk ended
PTE_LEVELS = ("none", "pud", "pmd", "pte")
#: what a non-present, non-empty entry is ("swap" column); None for present or empty entries
SWAP_KINDS = ("swap", "marker", "migration", "hwpoison", "other")
_PTE_FLAGS = ("present", "writable", "young", "dirty", "uffd_wp", "soft_dirty")
#: bytes per line at most, and per read at most (mm/uffd_harness_pte.c: UH_PTE_LINE_MAX, UH_PTE_READ_MAX)
_PTE_LINE_MAX = 192
_PTE_READ_MAX = 256 * 1024


@dataclass(frozen=True)
class PteEntry:
    """One base page's page-table entry as the kernel's own walk reads it (the pte channel).

    For a PMD leaf (THP, hugetlb) every base page it covers reports the
    PMD's bits, with ``level`` "pmd" and its own ``pfn``.
    """

    addr: int
    #: "none" (no page table down to the PTE), "pud", "pmd" (a leaf or non-present entry there), "pte"
    level: str
    present: bool
    writable: bool
    young: bool
    dirty: bool
    uffd_wp: bool
    soft_dirty: bool
    #: non-present, non-empty entries: "swap", "marker" (a PTE marker, e.g. uffd-wp's), "migration",
    #: "hwpoison" or "other"; None for present and empty entries
    swap: Optional[str]
    #: page frame of this base page, None when not present
    pfn: Optional[int]
    #: the raw entry (the PMD's or PUD's for leaves there); 0 when empty or when level is "none"
    entry: int

    @property
    def empty(self) -> bool:
        """Nothing in the entry: no page, no swap entry, no marker."""
        return not self.present and self.swap is None


_LACKS_INSTRUMENTATION = "kernel lacks the uffd-harness instrumentation patch (vm/instrumentation)"


def pte_channel_available() -> Optional[str]:
    """None if the pte channel works here, else why not."""
    if os.access(PTE_DEBUGFS, os.R_OK | os.W_OK):
        return None
    if kernel_instrumented() is False:
        return _LACKS_INSTRUMENTATION
    if not os.path.isdir(_DEBUGFS):
        return "kernel lacks CONFIG_DEBUG_FS (no /sys/kernel/debug)"
    if not os.access(_DEBUGFS, os.R_OK | os.X_OK):
        return "not root (debugfs at /sys/kernel/debug needs root)"
    if not os.path.ismount(_DEBUGFS):
        return "debugfs is not mounted (mount -t debugfs none /sys/kernel/debug)"
    if not os.path.exists(PTE_DEBUGFS):
        return _LACKS_INSTRUMENTATION
    return f"not root ({PTE_DEBUGFS} is mode 0600)"


@lru_cache(maxsize=1)
def kernel_instrumented() -> Optional[bool]:
    """Whether the running kernel was built with vm/instrumentation: its read handler
    ``uh_pte_read`` is in /proc/kallsyms (CONFIG_KALLSYMS; names are shown to anyone).
    None when /proc/kallsyms cannot tell."""
    try:
        with open("/proc/kallsyms") as f:
            return any(line.endswith(" uh_pte_read\n") for line in f)
    except OSError:
        return None


def parse_pte_line(line: str) -> PteEntry:
    """One line of the pte file (format: vm/README.md, "The instrumentation patch")."""
    # one regular expression for the fixed field order: thousands of lines per case, each split by
    # hand, cost seconds of every guest suite under TCG
    match = _PTE_LINE.fullmatch(line.rstrip())
    if match is None:
        raise HarnessError(
            f"{PTE_DEBUGFS}: cannot parse line {line!r}: does the kernel's vm/instrumentation match harness/pte.py?"
        )
    addr, level, present, writable, young, dirty, uffd_wp, soft_dirty, swap, pfn, raw = match.groups()
    if level not in PTE_LEVELS or (swap != "-" and swap not in SWAP_KINDS):
        raise HarnessError(
            f"{PTE_DEBUGFS}: unknown level or swap kind in {line!r}: does the kernel's "
            "vm/instrumentation match harness/pte.py?"
        )
    return PteEntry(
        addr=int(addr, 16),
        level=level,
        present=present == "1",
        writable=writable == "1",
        young=young == "1",
        dirty=dirty == "1",
        uffd_wp=uffd_wp == "1",
        soft_dirty=soft_dirty == "1",
        swap=None if swap == "-" else swap,
        pfn=None if pfn == "-" else int(pfn, 16),
        entry=int(raw, 16),
    )


#: a line of the pte file, fields in the order mm/uffd_harness_pte.c prints them
_PTE_LINE = re.compile(
    r"(0x[0-9a-f]+) (\S+) "
    + " ".join(f"{name}=([01])" for name in _PTE_FLAGS)
    + r" swap=(\S+) pfn=(-|0x[0-9a-f]+) entry=(0x[0-9a-f]+)"
)


def read_ptes(addr: int, npages: int = 1) -> list[PteEntry]:
    """The page-table entries of ``npages`` base pages from ``addr``, in this process.

    One write ("ADDR NPAGES") and one read: the kernel walks the whole range
    under one ``mmap_read_lock()``, so the result is one snapshot as long as
    it fits in one read (about 1900 lines: the kernel formats at most
    256 KiB per read; longer ranges take several reads, each a snapshot).
    """
    _require(pte_channel_available())
    if addr % PAGE_SIZE or npages < 1:
        raise ValueError(f"read_ptes({addr:#x}, {npages}): the address must be page-aligned, npages >= 1")
    fd = os.open(PTE_DEBUGFS, os.O_RDWR)
    try:
        try:
            os.write(fd, f"{addr:#x} {npages}".encode())
        except OSError as exc:
            raise HarnessError(
                f"{PTE_DEBUGFS}: write '{addr:#x} {npages}': {errno.errorcode.get(exc.errno or 0, exc.errno)}: "
                "the range must be page-aligned and inside the user address space"
            ) from None
        chunks = []
        want = min(npages * _PTE_LINE_MAX, _PTE_READ_MAX)
        while True:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    entries = [parse_pte_line(line) for line in b"".join(chunks).decode().splitlines()]
    if len(entries) != npages:
        raise HarnessError(f"{PTE_DEBUGFS}: asked for {npages} pages from {addr:#x}, got {len(entries)} lines")
    return entries


def mkold_available() -> Optional[str]:
    """None if :func:`make_old` works here, else why not (an instrumentation older than mkold, say)."""
    if os.access(MKOLD_DEBUGFS, os.W_OK):
        return None
    return pte_channel_available() or f"{MKOLD_DEBUGFS} is missing: the kernel's vm/instrumentation predates it"


def make_old(addr: int, npages: int = 1) -> None:
    """Clear the accessed bit of this process's present entries mapping ``npages`` base pages from ``addr``.

    The instrumentation's ``mkold`` file: a PTE or a PMD leaf (THP, hugetlb),
    TLB flushed.  What idle-page tracking and clear_refs do for LRU pages,
    for hugetlb too, which they skip.
    """
    _require(mkold_available())
    if addr % PAGE_SIZE or npages < 1:
        raise ValueError(f"make_old({addr:#x}, {npages}): the address must be page-aligned, npages >= 1")
    fd = os.open(MKOLD_DEBUGFS, os.O_WRONLY)
    try:
        os.write(fd, f"{addr:#x} {npages}".encode())
    except OSError as exc:
        raise HarnessError(
            f"{MKOLD_DEBUGFS}: write '{addr:#x} {npages}': {errno.errorcode.get(exc.errno or 0, exc.errno)}"
        ) from None
    finally:
        os.close(fd)


def read_pte(addr: int) -> PteEntry:
    """One base page's entry (see :func:`read_ptes`)."""
    return read_ptes(addr & ~(PAGE_SIZE - 1), 1)[0]


def pagemap_state(
    entry: int, source: str, young: Optional[bool] = None, dirty: Optional[bool] = None, writable: Optional[bool] = None
) -> PteState:
    """A PteState from a pagemap entry (present, swapped, uffd-wp, ...) and what ``source`` says of the rest:
    the one place a PteState is made from pagemap."""
    # plain int shifts, not pagemap_bit(): this runs for every page of every range, through each channel
    present = bool(entry >> _PM_PRESENT & 1)
    return PteState(
        present=present,
        swapped=bool(entry >> _PM_SWAPPED & 1),
        file_shared=bool(entry >> _PM_FILE & 1),
        uffd_wp=bool(entry >> _PM_UFFD_WP & 1),
        exclusive=bool(entry >> _PM_EXCLUSIVE & 1),
        soft_dirty=bool(entry >> _PM_SOFT_DIRTY & 1),
        pfn=(entry & abi.PAGEMAP_PFN_MASK or None) if present else None,
        young=young,
        dirty=dirty,
        writable=writable,
        source=source,
    )


_PM_PRESENT, _PM_SWAPPED, _PM_FILE, _PM_UFFD_WP, _PM_EXCLUSIVE, _PM_SOFT_DIRTY = (
    int(bit)
    for bit in (
        PagemapBit.PRESENT,
        PagemapBit.SWAPPED,
        PagemapBit.FILE,
        PagemapBit.UFFD_WP,
        PagemapBit.EXCLUSIVE,
        PagemapBit.SOFT_DIRTY,
    )
)


def _pte_state(entry: int, pte: PteEntry) -> PteState:
    """A PteState from pagemap (as for the other channels) and the pte channel's young/dirty/writable."""
    return pagemap_state(
        entry,
        PTE,
        young=pte.present and pte.young,
        dirty=pte.present and pte.dirty,
        writable=pte.present and pte.writable,
    )


def observe_ptes(region: Region, first: int = 0, count: Optional[int] = None) -> list[PteState]:
    """Pages [first, first+count) of ``region`` through the pte channel: one read for all of them.

    A page of a THP or hugetlb region is its first base page's entry (the
    PMD's bits).  Presence, swap, uffd-wp and soft-dirty come from pagemap,
    as for every channel; :func:`read_ptes` gives the entries themselves.
    """
    count = region.npages - first if count is None else count
    if region.page_size == PAGE_SIZE:
        start = region.page_addr(first)
        return [_pte_state(e, p) for e, p in zip(pagemap_entries(start, count), read_ptes(start, count), strict=False)]
    # one huge page is 512 lines; only its first base page's is needed
    heads = [region.page_addr(page) for page in range(first, first + count)]
    return [_pte_state(pagemap_entry(addr), read_ptes(addr, 1)[0]) for addr in heads]


# -- the one-stop call ------------------------------------------------------------


def observe(region: Region, page: int = 0, channel: str = SMAPS) -> PteState:
    """The state of one page's PTE, young/dirty through ``channel``.

    ``idle-page`` answers "young since :func:`mark_idle`" and leaves dirty to
    kpageflags; ``kpageflags`` answers from folio flags (see the module doc).
    """
    entry = pagemap_entry(region.page_addr(page))
    state = pagemap_state(entry, channel)
    present = state.present
    if channel == PTE:
        return observe_ptes(region, page, 1)[0]
    if not present:
        return replace(state, young=False, dirty=False)
    if channel == SMAPS:
        young, dirty = _smaps_young_dirty(region, page)
        return replace(state, young=young, dirty=dirty)
    if channel == IDLE_PAGE:
        return observe_idle(region, [page])[0]
    pfn = _pfn_of(region, page)
    if channel == KPAGEFLAGS:
        flags = kpageflags(pfn)
        return replace(state, young=KPageFlag.REFERENCED in flags, dirty=KPageFlag.DIRTY in flags)
    raise ValueError(f"unknown observation channel {channel!r}; use one of {', '.join(CHANNELS)}")


def observe_idle(region: Region, pages: list[int]) -> list[PteState]:
    """:func:`observe` through idle-page tracking for many pages of one region, pagemap read once."""
    if not pages:
        return []
    lo = min(pages)
    entries = pagemap_entries(region.page_addr(lo), max(pages) - lo + 1)
    present = [pagemap_bit(entries[page - lo], PagemapBit.PRESENT) for page in pages]
    if region.kind.hugetlb:
        # page_idle_get_folio() takes LRU folios only, and hugetlb folios never are on an LRU:
        # the bitmap would say "not idle" whatever the entry's young bit
        return [
            pagemap_state(entries[page - lo], IDLE_PAGE, young=None if p else False, dirty=None if p else False)
            for page, p in zip(pages, present, strict=True)
        ]
    pfns = [_visible_pfn(entries[page - lo]) for page, p in zip(pages, present, strict=True) if p]
    flags = _flags_if_readable(pfns)
    # the bitmap says "not idle" for every tail page: only a head page's bit means something
    heads = [pfn for pfn, f in zip(pfns, flags, strict=True) if KPageFlag.COMPOUND_TAIL not in f]
    idle = dict(zip(heads, pages_idle(heads), strict=True))
    seen = iter(zip(pfns, flags, strict=True))
    out = []
    for page, p in zip(pages, present, strict=True):
        if not p:
            out.append(pagemap_state(entries[page - lo], IDLE_PAGE, young=False, dirty=False))
            continue
        pfn, f = next(seen)
        young = None if KPageFlag.COMPOUND_TAIL in f else not idle[pfn]
        out.append(
            pagemap_state(entries[page - lo], IDLE_PAGE, young=young, dirty=(KPageFlag.DIRTY in f) if f else None)
        )
    return out


# -- cross-check: the PTE against what folio flags can explain ----------------------


@dataclass(frozen=True)
class CrossCheck:
    """One page through every channel that works here, read in an order that keeps each honest.

    kpageflags first (folio flags, no rmap walk), then the pte channel,
    smaps (reads PTEs and folio flags, clears nothing), and idle-page
    tracking last: reading its bitmap walks the reverse map and
    test-and-clears the young bits of every PTE that maps the folio
    (``page_idle_clear_pte_refs()``), so nothing read after it would be
    true.  ``None`` wherever a channel cannot answer.
    """

    addr: int
    #: the raw pagemap entry (present, swap, uffd-wp, soft-dirty bits)
    pagemap: int
    #: the pte channel's entry
    pte: PteEntry
    #: kpageflags of the page, read before any rmap walk; None when not present, hidden, or unavailable
    folio_flags: Optional[frozenset]
    #: smaps Referenced / *_Dirty of the VMA (exact for one-page VMAs; None for hugetlb or when ambiguous)
    smaps_young: Optional[bool]
    smaps_dirty: Optional[bool]
    #: idle-page tracking: accessed since marked idle; None unless the folio was marked idle
    #: (KPF_IDLE set when read first) and the bitmap is readable
    idle_young: Optional[bool]
    #: the VMA has VM_SOFTDIRTY (smaps VmFlags "sd"): pagemap then shows every page soft-dirty
    vma_soft_dirty: bool = False

    @property
    def folio_referenced(self) -> Optional[bool]:
        return None if self.folio_flags is None else KPageFlag.REFERENCED in self.folio_flags

    @property
    def folio_dirty(self) -> Optional[bool]:
        return None if self.folio_flags is None else KPageFlag.DIRTY in self.folio_flags

    @property
    def young_from_folio_only(self) -> bool:
        """A channel says young while the PTE is old: only folio state (PG_referenced, PG_young,
        ``folio_mark_accessed()`` clearing the idle flag) or another mapping can say so."""
        return self.pte.present and not self.pte.young and bool(self.smaps_young or self.idle_young)

    @property
    def dirty_from_folio_only(self) -> bool:
        """smaps says dirty while the PTE is clean: only the folio's PG_dirty can say so."""
        return self.pte.present and not self.pte.dirty and bool(self.smaps_dirty)

    def folio_only(self) -> list[str]:
        """Each young/dirty reading that folio flags alone explain, with the flags seen."""
        out = []
        flags = (
            "kpageflags hidden"
            if self.folio_flags is None
            else f"folio referenced={self.folio_referenced} dirty={self.folio_dirty}"
        )
        if self.pte.present and not self.pte.young:
            if self.smaps_young:
                out.append(
                    f"{self.addr:#x}: smaps Referenced counts it while the PTE is old ({flags}; "
                    "smaps_account() also counts PG_referenced and PG_young)"
                )
            if self.idle_young:
                out.append(
                    f"{self.addr:#x}: idle-page tracking says accessed while the PTE is old ({flags}; "
                    "folio_mark_accessed() clears the idle flag too)"
                )
        if self.dirty_from_folio_only:
            out.append(
                f"{self.addr:#x}: smaps *_Dirty counts it while the PTE is clean ({flags}; "
                "smaps_account() also counts PG_dirty)"
            )
        return out

    def disagreements(self) -> list[str]:
        """Where channels contradict each other about what they all see (a broken channel)."""
        out = []
        for name, bit in (("present", PagemapBit.PRESENT), ("uffd_wp", PagemapBit.UFFD_WP)):
            if getattr(self.pte, name) != pagemap_bit(self.pagemap, bit):
                out.append(
                    f"{self.addr:#x}: {name} is {getattr(self.pte, name)} in the PTE, "
                    f"{pagemap_bit(self.pagemap, bit)} in pagemap"
                )
        # pte_to_pagemap_entry() ORs in the VMA's VM_SOFTDIRTY
        if pagemap_bit(self.pagemap, PagemapBit.SOFT_DIRTY) != (self.pte.soft_dirty or self.vma_soft_dirty):
            out.append(
                f"{self.addr:#x}: soft-dirty is {self.pte.soft_dirty} in the PTE and {self.vma_soft_dirty} "
                f"on the VMA, but {pagemap_bit(self.pagemap, PagemapBit.SOFT_DIRTY)} in pagemap"
            )
        # smaps counts pte_young / pte_dirty (smaps_pte_entry()); the idle walk
        # clears a young PTE and with it the idle flag (page_idle_clear_pte_refs_one())
        if self.pte.young and self.smaps_young is False:
            out.append(f"{self.addr:#x}: the PTE is young but smaps Referenced is 0")
        if self.pte.dirty and self.smaps_dirty is False:
            out.append(f"{self.addr:#x}: the PTE is dirty but smaps *_Dirty is 0")
        if self.pte.young and self.idle_young is False:
            out.append(f"{self.addr:#x}: the PTE is young but idle-page tracking says idle")
        return out


def cross_check(region: Region, page: int = 0) -> CrossCheck:
    """Page ``page`` of ``region`` through kpageflags, the pte channel, smaps and idle-page tracking.

    Needs the pte channel (root, an instrumented kernel); kpageflags and
    idle-page tracking answer where they can (None otherwise).  The reading
    order is the point: see :class:`CrossCheck`.
    """
    _require(pte_channel_available())
    addr = region.page_addr(page)
    entry = pagemap_entry(addr)
    pfn = pagemap_pfn(entry)
    flags = kpageflags(pfn) if pfn is not None and kpageflags_available() is None else None
    pte = read_pte(addr)
    young, dirty = _smaps_young_dirty(region, page) if pagemap_bit(entry, PagemapBit.PRESENT) else (False, False)
    vma_soft_dirty = "sd" in str(smaps_vma(addr).get("VmFlags", "")).split()
    idle_young = None
    if (
        flags is not None
        and pfn is not None
        and KPageFlag.IDLE in flags
        and KPageFlag.COMPOUND_TAIL not in flags
        and idle_page_tracking_available() is None
    ):
        idle_young = not page_idle(pfn)
    return CrossCheck(
        addr=addr,
        pagemap=entry,
        pte=pte,
        folio_flags=flags,
        smaps_young=young,
        smaps_dirty=dirty,
        idle_young=idle_young,
        vma_soft_dirty=vma_soft_dirty,
    )


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
            return (
                f"smaps says {'' if self.pmd_mapped else 'not '}PMD-mapped (AnonHugePages {self.anon_huge_kb} "
                f"of {self.size_kb} kB), PAGEMAP_SCAN says {'' if self.scan_huge else 'not '}huge"
            )
        if self.pmd_mapped and self.thp_folio is False:
            return (
                f"smaps says PMD-mapped (AnonHugePages {self.anon_huge_kb} kB), kpageflags shows no THP folio behind it"
            )
        return None

    def __str__(self) -> str:
        extra = "" if self.scan_huge is None else f", PAGEMAP_SCAN huge={self.scan_huge}"
        extra += "" if self.thp_folio is None else f", kpageflags THP={self.thp_folio}"
        return (
            f"AnonHugePages {self.anon_huge_kb} of {self.size_kb} kB, Rss {self.rss_kb} kB, "
            f"{self.present} of {self.size_kb * 1024 // PAGE_SIZE} base pages present{extra}"
        )


def check_thp(region: Region, what: str = "") -> None:
    """Raise :class:`~harness.errors.ThpUnavailable` unless every page of THP region ``region`` is a
    PMD-mapped THP.

    PMD-mapped means smaps' ``AnonHugePages`` covers the region, and
    ``PAGEMAP_SCAN``'s HUGE category and (as root) kpageflags' THP bit
    agree; the message says what is missing when it is not.
    """
    if not region.thp:
        raise HarnessError(f"{region!r} is not a THP region (Region.create(..., thp=True))")
    mapping = thp_mapping(region)
    problem = mapping.disagreement()
    if problem:
        raise HarnessError(f"{region!r}{' ' + what if what else ''}: {problem}")
    if mapping.pmd_mapped:
        return
    raise ThpUnavailable(
        f"{region!r}{' ' + what if what else ''} is not a PMD-mapped THP ({mapping}): {_why_not_thp(region, mapping)}"
    )


def _why_not_thp(region: Region, mapping: ThpMapping) -> str:
    if not mapping.populated:
        return "nothing is mapped yet (write to it first)"
    if mapping.thp_folio:
        return "a THP backs it, but mapped by PTEs (the PMD was split)"
    reason = _memory.thp_unavailable()
    if reason:
        return reason
    flags = str(smaps_vma(region.addr).get("VmFlags", "")).split()
    if "hg" not in flags or "nh" in flags:
        return f"the VMA lost MADV_HUGEPAGE (VmFlags: {' '.join(flags)})"
    return region.thp_fallback_reason()


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
            pfns = [pagemap_pfn(e) for e in entries[first : first + per_thp]]
            head = pfns[0]
            # one THP: all present, one run of PFNs from an aligned head, THP on head and tail
            if (
                head is None
                or head % per_thp
                or pfns != list(range(head, head + per_thp))
                or not all(KPageFlag.THP in kpageflags(pfn) for pfn in (head, head + per_thp - 1))
            ):
                thp_folio = False
                break
    return ThpMapping(
        size_kb=region.length // 1024,
        rss_kb=vma.get("Rss", 0),
        anon_huge_kb=vma.get("AnonHugePages", 0),
        present=len(present),
        uffd_wp=sum(pagemap_bit(e, PagemapBit.UFFD_WP) for e in entries),
        scan_huge=scan_huge,
        thp_folio=thp_folio,
    )


def large_folio_problem(region: Region) -> Optional[str]:
    """None when each folio-sized block of large-folio region ``region`` is one large folio mapped by
    its base pages' PTEs (not a PMD), else what it is instead.

    Read through pagemap (every base page present, one aligned run of PFNs
    per folio) and kpageflags (a compound head, then tails), so it needs
    root; :class:`ObservationUnavailable` says so where PFNs are hidden.
    """
    if not region.folio_size:
        raise HarnessError(f"{region!r} is not a large-folio region (Region.create(..., large_folio=True))")
    if not pfn_visible():
        raise ObservationUnavailable(f"large folios: {_PFNS_HIDDEN}")
    _require(kpageflags_available())
    vma = smaps_vma(region.addr)
    pmd_kb = vma.get("AnonHugePages", 0) + vma.get("ShmemPmdMapped", 0) + vma.get("FilePmdMapped", 0)
    if pmd_kb:
        return f"{pmd_kb} kB of it are mapped by PMDs (smaps), not by PTEs"
    per_folio = region.folio_size // PAGE_SIZE
    entries = pagemap_entries(region.addr, region.npages)
    for first in range(0, region.npages, per_folio):
        pfns = [pagemap_pfn(e) for e in entries[first : first + per_folio]]
        missing = [first + i for i, pfn in enumerate(pfns) if pfn is None]
        if missing:
            return f"base pages {missing[0]}..{missing[-1]} ({len(missing)} of them) are not present"
        head = pfns[0] or 0  # every page is present here
        run = list(range(head, head + per_folio))
        if head % per_folio or pfns != run:
            return f"base pages {first}..{first + per_folio - 1} are not one aligned run of PFNs (not one folio)"
        flags = kpageflags_many(run)
        if KPageFlag.COMPOUND_HEAD not in flags[0] or any(KPageFlag.COMPOUND_TAIL not in f for f in flags[1:]):
            return (
                f"base pages {first}..{first + per_folio - 1} are not one {region.folio_size // 1024} KiB "
                "folio (kpageflags: no compound head and tails)"
            )
    return None


def check_large_folio(region: Region, what: str = "") -> None:
    """Raise :class:`~harness.errors.ThpUnavailable` unless ``region`` is large folios mapped by PTEs."""
    problem = large_folio_problem(region)
    if problem:
        raise ThpUnavailable(
            f"{region!r}{' ' + what if what else ''} is not {region.folio_size // 1024} KiB folios mapped by "
            f"PTEs: {problem}"
        )


# -- PAGEMAP_SCAN -----------------------------------------------------------------


@dataclass(frozen=True)
class ScanRegion:
    start: int
    end: int
    categories: PageCategory


def pagemap_scan(
    start: int,
    length: int,
    *,
    category_mask: int = 0,
    category_inverted: int = 0,
    anyof_mask: int = 0,
    return_mask: int = int(PageCategory(~0 & 0xFF)),
    flags: int = 0,
    max_pages: int = 0,
    max_regions: int = 256,
) -> list[ScanRegion]:
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
        raise UffdError(
            "PAGEMAP_SCAN",
            -n,
            start,
            length,
            advice="the kernel has no PAGEMAP_SCAN (Linux 6.7+)" if -n == errno.ENOTTY else "",
        )
    return [ScanRegion(vec[i].start, vec[i].end, PageCategory(vec[i].categories)) for i in range(n)]
