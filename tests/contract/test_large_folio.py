"""Large-folio regions (anonymous mTHP, shmem THP) and what each channel can tell of them.

The contract's ``large-folio`` shape un-protects the base pages of one large
folio mapped by PTEs.  These tests check that the region really is that (or
says what it is instead), that a machine without the folio size gets an
error naming the setting, and that idle-page tracking, which only takes a
folio's head page, answers "cannot tell" for a tail page instead of a wrong
"young".  As root the ``large_folios_enabled`` fixture turns the settings on
for the module, and puts them back after.

None of these tests carries a ``clause`` marker: they test the observation
the checks rely on, not the kernel's keeping of a clause.
"""

from __future__ import annotations

import pytest

from harness import memory, pte
from harness.abi import KPageFlag, RegisterMode
from harness.backends.kernel import KernelBackend
from harness.errors import HarnessError, InvalidArgument, ThpUnavailable
from harness.memory import (
    MTHP_SIZE,
    PAGE_SIZE,
    PROT_READ,
    PROT_RW,
    MemoryKind,
    Region,
    large_folio_unavailable,
    thp_pmd_size,
)
from harness.pte import IDLE_PAGE

root = pytest.mark.root
#: its regions need large folios switched on (and khugepaged paused) for the module
pytestmark = pytest.mark.mm_settings


# -- what the settings allow -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind, text, expect",
    [
        (MemoryKind.ANON, None, "offers no 64 KiB anonymous mTHP"),
        (MemoryKind.ANON, "always inherit madvise [never]", "echo madvise >"),
        (MemoryKind.ANON, "always inherit [madvise] never", None),
        (MemoryKind.SHMEM, None, "offers no shmem THP"),
        (MemoryKind.SHMEM, "always within_size advise never [deny] force", "shmem_enabled = deny"),
        (MemoryKind.SHMEM, "always within_size [advise] never deny force", None),
    ],
)
def test_large_folio_settings_name_what_is_missing(monkeypatch, kind, text, expect):
    path, _value = memory.LARGE_FOLIO_SETTINGS[kind]
    monkeypatch.setattr(memory, "_read_text", lambda p: text if p == path else None)
    reason = large_folio_unavailable(kind)
    if expect is None:
        assert reason is None
    else:
        assert reason is not None and expect in reason and (text is None or path in reason)


def test_inherit_follows_the_thp_setting(monkeypatch):
    path, _value = memory.LARGE_FOLIO_SETTINGS[MemoryKind.ANON]
    texts = {path: "always [inherit] madvise never", f"{memory.THP_SYSFS}/enabled": "always madvise [never]"}
    monkeypatch.setattr(memory, "_read_text", lambda p: texts.get(p))
    reason = large_folio_unavailable(MemoryKind.ANON)
    assert reason is not None and "THP disabled" in reason


def test_large_folios_of_other_kinds_are_refused_by_name():
    with pytest.raises(HarnessError, match="anonymous .mTHP. or shmem .shmem THP., not file"):
        Region.create(MemoryKind.FILE, 1, large_folio=True)
    with pytest.raises(InvalidArgument, match="not both"):
        Region.create(MemoryKind.ANON, 1, thp=True, large_folio=True)


def test_a_disabled_setting_is_thp_unavailable(monkeypatch):
    monkeypatch.setattr(memory, "large_folio_unavailable", lambda kind: "shmem THP disabled: test")
    with pytest.raises(ThpUnavailable, match="shmem THP disabled: test"):
        Region.create(MemoryKind.SHMEM, 1, large_folio=True)


# -- the regions, on this kernel ----------------------------------------------------------


@pytest.fixture
def folios(large_folios_enabled, khugepaged_paused):
    """Skip naming the setting where this kernel (or user) cannot have the folios (khugepaged paused:
    it may map a shmem THP by its PMD again)."""
    for kind in (MemoryKind.ANON, MemoryKind.SHMEM):
        reason = large_folio_unavailable(kind)
        if reason:
            pytest.skip(reason)


@root
def test_an_anon_region_written_before_registering_is_one_mthp(folios):
    with KernelBackend() as b:
        r = b.create(MemoryKind.ANON, 1, RegisterMode.WP, large_folio=True)
        region = b.region(r)
        assert region.folio_size == MTHP_SIZE and region.addr % MTHP_SIZE == 0
        assert r.npages == MTHP_SIZE // PAGE_SIZE
        assert pte.large_folio_problem(region) is None
        b.check_large_folio(r)


@root
def test_an_mthp_written_after_registering_is_single_pages(folios):
    """alloc_anon_folio() gives a VMA with a userfaultfd armed single pages: the check must say so."""
    with KernelBackend() as b:
        r = b.create(MemoryKind.ANON, 1, None, large_folio=True)  # written by create(), before any register
        region = b.region(r)
        fresh = Region.create(MemoryKind.ANON, 1, large_folio=True)
        try:
            b._need_uffd().register(fresh.addr, fresh.length, RegisterMode.WP)
            fresh.write()
            problem = pte.large_folio_problem(fresh)
            assert problem is not None and "not one" in problem
            with pytest.raises(ThpUnavailable, match="not 64 KiB folios mapped by PTEs"):
                pte.check_large_folio(fresh)
        finally:
            fresh.close()
        assert pte.large_folio_problem(region) is None


@root
def test_a_shmem_thp_is_pmd_mapped_first_and_pte_mapped_after_the_backend_splits_it(folios):
    with Region.create(MemoryKind.SHMEM, 1, large_folio=True) as region:
        assert region.folio_size == thp_pmd_size()
        region.read()
        problem = pte.large_folio_problem(region)
        assert problem is not None and "mapped by PMDs" in problem
    with KernelBackend() as b:
        r = b.create(MemoryKind.SHMEM, 1, RegisterMode.WP, large_folio=True)
        region = b.region(r)
        problem = pte.large_folio_problem(region)
        assert problem is not None and "not present" in problem  # the split left no PTE
        for page in range(r.npages):
            assert b.read(r, page) == 0
        assert pte.large_folio_problem(region) is None
        assert pte.smaps_vma(region.addr).get("ShmemPmdMapped", 0) == 0


@root
def test_the_head_pfn_of_every_page_of_a_folio_is_the_first(folios):
    with KernelBackend() as b:
        r = b.create(MemoryKind.ANON, 1, RegisterMode.WP, large_folio=True)
        region = b.region(r)
        head = pte._pfn_of(region, 0)
        assert KPageFlag.COMPOUND_HEAD in pte.kpageflags(head)
        assert {pte._folio_head_pfn(pte._pfn_of(region, page)) for page in range(r.npages)} == {head}
    with Region.create(MemoryKind.ANON, 2) as small:
        small.write()
        pfns = [pte._pfn_of(small, page) for page in range(2)]
        assert [pte._folio_head_pfn(pfn) for pfn in pfns] == pfns


@root
@pytest.mark.guest_kernel
def test_idle_page_tracking_answers_for_the_head_page_only(folios):
    """The bitmap reads "not idle" for every tail page whatever its PTE: a tail page is "cannot tell",
    and marking any page of the folio marks the folio (every PTE of it old)."""
    if pte.idle_page_tracking_available():
        pytest.fail(f"our guest kernels have idle-page tracking: {pte.idle_page_tracking_available()}")
    with KernelBackend() as b:
        r = b.create(MemoryKind.ANON, 1, None, large_folio=True)
        region = b.region(r)
        b.mark_idle(r, 5)  # a tail page: the folio is marked through its head
        assert b.observe(r, 0, IDLE_PAGE).young is False
        assert all(e.young is False for e in pte.read_ptes(region.addr, r.npages))
        assert b.observe(r, 5, IDLE_PAGE).young is None
        # mprotect flushes the TLB (marking idle does not), so the read walks the page table and sets
        # the accessed bit of one tail page's PTE: the folio counts as accessed
        b.mprotect(r, PROT_READ)
        b.mprotect(r, PROT_RW)
        assert b.read(r, 9) == 0
        assert [e.young for e in pte.read_ptes(region.addr, r.npages)].count(True) >= 1
        assert b.observe(r, 0, IDLE_PAGE).young is True
        assert b.observe(r, 9, IDLE_PAGE).young is None
