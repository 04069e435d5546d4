"""The span shape: several pages over two VMAs across a PMD boundary, un-protected with one ioctl.

The host kernel has no hint patch, so a hinted un-protect is emulated in user
space (a read of each page after a plain un-protect, as the hint would have
made it young), and broken variants of that emulation stand for the kernels
the span exists to catch: one that honours ACCESS_LIKELY only on the first
PTE of each page-table walk, and one that honours it only in the first VMA.
No clause marker here: these test the checks, not the kernel.
"""

from __future__ import annotations

import pytest

from harness.abi import Feature
from harness.backends.contract import SPAN_BOUNDARY, SPAN_PAGES, Shape, Target, check_2
from harness.backends.kernel import KernelBackend
from harness.memory import PAGE_SIZE, MemoryKind
from harness.pte import smaps_vma

#: they test the checks, not the kernel (validate --quick leaves them out)
pytestmark = pytest.mark.checks_the_checks


class EmulatedHints(KernelBackend):
    """ACCESS_LIKELY emulated after a plain un-protect; ``honoured(vma, page_in_walk)`` says where."""

    def __init__(self, honoured=lambda vma, index: True):
        super().__init__(channels=["smaps"])
        self.honoured = honoured

    def has_feature(self, feature: Feature) -> bool:
        return feature is Feature.ACCESS_HINTS or super().has_feature(feature)

    def api(self, features=()):
        return super().api(tuple(f for f in features if f is not Feature.ACCESS_HINTS))

    def writeprotect_adjacent(self, refs, protect, *, access_likely=False, write_likely=False, raw_mode=None):
        from harness import abi

        if raw_mode is not None:
            bits = abi.hint_abi()
            access_likely = access_likely or bool(raw_mode & bits.access_likely)
            write_likely = write_likely or bool(raw_mode & bits.write_likely)
            raw_mode &= ~(bits.access_likely | bits.write_likely)
        super().writeprotect_adjacent(refs, protect, raw_mode=raw_mode)
        if protect or not (access_likely or write_likely):
            return
        index = 0
        for vma, r in enumerate(refs):
            for page in range(r.npages):
                if self.honoured(vma, index):
                    (self.write if write_likely and self.region(r).kind is MemoryKind.ANON else self.read)(r, page)
                index += 1


def _span_violations(backend) -> list[str]:
    return check_2(backend, Target(MemoryKind.ANON, Shape.SPAN))


def test_a_span_is_two_vmas_across_a_pmd_boundary():
    with EmulatedHints() as b:
        refs = b.create_adjacent(MemoryKind.ANON, SPAN_PAGES, SPAN_BOUNDARY)
        regions = [b.region(r) for r in refs]
        assert regions[0].end == regions[1].addr, "the VMAs are not adjacent"
        vmas = {(v["start"], v["end"]) for v in (smaps_vma(r.addr) for r in regions)}
        assert len(vmas) == 2, f"the two regions merged into one VMA: {vmas}"
        boundary = regions[0].addr + SPAN_BOUNDARY * PAGE_SIZE
        assert boundary % (2 << 20) == 0, "the PMD boundary is not where the span says"


def test_a_span_passes_when_every_page_is_made_young():
    with EmulatedHints() as b:
        assert _span_violations(b) == []


@pytest.mark.parametrize(
    "name, honoured",
    [
        ("first PTE of each walk only", lambda vma, index: index in (0, SPAN_BOUNDARY, SPAN_PAGES[0])),
        ("first VMA only", lambda vma, index: vma == 0),
    ],
)
def test_a_span_catches_a_hint_honoured_in_part(name, honoured):
    with EmulatedHints(honoured) as b:
        violations = _span_violations(b)
    assert any("young" in v and "un-protect ACCESS_LIKELY" in v for v in violations), (name, violations)
