"""The benchmark scenarios: a declarative table, one row per thing timed.

A reader can list every scenario (``uffd-harness bench --list``) without
running anything.  Each row names how one *batch* of samples is made: a
fresh region is prepared outside the timed path, then a C loop
(cbits/timing.c) records the cycles of each access or operation.

PTE states of an anonymous page, all present (checked through smaps on an
untimed verification batch before the rounds, and by counting page faults
around every timed loop):

``young_dirty``  written: the write fault installs the PTE young and dirty.
``young_clean``  written, ``MADV_FREE`` (old and clean), then read: the read
                 sets the accessed bit only.
``old_dirty``    written, then ``/proc/self/clear_refs`` 1 (clears young bits
                 and flushes the TLB, ``clear_refs_write()``).
``old_clean``    written, then ``MADV_FREE``: ``madvise_free_pte_range()``
                 makes the PTE old and clean but leaves it present and writable.

TLB: "cold" scenarios (no suffix) end their preparation with an
``mprotect(READ)``/``mprotect(READ|WRITE)`` round trip over the region.  It
flushes the region's translations (the whole mm's, above
``tlb_single_page_flush_ceiling``, 33 pages) and keeps the accessed/dirty bits
(``change_pte_range()`` keeps ``_PAGE_CHG_MASK``; ``can_change_pte_writable()``
restores write on exclusive anonymous pages), and every cold scenario pays it
alike.  Touching a buffer larger than the STLB would also evict, but it
would also evict the page-table lines and data from the caches in varying
ways.  ``.warm_tlb`` scenarios then read every page once, which loads the
translation (and the data line).  Only young states have a warm variant: x86
never caches a translation whose accessed bit is clear (SDM vol. 3, 4.10.2),
so an old PTE is cold by construction.

Order: pages are touched in an order shuffled per batch.  In address order
the hardware walks ahead of the constant 4 KiB stride and hides part of each
TLB miss (on the KVM host this was written on: 84 vs 138 cycles median for a
cold young+dirty read); ``bench --sequential`` keeps address order.
"""

from __future__ import annotations

import random
import resource
from dataclasses import dataclass, field
from typing import Callable, Optional

from harness import abi, pte
from harness._native import ffi, lib
from harness.abi import Feature, RegisterMode
from harness.errors import HarnessError, UffdError
from harness.events import PageFault
from harness.handler import FaultHandler
from harness.memory import PAGE_SIZE, PROT_READ, PROT_RW, MemoryKind, Region
from harness.operations import Hints
from harness.uffd import PreparedRanges, Userfaultfd, open_any, probe_features

STATES = ("young_dirty", "young_clean", "old_dirty", "old_clean")
ACCESSES = ("read", "write")

#: the RFC cover letter's figures (Haswell, bare metal): before -> after the patch
RFC_COVER_LETTER_CYCLES = (2529, 2496)
RFC_COVER_LETTER_CYCLES_TWO_THREADS = (4675, 2615)

#: toggles per Python sample: a sample is one rdtsc pair around this many toggles
PY_TOGGLES_PER_SAMPLE = 8


@dataclass
class Context:
    """What every batch needs to know; made once per run."""

    pages: int = 256
    #: verify the prepared PTE states through smaps (first batch of each scenario)
    check_state: bool = True
    #: None when the kernel offers UFFD_FEATURE_ACCESS_HINTS, else why not
    hints_absent: Optional[str] = None
    #: None when this process can open a userfaultfd, else why not
    uffd_absent: Optional[str] = None
    #: touch pages in a shuffled order (False: address order, which lets the hardware walk ahead)
    shuffle: bool = True
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    @classmethod
    def probe(cls, pages: int = 256, *, shuffle: bool = True, seed: int = 0) -> "Context":
        uffd_absent = None
        try:
            offered = probe_features()
            absent = (
                None if Feature.ACCESS_HINTS in offered.offered else "absent: kernel lacks UFFD_FEATURE_ACCESS_HINTS"
            )
        except UffdError as exc:
            absent = uffd_absent = f"absent: cannot open a userfaultfd ({exc})"
        return cls(pages=pages, hints_absent=absent, uffd_absent=uffd_absent, shuffle=shuffle, rng=random.Random(seed))


@dataclass
class Batch:
    """One batch of samples and what was seen around it."""

    samples: list[float]
    #: page faults counted around the timed loop (0 expected for a first touch of a present PTE)
    faults: int = 0
    #: None when the prepared state was verified or not checked; else what was wrong
    state_error: Optional[str] = None


@dataclass(frozen=True)
class Scenario:
    name: str
    group: str
    describe: str
    run: Callable[[Context], Batch] = field(repr=False)
    #: None when the scenario can run here, else why not ("absent: ...")
    absent: Callable[[Context], Optional[str]] = field(default=lambda ctx: None, repr=False)
    unit: str = "cycles"
    #: every timed access hits a present PTE: a fault means the preparation went wrong
    fault_free: bool = False


# -- helpers ------------------------------------------------------------------------

#: this thread's faults only (the one that touches): other threads' faults are not ours
_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def _faults() -> int:
    """This thread's page faults, minor and major.

    A fault that waited for a userfaultfd handler ends in VM_FAULT_RETRY and
    is retried; before per-VMA locks (Linux 6.1) the retry carries
    FAULT_FLAG_TRIED and mm_account_fault() counts it major, so minor faults
    alone miss every fault the handler served there.
    """
    usage = resource.getrusage(_RUSAGE)
    return usage.ru_minflt + usage.ru_majflt


def _region(npages: int) -> Region:
    """An anonymous region of 4 KiB PTEs (no THP: a huge page would be one TLB entry)."""
    region = Region.create(MemoryKind.ANON, npages)
    region.madvise(lib.MADV_NOHUGEPAGE)
    return region


def _timed_touch(region: Region, write: bool, ctx: Context) -> tuple[list[float], int]:
    """One timed access per page, pages in an order shuffled per batch (or in address order)."""
    pages = list(range(region.npages))
    if ctx.shuffle:
        ctx.rng.shuffle(pages)
    order = ffi.new("uint32_t[]", pages)
    buf = ffi.new("uint64_t[]", region.npages)
    before = _faults()
    lib.harness_time_touch(region.addr, region.npages, region.page_size, int(write), order, buf)
    faults = _faults() - before  # before list(): building it may fault the heap
    return list(buf), faults


def prepare_state(region: Region, state: str) -> None:
    """Leave every page of ``region`` present with the PTE bits ``state`` names."""
    region.write()
    if state == "young_dirty":
        return
    if state == "old_dirty":
        pte.clear_refs()  # process-wide; this region is the only one timed next
    elif state in ("old_clean", "young_clean"):
        region.free()
        if state == "young_clean":
            region.read()
    else:
        raise ValueError(f"unknown PTE state {state!r}; use one of {', '.join(STATES)}")


def flush_tlb(region: Region) -> None:
    """Flush the region's TLB entries, keeping accessed/dirty: an mprotect round trip."""
    region.mprotect(PROT_READ)
    region.mprotect(PROT_RW)


def check_state(region: Region, state: str) -> Optional[str]:
    """None if smaps agrees every page has the bits ``state`` names, else what it saw.

    smaps counts per VMA (``smaps_account()``), and a region is one VMA.
    """
    vma = pte.smaps_vma(region.addr)
    want_kb = region.length // 1024
    young, dirty = state.split("_")
    seen = {
        "Rss": vma.get("Rss", 0),
        "Referenced": vma.get("Referenced", 0),
        "Dirty": vma.get("Private_Dirty", 0) + vma.get("Shared_Dirty", 0),
    }
    want = {
        "Rss": want_kb,
        "Referenced": want_kb if young == "young" else 0,
        "Dirty": want_kb if dirty == "dirty" else 0,
    }
    if seen == want:
        return None
    return f"smaps kB {seen}, expected {want}"


# -- first touch ------------------------------------------------------------------------


def _first_touch(state: str, access: str, warm: bool) -> Callable[[Context], Batch]:
    def run(ctx: Context) -> Batch:
        with _region(ctx.pages) as region:
            prepare_state(region, state)
            flush_tlb(region)
            if warm:
                region.read()
            error = check_state(region, state) if ctx.check_state else None
            samples, faults = _timed_touch(region, access == "write", ctx)
        return Batch(samples, faults, error)

    return run


def _first_touch_scenarios() -> list[Scenario]:
    out = []
    for state in STATES:
        for access in ACCESSES:
            out.append(
                Scenario(
                    f"first_touch.{state}.{access}",
                    "first_touch",
                    f"{access} of a present {state.replace('_', '+')} PTE, cold TLB",
                    _first_touch(state, access, warm=False),
                    fault_free=True,
                )
            )
    for state in ("young_dirty", "young_clean"):
        for access in ACCESSES:
            out.append(
                Scenario(
                    f"first_touch.{state}.{access}.warm_tlb",
                    "first_touch",
                    f"{access} of a present {state.replace('_', '+')} PTE, TLB warmed by a read",
                    _first_touch(state, access, warm=True),
                    fault_free=True,
                )
            )
    return out


# -- userfaultfd: first touch after un-protect ---------------------------------------------


def _after_unprotect(state: str, access: str, hints: Hints) -> Callable[[Context], Batch]:
    def run(ctx: Context) -> Batch:
        features = [Feature.ACCESS_HINTS] if hints else []
        # Without hints (clause 5) the bits stay as prepared; with them they must come back young (and
        # dirty with write_likely, where the un-protect makes the PTE writable: the base's rule, so
        # measured on a twin, first, since preparing old_dirty clears every young bit of the process;
        # where it does not, write_likely leaves them as they were)
        writable = hints.write_likely and ctx.check_state and _unprotect_makes_writable(state)
        expect = {
            Hints.NONE: state,
            Hints.ACCESS_LIKELY: "young_" + state.split("_")[1],
            Hints.WRITE_LIKELY: "young_dirty" if writable else state,
        }[hints]
        with _region(ctx.pages) as region, open_any(features) as uffd:
            prepare_state(region, state)
            uffd.register(region.addr, region.length, RegisterMode.WP)
            uffd.writeprotect(region.addr, region.length, protect=True)
            uffd.unprotect(
                region.addr, region.length, access_likely=hints.access_likely, write_likely=hints.write_likely
            )
            error = check_state(region, expect) if ctx.check_state else None
            samples, faults = _timed_touch(region, access == "write", ctx)
        return Batch(samples, faults, error)

    return run


def _unprotect_makes_writable(state: str) -> bool:
    """Whether an un-protect without hints makes an anonymous page prepared as ``state`` writable here
    (6.12 does, through MM_CP_TRY_CHANGE_WRITABLE; 6.1 upgrades no private PTE): a store takes no fault."""
    with _region(1) as twin, open_any([]) as uffd:
        prepare_state(twin, state)
        uffd.register(twin.addr, twin.length, RegisterMode.WP)
        uffd.writeprotect(twin.addr, twin.length, protect=True)
        uffd.writeprotect(twin.addr, twin.length, protect=False)
        return twin.write_faults(0) == 0


def _hints_absent(ctx: Context) -> Optional[str]:
    return ctx.hints_absent


def _uffd_absent(ctx: Context) -> Optional[str]:
    return ctx.uffd_absent


def _uffd_scenarios() -> list[Scenario]:
    out = [
        Scenario(
            "uffd.unprotect.young_dirty.write",
            "uffd",
            "write after UFFDIO_WRITEPROTECT un-protect, page was young+dirty",
            _after_unprotect("young_dirty", "write", Hints.NONE),
            _uffd_absent,
            fault_free=True,
        ),
        Scenario(
            "uffd.unprotect.old_clean.read",
            "uffd",
            "read after un-protect without hints, page was old+clean (MADV_FREE)",
            _after_unprotect("old_clean", "read", Hints.NONE),
            _uffd_absent,
            fault_free=True,
        ),
        Scenario(
            "uffd.unprotect.old_clean.write",
            "uffd",
            "write after un-protect without hints, page was old+clean (MADV_FREE)",
            _after_unprotect("old_clean", "write", Hints.NONE),
            _uffd_absent,
            fault_free=True,
        ),
        Scenario(
            "uffd.unprotect_access_likely.old_clean.read",
            "uffd",
            "read after un-protect with ACCESS_LIKELY, page was old+clean",
            _after_unprotect("old_clean", "read", Hints.ACCESS_LIKELY),
            _hints_absent,
            fault_free=True,
        ),
        Scenario(
            "uffd.unprotect_write_likely.old_clean.write",
            "uffd",
            "write after un-protect with WRITE_LIKELY, page was old+clean",
            _after_unprotect("old_clean", "write", Hints.WRITE_LIKELY),
            _hints_absent,
            fault_free=True,
        ),
        Scenario(
            "uffd.missing_roundtrip.c_handler",
            "uffd",
            "missing fault: touch, C thread reads uffd_msg, UFFDIO_COPY, resume",
            lambda ctx: _missing_roundtrip(ctx, python=False),
            _uffd_absent,
        ),
        Scenario(
            "uffd.missing_roundtrip.py_handler",
            "uffd",
            "missing fault served by harness.handler.FaultHandler + Userfaultfd.copy",
            lambda ctx: _missing_roundtrip(ctx, python=True),
            _uffd_absent,
        ),
    ]
    return out


def _missing_roundtrip(ctx: Context, python: bool) -> Batch:
    pages = ctx.pages if not python else max(2, ctx.pages // 2)
    with _region(pages) as region, _region(1) as src, open_any([]) as uffd:
        src.write(value=0xA5)
        uffd.register(region.addr, region.length, RegisterMode.MISSING)
        buf = ffi.new("uint64_t[]", pages)
        before = _faults()
        if python:
            page = region.page_size

            def serve(u: Userfaultfd, event) -> None:
                if isinstance(event, PageFault):
                    u.copy(event.address & ~(page - 1), src.addr, page)

            # cffi releases the GIL around the C call, so the handler thread runs while we block.
            with FaultHandler(uffd, serve):
                lib.harness_time_touch(region.addr, pages, page, 1, ffi.NULL, buf)
        else:
            r = lib.harness_time_missing_roundtrip(
                uffd.fileno(), region.addr, pages, region.page_size, src.addr, 1, buf
            )
            if r < 0:
                raise UffdError("missing round trip (C handler)", -r, region.addr, region.length)
        faults = _faults() - before
        return Batch(list(buf), faults)


# -- the binding and the RFC loop ---------------------------------------------------------


def _wp_region_and_uffd() -> tuple[Region, Userfaultfd]:
    region = _region(1)
    region.write()
    uffd = open_any([])
    uffd.register(region.addr, region.length, RegisterMode.WP)
    return region, uffd


#: pages of the caller's working set touched after each ioctl by the "working set" C toggle
WORKING_SET_PAGES = 128


def _wp_toggle_c(ctx: Context, ws_pages: int = 0) -> Batch:
    region, uffd = _wp_region_and_uffd()
    ws = _region(ws_pages) if ws_pages else None
    try:
        if ws:
            ws.write()
        buf = ffi.new("uint64_t[]", ctx.pages)
        r = lib.harness_time_wp_toggle(
            uffd.fileno(), region.addr, region.length, ctx.pages, ws.addr if ws else 0, ws.length if ws else 0, buf
        )
        if r < 0:
            raise UffdError("UFFDIO_WRITEPROTECT (C toggle loop)", -r, region.addr, region.length)
        return Batch(list(buf))
    finally:
        uffd.close()
        region.close()
        if ws:
            ws.close()


def _working_set_c(ctx: Context) -> Batch:
    with _region(WORKING_SET_PAGES) as ws:
        ws.write()
        buf = ffi.new("uint64_t[]", ctx.pages)
        lib.harness_time_working_set(ws.addr, ws.length, ctx.pages, buf)
        return Batch(list(buf))


def _wp_noop_c(ctx: Context) -> Batch:
    region, uffd = _wp_region_and_uffd()
    try:
        uffd.writeprotect(region.addr, region.length, True)
        buf = ffi.new("uint64_t[]", ctx.pages)
        r = lib.harness_time_wp_repeat(
            uffd.fileno(), region.addr, region.length, abi.WRITEPROTECT_MODE_WP, ctx.pages, buf
        )
        if r < 0:
            raise UffdError("UFFDIO_WRITEPROTECT (C repeat loop)", -r, region.addr, region.length)
        return Batch(list(buf))
    finally:
        uffd.close()
        region.close()


#: a Python loop maker: (uffd, region, second mode) -> the loop to time, called with range(reps)
LoopMaker = Callable[[Userfaultfd, Region, int], Callable[[range], None]]


def _python_pairs(ctx: Context, make_loop: LoopMaker, *, toggle: bool = True) -> Batch:
    """Time a Python loop of ioctl pairs on one page: protect + un-protect
    (``toggle``, per toggle), or protect + protect on a protected page (no PTE
    changes: the bare call, per ioctl).

    ``make_loop`` prepares everything outside the timed path; one sample is
    one rdtsc pair around PY_TOGGLES_PER_SAMPLE pairs, so the rdtsc call
    itself is amortised.
    """
    region, uffd = _wp_region_and_uffd()
    try:
        second = 0 if toggle else abi.WRITEPROTECT_MODE_WP
        if not toggle:
            uffd.writeprotect(region.addr, region.length, True)
        loop, rdtsc = make_loop(uffd, region, second), lib.harness_rdtsc
        reps = range(PY_TOGGLES_PER_SAMPLE)
        per_sample = PY_TOGGLES_PER_SAMPLE if toggle else 2 * PY_TOGGLES_PER_SAMPLE
        samples = []
        for _ in range(max(2, ctx.pages // 4)):
            t0 = rdtsc()
            loop(reps)
            samples.append((rdtsc() - t0) / per_sample)
        return Batch(samples)
    finally:
        uffd.close()
        region.close()


def _loop_method(uffd: Userfaultfd, region: Region, second: int) -> Callable[[range], None]:
    """The public API: Userfaultfd.writeprotect."""
    wp, addr, length, again = uffd.writeprotect, region.addr, region.length, bool(second)

    def loop(reps: range) -> None:
        for _ in reps:
            wp(addr, length, True)
            wp(addr, length, again)

    return loop


def _loop_cffi_raw(uffd: Userfaultfd, region: Region, second: int) -> Callable[[range], None]:
    """The bare cffi function the method calls: what the method adds is the difference."""
    wp, fd, addr, length = lib.harness_uffd_writeprotect, uffd.fileno(), region.addr, region.length
    protect = abi.WRITEPROTECT_MODE_WP

    def loop(reps: range) -> None:
        for _ in reps:
            wp(fd, addr, length, protect)
            wp(fd, addr, length, second)

    return loop


def _loop_cffi_floor(uffd: Userfaultfd, region: Region, second: int) -> Callable[[range], None]:
    """Two requests prepared once, each issued by a one-argument cffi call.

    The cheapest call shape cffi generates (METH_O: no argument tuple, one
    pointer to convert) and no error check: a floor under any CFFI binding.
    """
    issue = lib.harness_wp_request_issue
    first, then = (
        ffi.new(
            "struct harness_wp_request *",
            {"fd": uffd.fileno(), "start": region.addr, "len": region.length, "mode": mode},
        )
        for mode in (abi.WRITEPROTECT_MODE_WP, second)
    )

    def loop(reps: range) -> None:
        for _ in reps:
            issue(first)
            issue(then)

    return loop


def _loop_fcntl(uffd: Userfaultfd, region: Region, second: int) -> Callable[[range], None]:
    """Python's own fcntl.ioctl on two prepared struct uffdio_writeprotect buffers (no cffi)."""
    import fcntl
    import struct

    ioctl, fd, request = fcntl.ioctl, uffd.fileno(), lib.UFFDIO_WRITEPROTECT
    # struct uffdio_writeprotect: { struct uffdio_range { __u64 start, len; } range; __u64 mode; }
    first, then = (
        bytearray(struct.pack("=QQQ", region.addr, region.length, mode)) for mode in (abi.WRITEPROTECT_MODE_WP, second)
    )

    def loop(reps: range) -> None:
        for _ in reps:
            ioctl(fd, request, first)
            ioctl(fd, request, then)

    return loop


#: one-page ranges per Userfaultfd.writeprotect_many call in the batch scenarios
BATCH_RANGES = 64


def _wp_toggle_batch(ctx: Context, prepared: bool = True) -> Batch:
    """Protect then un-protect BATCH_RANGES one-page ranges, two writeprotect_many calls; per range.

    Each range is its own page of one region, so every ioctl of the batch
    changes a PTE, as each of the C loop's does (``binding.wp_toggle.c``).
    ``prepared``: the ranges are a PreparedRanges made once (else a list of
    pairs converted and checked on every call).
    """
    region = _region(BATCH_RANGES)
    uffd = open_any([])
    try:
        region.write()
        uffd.register(region.addr, region.length, RegisterMode.WP)
        pairs = [(region.addr + i * region.page_size, region.page_size) for i in range(BATCH_RANGES)]
        ranges = PreparedRanges(pairs) if prepared else pairs
        many, rdtsc = uffd.writeprotect_many, lib.harness_rdtsc
        samples = []
        for _ in range(max(2, ctx.pages // 8)):
            t0 = rdtsc()
            many(ranges, True)
            many(ranges, False)
            samples.append((rdtsc() - t0) / BATCH_RANGES)
        return Batch(samples)
    finally:
        uffd.close()
        region.close()


def _other_cpu() -> Optional[int]:
    """A CPU this process may use other than the one it runs on now, or None."""
    import os

    here = os.sched_getcpu() if hasattr(os, "sched_getcpu") else -1
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    # the thread may be pinned to one CPU (bench pins it); the process may use any online CPU
    online = sorted(allowed) if len(allowed) > 1 else list(range(os.cpu_count() or 1))
    others = [c for c in online if c != here]
    return others[0] if others else None


def _needs_two_cpus(ctx: Context) -> Optional[str]:
    return None if _other_cpu() is not None else "absent: needs a second CPU"


def _rfc_loop(ctx: Context, two_threads: bool = False) -> Batch:
    spinner = -1
    if two_threads:
        cpu = _other_cpu()
        if cpu is None:
            raise HarnessError("the two-thread RFC loop needs a second CPU")
        spinner = cpu
    with _region(1) as region:
        region.write()
        buf = ffi.new("uint64_t[]", ctx.pages)
        before = _faults()
        r = lib.harness_time_rfc_loop(region.addr, region.length, ctx.pages, spinner, buf)
        if r < 0:
            raise HarnessError(f"mprotect loop failed: errno {-r}")
        faults = _faults() - before  # before list(): building it may fault the heap
        return Batch(list(buf), faults)


def _other_scenarios() -> list[Scenario]:
    return [
        Scenario(
            "binding.wp_toggle.c",
            "binding",
            "one-page UFFDIO_WRITEPROTECT protect + un-protect, C loop",
            _wp_toggle_c,
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_toggle.c_working_set",
            "binding",
            f"the C toggle, touching a {WORKING_SET_PAGES}-page working set after each ioctl (timed)",
            lambda ctx: _wp_toggle_c(ctx, WORKING_SET_PAGES),
            _uffd_absent,
        ),
        Scenario(
            "binding.working_set.c",
            "binding",
            f"those {WORKING_SET_PAGES}-page working-set touches alone (twice per sample)",
            _working_set_c,
        ),
        Scenario(
            "binding.wp_toggle.python",
            "binding",
            "the same toggle through Userfaultfd.writeprotect (per toggle, "
            f"{PY_TOGGLES_PER_SAMPLE} toggles per rdtsc pair)",
            lambda ctx: _python_pairs(ctx, _loop_method),
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_toggle.cffi_raw",
            "binding",
            "the same toggle calling lib.harness_uffd_writeprotect directly (no method)",
            lambda ctx: _python_pairs(ctx, _loop_cffi_raw),
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_toggle.cffi_floor",
            "binding",
            "the same toggle as two prepared requests, each a one-argument cffi call with no "
            "error check: the floor under any CFFI binding",
            lambda ctx: _python_pairs(ctx, _loop_cffi_floor),
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_toggle.fcntl",
            "binding",
            "the same toggle through Python's fcntl.ioctl on two prepared buffers (no cffi)",
            lambda ctx: _python_pairs(ctx, _loop_fcntl),
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_toggle.batch",
            "binding",
            f"the same toggle of {BATCH_RANGES} one-page ranges, one Userfaultfd.writeprotect_many call "
            "each way on PreparedRanges (loop in C); per range",
            _wp_toggle_batch,
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_toggle.batch_list",
            "binding",
            "the batched toggle given a list of (start, length) pairs, converted and checked on every call; per range",
            lambda ctx: _wp_toggle_batch(ctx, prepared=False),
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_noop.c",
            "binding",
            "one UFFDIO_WRITEPROTECT that changes nothing (page already protected), C loop",
            _wp_noop_c,
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_noop.python",
            "binding",
            "the same no-op ioctl through Userfaultfd.writeprotect: the per-call overhead",
            lambda ctx: _python_pairs(ctx, _loop_method, toggle=False),
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_noop.cffi_raw",
            "binding",
            "the same no-op ioctl calling lib.harness_uffd_writeprotect directly",
            lambda ctx: _python_pairs(ctx, _loop_cffi_raw, toggle=False),
            _uffd_absent,
        ),
        Scenario(
            "binding.wp_noop.cffi_floor",
            "binding",
            "the same no-op ioctl as a prepared request, one-argument cffi call",
            lambda ctx: _python_pairs(ctx, _loop_cffi_floor, toggle=False),
            _uffd_absent,
        ),
        Scenario(
            "rfc.mprotect_loop",
            "rfc",
            "RFC cover letter loop: mprotect(READ), mprotect(READ|WRITE), store; per iteration",
            _rfc_loop,
        ),
        Scenario(
            "rfc.mprotect_loop.two_threads",
            "rfc",
            "the same loop while a second thread of the process reads the page on another CPU",
            lambda ctx: _rfc_loop(ctx, two_threads=True),
            _needs_two_cpus,
        ),
    ]


SCENARIOS: tuple[Scenario, ...] = tuple(_first_touch_scenarios() + _uffd_scenarios() + _other_scenarios())
BY_NAME = {s.name: s for s in SCENARIOS}


def select(patterns: Optional[list[str]]) -> list[Scenario]:
    """Scenarios whose names start with any of ``patterns`` (all when None or empty)."""
    if not patterns:
        return list(SCENARIOS)
    chosen = [s for s in SCENARIOS if any(s.name.startswith(p) for p in patterns)]
    if not chosen:
        raise HarnessError(f"no scenario matches {', '.join(patterns)}; see `uffd-harness bench --list`")
    return chosen


__all__ = [
    "SCENARIOS",
    "BY_NAME",
    "Scenario",
    "Batch",
    "Context",
    "select",
    "prepare_state",
    "flush_tlb",
    "check_state",
    "RFC_COVER_LETTER_CYCLES",
    "PAGE_SIZE",
]
