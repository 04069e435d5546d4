"""PTE-bit semantics of the running kernel, as the hint patch relies on them.

Each test builds a PTE state with ordinary operations and checks what
pagemap and smaps show.  These are the facts the contract builds on: if
one of them changes in a kernel, the contract's observations change too.
"""

from __future__ import annotations

import contextlib
import errno
import select
import threading

import pytest

from harness import abi, pte
from harness.abi import Feature, RegisterMode
from harness.errors import UffdError
from harness.memory import MemoryKind
from harness.operations import HINT_COMBINATIONS
from harness.uffd import Userfaultfd, probe_features

KINDS_4K = [MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE]


def young_dirty(region, page=0):
    state = pte.observe(region, page)
    return state.young, state.dirty


@pytest.fixture
def wp_uffd():
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        yield uffd


@pytest.mark.parametrize("kind", KINDS_4K, ids=lambda k: k.value)
def test_write_fault_makes_pte_young_and_dirty(make_region, kind):
    region = make_region(kind)
    assert not pte.is_present(region.addr), "a new mapping has no PTE"
    region.write()
    state = pte.observe(region)
    assert state.present, "a write fault installs a PTE"
    assert (state.young, state.dirty) == (True, True), f"after a write fault: {state}"


def test_read_fault_sets_young_only(make_region):
    # A read of never-touched anonymous memory maps the shared zero page:
    # smaps does not count it, so read a page that was made old and clean.
    region = make_region(MemoryKind.ANON)
    region.write()
    region.free()
    assert young_dirty(region) == (False, False)
    region.read()
    assert young_dirty(region) == (True, False), "a read sets the accessed bit and not the dirty bit"
    region.write()
    assert young_dirty(region) == (True, True), "a later write sets the dirty bit"


def test_madv_free_leaves_present_old_clean(make_region):
    region = make_region(MemoryKind.ANON)
    region.write()
    region.free()
    state = pte.observe(region)
    assert state.present, "MADV_FREE leaves the PTE present until reclaim"
    assert (state.young, state.dirty) == (False, False), f"after MADV_FREE: {state}"


def test_clear_refs_makes_ptes_old(make_region):
    region = make_region(MemoryKind.ANON)
    region.write()
    pte.clear_refs(abi.CLEAR_REFS_ALL)
    state = pte.observe(region)
    assert state.young is False, "clear_refs 1 clears the accessed bit"
    assert state.dirty is True, "clear_refs 1 leaves the dirty bit"


def test_unprotect_without_hints_keeps_old_clean(make_region, wp_uffd):
    """Contract clause 5 on the running kernel: no hints, no young/dirty change."""
    region = make_region(MemoryKind.ANON)
    region.write()
    wp_uffd.register(region.addr, region.length, RegisterMode.WP)
    region.free()
    wp_uffd.writeprotect(region.addr, region.length, protect=True)
    wp_uffd.writeprotect(region.addr, region.length, protect=False)
    state = pte.observe(region)
    assert state.present and not state.uffd_wp
    assert (state.young, state.dirty) == (False, False), f"un-protect without hints changed A/D: {state}"
    region.read()
    assert young_dirty(region) == (True, False), "a read after un-protect sets young only"


def test_unprotect_without_hints_keeps_young_dirty(make_region, wp_uffd):
    region = make_region(MemoryKind.ANON)
    region.write()
    wp_uffd.register(region.addr, region.length, RegisterMode.WP)
    wp_uffd.writeprotect(region.addr, region.length, protect=True)
    wp_uffd.writeprotect(region.addr, region.length, protect=False)
    assert young_dirty(region) == (True, True), "un-protect must not clear young or dirty"


@pytest.mark.parametrize("kind", KINDS_4K, ids=lambda k: k.value)
def test_pagemap_uffd_wp_bit_follows_protection(make_region, wp_uffd, kind):
    region = make_region(kind, 2)
    region.write()
    wp_uffd.register(region.addr, region.length, RegisterMode.WP)
    assert not pte.is_uffd_wp(region.addr)
    wp_uffd.writeprotect(region.addr, region.page_size, protect=True)
    assert pte.is_uffd_wp(region.page_addr(0)), "protected page shows pagemap bit 57"
    assert not pte.is_uffd_wp(region.page_addr(1)), "the neighbour was not protected"
    wp_uffd.writeprotect(region.addr, region.page_size, protect=False)
    assert not pte.is_uffd_wp(region.page_addr(0)), "un-protect clears pagemap bit 57"


@pytest.mark.parametrize("hint", ["access_likely", "write_likely"])
def test_hint_bits_rejected_without_the_feature(make_region, wp_uffd, hint):
    """Contract clause 1: hint bits without ACCESS_HINTS negotiated give EINVAL."""
    region = make_region(MemoryKind.ANON)
    region.write()
    wp_uffd.register(region.addr, region.length, RegisterMode.WP)
    wp_uffd.writeprotect(region.addr, region.length, protect=True)
    with pytest.raises(UffdError) as info:
        wp_uffd.unprotect(region.addr, region.length, **{hint: True})
    assert info.value.errno == errno.EINVAL
    assert "UFFDIO_WRITEPROTECT" in str(info.value) and "ACCESS_HINTS" in str(info.value)
    assert pte.is_uffd_wp(region.addr), "a rejected un-protect leaves the page protected"


def test_access_hints_feature_refused_by_name_when_absent(make_region):
    """Absent: asking for it names it.  Offered: negotiating it really enables the hint bits (a hinted
    un-protect, EINVAL without the feature, succeeds and un-protects)."""
    offered = probe_features()
    if Feature.ACCESS_HINTS in offered.offered:
        region = make_region(MemoryKind.ANON)
        region.write()
        with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP, Feature.ACCESS_HINTS]) as uffd:
            uffd.register(region.addr, region.length, RegisterMode.WP)
            uffd.writeprotect(region.addr, region.length, protect=True)
            uffd.unprotect(region.addr, region.length, access_likely=True, write_likely=True)
        assert not pte.is_uffd_wp(region.addr), "the hinted un-protect did not un-protect"
        return
    from harness.errors import FeatureUnavailable

    with pytest.raises(FeatureUnavailable) as info:
        Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP, Feature.ACCESS_HINTS])
    assert info.value.missing == {Feature.ACCESS_HINTS}
    assert "UFFD_FEATURE_ACCESS_HINTS" in str(info.value)


def test_write_to_protected_page_needs_the_handler(make_region):
    """A write to a uffd-wp page raises a WP fault event; un-protecting resolves it."""
    from harness.handler import FaultHandler

    region = make_region(MemoryKind.ANON)
    region.write(value=1)
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        uffd.register(region.addr, region.length, RegisterMode.WP)
        uffd.writeprotect(region.addr, region.length, protect=True)

        def resolve(u, event):
            u.writeprotect(event.address & ~(region.page_size - 1), region.page_size, protect=False)

        with FaultHandler(uffd, resolve) as handler:
            region.write(value=2)
        assert len(handler.events) == 1
        fault = handler.events[0]
        assert fault.wp and fault.write and fault.address & ~(region.page_size - 1) == region.addr
    assert region.data(0, 1) == b"\x02"
    assert young_dirty(region) == (True, True)


def test_data_and_fill_let_the_handler_run(make_region):
    """Region.data()/fill() fault on a missing page while a handler thread serves it: no deadlock."""
    from harness.handler import FaultHandler

    region = make_region(MemoryKind.ANON, 2)
    with Userfaultfd.open([]) as uffd:
        uffd.register(region.addr, region.length, RegisterMode.MISSING)
        with FaultHandler(
            uffd, lambda u, ev: u.zeropage(ev.address & ~(region.page_size - 1), region.page_size)
        ) as handler:
            assert region.data(0, 16) == bytes(16)
            region.fill(1, b"abc")
        assert len(handler.events) == 2
    assert region.data(1, 3) == b"abc"


#: seconds to wait for a fault event and for the woken writer (generous: a loaded TCG guest)
_WAKE_WAIT = 30.0


def _unprotect_hint_params():
    """No hints everywhere; each hint combination where this kernel offers ACCESS_HINTS (nothing skipped)."""
    combos = [pytest.param(False, False, id="no-hints")]
    if Feature.ACCESS_HINTS in probe_features().offered:
        combos += [pytest.param(h.access_likely, h.write_likely, id=h.label) for h in HINT_COMBINATIONS]
    return combos


@contextlib.contextmanager
def _writer_blocked_on_its_fault(uffd: Userfaultfd, region):
    """A thread storing 2 to the write-protected page, blocked on its fault (whose event is read here);
    woken at the end whatever happened, so it never outlives the uffd."""
    writer = threading.Thread(target=region.write, kwargs={"value": 2}, daemon=True)
    writer.start()
    try:
        poller = select.poll()
        poller.register(uffd.fileno(), select.POLLIN)
        assert poller.poll(_WAKE_WAIT * 1000), f"no fault event within {_WAKE_WAIT:.0f} s of the store"
        events = uffd.read_events()
        assert len(events) == 1 and events[0].wp and events[0].write, events
        yield writer
    finally:
        if writer.is_alive():
            uffd.wake(region.addr, region.length)
            writer.join(_WAKE_WAIT)


@pytest.mark.parametrize("access, write", _unprotect_hint_params())
def test_an_unprotect_wakes_the_thread_blocked_on_its_write_fault(make_region, access, write):
    """An un-protect without DONTWAKE wakes the thread that faulted on the page, hints or not: its store
    then lands.  A kernel whose hinted un-protect forgot the wake leaves the writer blocked for ever."""
    region = make_region(MemoryKind.ANON)
    region.write(value=1)
    features = [Feature.PAGEFAULT_FLAG_WP] + ([Feature.ACCESS_HINTS] if access or write else [])
    with Userfaultfd.open(features) as uffd:
        uffd.register(region.addr, region.length, RegisterMode.WP)
        uffd.writeprotect(region.addr, region.length, protect=True)
        with _writer_blocked_on_its_fault(uffd, region) as writer:
            uffd.unprotect(region.addr, region.length, access_likely=access, write_likely=write)
            writer.join(_WAKE_WAIT)
            woken = not writer.is_alive()
        assert woken, f"the un-protect (hints: access={access}, write={write}) did not wake the faulting thread"
    assert region.data(0, 1) == b"\x02", "the woken store did not land"


def test_an_unprotect_with_dontwake_leaves_the_faulting_thread_blocked_until_a_wake(make_region):
    """unprotect(dontwake=True) lifts the protection but wakes nobody: the writer blocked on its fault stays
    blocked until UFFDIO_WAKE; and DONTWAKE with MODE_WP is EINVAL (the kernel's rule, sent as is)."""
    region = make_region(MemoryKind.ANON)
    region.write(value=1)
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        uffd.register(region.addr, region.length, RegisterMode.WP)
        uffd.writeprotect(region.addr, region.length, protect=True)
        with _writer_blocked_on_its_fault(uffd, region) as writer:
            uffd.unprotect(region.addr, region.length, dontwake=True)
            assert not pte.is_uffd_wp(region.addr), "the un-protect did not lift the protection"
            writer.join(0.5)
            assert writer.is_alive(), "unprotect(dontwake=True) woke the faulting thread"
            uffd.wake(region.addr, region.length)
            writer.join(_WAKE_WAIT)
            assert not writer.is_alive(), "UFFDIO_WAKE did not release the writer"
        with pytest.raises(UffdError) as info:
            uffd.writeprotect_mode(
                region.addr, region.length, abi.WRITEPROTECT_MODE_WP | abi.WRITEPROTECT_MODE_DONTWAKE
            )
        assert info.value.errno == errno.EINVAL
    assert region.data(0, 1) == b"\x02", "the woken store did not land"


# -- the readers: one read of a file for many pages ------------------------------------


def test_smaps_vmas_finds_the_vma_of_each_address_in_one_read(make_region):
    """Three VMAs made from one region (the middle page read-only): each address, a VMA's start or inside
    it, gets its own VMA's fields; an address no VMA contains is left out, and smaps_vma names it."""
    from harness.errors import HarnessError
    from harness.memory import PROT_READ

    region = make_region(MemoryKind.ANON, 3)
    region.write()
    region.mprotect(PROT_READ, 1, 1)
    page = [region.page_addr(i) for i in range(3)]
    vmas = pte.smaps_vmas([page[0], page[1] + 100, page[2], 0x1000])
    assert 0x1000 not in vmas
    assert [(vmas[a]["start"], vmas[a]["end"]) for a in (page[0], page[1] + 100, page[2])] == [
        (page[0], page[1]),
        (page[1], page[2]),
        (page[2], region.end),
    ]
    assert "wr" not in vmas[page[1] + 100]["VmFlags"].split() and "wr" in vmas[page[2]]["VmFlags"].split()
    assert all(vmas[a]["Rss"] == 4 for a in (page[0], page[2])), "one written 4 KiB page in each"
    assert pte.smaps_vma(page[2] + 5) == vmas[page[2]]
    with pytest.raises(HarnessError, match="no VMA contains 0x1000"):
        pte.smaps_vma(0x1000)


def test_pfn_runs_are_the_distinct_pfns_in_consecutive_stretches():
    assert pte._runs([7, 3, 4, 5, 7, 10, 9]) == [(3, 3), (7, 1), (9, 2)]
    assert pte._runs([]) == []


@pytest.mark.root
def test_kpageflags_of_many_pages_are_each_pages_own_word(make_region):
    """kpageflags_many reads runs of PFNs at once; each page still gets the flags of its own 8-byte word
    (read here one by one from the file), duplicates and order kept.  Seven written pages and one only
    read (the shared zero page) tell a reader that hands every page the same word."""
    import struct

    if pte.kpageflags_available():
        pytest.skip(pte.kpageflags_available())
    region = make_region(MemoryKind.ANON, 8)
    region.write(0, 7)
    region.read(7, 1)
    pfns = [pte.pagemap_pfn(e) for e in pte.pagemap_entries(region.addr, 8)]
    assert None not in pfns
    asked = [pfns[7], *pfns, pfns[3]]
    got = pte.kpageflags_many(asked)
    with open("/proc/kpageflags", "rb") as f:
        words = []
        for pfn in asked:
            f.seek(pfn * 8)
            words.append(struct.unpack("<Q", f.read(8))[0])
    # flags that stay put between two reads (LRU, ACTIVE, REFERENCED may move in between)
    stable = {abi.KPageFlag.ANON, abi.KPageFlag.ZERO_PAGE, abi.KPageFlag.COMPOUND_HEAD, abi.KPageFlag.THP}
    assert [flags & stable for flags in got] == [{f for f in stable if w >> f & 1} for w in words]
    assert [abi.KPageFlag.ZERO_PAGE in flags for flags in got] == [True] + [False] * 7 + [True, False]
    assert all(abi.KPageFlag.ANON in flags for flags in got[1:8])
