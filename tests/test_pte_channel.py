"""The pte channel (vm/instrumentation) and the guest it needs, checked in a guest of our kernels.

Each test makes a page-table state with ordinary operations and reads it
back through ``/sys/kernel/debug/uffd_harness/pte``: what the PTE (or PMD)
itself says, which no other channel can show.  The cross-check tests show
the channel telling a young/dirty PTE from folio flags that smaps and
idle-page tracking also count.

Every test here is marked ``guest_kernel``: tests/conftest.py deselects
them outside a guest the harness booted (no ``UFFD_HARNESS_KERNEL``), so a
host run under CI=true does not skip them into failures.  Inside such a
guest a missing piece (the instrumentation did not apply, no swap, no
huge pages) is a skip naming it, and under CI=true a failure.
"""

from __future__ import annotations

import errno
import gzip
import os
import re

import pytest

from harness import abi, pte
from harness.abi import Feature, KPageFlag, RegisterMode
from harness.backends.kernel import KernelBackend, kernel_soft_dirty, kernel_swap
from harness.errors import ThpUnavailable
from harness.memory import PAGE_SIZE, MemoryKind, Region, thp_pmd_size
from harness.uffd import Userfaultfd, probe_features
from harness.vm.runner import ENV_KERNEL, GUEST_SWAP_SIZE

pytestmark = pytest.mark.guest_kernel


@pytest.fixture(autouse=True)
def pte_channel():
    reason = pte.pte_channel_available()
    if reason:
        pytest.skip(f"pte channel: {reason}")


@pytest.fixture
def wp_uffd():
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        yield uffd


# -- anonymous PTEs ------------------------------------------------------------------


def test_a_written_anon_page_is_young_dirty_writable(make_region):
    region = make_region(MemoryKind.ANON)
    assert pte.read_pte(region.addr).empty, "a new mapping has an empty PTE (or no table)"
    region.write()
    entry = pte.read_pte(region.addr)
    assert (entry.level, entry.present, entry.writable, entry.young, entry.dirty, entry.uffd_wp, entry.swap) == (
        "pte",
        True,
        True,
        True,
        True,
        False,
        None,
    ), f"after a write fault: {entry}"
    assert entry.pfn == pte.pagemap_pfn(pte.pagemap_entry(region.addr)), "the PFN is pagemap's"


def test_madv_free_makes_the_pte_old_and_clean_and_keeps_it_writable(make_region):
    region = make_region(MemoryKind.ANON)
    region.write()
    region.free()
    entry = pte.read_pte(region.addr)
    assert (entry.present, entry.writable, entry.young, entry.dirty) == (True, True, False, False), (
        f"MADV_FREE (clear_young_dirty_ptes()) leaves a present, writable, old, clean PTE: {entry}"
    )


def test_writeprotect_clears_the_write_bit_and_sets_uffd_wp(make_region, wp_uffd):
    region = make_region(MemoryKind.ANON)
    region.write()
    wp_uffd.register(region.addr, region.length, RegisterMode.WP)
    region.free()
    wp_uffd.writeprotect(region.addr, region.length, protect=True)
    entry = pte.read_pte(region.addr)
    assert (entry.present, entry.writable, entry.uffd_wp) == (True, False, True), f"after UFFDIO_WRITEPROTECT: {entry}"
    wp_uffd.writeprotect(region.addr, region.length, protect=False)
    entry = pte.read_pte(region.addr)
    # change_pte_range() leaves the accessed and dirty bits alone
    assert (entry.uffd_wp, entry.young, entry.dirty) == (False, False, False), (
        f"un-protect without hints: uffd-wp cleared, still old and clean: {entry}"
    )
    # whether it makes the PTE writable is the base's rule (6.12's uffd_wp_range() passes
    # MM_CP_TRY_CHANGE_WRITABLE, so an exclusive anon PTE is; 6.1 upgrades no private PTE):
    # the channel's write bit must say what a store then finds
    faults = region.write_faults(0)
    assert entry.writable == (faults == 0), (
        f"the pte channel says writable={entry.writable}, and a store took {faults} fault(s): {entry}"
    )


def test_a_wp_unpopulated_marker_shows_uffd_wp_and_no_page(make_region):
    if Feature.WP_UNPOPULATED not in probe_features().offered:
        pytest.skip("kernel lacks UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4+)")
    region = make_region(MemoryKind.ANON, 2)
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP, Feature.WP_UNPOPULATED]) as uffd:
        uffd.register(region.addr, region.length, RegisterMode.WP)
        uffd.writeprotect(region.addr, region.length, protect=True)
        entries = pte.read_ptes(region.addr, 2)
        for entry in entries:
            assert (entry.level, entry.present, entry.uffd_wp, entry.swap, entry.writable) == (
                "pte",
                False,
                True,
                "marker",
                False,
            ), f"a uffd-wp marker on an empty PTE: {entry}"
        assert all(pte.is_uffd_wp(e.addr) for e in entries), "pagemap shows the markers' uffd-wp too"


def test_pageout_leaves_a_swap_entry(make_region):
    if not kernel_swap():
        pytest.skip(f"no swap device (/proc/swaps): the guest set-up makes a {GUEST_SWAP_SIZE} zram0")
    region = make_region(MemoryKind.ANON)
    region.write()
    region.pageout()
    entry = pte.read_pte(region.addr)
    assert (entry.level, entry.present, entry.swap) == ("pte", False, "swap"), (
        f"MADV_PAGEOUT of an anon page with swap: {entry}"
    )
    assert entry.entry != 0 and pte.is_swapped(region.addr), "pagemap agrees that it is swapped"
    region.read()
    assert pte.read_pte(region.addr).present, "a read swaps it back in"


def test_soft_dirty_is_set_by_a_write_and_cleared_by_clear_refs_4(make_region):
    if not kernel_soft_dirty():
        pytest.skip("kernel lacks CONFIG_MEM_SOFT_DIRTY")
    region = make_region(MemoryKind.ANON)
    region.write()
    assert pte.read_pte(region.addr).soft_dirty, "a write fault sets soft-dirty (pte_mkdirty() on x86)"
    pte.clear_soft_dirty()
    entry = pte.read_pte(region.addr)
    # clear_soft_dirty() in fs/proc/task_mmu.c write-protects the PTE so the next write faults
    assert (entry.soft_dirty, entry.writable, entry.present) == (False, False, True), f"after clear_refs 4: {entry}"
    region.write()
    entry = pte.read_pte(region.addr)
    assert (entry.soft_dirty, entry.writable) == (True, True), f"after the next write: {entry}"


# -- PMD leaves ------------------------------------------------------------------------


def test_a_pmd_mapped_thp_shows_level_pmd_for_every_base_page():
    try:
        region = Region.create(MemoryKind.ANON, 1, thp=True)
    except ThpUnavailable as exc:
        pytest.skip(str(exc))
    with region:
        region.write()
        try:
            pte.check_thp(region, "after its first write")
        except ThpUnavailable as exc:
            pytest.skip(str(exc))
        per_pmd = thp_pmd_size() // PAGE_SIZE
        entries = pte.read_ptes(region.addr, per_pmd)
        assert len(entries) == per_pmd == 512
        assert {(e.level, e.present, e.writable, e.young, e.dirty) for e in entries} == {
            ("pmd", True, True, True, True)
        }, "every base page reports the one young, dirty, writable PMD"
        assert len({e.entry for e in entries}) == 1, "one raw PMD value for all of them"
        assert [e.pfn for e in entries] == list(range(entries[0].pfn, entries[0].pfn + per_pmd))
        region.free()
        assert {(e.level, e.young, e.dirty) for e in pte.read_ptes(region.addr, per_pmd)} == {("pmd", False, False)}, (
            "MADV_FREE of the whole THP makes the PMD old and clean (madvise_free_huge_pmd())"
        )


@pytest.mark.parametrize("kind", [MemoryKind.HUGETLB, MemoryKind.HUGETLB_PRIVATE], ids=lambda k: k.value)
def test_a_hugetlb_page_shows_its_pmd_leaf(make_region, kind):
    region = make_region(kind)
    assert region.page_size == thp_pmd_size(), "the guest's default huge page is PMD-sized"
    per_page = region.page_size // PAGE_SIZE
    assert all(e.empty for e in pte.read_ptes(region.addr, per_page)), "nothing mapped before the fault"
    region.write()
    entries = pte.read_ptes(region.addr, per_page)
    assert {(e.level, e.present, e.writable, e.young, e.dirty) for e in entries} == {("pmd", True, True, True, True)}, (
        f"a written hugetlb page: {entries[0]}"
    )
    assert [e.pfn for e in entries] == list(range(entries[0].pfn, entries[0].pfn + per_page))


def test_a_hugetlb_uffd_wp_marker_is_a_non_present_pmd_entry(make_region, wp_uffd):
    """hugetlb_change_protection() puts a uffd-wp marker into an empty huge PTE (a PMD on x86)."""
    if Feature.WP_HUGETLBFS_SHMEM not in probe_features().offered:
        pytest.skip("kernel lacks UFFD_FEATURE_WP_HUGETLBFS_SHMEM")
    region = make_region(MemoryKind.HUGETLB)
    wp_uffd.register(region.addr, region.length, RegisterMode.WP)
    wp_uffd.writeprotect(region.addr, region.length, protect=True)
    entries = pte.read_ptes(region.addr, region.page_size // PAGE_SIZE)
    assert {(e.level, e.present, e.uffd_wp, e.swap) for e in entries} == {("pmd", False, True, "marker")}, (
        f"a hugetlb uffd-wp marker: {entries[0]}"
    )


@pytest.mark.parametrize(
    "kind", [MemoryKind.ANON, MemoryKind.HUGETLB, MemoryKind.HUGETLB_PRIVATE], ids=lambda k: k.value
)
def test_mkold_makes_the_entry_old_and_leaves_the_rest(make_region, kind):
    """mkold clears the accessed bit of the entry itself (PTE or hugetlb PMD leaf) and nothing else;
    a read afterwards makes it young again (the TLB entry was flushed, so the CPU walks and sets A)."""
    if pte.mkold_available():
        pytest.skip(f"mkold: {pte.mkold_available()}")
    region = make_region(kind)
    per_page = region.page_size // PAGE_SIZE
    region.write()
    before = pte.read_ptes(region.addr, per_page)
    assert {e.young for e in before} == {True}, f"a written page is young: {before[0]}"
    pte.make_old(region.addr, per_page)
    after = pte.read_ptes(region.addr, per_page)
    assert {(e.level, e.present, e.writable, e.young, e.dirty, e.pfn) for e in after} == {
        (e.level, e.present, e.writable, False, e.dirty, e.pfn) for e in before
    }, f"mkold changed more than young: {before[0]} -> {after[0]}"
    region.read()
    assert pte.read_pte(region.addr).young, "a read after mkold makes the entry young again"


def test_mkold_refuses_a_range_that_is_not_page_aligned():
    if pte.mkold_available():
        pytest.skip(f"mkold: {pte.mkold_available()}")
    fd = os.open(pte.MKOLD_DEBUGFS, os.O_WRONLY)
    try:
        for bad in (b"0x1001 1", b"0x1000 0", b"nonsense", b"0x1000 1 extra"):
            with pytest.raises(OSError) as info:
                os.write(fd, bad)
            assert info.value.errno == errno.EINVAL, bad
    finally:
        os.close(fd)


def test_a_range_longer_than_one_read_comes_back_whole(make_region):
    """4096 pages (16 MiB: several PMDs, more lines than one 256 KiB read): every other page written."""
    npages = 4096
    region = make_region(MemoryKind.ANON, npages)
    for page in range(0, npages, 2):
        region.write(page, 1)
    entries = pte.read_ptes(region.addr, npages)
    assert [e.addr for e in entries] == [region.addr + i * PAGE_SIZE for i in range(npages)]
    assert [e.present for e in entries] == [i % 2 == 0 for i in range(npages)]


# -- the backend, and the cross-check -------------------------------------------------------


def test_kernel_backend_puts_the_pte_channel_first_and_batches_it():
    with KernelBackend() as b:
        assert b.channels()[0] == pte.PTE
        regions = [b.create(MemoryKind.ANON, 3, register=None) for _ in range(2)]
        b.write(regions[0], 1)
        b.write(regions[1], 2)
        b.madvise(regions[1], "free", 2, 1)
        states = b.observe_pages([(regions[0], 1), (regions[1], 2), (regions[0], 0)], pte.PTE)
        assert [(s.present, s.young, s.dirty, s.writable) for s in states] == [
            (True, True, True, True),
            (True, False, False, True),
            (False, False, False, False),
        ]
        assert all(s.source == pte.PTE for s in states)
        assert states[1] == b.observe(regions[1], 2, pte.PTE), "batch and single reads agree"
        assert [e.present for e in b.pte_entries(regions[0])] == [False, True, False]


def test_cross_check_agrees_on_a_written_page(make_region):
    region = make_region(MemoryKind.ANON)
    region.write()
    check = pte.cross_check(region)
    assert check.disagreements() == [], check
    assert check.folio_only() == [] and not check.young_from_folio_only and not check.dirty_from_folio_only


def test_cross_check_names_a_folio_dirtied_behind_a_clean_pte(make_region):
    """pwrite() to a tmpfs file dirties the folio (shmem_write_end()); the mapping's PTE stays clean."""
    region = make_region(MemoryKind.FILE)
    region.read()
    os.pwrite(region.fd, b"x", 0)
    check = pte.cross_check(region)
    assert check.pte.present and not check.pte.dirty, check.pte
    assert check.smaps_dirty is True, "smaps counts the folio's PG_dirty"
    assert check.dirty_from_folio_only, check
    if check.folio_flags is not None:
        assert check.folio_dirty, "kpageflags shows PG_dirty"
    assert any("clean" in line for line in check.folio_only()), check.folio_only()
    assert check.disagreements() == []


def test_cross_check_names_a_folio_referenced_behind_an_old_pte(make_region):
    """clear_refs 1 makes the PTE old; a pread() of the file marks the folio accessed
    (folio_mark_accessed() in shmem_file_read_iter()) without touching the PTE."""
    region = make_region(MemoryKind.FILE)
    region.write()
    pte.clear_refs(abi.CLEAR_REFS_ALL)
    os.pread(region.fd, 1, 0)
    check = pte.cross_check(region)
    assert check.pte.present and not check.pte.young, check.pte
    assert check.smaps_young is True, "smaps counts PG_referenced"
    assert check.young_from_folio_only, check
    if check.folio_flags is not None:
        assert KPageFlag.REFERENCED in check.folio_flags
    assert check.disagreements() == []


# -- the guest set-up ----------------------------------------------------------------------


def test_the_guest_has_swap():
    assert kernel_swap(), (
        f"no active swap in /proc/swaps: the runner's guest set-up should add zram0 ({GUEST_SWAP_SIZE})"
    )


def test_the_guest_has_the_huge_pages_its_command_line_reserves():
    with open("/proc/cmdline") as f:
        match = re.search(r"\bhugepages=(\d+)", f.read())
    assert match, "the runner passes hugepages= on the guest's command line"
    with open("/proc/meminfo") as f:
        total = int(re.search(r"^HugePages_Total:\s+(\d+)", f.read(), re.M).group(1))
    assert total == int(match.group(1)), f"hugepages={match.group(1)} asked, HugePages_Total {total}"


def test_proc_config_gz_is_the_builds_config():
    from harness.vm.build import BUILD_DIR

    name = os.environ[ENV_KERNEL]
    config = BUILD_DIR / "kernels" / name / "obj" / ".config"
    if not config.exists():
        pytest.skip(f"{config} is missing: the kernel '{name}' was built elsewhere")
    assert os.path.exists("/proc/config.gz"), "kernel lacks CONFIG_IKCONFIG_PROC (vm/kernel.config sets it)"
    with open("/proc/config.gz", "rb") as f:
        running = gzip.decompress(f.read())
    assert running == config.read_bytes(), f"/proc/config.gz differs from {config}: the guest runs another build"
