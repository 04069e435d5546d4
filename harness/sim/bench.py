"""How fast the simulator is: page operations per second on one core.

A "page operation" is one page visited by one operation: an access, or one
PTE of a ranged ioctl / madvise / mprotect / clear_refs.  The workload mixes
them the way the contract and differential tests do.  Run it with
``uffd-harness sim bench`` or ``python -m harness.sim.bench``.
"""

from __future__ import annotations

import time

from harness.abi import CLEAR_REFS_ALL, Feature, RegisterMode
from harness.memory import PAGE_SIZE, MemoryKind
from harness.sim.model import Mm

TARGET_OPS_PER_SECOND = 200_000


def setup(mm: Mm, npages: int) -> None:
    """One anonymous and one shmem region of ``npages``, WP-registered."""
    mm.api([Feature.ACCESS_HINTS] if Feature.ACCESS_HINTS in mm.profile.features else [])
    for kind in (MemoryKind.ANON, MemoryKind.SHMEM):
        vma = mm.mmap(kind, npages)
        mm.register(vma.start, npages * PAGE_SIZE, RegisterMode.WP)


def one_round(mm: Mm) -> None:
    """Write every page, protect, un-protect (with hints if negotiated), write again,
    MADV_FREE (anon) or MADV_DONTNEED (shmem), read every page; then clear_refs."""
    hints = Feature.ACCESS_HINTS in mm.features
    access = mm.access
    for vma in mm.vmas:
        addrs = range(vma.start, vma.end, PAGE_SIZE)
        length = vma.end - vma.start
        for addr in addrs:
            access(addr, True)
        mm.writeprotect(vma.start, length, True)
        mm.writeprotect(vma.start, length, False, write_likely=hints, access_likely=hints)
        for addr in addrs:
            access(addr, True)
        mm.madvise(vma, "free" if vma.anon else "dontneed")
        for addr in addrs:
            access(addr, False)
    mm.clear_refs(CLEAR_REFS_ALL)


def measure(profile: str = "access-hints", npages: int = 512, seconds: float = 1.0) -> dict:
    """Run rounds for about ``seconds``; returns page ops, seconds and ops per second."""
    if not 0 < seconds < float("inf"):  # NaN fails too: the loop below would never end
        raise ValueError(f"sim bench: seconds must be a finite number above 0, not {seconds}")
    warm = Mm(profile)
    setup(warm, 16)
    one_round(warm)
    mm = Mm(profile)
    setup(mm, npages)
    rounds = 0
    start = time.perf_counter()
    while True:
        one_round(mm)
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    ops = mm.stats["page_ops"]
    return {
        "profile": profile,
        "npages": npages,
        "rounds": rounds,
        "page_ops": ops,
        "seconds": round(elapsed, 3),
        "ops_per_second": round(ops / elapsed),
        "target": TARGET_OPS_PER_SECOND,
        "meets_target": ops / elapsed >= TARGET_OPS_PER_SECOND,
    }


def main() -> int:
    result = measure()
    print(
        f"simulator: {result['page_ops']} page operations in {result['seconds']} s = "
        f"{result['ops_per_second']:,} ops/s on one core (target {TARGET_OPS_PER_SECOND:,}: "
        f"{'met' if result['meets_target'] else 'NOT met'})"
    )
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
