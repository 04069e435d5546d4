"""A Region misused: closed, indexed past its end, made too large, dropped without close().

Each access runs in a forked child (harness.process.run_in_child), so a
regression that hands C a freed address shows up as a test failure naming
SIGSEGV instead of killing the test run.
"""

from __future__ import annotations

import gc

import psutil
import pytest

from harness import pte
from harness.errors import InvalidArgument, MappingError, RegionClosedError
from harness.memory import PAGE_SIZE, MemoryKind, Region
from harness.process import run_in_child

ACCESSES = {
    "read": lambda r: r.read(),
    "write": lambda r: r.write(),
    "checksum": lambda r: r.checksum(),
    "data": lambda r: r.data(),
    "fill": lambda r: r.fill(0, b"x"),
    "probe": lambda r: r.probe(),
    "madvise": lambda r: r.free(),
    "mprotect": lambda r: r.mprotect(0),
    "mremap": lambda r: r.mremap(),
    "alias": lambda r: r.alias(),
    "observe": lambda r: pte.observe(r),
}


def _expect_in_child(body, exc_type, fragment: str) -> None:
    def check():
        try:
            body()
        except exc_type as exc:
            assert fragment in str(exc), f"{exc!r} does not say {fragment!r}"
            return
        raise AssertionError(f"no {exc_type.__name__} raised")

    run_in_child(check, timeout=20)


@pytest.mark.parametrize("access", sorted(ACCESSES))
def test_every_access_after_close_raises_region_closed(access):
    def body():
        region = Region.create(MemoryKind.SHMEM if access == "alias" else MemoryKind.ANON, 1)
        region.write()
        region.close()
        ACCESSES[access](region)

    _expect_in_child(body, RegionClosedError, "is closed")


def test_data_past_the_end_is_an_index_error_not_a_crash():
    def body():
        with Region.create(MemoryKind.ANON, 2) as region:
            region.data(0, 10 * PAGE_SIZE)

    _expect_in_child(body, IndexError, "run past the end")


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.data(0, -1),
        lambda r: r.data(1.5),
        lambda r: r.read(0, 2.0),
        lambda r: r.write("0"),
        lambda r: r.fill(2, b"x"),
        lambda r: r.fill(1, b"x" * (PAGE_SIZE + 1)),
    ],
    ids=["negative-length", "float-page", "float-count", "str-first", "page-outside", "fill-past-end"],
)
def test_bad_indices_are_typed_errors(call):
    def body():
        with Region.create(MemoryKind.ANON, 2) as region:
            call(region)

    _expect_in_child(body, (IndexError, InvalidArgument), "")


def test_close_twice_is_harmless(make_region):
    region = Region.create(MemoryKind.SHMEM, 1)
    region.close()
    region.close()
    assert region.closed and "closed" in repr(region)


@pytest.mark.parametrize("npages", [0, -1, 2**62, 2**70, 1.5, "3", True])
def test_impossible_sizes_are_invalid_arguments(npages):
    with pytest.raises(InvalidArgument) as info:
        Region.create(MemoryKind.ANON, npages)
    assert info.value.argument == "npages"


@pytest.mark.parametrize("kind", [MemoryKind.SHMEM, MemoryKind.FILE])
def test_failed_ftruncate_leaks_no_fd(monkeypatch, kind):
    """ftruncate refusing the size (EFBIG, ENOSPC, ...) closes the memfd or tmpfs file it was sizing."""
    import errno
    import os

    def refuse(fd, length):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    proc = psutil.Process()
    before = proc.num_fds()
    monkeypatch.setattr(os, "ftruncate", refuse)
    for _ in range(20):
        with pytest.raises(MappingError) as info:
            Region.create(kind, 1)
        assert info.value.op.startswith("ftruncate") and "EFBIG" in str(info.value)
    assert proc.num_fds() == before, f"{proc.num_fds() - before} fds leaked by 20 failed creates"


def test_the_issues_oversized_shmem_region_leaks_no_fd():
    proc = psutil.Process()
    before = proc.num_fds()
    for _ in range(20):
        with pytest.raises((InvalidArgument, MappingError)):
            Region.create(MemoryKind.SHMEM, 2**62)
    assert proc.num_fds() == before, f"{proc.num_fds() - before} fds leaked by 20 failed creates"


def test_a_dropped_region_releases_its_fd_and_mapping():
    proc = psutil.Process()
    before_fds, before_maps = proc.num_fds(), len(proc.memory_maps(grouped=False))
    for _ in range(50):
        region = Region.create(MemoryKind.SHMEM, 1)
        region.write()
        del region
    gc.collect()
    assert proc.num_fds() == before_fds, f"{proc.num_fds() - before_fds} fds kept by 50 dropped regions"
    maps = len(proc.memory_maps(grouped=False)) - before_maps
    assert maps <= 4, f"{maps} more mappings after 50 dropped regions"
