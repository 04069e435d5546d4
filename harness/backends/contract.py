"""The contract of BRIEF 2.2: one table of clauses, and the checks that run them on any backend.

:data:`CONTRACT` is the one place that says, for each clause, its text, its
check, the memory it is checked on, the range shapes, and what it needs from
the kernel, as ``uffd_tests[]`` does in the kernel's ``uffd-unit-tests.c``.
The suite (tests/contract), the pytest plugin (what a clause needs, whether
it passed), ``validate`` (the verdict and the report) and the README's table
all read it.

A check ``check(backend, target)`` makes regions of ``target.kind`` laid out
as ``target.shape`` on a backend whose userfaultfd is not open yet, drives
them, and returns the violations it saw (empty: the clause holds there).
A violation names the memory, the case, the page, the channel and what was
expected, so a failing test says why.  The same checks run on deliberately
broken simulator profiles (tests/contract/test_validator.py) and on broken
kernels (the mutants) to show that they can fail.

Shapes (:class:`Shape`):

``page``
    one page in its own VMA: smaps' per-VMA counts are per-PTE there.
``span``
    :data:`SPAN_PAGES` pages in two adjacent VMAs whose range crosses a PMD
    boundary inside the first VMA (:class:`harness.memory.AdjacentRegions`),
    un-protected with **one** ioctl: a kernel that honours a hint only on the
    first PTE of a page-table walk, or only in the first VMA, is caught.
    Every page is checked (smaps per VMA: all pages or none).
``thp``
    one PMD-mapped anonymous 2 MiB THP (MADV_HUGEPAGE); each un-protect must
    leave it PMD-mapped.  Kernel only: the simulator does not model THP.
``thp-part``
    the same THP, write-protected whole, then un-protected over
    :data:`THP_PART_PAGES` base pages from :data:`THP_PART_FIRST`: the kernel
    splits the PMD (change_pmd_range()) and the PTE path resolves the part.
    Every base page is checked through pagemap (uffd-wp), and young/dirty
    through smaps' page counts of the VMA (exactly the part, no more, no less).
``large-folio``
    the base pages of one large folio mapped by PTEs, un-protected whole:
    a 64 KiB anonymous mTHP, or a PMD-sized shmem THP (uffd-wp maps a file
    THP by PTEs).  The page-table walk is the PTE path's, but every PTE maps a
    page of one folio, where a kernel that batches PTEs by folio (or marks the
    folio instead of each PTE) goes its own way.  Kernel only, and only where
    the kernel offers the folio size (:func:`harness.memory.large_folio_unavailable`).

What each channel can see (``CHANNEL_FIELDS`` in :mod:`harness.backends.base`):
smaps and idle-page see young (and smaps dirty), folio flags included;
kpageflags only folio flags, so it checks nothing here; the simulator sees
its modelled PTE.  Writability is seen by the **write probe** on every
backend: after everything else is observed, one store per page, counting the
page faults the store took (:meth:`harness.memory.Region.write_faults`): a
PTE that was made writable takes none.

Ways to get an old and clean PTE: ``MADV_FREE`` for anonymous pages (the PTE
stays present and writable); a read fault of a never-written shmem page (a
clean page-cache page) and ``clear_refs`` 1 for shmem.  Shmem pages once
written stay dirty in the page cache, so a clean shmem PTE is a read-only
mapping of a page that was never written.
"""

from __future__ import annotations

import enum
import errno
import functools
from dataclasses import dataclass
from typing import Callable, Optional

from harness import abi, paths
from harness.abi import Feature, RegisterMode
from harness.backends.base import CHANNEL_FIELDS, KERNEL, Backend, RegionRef
from harness.memory import MemoryKind
from harness.operations import HINT_COMBINATIONS, Hints, Step
from harness.pte import IDLE_PAGE, PTE, SMAPS, mkold_available

#: capabilities a clause may need besides userfaultfd features (the simulator models both)
SOFT_DIRTY = "soft-dirty"
SWAP = "swap"


class Shape(enum.Enum):
    """How the range under test is laid out (module doc)."""

    PAGE = "page"
    SPAN = "span"
    THP = "thp"
    THP_PART = "thp-part"
    LARGE_FOLIO = "large-folio"


#: pages of each VMA of a span, and the index of the first page after the PMD boundary
SPAN_PAGES = (4, 2)
SPAN_BOUNDARY = 2

#: kinds checked as spans: the page-table walk (change_pte_range(), mwriteprotect_range()'s VMA loop) is
#: the same code for every kind; anonymous and shmem memory differ in whether un-protect makes PTEs writable
SPAN_KINDS = (MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE)

#: kinds with large folios: anonymous mTHP and shmem THP (harness.memory.large_folio_size())
LARGE_FOLIO_KINDS = (MemoryKind.ANON, MemoryKind.SHMEM)

#: the part of a THP un-protected by the thp-part shape (base pages, not at the start of the PMD)
THP_PART_FIRST = 3
THP_PART_PAGES = 5

BASE_KINDS = (MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE, MemoryKind.FILE, MemoryKind.FILE_PRIVATE)
#: hugetlbfs memory (memfd MFD_HUGETLB), one 2 MiB page per case: hugetlb_change_protection() is its own
#: walk.  Kernel only (the simulator does not model hugetlb); no page of it can be made old (idle-page
#: tracking and clear_refs skip hugetlb folios), so young and dirty are seen through the pte channel only
HUGETLB_KINDS = (MemoryKind.HUGETLB, MemoryKind.HUGETLB_PRIVATE)
#: kinds with a clean PTE mapping a page-cache page (shmem, a file, hugetlbfs): what clause 4 is about
SHARED_KINDS = (
    MemoryKind.SHMEM,
    MemoryKind.FILE,
    MemoryKind.SHMEM_PRIVATE,
    MemoryKind.FILE_PRIVATE,
    MemoryKind.HUGETLB_PRIVATE,
)


@dataclass(frozen=True)
class Target:
    """The memory a check runs on: a kind, laid out as a shape."""

    kind: MemoryKind
    shape: Shape = Shape.PAGE

    @property
    def label(self) -> str:
        """How test ids, summaries and reports name it: "anon", "shmem-span", "anon-thp"."""
        return self.kind.value if self.shape is Shape.PAGE else f"{self.kind.value}-{self.shape.value}"

    @property
    def kernel_only(self) -> bool:
        """THP, large folios and hugetlb: the simulator models none, so only a kernel can give their result."""
        return self.shape in (Shape.THP, Shape.THP_PART, Shape.LARGE_FOLIO) or self.kind.hugetlb


def memory_label(kind: MemoryKind, thp: bool = False) -> str:
    """ "anon", "shmem", ... or "anon-thp" (kept for callers that think in kind + THP)."""
    return Target(kind, Shape.THP if thp else Shape.PAGE).label


@dataclass(frozen=True)
class Case:
    """A starting PTE state and how to make it.

    Whether an un-protect makes it writable is not here: that is the base
    kernel's rule, and bases differ (6.12 write-upgrades exclusive anonymous
    pages only; 6.1 gives a MAP_SHARED page its VMA's write permission back
    and upgrades no anonymous page), so the checks measure it on the kernel
    under test (:func:`_writable_without_hints`) and hold the hints to it.
    """

    name: str
    setup: tuple[Step, ...]
    old: bool
    clean: bool

    def read_only_always(self, kind: MemoryKind) -> bool:
        """A clean page of a private file mapping is the page-cache page itself, mapped for copy-on-write:
        no un-protect may make it writable, on any base (the store would reach the file)."""
        return self.clean and kind.file_backed and not kind.shared


def cases(kind: MemoryKind, b: Optional[Backend] = None) -> list[Case]:
    """The starting states that can be made for ``kind`` (on ``b``: an old hugetlb entry needs mkold)."""
    if kind.hugetlb and b is not None and not _can_make_old(b):
        return [c for c in _cases(kind) if Step.MAKE_OLD not in c.setup]
    return _cases(kind)


def _can_make_old(b: Backend) -> bool:
    """Whether old hugetlb cases run on ``b``: where mkold works, and in every harness guest, whose kernel
    should have it (there a missing mkold makes the case fail to run, so the clause is not shown)."""
    return b.name == KERNEL and (mkold_available() is None or paths.in_guest())


def _cases(kind: MemoryKind) -> list[Case]:
    if kind is MemoryKind.ANON:
        return [
            Case("old+clean", (Step.WRITE, Step.FREE), True, True),
            Case("old+dirty", (Step.WRITE, Step.CLEAR_YOUNG), True, False),
            Case("young+clean", (Step.WRITE, Step.FREE, Step.READ), False, True),
            Case("young+dirty", (Step.WRITE,), False, False),
        ]
    if kind.hugetlb:
        # hugetlb_no_page() maps every page young; only the instrumentation's mkold makes it old.  A read
        # fault of a MAP_PRIVATE mapping maps the clean page-cache page read-only, a MAP_SHARED one maps
        # it writable and dirty (so no clean shared case)
        if kind is MemoryKind.HUGETLB:
            return [
                Case("old+dirty", (Step.WRITE, Step.MAKE_OLD), True, False),
                Case("young+dirty", (Step.WRITE,), False, False),
            ]
        return [
            Case("old+clean", (Step.READ, Step.MAKE_OLD), True, True),
            Case("old+dirty", (Step.WRITE, Step.MAKE_OLD), True, False),
            Case("young+clean", (Step.READ,), False, True),
            Case("young+dirty", (Step.WRITE,), False, False),
        ]
    # shmem and tmpfs files: a read maps the clean page-cache page (in a private mapping, read-only for
    # copy-on-write), a write dirties it (in a private mapping: an exclusive anonymous copy)
    return [
        Case("old+clean", (Step.READ, Step.CLEAR_YOUNG), True, True),
        Case("old+dirty", (Step.WRITE, Step.CLEAR_YOUNG), True, False),
        Case("young+clean", (Step.READ,), False, True),
        Case("young+dirty", (Step.WRITE,), False, False),
    ]


# -- the subject of a case: one contiguous range over one or more regions --------------


@dataclass
class Subject:
    """The regions of one case, in address order; one ioctl covers them all."""

    target: Target
    refs: list[RegionRef]

    def pages(self) -> list[tuple[RegionRef, int]]:
        return [(r, p) for r in self.refs for p in range(r.npages)]

    def where(self, r: RegionRef, page: int) -> str:
        """ "page 3 (VMA 2)": which page of the range a violation is about."""
        if sum(ref.npages for ref in self.refs) == 1:
            return ""
        vma = self.refs.index(r) + 1
        index = sum(ref.npages for ref in self.refs[: vma - 1]) + page
        after = self.target.shape is Shape.SPAN and index >= SPAN_BOUNDARY
        return f" page {index}{' (after the PMD boundary)' if after else ''}, VMA {vma}"


def _make(b: Backend, target: Target, setup: tuple[Step, ...], name: str) -> Subject:
    """WP-registered regions of ``target`` after ``setup`` (applied to every page)."""
    setup = tuple(Step(step) for step in setup)  # ValueError naming a step there is none of
    if target.shape is Shape.THP:
        if target.kind is not MemoryKind.ANON:
            raise ValueError(f"THP checks are for anonymous memory, not {target.kind.value}")
        subject = Subject(target, [b.create(target.kind, 1, RegisterMode.WP, thp=True)])
    elif target.shape is Shape.LARGE_FOLIO:
        subject = Subject(target, [b.create(target.kind, 1, RegisterMode.WP, large_folio=True)])
    elif target.shape is Shape.SPAN:
        subject = Subject(target, b.create_adjacent(target.kind, SPAN_PAGES, SPAN_BOUNDARY, RegisterMode.WP))
    else:
        subject = Subject(target, [b.create(target.kind, 1, RegisterMode.WP)])
    for op in setup:
        _apply(b, subject, op)
    if target.shape is Shape.THP and setup:
        b.check_thp(subject.refs[0], f"after set-up {name} ({', '.join(setup)})")  # ThpUnavailable: no verdict
    if target.shape is Shape.LARGE_FOLIO:
        b.check_large_folio(subject.refs[0], f"after set-up {name} ({', '.join(setup)})")
    return subject


def _apply(b: Backend, s: Subject, step: Step) -> None:
    if step is Step.CLEAR_YOUNG:
        b.clear_refs(abi.CLEAR_REFS_ALL)
    elif step is Step.CLEAR_SOFT_DIRTY:
        b.clear_refs(abi.CLEAR_REFS_SOFT_DIRTY)
        return
    elif step is Step.PROTECT:
        _wp(b, s, True)
        return
    elif step is Step.MAKE_OLD:
        for r, page in s.pages():
            b.make_old(r, page)  # ObservationUnavailable without the instrumentation: not shown
        return
    if step is Step.WRITE_ALTERNATE:
        # every other page of the range, from its first: the empty pages between share a page table
        # with present ones, so change_pte_range() walks their none entries (a page table of empty
        # entries only is never walked: change_pmd_range() skips the PMD)
        for index, (r, page) in enumerate(s.pages()):
            if index % 2 == 0 and b.write(r, page):
                raise AssertionError(f"set-up {step} of {s.target.label} page {index} got a signal")
        return
    for r in s.refs:
        if step in (Step.READ, Step.WRITE):
            for page in range(r.npages):
                sig = b.read(r, page) if step is Step.READ else b.write(r, page)
                if sig:
                    raise AssertionError(f"set-up {step} of {s.target.label} page {page} got signal {sig}")
        elif step in (Step.FREE, Step.PAGEOUT):
            b.madvise(r, step.value)  # the backend's advice names are the steps' ("free", "pageout")
        elif step is not Step.CLEAR_YOUNG:
            raise ValueError(f"set-up step {step!r}: one of {', '.join(Step)}")
        if step in (Step.FREE, Step.CLEAR_YOUNG):
            b.mark_idle(r, 0, r.npages)


def _wp(
    b: Backend,
    s: Subject,
    protect: bool,
    hints: Hints = Hints.NONE,
    *,
    dontwake: bool = False,
    raw_mode: Optional[int] = None,
) -> None:
    """One UFFDIO_WRITEPROTECT over the whole subject."""
    access_likely, write_likely = hints.access_likely, hints.write_likely
    if raw_mode is None and dontwake:
        raw_mode = abi.writeprotect_mode(protect, dontwake=True, access_likely=access_likely, write_likely=write_likely)
    if len(s.refs) == 1:
        b.writeprotect(s.refs[0], protect, access_likely=access_likely, write_likely=write_likely, raw_mode=raw_mode)
    else:
        b.writeprotect_adjacent(
            s.refs, protect, access_likely=access_likely, write_likely=write_likely, raw_mode=raw_mode
        )


def _still_pmd_mapped(b: Backend, s: Subject, label: str) -> list[str]:
    """For a THP subject: the un-protect must leave it PMD-mapped, and the channels must agree on that."""
    if s.target.shape is not Shape.THP:
        return []
    mapping = b.thp_mapping(s.refs[0])
    problem = mapping.disagreement()
    if problem:
        return [f"{label}: {problem}"]
    if not mapping.pmd_mapped:
        return [f"{label}: the THP is no longer PMD-mapped (the kernel split it): {mapping}"]
    return []


# -- observing and judging -------------------------------------------------------------


def _views(b: Backend, s: Subject, destructive: bool = True) -> dict:
    """{channel: [PteState per page of the subject]} through every channel that sees the PTE."""
    out = {}
    for channel in b.channels():
        if not CHANNEL_FIELDS.get(channel):
            continue
        if channel == IDLE_PAGE and not destructive:
            continue
        out[channel] = b.observe_pages(s.pages(), channel)
    return out


def _expect(label: str, s: Subject, views: dict, **want) -> list[str]:
    """Every page, through every channel that can tell, has the wanted bits; and the channels agree.

    smaps answering None for a present page of a multi-page VMA (some pages
    of the VMA counted, not all) is a violation: every page of a case starts
    alike and must end alike.
    """
    problems = []
    pages = s.pages()
    for channel, states in views.items():
        # what this channel can tell: the bits it does not see are left to the others
        checks = [
            (f, v) for f, v in want.items() if f not in ("young", "dirty", "writable") or f in CHANNEL_FIELDS[channel]
        ]
        for (r, page), state in zip(pages, states, strict=False):
            for field, value in checks:
                got = getattr(state, field)
                if got is None:
                    # smaps counts pages per VMA: None is "some counted, not all".  Elsewhere None is "cannot
                    # tell" (idle-page on a hugetlb folio or a tail page of a large folio)
                    if field in ("young", "dirty") and state.present and channel == SMAPS and not r.kind.hugetlb:
                        problems.append(
                            f"{label}:{s.where(r, page)} {field} differs between the pages of one VMA "
                            f"(seen through {channel}), expected {value} for all"
                        )
                    continue
                if got != value:
                    problems.append(f"{label}:{s.where(r, page)} {field} is {got} through {channel}, expected {value}")
    return _dedupe(problems + _agree(label, s, views))


def _agree(label: str, s: Subject, views: dict) -> list[str]:
    """Every channel that can tell must give the same young (and dirty) as the others, page by page."""
    problems = []
    pages = s.pages()
    for field in ("young", "dirty", "writable"):
        telling = [(ch, states) for ch, states in views.items() if field in CHANNEL_FIELDS[ch]]
        if len(telling) < 2:
            continue  # one channel (writable: the pte channel) has no other to disagree with
        for i, (r, page) in enumerate(pages):
            seen = {ch: value for ch, states in telling if (value := getattr(states[i], field)) is not None}
            if len(set(seen.values())) > 1:
                problems.append(f"{label}:{s.where(r, page)} channels disagree on {field}: {seen}")
    return problems


def _write_probe(b: Backend, s: Subject, label: str, writable: bool) -> list[str]:
    """Store to every page; a PTE that was made writable takes no fault, one that was not takes one.

    Run last: the store itself makes the PTE young, dirty and writable.
    """
    problems = []
    for r, page in s.pages():
        faults = b.write_faults(r, page)
        if writable and faults:
            problems.append(
                f"{label}:{s.where(r, page)} not writable: a store took {faults} fault(s) "
                "(write probe), expected the un-protect to make it writable"
            )
        if not writable and not faults:
            problems.append(
                f"{label}:{s.where(r, page)} made writable: a store took no fault (write probe), expected a write fault"
            )
    return problems


def _writable_without_hints(b: Backend, target: Target, case: Case) -> tuple[bool, list[str]]:
    """Whether an un-protect without hints makes ``case`` of ``target`` writable on this kernel, and what
    is wrong with that.

    Hints add young and dirty, never writability, so the hinted un-protects of
    clauses 2, 3, 4 and 8 are held to this, measured on the same kernel and
    uffd (the write probe on a subject of its own): the base's rule, whatever
    the base.  What no base may do is a violation here: make a clean page of
    a private file mapping writable, or some pages of one case and not others.
    """
    s = _make(b, target, case.setup, case.name)
    _wp(b, s, True)
    _wp(b, s, False)
    return _probe_writability(b, s, case, f"{target.label} {case.name}, un-protect without hints")


def _probe_writability(b: Backend, s: Subject, case: Case, text: str) -> tuple[bool, list[str]]:
    """The write probe after an un-protect without hints: whether it made the pages writable, and what
    no base may do (:func:`_writable_without_hints`)."""
    writable = [not b.write_faults(r, page) for r, page in s.pages()]
    problems = []
    if len(set(writable)) > 1:
        problems.append(
            f"{text}: made {sum(writable)} of {len(writable)} pages writable (write probe); "
            "every page of a case starts alike and must end alike"
        )
    if any(writable) and case.read_only_always(s.target.kind):
        problems.append(
            f"{text}: made a clean page of a private file mapping writable (write probe): "
            "a store would reach the page cache"
        )
        return False, problems
    return all(writable), problems


def _dedupe(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))


def _open(b: Backend, features=()) -> None:
    b.api(tuple(features))


# -- the clauses ----------------------------------------------------------------------


def _thp_part(b: Backend, target: Target, n: int) -> list[str]:
    """Clauses 2, 3 and 5 on part of a PMD-mapped THP (the ``thp-part`` shape, kernel only).

    Old+clean THP (write, MADV_FREE) and young+dirty THP; protect the whole
    PMD; un-protect :data:`THP_PART_PAGES` base pages with the clause's hint.
    The part must come back un-protected, everything else still protected;
    smaps must count exactly the pages the clause makes young (dirty); the
    part is writable exactly where an un-protect of it without hints makes it
    writable (the base's rule, measured as for the other shapes), and what
    WRITE_LIKELY makes writable it makes dirty.
    """
    from harness.backends.kernel import KernelBackend

    if not isinstance(b, KernelBackend):
        raise TypeError(f"part of a THP is checked on the kernel backend only, not {type(b).__name__}")
    hints = {2: Hints.ACCESS_LIKELY, 3: Hints.WRITE_LIKELY, 5: Hints.NONE}[n]
    _open(b, (Feature.ACCESS_HINTS,) if hints else ())
    problems = []
    part = range(THP_PART_FIRST, THP_PART_FIRST + THP_PART_PAGES)

    def unprotect_part(case: Case, hints: Hints):
        s = _make(b, Target(MemoryKind.ANON, Shape.THP), case.setup, case.name)
        _wp(b, s, True)
        before = b.vma_page_counts(s.refs[0])
        b.writeprotect_base(
            s.refs[0],
            THP_PART_FIRST,
            THP_PART_PAGES,
            False,
            access_likely=hints.access_likely,
            write_likely=hints.write_likely,
        )
        return s.refs[0], before

    def probe(r: RegionRef, text: str) -> tuple[bool, list[str]]:
        writable = [not b.write_faults_base(r, i) for i in part]
        if len(set(writable)) > 1:
            return all(writable), [
                f"{text}: {sum(writable)} of the {len(writable)} base pages un-protected are "
                "writable (write probe); they start alike and must end alike"
            ]
        return all(writable), []

    for case in cases(MemoryKind.ANON):
        text = f"{target.label} {case.name}, un-protect {hints.label} of base pages {part.start}-{part.stop - 1}"
        writable = None
        if n != 5:
            base_text = (
                f"{target.label} {case.name}, un-protect without hints of base pages {part.start}-{part.stop - 1}"
            )
            writable, base_problems = probe(unprotect_part(case, Hints.NONE)[0], base_text)
            problems += base_problems
        r, before = unprotect_part(case, hints)
        states = b.base_page_states(r)
        total = len(states)
        for i, st in enumerate(states):
            if not st.present:
                problems.append(f"{text}: base page {i} is no longer present")
            elif st.uffd_wp != (i not in part):
                problems.append(f"{text}: base page {i} uffd-wp is {st.uffd_wp}, expected {i not in part}")
        after = b.vma_page_counts(r)
        young_before = before["referenced"]
        dirty_before = before["dirty"]
        # ACCESS_LIKELY makes the part young; WRITE_LIKELY makes what it makes writable young and dirty
        made_young = n == 2 or (n == 3 and bool(writable))
        made_dirty = n == 3 and bool(writable)
        want_young = young_before + THP_PART_PAGES if made_young and case.old else young_before
        want_dirty = dirty_before + THP_PART_PAGES if made_dirty and case.clean else dirty_before
        if after["rss"] != total:
            problems.append(f"{text}: smaps Rss {after['rss']} pages, expected all {total}")
        if after["referenced"] != want_young:
            problems.append(
                f"{text}: smaps counts {after['referenced']} young (referenced) pages, expected "
                f"{want_young} ({young_before} before the un-protect)"
            )
        if after["dirty"] != want_dirty:
            problems.append(
                f"{text}: smaps counts {after['dirty']} dirty pages, expected {want_dirty} "
                f"({dirty_before} before the un-protect)"
            )
        if PTE in b.channels():
            problems += _thp_part_ptes(b.pte_entries(r), part, case, (made_young, made_dirty, writable), text)
        got, alike = probe(r, text)
        problems += alike
        if writable is not None and got != writable:
            problems.append(
                f"{text}: the base pages un-protected are {'' if got else 'not '}writable (write "
                f"probe), and {'' if writable else 'not '}writable without hints"
            )
    return problems


def _thp_part_ptes(entries: list, part: range, case: Case, made: tuple, text: str) -> list[str]:
    """Part of a THP through the pte channel, base page by base page.

    The split gives every PTE the PMD's young bit; its dirty bit is the base's
    rule (6.12's __split_huge_pmd_locked() carries it to the PTEs, 6.1 moves it
    to the folio), so the pages outside the part, which the un-protect leaves
    alone, show it and must agree.  The part gets what the hint adds (``made``:
    young, dirty; and writable as without hints, None: not checked); a clean
    THP gives no dirty PTE.
    """
    made_young, made_dirty, writable = made
    outside = [e for i, e in enumerate(entries) if i not in part]
    split_dirty = {e.dirty for e in outside}
    problems = []
    if len(split_dirty) > 1:
        return [f"{text}: the base pages outside the part differ in dirty through {PTE} after the split"]
    split_dirty_bit = split_dirty.pop() if split_dirty else not case.clean
    if case.clean and split_dirty_bit:
        problems.append(f"{text}: the pages outside the part are dirty through {PTE}; the THP was clean")
    for i, e in enumerate(entries):
        in_part = i in part
        want = {
            "young": (not case.old) or (in_part and made_young),
            "dirty": split_dirty_bit or (in_part and made_dirty),
            "uffd_wp": not in_part,
        }
        if not in_part:
            want["writable"] = False
        elif writable is not None:
            want["writable"] = writable
        for field, value in want.items():
            if getattr(e, field) != value:
                problems.append(
                    f"{text}: base page {i} {field} is {getattr(e, field)} through {PTE} "
                    f"(level {e.level}), expected {value}"
                )
        if len(problems) > 8:
            problems.append(f"{text}: more base pages differ (first ones above)")
            break
    return problems


def check_1(b: Backend, target: Target) -> list[str]:
    """Without ACCESS_HINTS negotiated, any hint bit is rejected with EINVAL (alone, with WP, with DONTWAKE)."""
    _open(b, ())
    problems = []
    what = target.label
    s = _make(b, target, (Step.WRITE,), "young+dirty")
    _wp(b, s, True)
    for hints in HINT_COMBINATIONS:
        mode = hints.mode_bits()
        for extra, extra_label in (
            (0, ""),
            (abi.WRITEPROTECT_MODE_WP, " + MODE_WP"),
            (abi.WRITEPROTECT_MODE_DONTWAKE, " + DONTWAKE"),
        ):
            # partial binds this iteration's mode now; the call is made at once anyway
            code = _errno_of(
                functools.partial(_wp, b, s, bool(extra & abi.WRITEPROTECT_MODE_WP), raw_mode=mode | extra)
            )
            if code != errno.EINVAL:
                problems.append(
                    f"{what}: {hints.label}{extra_label} without the feature: got {_errname(code)}, expected EINVAL"
                )
    views = _views(b, s, destructive=False)
    if views:
        problems += _expect(f"{what}: after the rejected calls", s, views, present=True, uffd_wp=True)
    else:
        state = b.observe(s.refs[0], 0, b.channels()[0])
        if not state.uffd_wp:
            problems.append(f"{what}: a rejected un-protect still cleared uffd-wp")
    problems += _still_pmd_mapped(b, s, f"{what}: after the rejected calls")
    # the uffd-wp fault the probe raises is resolved by the backend's handler (un-protect, no hints)
    problems += _write_probe(b, s, f"{what}: after the rejected calls (still write-protected)", writable=False)
    b.events()
    return problems


def _decode_variants(target: Target) -> bool:
    """Whether a target also gets the mode-decoding variants (DONTWAKE, negotiation): they exercise
    userfaultfd_writeprotect()'s decoding, which does not depend on the memory, so one target has them."""
    return target == Target(MemoryKind.ANON, Shape.PAGE)


def check_2(b: Backend, target: Target) -> list[str]:
    """Un-protect with ACCESS_LIKELY (alone, with WRITE_LIKELY, with DONTWAKE): every present PTE is young.

    Its negative space: ACCESS_LIKELY alone leaves dirty as it was, and makes
    writable exactly what an un-protect without hints makes writable.
    """
    if target.shape is Shape.THP_PART:
        return _thp_part(b, target, 2)
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    for case in cases(target.kind, b):
        writable, base_problems = _writable_without_hints(b, target, case)
        problems += base_problems
        variants = [(Hints.ACCESS_LIKELY, False), (Hints.BOTH, False)]
        if _decode_variants(target):
            variants.append((Hints.ACCESS_LIKELY, True))
        for hints, dontwake in variants:
            s = _make(b, target, case.setup, case.name)
            _wp(b, s, True)
            _wp(b, s, False, hints, dontwake=dontwake)
            text = f"{target.label} {case.name}, un-protect {hints.label}{' + DONTWAKE' if dontwake else ''}"
            want = dict(present=True, uffd_wp=False, young=True, writable=writable)
            if not hints.write_likely:
                want["dirty"] = not case.clean
            problems += _expect(text, s, _views(b, s), **want)
            problems += _still_pmd_mapped(b, s, text)
            problems += _write_probe(b, s, text, writable=writable)
    return problems


def check_3(b: Backend, target: Target) -> list[str]:
    """Un-protect with WRITE_LIKELY: every PTE it makes writable is dirty and young; it makes writable
    exactly what an un-protect without hints would, and never a COW-shared anonymous page."""
    if target.shape is Shape.THP_PART:
        return _thp_part(b, target, 3)
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    for case in cases(target.kind, b):
        writable, base_problems = _writable_without_hints(b, target, case)
        problems += base_problems
        for dontwake in (False, True) if _decode_variants(target) else (False,):
            s = _make(b, target, case.setup, case.name)
            _wp(b, s, True)
            _wp(b, s, False, Hints.WRITE_LIKELY, dontwake=dontwake)
            text = (
                f"{target.label} {case.name}, un-protect {Hints.WRITE_LIKELY.label}{' + DONTWAKE' if dontwake else ''}"
            )
            views = _views(b, s)
            if writable and case.clean and target.kind.shared:
                # a clean MAP_SHARED page the base makes writable (6.1 restores the VMA's write
                # permission): clause 4 forbids dirtying it, and its first store is tracked by nobody
                problems += _expect(text, s, views, present=True, uffd_wp=False, dirty=False, writable=True)
            elif writable:
                problems += _expect(text, s, views, present=True, uffd_wp=False, young=True, dirty=True, writable=True)
            else:
                # not made writable: WRITE_LIKELY has nothing to dirty, and young/dirty stay as they were
                problems += _expect(
                    text,
                    s,
                    views,
                    present=True,
                    uffd_wp=False,
                    young=not case.old,
                    dirty=not case.clean,
                    writable=False,
                )
            problems += _still_pmd_mapped(b, s, text)
            problems += _write_probe(b, s, text, writable=writable)
    if target.kind is MemoryKind.ANON:
        problems += _cow_after_fork(b, target)
    return problems


def _cow_after_fork(b: Backend, target: Target) -> list[str]:
    """A page shared with a child by fork() is COW: WRITE_LIKELY must not make it writable, and the
    parent's store after the un-protect must not reach the child's memory."""
    s = _make(b, target, (Step.WRITE,), "young+dirty")
    child = b.fork_child()
    problems = []
    try:
        before = [child.checksum(r, page) for r, page in s.pages()]
        _wp(b, s, True)
        _wp(b, s, False, Hints.BOTH)
        text = f"{target.label} COW-shared with a live child after fork(), un-protect both hints"
        problems += _expect(text, s, _views(b, s), present=True, uffd_wp=False, writable=False)
        problems += _write_probe(b, s, text, writable=False)
        after = [child.checksum(r, page) for r, page in s.pages()]
        for (r, page), x, y in zip(s.pages(), before, after, strict=True):
            if x is not None and x != y:
                problems.append(
                    f"{text}:{s.where(r, page)} the parent's store changed the child's page (copy-on-write broken)"
                )
    finally:
        child.close()
    return problems


def check_4(b: Backend, target: Target) -> list[str]:
    """Hints never dirty a clean page-cache (shmem, file, hugetlbfs) PTE, nor make it writable where an
    un-protect without hints leaves it read-only (a private mapping's: always)."""
    if target.shape is Shape.THP:
        raise ValueError("clause 4 is about shared page-cache PTEs: no anonymous THP case")
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    for case in cases(target.kind, b):
        if not case.clean:
            continue
        writable, base_problems = _writable_without_hints(b, target, case)
        problems += base_problems
        for hints in HINT_COMBINATIONS:
            s = _make(b, target, case.setup, case.name)
            _wp(b, s, True)
            _wp(b, s, False, hints)
            text = f"{target.label} {case.name} page-cache PTE, un-protect {hints.label}"
            problems += _expect(text, s, _views(b, s), present=True, dirty=False, writable=writable)
            problems += _write_probe(b, s, text, writable=writable)
    return problems


def check_5(b: Backend, target: Target) -> list[str]:
    """Un-protect without hints leaves young and dirty as they were: with ACCESS_HINTS negotiated where
    the kernel offers it; on anonymous pages also without it, and with DONTWAKE."""
    if target.shape is Shape.THP_PART:
        return _thp_part(b, target, 5)
    problems = []
    matrix = _decode_variants(target)
    for negotiated in (False, True) if matrix else (b.has_feature(Feature.ACCESS_HINTS),):
        if negotiated and not b.has_feature(Feature.ACCESS_HINTS):
            continue
        _open(b, (Feature.ACCESS_HINTS,) if negotiated else ())
        for case in cases(target.kind, b):
            for dontwake in (False, True) if matrix else (False,):
                s = _make(b, target, case.setup, case.name)
                before = _views(b, s, destructive=False)
                _wp(b, s, True)
                _wp(b, s, False, dontwake=dontwake)
                text = (
                    f"{target.label} {case.name}, un-protect without hints"
                    f"{' + DONTWAKE' if dontwake else ''}, ACCESS_HINTS {'' if negotiated else 'not '}negotiated"
                )
                want = {"young": not case.old, "dirty": not case.clean}
                problems += _expect(text + " (before)", s, before, **want)
                problems += _expect(text, s, _views(b, s), present=True, uffd_wp=False, **want)
                problems += _still_pmd_mapped(b, s, text)
                problems += _probe_writability(b, s, case, text)[1]  # which pages: the base's rule
        b.reopen()
    return problems


def check_6(b: Backend, target: Target) -> list[str]:
    """Hints together with MODE_WP (protecting) are rejected with EINVAL, with and without DONTWAKE."""
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    what = target.label
    s = _make(b, target, (Step.WRITE,), "young+dirty")
    for hints in HINT_COMBINATIONS:
        mode = abi.WRITEPROTECT_MODE_WP | hints.mode_bits()
        code = _errno_of(lambda: _wp(b, s, True, raw_mode=mode))  # noqa: B023 - called at once
        if code != errno.EINVAL:
            problems.append(f"{what}: MODE_WP + {hints.label}: got {_errname(code)}, expected EINVAL")
    views = _views(b, s, destructive=False)
    problems += _expect(f"{what}: after the rejected protects", s, views, present=True, uffd_wp=False)
    problems += _still_pmd_mapped(b, s, f"{what}: after the rejected calls")
    return problems + _write_probe(b, s, f"{what}: after the rejected protects (never protected)", writable=True)


def check_7(b: Backend, target: Target) -> list[str]:
    """Hints populate nothing: empty PTEs, uffd-wp markers and swap entries end as an un-protect
    without hints leaves them, page by page; on spans also empty entries and markers between
    present pages (a page table the walk visits).

    Protecting an empty page leaves a uffd-wp marker in a file, shmem or
    hugetlb mapping (Linux 6.0 on), in an anonymous one only with
    WP_UNPOPULATED (6.4 on): without it, the anonymous marker starts would be
    the empty ones again, so they are left out, and the clause runs on 6.1.
    """
    markers = target.kind.file_backed or b.has_feature(Feature.WP_UNPOPULATED)
    _open(
        b,
        (Feature.ACCESS_HINTS, Feature.WP_UNPOPULATED)
        if b.has_feature(Feature.WP_UNPOPULATED)
        else (Feature.ACCESS_HINTS,),
    )
    problems = []
    starts: list[tuple[str, tuple[str, ...]]] = [("empty", ())]
    if markers:
        starts.append(("uffd-wp marker", (Step.PROTECT,)))
    if target.shape is Shape.SPAN:
        starts.append(("empty beside present pages", (Step.WRITE_ALTERNATE,)))
        if markers:
            starts.append(("uffd-wp markers beside protected pages", (Step.WRITE_ALTERNATE, Step.PROTECT)))
    if target.kind is MemoryKind.ANON and b.swap and target.shape is not Shape.THP:
        starts.append(("swapped", (Step.WRITE, Step.PAGEOUT)))  # swapping a THP out splits it: not a PMD case

    def run(name: str, setup: tuple, hints: Hints):
        s = _make(b, target, (), name)
        for op in setup:
            _apply(b, s, op)
        _wp(b, s, False, hints)
        mapping = b.thp_mapping(s.refs[0]) if target.shape is Shape.THP else None
        return s, b.observe_pages(s.pages(), b.channels()[0]), mapping

    for name, setup in starts:
        s, plain, plain_map = run(name, setup, Hints.NONE)  # the baseline
        for hints in HINT_COMBINATIONS:
            _, hinted_states, hinted_map = run(name, setup, hints)
            text = f"{target.label} {name}, un-protect {hints.label}"
            for (r, page), p, h in zip(s.pages(), plain, hinted_states, strict=False):
                if h.present and not p.present:
                    problems.append(f"{text}:{s.where(r, page)} the page was populated")
                for field in ("present", "swapped", "uffd_wp"):
                    if getattr(p, field) != getattr(h, field):
                        problems.append(
                            f"{text}:{s.where(r, page)} {field} is {getattr(h, field)}, "
                            f"without hints {getattr(p, field)}"
                        )
            if target.shape is Shape.THP:  # every base page of the PMD range, not only the first
                if hinted_map.populated:
                    problems.append(f"{text}: the PMD range was populated: {hinted_map}")
                if (plain_map.present, plain_map.uffd_wp) != (hinted_map.present, hinted_map.uffd_wp):
                    problems.append(
                        f"{text}: {hinted_map.present} present and {hinted_map.uffd_wp} uffd-wp base "
                        f"pages, without hints {plain_map.present} and {plain_map.uffd_wp}"
                    )
    return _dedupe(problems)


def check_8(b: Backend, target: Target) -> list[str]:
    """Where soft-dirty tracking needs the write fault, hints neither dirty the PTE nor make it writable
    (where an un-protect without hints does, the base has already given the fault up: 6.1's MAP_SHARED)."""
    _open(b, (Feature.ACCESS_HINTS,))
    setup = (
        (Step.WRITE, Step.FREE, Step.CLEAR_SOFT_DIRTY)
        if target.kind is MemoryKind.ANON
        else (Step.READ, Step.CLEAR_SOFT_DIRTY)
    )
    armed = Case("clean, soft-dirty armed", setup, old=True, clean=True)
    writable, problems = _writable_without_hints(b, target, armed)
    for hints in (Hints.WRITE_LIKELY, Hints.BOTH):
        s = _make(b, target, setup, armed.name)
        _wp(b, s, True)
        _wp(b, s, False, hints)
        text = f"{target.label} clean, soft-dirty tracking armed, un-protect {hints.label}"
        problems += _expect(text, s, _views(b, s), present=True, dirty=False, soft_dirty=False, writable=writable)
        problems += _still_pmd_mapped(b, s, text)
        problems += _write_probe(b, s, text, writable=writable)
    return problems


# -- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Clause:
    """One clause of the contract (BRIEF 2.2): everything the suite, the plugin and the report need."""

    number: int
    text: str
    check: Callable[[Backend, Target], list[str]]
    #: the memory kinds it is checked on (each in every shape of ``shapes``)
    kinds: tuple[MemoryKind, ...]
    #: the range shapes; THP applies to anonymous memory only, large folios to LARGE_FOLIO_KINDS
    shapes: tuple[Shape, ...]
    #: Feature members and capability names (SOFT_DIRTY, SWAP) the kernel must have for a kernel result
    needs: tuple = ()

    def targets(self, kernel_only: bool = True) -> list[Target]:
        """Every kind in every shape it is laid out in; ``kernel_only``: with the THP and hugetlb targets."""
        out = []
        for shape in self.shapes:
            if shape in (Shape.THP, Shape.THP_PART):
                out.append(Target(MemoryKind.ANON, shape))
            elif shape is Shape.LARGE_FOLIO:
                out += [Target(kind, shape) for kind in self.kinds if kind in LARGE_FOLIO_KINDS]
            else:
                out += [Target(kind, shape) for kind in self.kinds if shape is not Shape.SPAN or kind in SPAN_KINDS]
        return [t for t in out if kernel_only or not t.kernel_only]


_ALL_SHAPES = (Shape.PAGE, Shape.SPAN, Shape.THP)
_HINTS = (Feature.ACCESS_HINTS,)

CONTRACT: dict[int, Clause] = {
    c.number: c
    for c in (
        Clause(
            1,
            "hint bits without UFFD_FEATURE_ACCESS_HINTS negotiated are rejected with EINVAL",
            check_1,
            BASE_KINDS + HUGETLB_KINDS,
            _ALL_SHAPES,
        ),
        Clause(
            2,
            "un-protect with ACCESS_LIKELY: every present PTE it resolves is young",
            check_2,
            BASE_KINDS + HUGETLB_KINDS,
            _ALL_SHAPES + (Shape.THP_PART, Shape.LARGE_FOLIO),
            _HINTS,
        ),
        Clause(
            3,
            "un-protect with WRITE_LIKELY: every PTE it makes writable is dirty and young",
            check_3,
            BASE_KINDS + HUGETLB_KINDS,
            _ALL_SHAPES + (Shape.THP_PART, Shape.LARGE_FOLIO),
            _HINTS,
        ),
        Clause(
            4,
            "hints never dirty a clean page-cache (shmem / file) PTE, nor make it writable where an "
            "un-protect without hints does not",
            check_4,
            SHARED_KINDS,
            (Shape.PAGE, Shape.SPAN, Shape.LARGE_FOLIO),
            _HINTS,
        ),
        Clause(
            5,
            "un-protect without hints leaves young and dirty as they were",
            check_5,
            BASE_KINDS + HUGETLB_KINDS,
            _ALL_SHAPES + (Shape.THP_PART, Shape.LARGE_FOLIO),
        ),
        Clause(
            6,
            "hints together with MODE_WP are rejected with EINVAL",
            check_6,
            BASE_KINDS + HUGETLB_KINDS,
            _ALL_SHAPES,
            _HINTS,
        ),
        Clause(
            7,
            "hints populate nothing: empty PTEs and uffd-wp markers stay",
            check_7,
            BASE_KINDS + HUGETLB_KINDS,
            _ALL_SHAPES,
            _HINTS,
        ),
        Clause(
            8,
            "where soft-dirty tracking needs the write fault, hints neither make the PTE writable nor dirty it",
            check_8,
            BASE_KINDS,
            _ALL_SHAPES + (Shape.LARGE_FOLIO,),
            (Feature.ACCESS_HINTS, SOFT_DIRTY),
        ),
    )
}


def markdown_table() -> str:
    """The contract as the README shows it (a test keeps the README's copy equal to this)."""
    names = {
        Shape.PAGE: "page",
        Shape.SPAN: "span",
        Shape.THP: "anon THP",
        Shape.THP_PART: "part of an anon THP",
        Shape.LARGE_FOLIO: "large folio (anon mTHP, shmem THP)",
    }
    lines = [
        "| clause | what the suite checks (BRIEF 2.2) | memory | shapes | needs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n, c in sorted(CONTRACT.items()):
        needs = ", ".join(f"`{f.name}`" if isinstance(f, Feature) else f for f in c.needs) or "-"
        lines.append(
            f"| {n} | {c.text} | {', '.join(k.value for k in c.kinds)} | "
            f"{', '.join(names[s] for s in c.shapes)} | {needs} |"
        )
    return "\n".join(lines) + "\n"


def _errno_of(call) -> Optional[int]:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


def _errname(code: Optional[int]) -> str:
    return "success" if not code else errno.errorcode.get(code, str(code))


# -- the older call style, kept for the tests of the checks themselves -------------------


def _by_kind(n: int) -> Callable[..., list[str]]:
    def check(b: Backend, kind: MemoryKind, thp: bool = False, shape: Shape = Shape.PAGE) -> list[str]:
        return CONTRACT[n].check(b, Target(kind, Shape.THP if thp else shape))

    check.__name__ = f"clause_{n}"
    check.__doc__ = CONTRACT[n].check.__doc__
    return check


clause_1, clause_2, clause_3, clause_4, clause_5, clause_6, clause_7, clause_8 = (_by_kind(n) for n in CONTRACT)
CLAUSES: dict[int, Callable[..., list[str]]] = {n: _by_kind(n) for n in CONTRACT}
#: the clauses with an anonymous THP case
THP_CLAUSES = tuple(n for n, c in CONTRACT.items() if Shape.THP in c.shapes)
#: the clauses with a target only a kernel can run (THP, hugetlb)
KERNEL_ONLY_CLAUSES = tuple(n for n, c in CONTRACT.items() if any(t.kernel_only for t in c.targets()))
#: the memory kinds each clause is about
CLAUSE_KINDS = {n: c.kinds for n, c in CONTRACT.items()}


def run_clause(
    n: int, make_backend: Callable[[], Backend], shapes: tuple = (Shape.PAGE, Shape.SPAN)
) -> dict[str, list[str]]:
    """Run clause ``n`` on each of its targets of ``shapes``, each on a fresh backend; {target label: violations}."""
    out = {}
    for target in CONTRACT[n].targets(kernel_only=False):
        if target.shape not in shapes:
            continue
        b = make_backend()
        try:
            out[target.label] = CONTRACT[n].check(b, target)
        finally:
            b.close()
    return out
