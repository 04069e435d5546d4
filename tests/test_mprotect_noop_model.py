"""The simulator's mprotect to the protection a VMA already has is a no-op, as mprotect_fixup() makes it.

Found by the differential test in a TCG guest: write a WP-registered shmem page, clear_refs 1 (young
cleared, no TLB flush), mprotect(rw) to rw, read.  The kernel changes nothing and flushes nothing, so the
read may go through the cached translation and leave the PTE old; the model used to re-derive the PTE's
write bit (a flush) and predict young for certain.
"""

from harness.backends.sim import SimBackend
from harness.memory import PROT_RW, MemoryKind


def test_mprotect_to_the_same_protection_changes_nothing():
    with SimBackend("linux-6.12") as b:
        b.api(())
        r = b.create(MemoryKind.SHMEM, 1)
        b.write(r)
        before = b.observe(r, 0, "sim")
        b.clear_refs(1)
        b.mprotect(r, PROT_RW)
        b.read(r)
        assert b.observe(r, 0, "sim").writable == before.writable, "a no-op mprotect changed the write bit"
        assert "young" in b.uncertain_fields(r), (
            "after clear_refs without a flush, a read may be served by the cached translation: young is unknown"
        )
