"""THP regions and the THP cases of the contract checks: real, and able to fail.

A THP region is one MADV_HUGEPAGE anonymous PMD; these tests check that a
write makes it a PMD-mapped THP (through every channel that can say so),
that a machine that cannot give one gets an error naming what is missing,
and that the THP cases of the contract checks catch what they are for:
run on the real kernel behind a backend that misbehaves on purpose (a
kernel that makes the PMD young or dirty on an un-protect without hints, or
splits it), they must report a violation.  The host kernel has no hint
patch, so clauses 2, 3 and 7 are exercised here through a backend that does
in user space, on real THPs, what the hints promise (touch after the
un-protect), and a broken variant of it.

None of these tests carries a ``clause`` marker: they test the checks, and
must not count as the kernel keeping (or breaking) a clause in summary.json.
"""

from __future__ import annotations

import errno
import re
from typing import Optional

import pytest

from harness import abi, memory, pte
from harness.abi import Feature, RegisterMode
from harness.backends.contract import THP_CLAUSES, clause_2, clause_3, clause_5, clause_7
from harness.backends.kernel import KernelBackend
from harness.backends.sim import SimBackend
from harness.errors import HarnessError, ThpUnavailable
from harness.memory import PAGE_SIZE, MemoryKind, Region, thp_pmd_size
from harness.pte import kpageflags_available, pfn_visible, thp_mapping
from harness.pytest_plugin import kernel_only_clauses
from harness.uffd import Userfaultfd

#: they test the checks, not the kernel (validate --quick leaves them out); khugepaged
#: must not collapse a PMD a test split on purpose while the checks look at it
pytestmark = [pytest.mark.checks_the_checks, pytest.mark.mm_settings, pytest.mark.usefixtures("khugepaged_paused")]


@pytest.fixture
def thp_ok():
    reason = memory.thp_unavailable()
    if reason:
        pytest.skip(reason)


def test_khugepaged_is_paused_for_this_module(khugepaged_paused):
    """The split-PMD checks below rely on it (a collapse between two reads looked like a disagreement)."""
    if khugepaged_paused is None:
        pytest.skip(f"not root, or no {memory.KHUGEPAGED_SLEEP_MS}: khugepaged cannot be paused")
    with open(memory.KHUGEPAGED_SLEEP_MS) as f:
        assert int(f.read()) == khugepaged_paused > 10_000  # longer than any kernel's default


# -- the region ----------------------------------------------------------------------


def test_thp_region_is_pmd_mapped_after_a_write(thp_ok):
    with Region.create(MemoryKind.ANON, 1, thp=True) as region:
        assert region.page_size == thp_pmd_size() and region.addr % region.page_size == 0
        empty = thp_mapping(region)
        assert not empty.populated and not empty.pmd_mapped
        with pytest.raises(ThpUnavailable, match="nothing is mapped yet"):
            pte.check_thp(region)
        region.write()
        pte.check_thp(region)
        mapping = thp_mapping(region)
        assert mapping.pmd_mapped and mapping.anon_huge_kb == region.length // 1024
        assert mapping.present == region.length // PAGE_SIZE
        assert mapping.scan_huge in (True, None)
        if pfn_visible() and kpageflags_available() is None:
            assert mapping.thp_folio is True, mapping


def test_a_split_pmd_is_reported(thp_ok):
    """Write-protecting one base page splits the PMD (change_pmd_range()): check_thp must say so."""
    with Region.create(MemoryKind.ANON, 1, thp=True) as region, Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        uffd.register(region.addr, region.length, RegisterMode.WP)
        region.write()
        pte.check_thp(region)
        uffd.writeprotect(region.addr, PAGE_SIZE, protect=True)
        mapping = thp_mapping(region)
        assert not mapping.pmd_mapped and mapping.present == region.length // PAGE_SIZE
        assert mapping.scan_huge in (False, None) and mapping.disagreement() is None
        with pytest.raises(ThpUnavailable, match="not a PMD-mapped THP") as info:
            pte.check_thp(region)
        if mapping.thp_folio is not None:  # root: kpageflags still sees the THP behind the PTEs
            assert mapping.thp_folio and "the PMD was split" in str(info.value)


def _fake_sysfs(monkeypatch, files: dict):
    real = memory._read_text
    monkeypatch.setattr(memory, "_read_text", lambda path: files[path] if path in files else real(path))


@pytest.mark.parametrize(
    "enabled, per_size, expect",
    [
        (
            "always madvise [never]\n",
            "always [inherit] madvise never\n",
            "THP disabled: /sys/kernel/mm/transparent_hugepage/enabled = never",
        ),
        ("always madvise [never]\n", None, "THP disabled: /sys/kernel/mm/transparent_hugepage/enabled = never"),
        ("always [madvise] never\n", "always inherit madvise [never]\n", "PMD-sized THP disabled: "),
    ],
)
def test_thp_disabled_is_named(monkeypatch, enabled, per_size, expect):
    size_kb = thp_pmd_size() // 1024
    _fake_sysfs(
        monkeypatch,
        {f"{memory.THP_SYSFS}/enabled": enabled, f"{memory.THP_SYSFS}/hugepages-{size_kb}kB/enabled": per_size},
    )
    with pytest.raises(ThpUnavailable, match=re.escape(expect)):
        Region.create(MemoryKind.ANON, 1, thp=True)


def test_thp_disabled_for_the_process_is_named(monkeypatch):
    _fake_sysfs(
        monkeypatch,
        {
            f"{memory.THP_SYSFS}/enabled": "always [madvise] never\n",
            "/proc/self/status": "Name:\tpython\nTHP_enabled:\t0\n",
        },
    )
    with pytest.raises(ThpUnavailable, match="PR_SET_THP_DISABLE"):
        Region.create(MemoryKind.ANON, 1, thp=True)


def test_no_thp_config_is_named(monkeypatch):
    _fake_sysfs(monkeypatch, {f"{memory.THP_SYSFS}/enabled": None})
    with pytest.raises(ThpUnavailable, match="CONFIG_TRANSPARENT_HUGEPAGE"):
        Region.create(MemoryKind.ANON, 1, thp=True)


@pytest.mark.parametrize(
    "counters, expect",
    [
        ((5, 6), "no free 2 MiB block: the fault fell back to 4 KiB pages (/proc/vmstat thp_fault_fallback 5 -> 6)"),
        ((None, None), "most likely for want of a free 2 MiB block (this kernel has no thp_fault_fallback"),
    ],
)
def test_no_free_huge_block_is_named(monkeypatch, thp_ok, counters, expect):
    """A fault that fell back to 4 KiB pages is reported as no free 2 MiB block, confirmed by
    /proc/vmstat's thp_fault_fallback where the kernel counts (CONFIG_VM_EVENT_COUNTERS)."""
    from harness._native import lib

    at_create, at_check = counters
    monkeypatch.setattr(memory, "_vmstat", lambda name: at_create)
    with Region.create(MemoryKind.ANON, 1, thp=True) as region:
        region.madvise(lib.MADV_NOHUGEPAGE)  # this fault gets a 4 KiB page, as if no block were free
        region.write()
        region.madvise(lib.MADV_HUGEPAGE)
        assert not thp_mapping(region).pmd_mapped
        monkeypatch.setattr(memory, "_vmstat", lambda name: at_check)
        with pytest.raises(ThpUnavailable, match=re.escape(expect)):
            pte.check_thp(region)


def test_thp_regions_are_anonymous_only():
    with pytest.raises(HarnessError, match="anonymous only"):
        Region.create(MemoryKind.SHMEM, 1, thp=True)


def test_the_simulator_has_no_thp():
    with SimBackend("access-hints") as b:
        with pytest.raises(NotImplementedError, match="does not model transparent huge pages"):
            b.create(MemoryKind.ANON, 1, thp=True)
        r = b.create(MemoryKind.ANON, 1)
        with pytest.raises(NotImplementedError):
            b.thp_mapping(r)


# -- which THP cases exist --------------------------------------------------------------

STOCK = (None, frozenset({Feature.PAGEFAULT_FLAG_WP, Feature.WP_UNPOPULATED}), {"soft-dirty": True})
PATCHED = (None, STOCK[1] | {Feature.ACCESS_HINTS}, {"soft-dirty": True})


@pytest.mark.parametrize(
    "option, kernel, expect",
    [
        ("auto", STOCK, (1, 5)),
        ("kernel", STOCK, (1, 5)),
        ("auto", PATCHED, (1, 2, 3, 5, 6, 7, 8)),
        ("auto", (None, PATCHED[1], {"soft-dirty": False}), (1, 2, 3, 5, 6, 7)),
        ("sim", PATCHED, ()),
        ("auto", ("userfaultfd unavailable: EPERM", frozenset(), {}), ()),
    ],
)
def test_thp_cases_exist_only_where_the_kernel_answers(option, kernel, expect):
    assert kernel_only_clauses(option, THP_CLAUSES, kernel) == expect


def test_clause_4_has_no_thp_case():
    """Clause 4 is about clean shared page-cache PTEs; an anonymous THP has none (shmem THP is not covered)."""
    assert 4 not in THP_CLAUSES


# -- the checks can fail -------------------------------------------------------------------


class MisbehavingKernel(KernelBackend):
    """The real kernel, plus something done right after every un-protect, as a broken kernel would.

    ``after_plain``: what follows an un-protect without hints ("read": the
    PMD comes back young; "write": young and dirty; "split": the PMD is
    split into PTEs).  ``hints``: emulate ACCESS_HINTS in user space on a
    kernel without them: after a hinted un-protect, ``access_likely``
    reads and ``write_likely`` writes each present page ("young-only": it
    only reads, like the young-only mutant; "populate": it touches even
    pages that are not there).
    """

    def __init__(self, after_plain: Optional[str] = None, hints: Optional[str] = None):
        super().__init__()
        self.after_plain = after_plain
        self.hints = hints

    forked = False

    def fork_child(self):
        self.forked = True
        return super().fork_child()

    def has_feature(self, feature: Feature) -> bool:
        return (feature is Feature.ACCESS_HINTS and self.hints is not None) or super().has_feature(feature)

    def api(self, features=()):
        return super().api(tuple(f for f in features if f is not Feature.ACCESS_HINTS or self.hints is None))

    def writeprotect(self, r, protect, first=0, count=None, *, access_likely=False, write_likely=False, raw_mode=None):
        if raw_mode is not None and self.hints is not None and not raw_mode & abi.WRITEPROTECT_MODE_WP:
            # a raw mode (DONTWAKE cases): take the hint bits out, this kernel has none, and emulate them
            bits = abi.hint_abi()
            access_likely, write_likely = bool(raw_mode & bits.access_likely), bool(raw_mode & bits.write_likely)
            raw_mode &= ~(bits.access_likely | bits.write_likely)
        hinted = access_likely or write_likely
        if hinted and self.hints is None:
            raise OSError(errno.EINVAL, "no hints here")
        super().writeprotect(r, protect, first, count, raw_mode=raw_mode)
        if protect or (raw_mode is not None and not hinted):
            return
        region = self.region(r)
        if not hinted:
            if self.after_plain in ("read", "write"):
                (region.write if self.after_plain == "write" else region.read)(first, count)
            elif self.after_plain == "split":
                start, _ = region.span(first, count)
                self._need_uffd().writeprotect(start, PAGE_SIZE, protect=True)
                self._need_uffd().writeprotect(start, PAGE_SIZE, protect=False)
            return
        from harness.pte import is_present

        for page in range(first, first + (r.npages - first if count is None else count)):
            if self.hints != "populate" and not is_present(region.page_addr(page)):
                continue
            # a kernel never makes a COW-shared page writable: emulating WRITE_LIKELY by a store would
            # copy it (a write fault) and so do what the kernel must not; after fork_child, read instead
            if write_likely and self.hints != "young-only" and not self.forked:
                region.write(page, 1)
            else:
                region.read(page, 1)


def test_clause5_thp_passes_on_this_kernel(thp_ok):
    with MisbehavingKernel() as b:
        assert clause_5(b, MemoryKind.ANON, thp=True) == []


@pytest.mark.parametrize(
    "after, case, expect",
    [
        ("read", "anon-thp old+clean, un-protect without hints", "young is True through smaps, expected False"),
        ("write", "anon-thp old+clean, un-protect without hints", "dirty is True through smaps, expected False"),
        ("split", "anon-thp young+dirty, un-protect without hints", "the THP is no longer PMD-mapped"),
    ],
)
def test_clause5_thp_catches_a_kernel_that_touches_the_pmd(thp_ok, after, case, expect):
    with MisbehavingKernel(after_plain=after) as b:
        violations = clause_5(b, MemoryKind.ANON, thp=True)
    assert any(v.startswith(case) and expect in v for v in violations), violations


def test_clause5_thp_catches_young_through_a_fake_observation(thp_ok):
    """The same, fed a fake observation instead: every channel reports the PMD young after the un-protect."""
    from dataclasses import replace

    class YoungAfterUnprotect(KernelBackend):
        unprotected = False

        def create(self, *args, **kwargs):
            self.unprotected = False
            return super().create(*args, **kwargs)

        def writeprotect(self, r, protect, *args, **kwargs):
            super().writeprotect(r, protect, *args, **kwargs)
            self.unprotected = not protect

        def observe(self, r, page=0, channel="smaps"):
            state = super().observe(r, page, channel)
            return replace(state, young=True) if r.thp and self.unprotected else state

    with YoungAfterUnprotect() as b:
        violations = clause_5(b, MemoryKind.ANON, thp=True)
    assert [v for v in violations if "old+clean" in v and "young is True" in v], violations
    assert not [v for v in violations if "young+" in v], violations


@pytest.mark.parametrize("clause", [clause_2, clause_3, clause_7])
def test_hint_clauses_thp_pass_on_hints_done_right(thp_ok, clause):
    with MisbehavingKernel(hints="emulated") as b:
        assert clause(b, MemoryKind.ANON, thp=True) == []


def test_clause3_thp_catches_young_only(thp_ok):
    with MisbehavingKernel(hints="young-only") as b:
        violations = clause_3(b, MemoryKind.ANON, thp=True)
    assert any("anon-thp old+clean, un-protect WRITE_LIKELY: dirty is False" in v for v in violations), violations
    assert not any("young is False" in v for v in violations), violations


def test_clause7_thp_catches_population(thp_ok):
    with MisbehavingKernel(hints="populate") as b:
        violations = clause_7(b, MemoryKind.ANON, thp=True)
    assert any("anon-thp empty" in v and "populated" in v for v in violations), violations


# -- part of a THP ---------------------------------------------------------------------------


class PartialHintKernel(KernelBackend):
    """This kernel, with ACCESS_LIKELY on part of a THP emulated in user space (a read of each base
    page after the un-protect), over the first ``honoured`` pages of the part only (None: all)."""

    def __init__(self, honoured: Optional[int] = None):
        super().__init__()
        self.honoured = honoured

    def has_feature(self, feature: Feature) -> bool:
        return feature is Feature.ACCESS_HINTS or super().has_feature(feature)

    def api(self, features=()):
        return super().api(tuple(f for f in features if f is not Feature.ACCESS_HINTS))

    def writeprotect_base(self, r, first, count, protect, *, access_likely=False, write_likely=False):
        super().writeprotect_base(r, first, count, protect)
        if access_likely:
            from harness._native import lib

            pages = count if self.honoured is None else self.honoured
            lib.harness_read_pages(self.region(r).addr + first * PAGE_SIZE, pages, PAGE_SIZE)


def test_thp_part_passes_when_every_page_of_the_part_is_made_young(thp_ok):
    from harness.backends.contract import Shape, Target, _thp_part

    with PartialHintKernel() as b:
        assert _thp_part(b, Target(MemoryKind.ANON, Shape.THP_PART), 2) == []


def test_thp_part_catches_a_hint_honoured_on_the_first_pte_only(thp_ok):
    """A kernel that makes only the first PTE of the split THP's part young: smaps counts 1 page, not 5."""
    from harness.backends.contract import THP_PART_PAGES, Shape, Target, _thp_part

    with PartialHintKernel(honoured=1) as b:
        violations = _thp_part(b, Target(MemoryKind.ANON, Shape.THP_PART), 2)
    assert any(f"smaps counts 1 young (referenced) pages, expected {THP_PART_PAGES}" in v for v in violations), (
        violations
    )
