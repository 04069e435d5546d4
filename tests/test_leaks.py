"""Opening and closing many userfaultfds and regions leaves nothing behind."""

from __future__ import annotations

import psutil

from harness.abi import Feature, RegisterMode
from harness.handler import FaultHandler
from harness.memory import MemoryKind, Region
from harness.uffd import Userfaultfd


def _snapshot():
    proc = psutil.Process()
    return proc.num_fds(), len(proc.memory_maps(grouped=False)), proc.num_threads()


def _cycle(kind: MemoryKind) -> None:
    with Region.create(kind, 2) as region, Userfaultfd.open([Feature.PAGEFAULT_FLAG_WP]) as uffd:
        region.write()
        uffd.register(region.addr, region.length, RegisterMode.WP)
        uffd.writeprotect(region.addr, region.length, protect=True)
        with FaultHandler(uffd, lambda u, e: u.writeprotect(region.addr, region.length, protect=False)):
            region.write()
        uffd.unregister(region.addr, region.length)
        alias = region.alias() if kind is not MemoryKind.ANON else None
        if alias:
            alias.close()


def test_no_fd_mapping_or_thread_leak():
    kinds = [MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE, MemoryKind.FILE]
    for _ in range(3):  # warm up: glibc keeps thread stacks and arenas for reuse
        for kind in kinds:
            _cycle(kind)
    before = _snapshot()
    for _ in range(50):
        for kind in kinds:
            _cycle(kind)
    after = _snapshot()
    fds, maps, threads = (a - b for a, b in zip(after, before, strict=True))
    assert fds == 0, f"{fds} file descriptors leaked over 200 cycles"
    assert threads == 0, f"{threads} handler threads left running"
    # Each cycle maps at least two VMAs (region, guards): a leak would add
    # hundreds.  The allocator may split or merge a heap or arena mapping or
    # two, which is not ours.
    assert abs(maps) <= 4, f"mappings went from {before[1]} to {after[1]} over 200 cycles"


def test_closing_without_context_manager_releases_fd():
    proc = psutil.Process()
    before = proc.num_fds()
    fds = [Userfaultfd.open() for _ in range(100)]
    assert proc.num_fds() == before + 100
    for uffd in fds:
        uffd.close()
    assert proc.num_fds() == before
