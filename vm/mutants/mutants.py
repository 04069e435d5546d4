"""The mutants of the hint series: one entry each, read by harness/vm/mutants.py.

Each mutant is vm/patches/ with the exact substitutions listed (each must
match its patch exactly once, and every hunk keeps its line counts), a
one- or two-line change of the C code of the kind a developer could write.
``clauses`` must come out ``fail`` in a guest booted on it; ``also`` may
(a side effect that the contract is right to report); every other clause
must not.  ``exposed_by`` says, in fields the report and the tests can read,
which cases show the bug (keys: harness.vm.mutants.EXPOSURE_KEYS);
``exposure`` says it in words.  ``pending`` is set only with evidence that
the contract cannot catch the mutant yet, and says what it lacks.

The line numbers of the hunks a substitution adds are those of Debian's
linux-source-6.12 with the earlier hunks of the same patch applied.
"""

from harness.vm.mutants import Mutant, Sub

P1 = "0001"  # mm: change_pte_range(), change_huge_pmd(), hugetlb_change_protection(), MM_CP_UFFD_*
P2 = "0002"  # userfaultfd: the ABI, userfaultfd_writeprotect(), mwriteprotect_range()

#: the series' ACCESS_LIKELY in hugetlb_change_protection(), which the hugetlb mutants replace
HUGETLB_ACCESS_LIKELY = (
    "+\t\t\tif (uffd_wp_resolve &&\n"
    "+\t\t\t    (cp_flags & MM_CP_UFFD_ACCESS_LIKELY))\n"
    "+\t\t\t\tpte = pte_mkyoung(pte);\n"
)

MUTANTS = [
    Mutant(
        name="young-only",
        breaks="WRITE_LIKELY makes the PTE and the PMD it makes writable young but not dirty",
        clauses=(3,),
        exposed_by={
            "kind": ["anon", "anon-thp"],
            "shape": ["page", "span", "thp", "thp-part"],
            "hints": "WRITE_LIKELY",
            "start": ["old+clean", "young+clean"],
        },
        exposure="a clean anonymous PTE or PMD-mapped THP made writable with WRITE_LIKELY stays clean "
        "(private shmem/file pages made writable are COW copies, already dirty: they cannot show it)",
        subs=(
            Sub(
                P1,
                "change_huge_pmd()",
                "+\t\t\tentry = pmd_mkyoung(pmd_mkdirty(entry));\n",
                "+\t\t\tentry = pmd_mkyoung(entry);\n",
            ),
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\t\t\tptent = pte_mkyoung(pte_mkdirty(ptent));\n",
                "+\t\t\t\t\tptent = pte_mkyoung(ptent);\n",
            ),
        ),
    ),
    Mutant(
        name="write-likely-takes-write",
        breaks="under WRITE_LIKELY change_pte_range() write-protects the PTE it has just made writable (and "
        "dirties it): the hinted un-protect makes less writable than the one without hints",
        clauses=(3,),
        also=(2,),
        exposed_by={
            "kind": ["anon", "shmem-private", "file-private"],
            "shape": ["page", "span", "thp-part"],
            "hints": "WRITE_LIKELY",
            "start": ["old+clean", "old+dirty", "young+clean", "young+dirty"],
            "channel": ["pte", "write probe"],
        },
        exposure="a page that an un-protect without hints makes writable (measured on its twin) takes a write "
        "fault after the un-protect with WRITE_LIKELY (with both hints too: clause 2's writability)",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\t\t\tptent = pte_mkyoung(pte_mkdirty(ptent));\n",
                "+\t\t\t\t\tptent = pte_mkyoung(pte_mkdirty(pte_wrprotect(ptent)));\n",
            ),
        ),
    ),
    Mutant(
        name="pte-write-not-young",
        breaks="WRITE_LIKELY dirties the PTE it makes writable but leaves it old (PTE path only)",
        clauses=(3,),
        exposed_by={
            "kind": ["anon", "shmem-private", "file-private"],
            "shape": ["page", "span", "thp-part"],
            "hints": "WRITE_LIKELY",
            "start": ["old+clean", "old+dirty"],
        },
        exposure="an old PTE made writable with WRITE_LIKELY alone stays old (anonymous, or the COW copy in a "
        "private shmem/file mapping); a PMD-mapped THP is not affected",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\t\t\tptent = pte_mkyoung(pte_mkdirty(ptent));\n",
                "+\t\t\t\t\tptent = pte_mkdirty(ptent);\n",
            ),
        ),
    ),
    Mutant(
        name="pmd-access-from-write-flag",
        breaks="change_huge_pmd() takes ACCESS_LIKELY from the MM_CP_UFFD_WRITE_LIKELY bit (copy-paste): "
        "a PMD-mapped THP un-protected with ACCESS_LIKELY alone stays old",
        clauses=(2,),
        exposed_by={
            "kind": ["anon-thp"],
            "shape": "thp",
            "hints": "ACCESS_LIKELY",
            "start": ["old+clean", "old+dirty"],
        },
        exposure="an old PMD-mapped THP un-protected with ACCESS_LIKELY alone",
        subs=(
            Sub(
                P1,
                "change_huge_pmd()",
                "+\tbool access_likely = uffd_wp_resolve &&\n"
                "+\t\t\t     (cp_flags & MM_CP_UFFD_ACCESS_LIKELY);\n"
                "+\tbool write_likely = uffd_wp_resolve &&\n"
                "+\t\t\t    (cp_flags & MM_CP_UFFD_WRITE_LIKELY);\n"
                " \tint ret = 1;\n",
                "+\tbool access_likely = uffd_wp_resolve &&\n"
                "+\t\t\t     (cp_flags & MM_CP_UFFD_WRITE_LIKELY);\n"
                "+\tbool write_likely = uffd_wp_resolve &&\n"
                "+\t\t\t    (cp_flags & MM_CP_UFFD_WRITE_LIKELY);\n"
                " \tint ret = 1;\n",
            ),
        ),
    ),
    Mutant(
        name="access-anon-only",
        breaks="change_pte_range() honours ACCESS_LIKELY only in anonymous VMAs: shmem and file PTEs stay old",
        clauses=(2,),
        exposed_by={
            "kind": ["shmem", "shmem-private", "file"],
            "hints": "ACCESS_LIKELY",
            "start": ["old+clean", "old+dirty"],
        },
        exposure="an old shmem (or tmpfs file, or MAP_PRIVATE shmem) PTE un-protected with ACCESS_LIKELY",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\tif (access_likely)\n+\t\t\t\tptent = pte_mkyoung(ptent);\n",
                "+\t\t\tif (access_likely && vma_is_anonymous(vma))\n+\t\t\t\tptent = pte_mkyoung(ptent);\n",
            ),
        ),
    ),
    Mutant(
        name="access-needs-write",
        breaks="change_pte_range() honours ACCESS_LIKELY only together with WRITE_LIKELY: "
        "ACCESS_LIKELY alone leaves PTEs old",
        clauses=(2,),
        exposed_by={
            "kind": ["anon", "shmem", "shmem-private", "file"],
            "hints": "ACCESS_LIKELY",
            "start": ["old+clean", "old+dirty"],
        },
        exposure="any old PTE un-protected with ACCESS_LIKELY alone (with both hints it is young)",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\tif (access_likely)\n+\t\t\t\tptent = pte_mkyoung(ptent);\n",
                "+\t\t\tif (access_likely && write_likely)\n+\t\t\t\tptent = pte_mkyoung(ptent);\n",
            ),
        ),
    ),
    Mutant(
        name="access-also-dirties",
        breaks="ACCESS_LIKELY makes every present PTE young and dirty, before the writability check: "
        "clean page-cache PTEs are dirtied, and a dirty (so soft-dirty) PTE passes "
        "can_change_pte_writable()",
        clauses=(2, 4, 8),
        exposed_by={
            "kind": ["anon", "shmem", "shmem-private", "file"],
            "hints": "ACCESS_LIKELY",
            "start": ["old+clean", "young+clean", "soft-dirty armed"],
        },
        exposure="a clean PTE un-protected with ACCESS_LIKELY comes back dirty (clause 2's negative space; "
        "clause 4 on shmem; clause 8 with both hints, where pte_mkdirty() also sets soft-dirty)",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\tif (access_likely)\n+\t\t\t\tptent = pte_mkyoung(ptent);\n",
                "+\t\t\tif (access_likely)\n+\t\t\t\tptent = pte_mkyoung(pte_mkdirty(ptent));\n",
            ),
        ),
    ),
    Mutant(
        name="cow-dirty-writable",
        breaks="under WRITE_LIKELY change_pte_range() makes any dirty PTE writable, as "
        "can_change_pte_writable() does for MAP_SHARED: a COW-shared anonymous page after fork() "
        "is made writable and the parent's store reaches the child",
        clauses=(3,),
        exposed_by={
            "kind": ["anon"],
            "hints": "WRITE_LIKELY",
            "start": ["COW after fork"],
            "channel": ["pte", "write probe"],
        },
        exposure="a dirty anonymous page shared with a child by fork(), un-protected with WRITE_LIKELY in the "
        "parent: made writable, and the parent's next store changes the child's memory",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\t    can_change_pte_writable(vma, addr, ptent)) {\n",
                "+\t\t\t    ((write_likely && pte_dirty(ptent)) || can_change_pte_writable(vma, addr, ptent))) {\n",
            ),
        ),
    ),
    Mutant(
        name="softdirty-preset",
        breaks="under WRITE_LIKELY change_pte_range() marks the PTE soft-dirty before asking "
        "can_change_pte_writable(), so soft-dirty tracking loses its write fault",
        clauses=(8,),
        exposed_by={"kind": ["anon"], "hints": "WRITE_LIKELY", "start": ["soft-dirty armed"]},
        exposure="an anonymous PTE after clear_refs 4 (soft-dirty cleared), un-protected with WRITE_LIKELY: "
        "made writable and dirty, soft-dirty set without a write",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\t    can_change_pte_writable(vma, addr, ptent)) {\n",
                "+\t\t\t    can_change_pte_writable(vma, addr, write_likely ? pte_mksoft_dirty(ptent) : ptent)) {\n",
            ),
        ),
    ),
    Mutant(
        name="resolve-or-access",
        breaks="'||' for '&&' in change_pte_range()'s access_likely: every un-protect makes present PTEs "
        "young, hints or not",
        clauses=(5,),
        # WRITE_LIKELY alone then makes young a shmem/file PTE it does not make writable (its negative space)
        also=(3,),
        exposed_by={
            "kind": ["anon", "shmem", "shmem-private", "file"],
            "hints": "none",
            "start": ["old+clean", "old+dirty"],
            "negotiation": ["not negotiated", "negotiated"],
        },
        exposure="an old PTE un-protected without hints comes back young",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\tbool access_likely = uffd_wp_resolve &&\n"
                "+\t\t\t     (cp_flags & MM_CP_UFFD_ACCESS_LIKELY);\n"
                "+\tbool write_likely = uffd_wp_resolve &&\n"
                "+\t\t\t    (cp_flags & MM_CP_UFFD_WRITE_LIKELY);\n"
                " \n"
                " \ttlb_change_page_size(tlb, PAGE_SIZE);\n",
                "+\tbool access_likely = uffd_wp_resolve ||\n"
                "+\t\t\t     (cp_flags & MM_CP_UFFD_ACCESS_LIKELY);\n"
                "+\tbool write_likely = uffd_wp_resolve &&\n"
                "+\t\t\t    (cp_flags & MM_CP_UFFD_WRITE_LIKELY);\n"
                " \n"
                " \ttlb_change_page_size(tlb, PAGE_SIZE);\n",
            ),
        ),
    ),
    Mutant(
        name="wp-hints-ignored",
        breaks="userfaultfd_writeprotect() silently drops hints given with MODE_WP instead of returning -EINVAL",
        clauses=(6,),
        exposed_by={"kind": ["anon"], "hints": "both", "mode": "MODE_WP", "channel": "errno"},
        exposure="UFFDIO_WRITEPROTECT with MODE_WP and a hint succeeds (and protects)",
        subs=(
            Sub(
                P2,
                "userfaultfd_writeprotect()",
                "+\tif (cp_hints && mode_wp)\n+\t\treturn -EINVAL;\n",
                "+\tif (cp_hints && mode_wp)\n+\t\tcp_hints = 0;\n",
            ),
        ),
    ),
    Mutant(
        name="feature-not-checked",
        breaks="userfaultfd_writeprotect() checks that the kernel has ACCESS_HINTS (UFFD_API_FEATURES) "
        "instead of that user space negotiated it (ctx->features): hints work without the feature",
        clauses=(1,),
        exposed_by={"kind": ["anon"], "hints": "both", "negotiation": "not negotiated", "channel": "errno"},
        exposure="un-protect with a hint bit on a uffd opened without ACCESS_HINTS succeeds",
        subs=(
            Sub(
                P2,
                "userfaultfd_writeprotect()",
                "+\tif (cp_hints && !(ctx->features & UFFD_FEATURE_ACCESS_HINTS))\n",
                "+\tif (cp_hints && !(UFFD_API_FEATURES & UFFD_FEATURE_ACCESS_HINTS))\n",
            ),
        ),
    ),
    Mutant(
        name="hint-keeps-markers",
        breaks="with hints, change_pte_range() leaves uffd-wp PTE markers in place on un-protect "
        "(only present entries were meant to see the hints; the marker branch skipped them all)",
        clauses=(7,),
        exposed_by={
            "kind": ["anon", "shmem", "shmem-private", "file"],
            "hints": "both",
            "start": ["uffd-wp marker"],
            "negotiation": "WP_UNPOPULATED for anon",
        },
        exposure="a protected, never-populated page (a uffd-wp marker) un-protected with hints keeps its "
        "marker: pagemap still shows uffd-wp, and the next access traps",
        subs=(
            # The series does not touch the uffd-wp marker branch: the substitution appends a hunk
            # for it after the last hunk of mm/mprotect.c (the end of patch 0001).
            Sub(
                P1,
                "change_pte_range()",
                " \t\t\tptep_modify_prot_commit(vma, addr, pte, oldpte, ptent);\n"
                " \t\t\tif (pte_needs_flush(oldpte, ptent))\n",
                " \t\t\tptep_modify_prot_commit(vma, addr, pte, oldpte, ptent);\n"
                " \t\t\tif (pte_needs_flush(oldpte, ptent))\n"
                "@@ -245,7 +268,7 @@ static long change_pte_range(struct mmu_gather *tlb,\n"
                " \t\t\t\t * to unprotect it, drop it; the next page\n"
                " \t\t\t\t * fault will trigger without uffd trapping.\n"
                " \t\t\t\t */\n"
                "-\t\t\t\tif (uffd_wp_resolve) {\n"
                "+\t\t\t\tif (uffd_wp_resolve && !(cp_flags & MM_CP_UFFD_HINTS)) {\n"
                " \t\t\t\t\tpte_clear(vma->vm_mm, addr, pte);\n"
                " \t\t\t\t\tpages++;\n"
                " \t\t\t\t}\n",
            ),
        ),
    ),
    Mutant(
        name="hint-installs-markers",
        breaks="with hints, change_pte_range()'s none-PTE branch does not skip the un-protect: it installs "
        "a uffd-wp marker in every empty PTE of a populated page table",
        clauses=(7,),
        exposed_by={
            "kind": ["anon", "shmem", "shmem-private", "file", "file-private"],
            "hints": "both",
            "start": ["empty", "empty beside present pages"],
            "shape": ["page", "span"],
            "negotiation": "WP_UNPOPULATED for anon",
        },
        exposure="an empty page whose page table exists (something else in the same PMD is mapped: a "
        "one-page VMA's neighbours, or the present pages of a span between its empty ones), "
        "un-protected with hints, gets a uffd-wp marker: pagemap shows uffd-wp.  Where no page "
        "table exists (an empty span, a THP range) change_pmd_range() skips the PMD",
        subs=(
            # The none-PTE branch is not in the series either: a hunk appended, as above.
            Sub(
                P1,
                "change_pte_range()",
                " \t\t\tptep_modify_prot_commit(vma, addr, pte, oldpte, ptent);\n"
                " \t\t\tif (pte_needs_flush(oldpte, ptent))\n",
                " \t\t\tptep_modify_prot_commit(vma, addr, pte, oldpte, ptent);\n"
                " \t\t\tif (pte_needs_flush(oldpte, ptent))\n"
                "@@ -271,7 +294,7 @@ static long change_pte_range(struct mmu_gather *tlb,\n"
                " \t\t\t * Nobody plays with any none ptes besides\n"
                " \t\t\t * userfaultfd when applying the protections.\n"
                " \t\t\t */\n"
                "-\t\t\tif (likely(!uffd_wp))\n"
                "+\t\t\tif (likely(!uffd_wp) && !(cp_flags & MM_CP_UFFD_HINTS))\n"
                " \t\t\t\tcontinue;\n"
                " \n"
                " \t\t\tif (userfaultfd_wp_use_markers(vma)) {\n",
            ),
        ),
    ),
    Mutant(
        name="first-pte-only",
        breaks="change_pte_range() spends the hints on the first present PTE of each page-table walk "
        "(one walk per PMD): the other PTEs of the range stay old and clean",
        clauses=(2, 3),
        exposed_by={
            "kind": ["anon", "shmem", "shmem-private"],
            "shape": ["span", "thp-part"],
            "hints": ["ACCESS_LIKELY", "WRITE_LIKELY"],
            "start": ["old+clean"],
        },
        exposure="a range of several old, clean pages, un-protected with hints: only the first page of "
        "each PMD's walk comes back young (and dirty); one-page ranges cannot show it",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\t\t/*\n"
                "+\t\t\t\t * A write is expected: do what the write fault\n"
                "+\t\t\t\t * would have done.  Only PTEs that are made\n"
                "+\t\t\t\t * writable here are dirtied, so shared\n"
                "+\t\t\t\t * mappings that need writenotify (clean PTEs,\n"
                "+\t\t\t\t * see can_change_pte_writable()) and\n"
                "+\t\t\t\t * soft-dirty tracking still get their fault.\n"
                "+\t\t\t\t */\n"
                "+\t\t\t\tif (write_likely)\n"
                "+\t\t\t\t\tptent = pte_mkyoung(pte_mkdirty(ptent));\n"
                "+\t\t\t}\n",
                "+\t\t\t\t/*\n"
                "+\t\t\t\t * A write is expected: do what the write fault\n"
                "+\t\t\t\t * would have done.  Only PTEs that are made\n"
                "+\t\t\t\t * writable here are dirtied.\n"
                "+\t\t\t\t */\n"
                "+\t\t\t\tif (write_likely)\n"
                "+\t\t\t\t\tptent = pte_mkyoung(pte_mkdirty(ptent));\n"
                "+\t\t\t}\n"
                "+\t\t\t/* the hints describe the page the caller touches next */\n"
                "+\t\t\taccess_likely = write_likely = false;\n"
                "+\n",
            ),
        ),
    ),
    Mutant(
        name="first-vma-only",
        breaks="mwriteprotect_range() passes the hints to the first VMA of the range only",
        clauses=(2, 3),
        exposed_by={
            "kind": ["anon", "shmem", "shmem-private"],
            "shape": "span",
            "hints": ["ACCESS_LIKELY", "WRITE_LIKELY"],
            "start": ["old+clean"],
        },
        exposure="one un-protect over two adjacent VMAs with hints: the pages of the second VMA stay old and clean",
        subs=(
            Sub(
                P2,
                "mwriteprotect_range()",
                "+\t\terr = __uffd_wp_range(dst_vma, _start, _end - _start,\n+\t\t\t\t      enable_wp, cp_hints);\n",
                "+\t\terr = __uffd_wp_range(dst_vma, _start, _end - _start, enable_wp, cp_hints);\n"
                "+\t\tcp_hints = 0;\t/* the hints are for the faulting VMA */\n",
            ),
        ),
    ),
    Mutant(
        name="folio-accessed",
        breaks="ACCESS_LIKELY marks the folio accessed (folio_mark_accessed()) instead of the PTE young: "
        "the PTE stays old, smaps Referenced and idle-page tracking still say 'accessed'",
        clauses=(2,),
        # their cases with ACCESS_LIKELY see the same disagreement of channels (pte old, the folio flag set)
        also=(4, 8),
        exposed_by={
            "kind": ["anon-thp", "anon", "shmem", "shmem-private", "file"],
            "shape": "thp-part",
            "hints": "ACCESS_LIKELY",
            "start": ["old+clean", "old+dirty"],
            "channel": ["smaps", "pte"],
        },
        exposure="on order-0 pages smaps and idle-page tracking count the folio flag, so only a channel that "
        "reads the PTE itself tells it from a young PTE; part of a THP shows it through smaps, "
        "which then counts all 512 pages of the marked folio as referenced",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\tif (access_likely)\n+\t\t\t\tptent = pte_mkyoung(ptent);\n",
                "+\t\t\tif (access_likely && vm_normal_folio(vma, addr, ptent))\n"
                "+\t\t\t\tfolio_mark_accessed(vm_normal_folio(vma, addr, ptent));\n",
            ),
        ),
    ),
    Mutant(
        name="large-folio-access-skipped",
        breaks="ACCESS_LIKELY skips a PTE that maps part of a large folio ('the folio is young already'): such "
        "PTEs stay old",
        clauses=(2,),
        exposed_by={
            "kind": ["anon-large-folio", "shmem-large-folio", "anon-thp"],
            "shape": ["large-folio", "thp-part"],
            "hints": "ACCESS_LIKELY",
            "start": ["old+clean", "old+dirty"],
        },
        exposure="only PTEs that map part of a large folio show it: a 64 KiB anonymous mTHP, a shmem THP once "
        "uffd-wp has split its PMD, part of a split anonymous THP; every order-0 page passes",
        subs=(
            Sub(
                P1,
                "change_pte_range()",
                "+\t\t\tif (access_likely)\n+\t\t\t\tptent = pte_mkyoung(ptent);\n",
                "+\t\t\tif (access_likely && !folio_test_large(page_folio(pte_page(ptent))))\n"
                "+\t\t\t\tptent = pte_mkyoung(ptent);\n",
            ),
        ),
    ),
    Mutant(
        name="dontwake-drops-hints",
        breaks="userfaultfd_writeprotect() drops the hints when DONTWAKE is set ('nobody is about to touch the page')",
        clauses=(2, 3),
        exposed_by={
            "kind": ["anon", "shmem", "shmem-private", "file"],
            "mode": "DONTWAKE",
            "hints": ["ACCESS_LIKELY", "WRITE_LIKELY"],
            "start": ["old+clean"],
        },
        exposure="an old, clean PTE un-protected with a hint and DONTWAKE stays old and clean",
        subs=(
            Sub(
                P2,
                "userfaultfd_writeprotect()",
                "+\t\t\t\t\t  uffdio_wp.range.len, mode_wp,\n+\t\t\t\t\t  cp_hints);\n",
                "+\t\t\t\t\t  uffdio_wp.range.len, mode_wp,\n+\t\t\t\t\t  mode_dontwake ? 0 : cp_hints);\n",
            ),
        ),
    ),
    Mutant(
        name="hugetlb-write-likely-writable",
        breaks="hugetlb_change_protection() makes every resolved hugetlb entry writable and dirty under "
        "WRITE_LIKELY (and ignores ACCESS_LIKELY), as if hugetlb had the PTE path's writability check",
        clauses=(4,),
        also=(2, 3),
        exposed_by={
            "kind": ["hugetlb", "hugetlb-private"],
            "hints": "WRITE_LIKELY",
            "start": ["young+clean"],
            "channel": ["pte", "write probe"],
        },
        exposure="a MAP_PRIVATE hugetlb page mapped by a read fault (a clean page-cache page) is made "
        "writable and dirty: the next store goes to the hugetlbfs file",
        subs=(
            Sub(
                P1,
                "hugetlb_change_protection()",
                HUGETLB_ACCESS_LIKELY,
                "+\t\t\tif (uffd_wp_resolve &&\n"
                "+\t\t\t    (cp_flags & MM_CP_UFFD_WRITE_LIKELY))\n"
                "+\t\t\t\tpte = huge_pte_mkdirty(huge_pte_mkwrite(pte));\n",
            ),
        ),
    ),
    Mutant(
        name="hugetlb-access-from-write-flag",
        breaks="hugetlb_change_protection() tests MM_CP_UFFD_WRITE_LIKELY where it means ACCESS_LIKELY "
        "(copy-paste): ACCESS_LIKELY alone leaves a hugetlb entry old, WRITE_LIKELY alone makes it young",
        clauses=(2, 3),
        exposed_by={
            "kind": ["hugetlb", "hugetlb-private"],
            "hints": ["ACCESS_LIKELY", "WRITE_LIKELY"],
            "start": ["old+clean", "old+dirty"],
            "channel": "pte",
        },
        exposure="an old hugetlb entry (made old by the instrumentation's mkold: no other channel can) "
        "un-protected with ACCESS_LIKELY stays old; with WRITE_LIKELY, which makes no hugetlb "
        "entry writable, it turns young",
        subs=(
            Sub(
                P1,
                "hugetlb_change_protection()",
                HUGETLB_ACCESS_LIKELY,
                "+\t\t\tif (uffd_wp_resolve &&\n"
                "+\t\t\t    (cp_flags & MM_CP_UFFD_WRITE_LIKELY))\n"
                "+\t\t\t\tpte = pte_mkyoung(pte);\n",
            ),
        ),
    ),
]
