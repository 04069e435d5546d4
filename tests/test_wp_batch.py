"""The batched write-protect path (Userfaultfd.writeprotect_many) and the prepared single call.

What each range ends up as is read back from pagemap's uffd-wp bit
(``PagemapBit.UFFD_WP``, bit 57), page by page: the batch must do exactly
what it was asked, range by range, and say which ranges it could not do.
"""

from __future__ import annotations

import errno
import os

import pytest

from harness import pte
from harness.abi import Feature, RegisterMode
from harness.errors import InvalidRanges, UffdClosedError, UffdError, WriteProtectBatchError
from harness.memory import MemoryKind
from harness.uffd import PreparedRanges, Userfaultfd


@pytest.fixture
def wp_region(make_region):
    """Eight written pages, the first six registered for WP (pages 6 and 7 are not)."""
    region = make_region(MemoryKind.ANON, 8)
    region.write()
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        uffd.register(region.addr, 6 * region.page_size, RegisterMode.WP)
        yield uffd, region


def page(region, i: int, n: int = 1) -> tuple[int, int]:
    return region.addr + i * region.page_size, n * region.page_size


def wp_bits(region) -> list[bool]:
    return [pte.is_uffd_wp(region.addr + i * region.page_size) for i in range(region.npages)]


def test_each_range_is_protected_then_unprotected_as_asked(wp_region):
    uffd, region = wp_region
    ranges = [page(region, 0), page(region, 2, 2), page(region, 5)]
    assert uffd.writeprotect_many(ranges, protect=True) == [None, None, None]
    assert wp_bits(region) == [True, False, True, True, False, True, False, False], (
        "pagemap uffd-wp should be set on pages 0, 2, 3 and 5 only"
    )
    assert uffd.writeprotect_many([page(region, 2, 2)], protect=False) == [None]
    assert wp_bits(region) == [True, False, False, False, False, True, False, False], (
        "un-protecting pages 2-3 should leave 0 and 5 protected"
    )


def test_prepared_ranges_are_reused_across_modes(wp_region):
    uffd, region = wp_region
    ranges = PreparedRanges([page(region, i) for i in range(6)])
    for protect in (True, False, True):
        assert uffd.writeprotect_many(ranges, protect=protect) == [None] * 6
        assert wp_bits(region) == [protect] * 6 + [False, False], f"after protect={protect}"


@pytest.mark.parametrize(
    "bad, code, advice",
    [
        ("unregistered", errno.ENOENT, "not (fully) registered"),
        ("unaligned", errno.EINVAL, "multiples of the page size"),
    ],
)
def test_a_bad_range_in_the_middle_gets_its_own_errno_and_the_others_are_done(wp_region, bad, code, advice):
    uffd, region = wp_region
    middle = (
        page(region, 6) if bad == "unregistered" else (region.addr + 2 * region.page_size + 8, region.page_size - 8)
    )
    ranges = [page(region, 0), page(region, 1), middle, page(region, 3), page(region, 4)]

    results = uffd.writeprotect_many(ranges, protect=True, check=False)
    assert [r is None for r in results] == [True, True, False, True, True]
    err = results[2]
    assert isinstance(err, UffdError) and err.errno == code and (err.start, err.length) == middle
    assert f"{middle[0]:#x}" in str(err) and errno.errorcode[code] in str(err) and advice in str(err)
    assert wp_bits(region)[:5] == [True, True, False, True, True], (
        "the ranges before and after the bad one should all be protected"
    )

    uffd.writeprotect_many(PreparedRanges([page(region, i) for i in range(6)]), protect=False)
    with pytest.raises(WriteProtectBatchError) as info:
        uffd.writeprotect_many(ranges, protect=True)
    exc = info.value
    assert isinstance(exc, UffdError) and exc.errno == code and (exc.start, exc.length) == middle
    assert [i for i, _ in exc.failures] == [2] and exc.results[2].errno == code
    assert "1 of 5 ranges failed, the others were done" in str(exc) and f"#2 [{middle[0]:#x}" in str(exc)
    assert wp_bits(region)[:5] == [True, True, False, True, True], "raising comes after every range was tried"


def test_empty_batch_returns_nothing_and_issues_no_ioctl(wp_region):
    uffd, region = wp_region
    assert uffd.writeprotect_many([], protect=True) == []
    assert uffd.writeprotect_many(PreparedRanges(()), protect=True) == []
    assert not any(wp_bits(region))


@pytest.mark.parametrize(
    "ranges, index, other, says",
    [
        (lambda r: [page(r, 0, 2), page(r, 1)], 0, 1, "overlap"),
        # a long range covering a later one, with an empty and a disjoint range in between
        (lambda r: [page(r, 0, 6), (r.addr + r.page_size, 0), page(r, 4), page(r, 7)], 0, 2, "overlap"),
        (lambda r: [page(r, 0), (r.addr, r.page_size, 0)], 1, None, "pair"),
        (lambda r: [page(r, 0), (r.addr,)], 1, None, "pair"),
        (lambda r: [page(r, 0), r.addr], 1, None, "pair"),
        (lambda r: [page(r, 0), ("0x1000", 4096)], 1, None, "pair"),
        (lambda r: [page(r, 0), (-4096, 4096)], 1, None, "2**64"),
        (lambda r: [page(r, 0), (r.addr, 1 << 64)], 1, None, "2**64"),
    ],
)
def test_bad_input_is_refused_before_any_ioctl_naming_the_range(wp_region, ranges, index, other, says):
    uffd, region = wp_region
    with pytest.raises(InvalidRanges) as info:
        uffd.writeprotect_many(ranges(region), protect=True)
    assert info.value.index == index and info.value.other == other, str(info.value)
    assert f"#{index}" in str(info.value) and says in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not any(wp_bits(region)), "nothing may be protected when the batch is refused"


def test_adjacent_ranges_do_not_overlap(wp_region):
    uffd, region = wp_region
    assert uffd.writeprotect_many([page(region, 1), page(region, 0)], protect=True) == [None, None]
    assert wp_bits(region)[:3] == [True, True, False]


@pytest.mark.host_only  # the binding's C loop and its results at scale: the kernel answers ENOENT or 0 as anywhere
def test_huge_batch_is_one_call_with_one_result_per_range(make_region):
    """65536 one-page ranges (256 MiB, mostly never touched) in one call; the last half unregistered."""
    n = 1 << 16
    region = make_region(MemoryKind.ANON, n)
    for i in (0, n // 2 - 1, n // 2):
        region.write(i, 1)
    ranges = PreparedRanges([page(region, i) for i in range(n)])
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        uffd.register(region.addr, region.length // 2, RegisterMode.WP)
        results = uffd.writeprotect_many(ranges, protect=True, check=False)
        assert len(results) == n
        failed = [i for i, r in enumerate(results) if r is not None]
        assert failed == list(range(n // 2, n)), "exactly the unregistered half should fail"
        assert all(results[i].errno == errno.ENOENT for i in (n // 2, n - 1))
        assert pte.is_uffd_wp(region.addr) and pte.is_uffd_wp(region.addr + (n // 2 - 1) * region.page_size)
        assert not pte.is_uffd_wp(region.addr + n // 2 * region.page_size)
        with pytest.raises(WriteProtectBatchError) as info:
            uffd.writeprotect_many(ranges, protect=False)
        message = str(info.value)
        assert f"{n // 2} of {n} ranges failed" in message and f"and {n // 2 - 3} more" in message
        assert len(message) < 1000, "the message spells out a few failures, not all of them"
        assert not pte.is_uffd_wp(region.addr), "the registered half is un-protected despite the failures"


def test_batch_on_a_closed_userfaultfd_is_typed(wp_region):
    uffd, region = wp_region
    uffd.close()
    with pytest.raises(UffdClosedError):
        uffd.writeprotect_many([page(region, 0)], protect=True)


def test_batch_hints_without_the_feature_are_einval_per_range(wp_region):
    """Clause 1 through the batch: the mode word is composed as unprotect() composes it."""
    uffd, region = wp_region
    uffd.writeprotect_many([page(region, 0), page(region, 1)], protect=True)
    results = uffd.writeprotect_many([page(region, 0), page(region, 1)], protect=False, write_likely=True, check=False)
    assert [r.errno for r in results] == [errno.EINVAL, errno.EINVAL]
    assert "the ACCESS_HINTS feature was not negotiated" in str(results[0])


# -- the prepared single call ------------------------------------------------------------


def test_repeated_single_calls_use_prepared_requests_and_still_toggle(wp_region):
    uffd, region = wp_region
    addr, length = page(region, 1)
    for protect in (True, False, True, False, True):
        uffd.writeprotect(addr, length, protect)
        assert wp_bits(region)[1] is protect, f"after protect={protect}"
    assert uffd._wp_start is addr, "a range used twice in a row should be prepared"
    # equal values in other int objects: the same range, still right
    uffd.writeprotect(int(str(addr)), int(str(length)), False)
    assert wp_bits(region)[1] is False
    # another range in between: each call does what it says
    uffd.writeprotect(*page(region, 2), True)
    uffd.writeprotect(addr, length, True)
    assert wp_bits(region)[1:3] == [True, True]


def test_prepared_single_call_errors_are_typed_with_the_range(wp_region):
    uffd, region = wp_region
    addr, length = page(region, 0)
    uffd.writeprotect(addr, length, True)
    uffd.writeprotect(addr, length, False)
    assert uffd._wp_start is addr
    uffd.unregister(region.addr, 6 * region.page_size)
    with pytest.raises(UffdError) as info:
        uffd.writeprotect(addr, length, True)
    assert info.value.errno == errno.ENOENT and info.value.start == addr
    assert f"UFFDIO_WRITEPROTECT [{addr:#x}, +{length}): ENOENT" in str(info.value)


def test_prepared_single_call_after_close_never_reaches_a_reused_fd(wp_region, make_region):
    """A closed Userfaultfd whose fd number was reused must refuse, not toggle the new fd's range."""
    uffd, region = wp_region
    addr, length = page(region, 0)
    uffd.writeprotect(addr, length, True)
    uffd.writeprotect(addr, length, False)
    old_fd = uffd.fileno()
    uffd.close()
    with Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as other:
        other.register(region.addr, region.page_size, RegisterMode.WP)
        if other.fileno() != old_fd:
            os.dup2(other.fileno(), old_fd)  # make the reuse certain
        try:
            with pytest.raises(UffdClosedError):
                uffd.writeprotect(addr, length, True)
            assert not wp_bits(region)[0], "the closed object must not have protected the page"
        finally:
            if other.fileno() != old_fd:
                os.close(old_fd)
