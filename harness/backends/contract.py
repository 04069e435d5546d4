"""The contract of BRIEF 2.2, clause by clause, as checks that run on any backend.

Each ``clause_N(backend, kind)`` sets up one-page regions of ``kind`` on a
backend whose userfaultfd is not yet open, drives them, and returns the
list of violations it saw (empty: the clause holds).  A violation names the
case, the channel and what was expected, so a failing test says why.  The
same functions are run against deliberately broken simulator profiles to
show that they can fail.

What each channel can say (``CHANNEL_FIELDS`` in :mod:`harness.backends.base`):
smaps sees young/dirty per one-page VMA (PTE bit or folio flag); idle-page
sees "accessed since marked idle", i.e. PTE young; kpageflags sees folio
flags only, so it checks nothing here.  Only the simulator sees
``writable``; on the kernel the cases are built so that the kernel's own
rules (``can_change_pte_writable()``) say whether the PTE is made writable.

Ways to get an old and clean PTE: ``MADV_FREE`` for anonymous pages (the PTE
stays present and writable); a read fault of a never-written shmem page (a
clean page-cache page) and ``clear_refs`` 1 for shmem.  Shmem pages once
written stay dirty in the page cache, so a clean shmem PTE is a read-only
mapping of a page that was never written.

Transparent huge pages (``thp=True``, anonymous only, clauses in
``THP_CLAUSES``): the region is one PMD-sized page with MADV_HUGEPAGE, and
the same starting states are made on the PMD (a write fault maps a young,
dirty THP; MADV_FREE over the whole PMD makes it old and clean without
splitting it; clear_refs 1 clears PMD young).  The set-up checks that the
region really is PMD-mapped (:meth:`harness.memory.Region.check_thp`, a
:class:`~harness.errors.ThpUnavailable` when not), and every un-protect is
followed by a check that the PMD was not split.  Clause 7 looks at all 512
base pages of a never-populated PMD range.  Clause 4 is about shared
page-cache PTEs, so it has no anonymous THP case; shmem THP is not covered.
Only the kernel backend has THP regions: the simulator does not model them.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Callable, Optional

from harness import abi
from harness.abi import Feature, RegisterMode
from harness.memory import MemoryKind
from harness.backends.base import CHANNEL_FIELDS, Backend, RegionRef

KINDS = (MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE)
SHARED_KINDS = (MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE)  # page-cache PTEs
#: the clauses that apply to an anonymous PMD-mapped THP (4 is about shared page-cache PTEs)
THP_CLAUSES = (1, 2, 3, 5, 6, 7, 8)


def memory_label(kind: MemoryKind, thp: bool = False) -> str:
    """"anon", "shmem", ... or "anon-thp": how test ids and results name the memory."""
    return f"{kind.value}-thp" if thp else kind.value


@dataclass(frozen=True)
class Case:
    """A starting PTE state and how to make it; ``writable_on_unprotect`` is the kernel's rule."""

    name: str
    setup: tuple            # ops: "read", "write", "free", "clear_young", "clear_soft_dirty"
    old: bool
    clean: bool
    writable_on_unprotect: bool


def cases(kind: MemoryKind) -> list[Case]:
    """The starting states that can be made for ``kind`` (one page each)."""
    if kind is MemoryKind.ANON:
        return [Case("old+clean", ("write", "free"), True, True, True),
                Case("old+dirty", ("write", "clear_young"), True, False, True),
                Case("young+clean", ("write", "free", "read"), False, True, True),
                Case("young+dirty", ("write",), False, False, True)]
    if kind is MemoryKind.SHMEM:
        # 6.12 never write-upgrades a shmem PTE on un-protect, dirty or not
        # (vma_wants_manual_pte_write_upgrade() is false for shmem), so WRITE_LIKELY has nothing to dirty
        return [Case("old+clean", ("read", "clear_young"), True, True, False),
                Case("old+dirty", ("write", "clear_young"), True, False, False),
                Case("young+clean", ("read",), False, True, False),
                Case("young+dirty", ("write",), False, False, False)]
    # shmem-private: a read maps the clean page-cache page (never writable: COW);
    # a write makes an exclusive anonymous copy, which can be made writable
    return [Case("old+clean", ("read", "clear_young"), True, True, False),
            Case("old+dirty", ("write", "clear_young"), True, False, True),
            Case("young+clean", ("read",), False, True, False),
            Case("young+dirty", ("write",), False, False, True)]


def _apply(b: Backend, r: RegionRef, op: str) -> None:
    if op == "read":
        _check_access(b.read(r), "read")
    elif op == "write":
        _check_access(b.write(r), "write")
    elif op == "free":
        b.madvise(r, "free")
        b.mark_idle(r)
    elif op == "clear_young":
        b.clear_refs(abi.CLEAR_REFS_ALL)
        b.mark_idle(r)
    elif op == "clear_soft_dirty":
        b.clear_refs(abi.CLEAR_REFS_SOFT_DIRTY)
    else:
        raise ValueError(op)


def _check_access(sig: int, what: str) -> None:
    if sig:
        raise AssertionError(f"set-up {what} got signal {sig}")


def _make(b: Backend, kind: MemoryKind, case: Case, thp: bool = False) -> RegionRef:
    return _region(b, kind, case.setup, thp, case.name)


def _region(b: Backend, kind: MemoryKind, setup: tuple, thp: bool, name: str) -> RegionRef:
    """A WP-registered one-page region of ``kind`` (one PMD-sized THP if ``thp``) after ``setup``."""
    if thp and kind is not MemoryKind.ANON:
        raise ValueError(f"THP checks are for anonymous memory, not {kind.value}")
    r = b.create(kind, 1, RegisterMode.WP, thp=thp)
    for op in setup:
        _apply(b, r, op)
    if thp and setup:
        b.check_thp(r, f"after set-up {name} ({', '.join(setup)})")   # ThpUnavailable: not a violation
    return r


def _still_pmd_mapped(b: Backend, r: RegionRef, label: str) -> list[str]:
    """For a THP region: the un-protect must leave it PMD-mapped, and the channels must agree on that."""
    if not r.thp:
        return []
    mapping = b.thp_mapping(r)
    problem = mapping.disagreement()
    if problem:
        return [f"{label}: {problem}"]
    if not mapping.pmd_mapped:
        return [f"{label}: the THP is no longer PMD-mapped (the kernel split it): {mapping}"]
    return []


def _views(b: Backend, r: RegionRef, destructive: bool = True) -> dict:
    """{channel: PteState} through every channel (idle-page only when ``destructive``)."""
    out = {}
    for channel in b.channels():
        if not CHANNEL_FIELDS.get(channel):
            continue
        if channel == "idle-page" and not destructive:
            continue
        out[channel] = b.observe(r, 0, channel)
    return out


def _agree(label: str, views: dict) -> list[str]:
    """Every channel that can tell must give the same young (and dirty) as the others."""
    problems = []
    for field in ("young", "dirty"):
        seen = {ch: getattr(st, field) for ch, st in views.items() if field in CHANNEL_FIELDS[ch]}
        if len(set(seen.values())) > 1:
            problems.append(f"{label}: channels disagree on {field}: {seen}")
    return problems


def _expect(label: str, views: dict, **want) -> list[str]:
    problems = []
    for channel, state in views.items():
        for field, value in want.items():
            if field in ("young", "dirty") and field not in CHANNEL_FIELDS[channel]:
                continue
            got = getattr(state, field)
            if got is None:
                continue
            if got != value:
                problems.append(f"{label}: {field} is {got} through {channel}, expected {value}")
    return problems + _agree(label, views)


def _open(b: Backend, features=()) -> None:
    b.api(tuple(features))


# -- the clauses ----------------------------------------------------------------------

def clause_1(b: Backend, kind: MemoryKind, thp: bool = False) -> list[str]:
    """Without ACCESS_HINTS negotiated, any hint bit is rejected with EINVAL."""
    _open(b, ())
    problems = []
    hints = abi.hint_abi()
    what = memory_label(kind, thp)
    r = _make(b, kind, Case("young+dirty", ("write",), False, False, True), thp)
    b.protect(r)
    for label, mode in (("ACCESS_LIKELY", hints.access_likely), ("WRITE_LIKELY", hints.write_likely),
                        ("both", hints.access_likely | hints.write_likely)):
        for wp in (False, True):
            raw = mode | (abi.WRITEPROTECT_MODE_WP if wp else 0)
            code = _errno_of(lambda: b.writeprotect(r, not wp, raw_mode=raw))
            if code != errno.EINVAL:
                problems.append(f"{what}: {label}{' + MODE_WP' if wp else ''} without the feature: "
                                f"got {_errname(code)}, expected EINVAL")
    state = b.observe(r, 0, b.channels()[0])
    if not state.uffd_wp:
        problems.append(f"{what}: a rejected un-protect still cleared uffd-wp")
    return problems + _still_pmd_mapped(b, r, f"{what}: after the rejected calls")


def clause_2(b: Backend, kind: MemoryKind, thp: bool = False) -> list[str]:
    """Un-protect with ACCESS_LIKELY: every present PTE it resolves is young."""
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    for case in cases(kind):
        r = _make(b, kind, case, thp)
        b.protect(r)
        b.unprotect(r, access_likely=True)
        label = f"{memory_label(kind, thp)} {case.name}, un-protect ACCESS_LIKELY"
        problems += _expect(label, _views(b, r), present=True, uffd_wp=False, young=True)
        problems += _still_pmd_mapped(b, r, label)
    return problems


def clause_3(b: Backend, kind: MemoryKind, thp: bool = False) -> list[str]:
    """Un-protect with WRITE_LIKELY: every PTE it makes writable is dirty and young."""
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    for case in cases(kind):
        r = _make(b, kind, case, thp)
        b.protect(r)
        b.unprotect(r, write_likely=True)
        views = _views(b, r)
        label = f"{memory_label(kind, thp)} {case.name}, un-protect WRITE_LIKELY"
        writable = [st.writable for st in views.values() if st.writable is not None]
        made_writable = writable[0] if writable else case.writable_on_unprotect
        if writable and writable[0] != case.writable_on_unprotect:
            problems.append(f"{label}: writable is {writable[0]}, the kernel's rule says "
                            f"{case.writable_on_unprotect}")
        if made_writable:
            problems += _expect(label, views, present=True, young=True, dirty=True)
        problems += _still_pmd_mapped(b, r, label)
    return problems


def clause_4(b: Backend, kind: MemoryKind, thp: bool = False) -> list[str]:
    """Hints never make a clean shared (shmem / page-cache) PTE writable or dirty."""
    if thp:
        raise ValueError("clause 4 is about shared page-cache PTEs: no anonymous THP case (shmem THP not covered)")
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    for case in cases(kind):
        if not case.clean:
            continue
        for hint in ("access_likely", "write_likely", "both"):
            r = _make(b, kind, case)
            b.protect(r)
            b.unprotect(r, access_likely=hint in ("access_likely", "both"),
                        write_likely=hint in ("write_likely", "both"))
            label = f"{kind.value} {case.name} page-cache PTE, un-protect {hint}"
            views = _views(b, r)
            problems += _expect(label, views, present=True, dirty=False)
            for channel, st in views.items():
                if st.writable:
                    problems.append(f"{label}: made writable (seen through {channel})")
    return problems


def clause_5(b: Backend, kind: MemoryKind, thp: bool = False) -> list[str]:
    """Un-protect without hints leaves young and dirty as they were."""
    _open(b, ())
    problems = []
    for case in cases(kind):
        r = _make(b, kind, case, thp)
        before = _views(b, r, destructive=False)
        b.protect(r)
        b.unprotect(r)
        label = f"{memory_label(kind, thp)} {case.name}, un-protect without hints"
        want = {"young": not case.old, "dirty": not case.clean}
        problems += _expect(label + " (before)", before, **want)
        problems += _expect(label, _views(b, r), present=True, uffd_wp=False, **want)
        problems += _still_pmd_mapped(b, r, label)
    return problems


def clause_6(b: Backend, kind: MemoryKind, thp: bool = False) -> list[str]:
    """Hints together with MODE_WP (protecting) are rejected with EINVAL."""
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    what = memory_label(kind, thp)
    r = _make(b, kind, Case("young+dirty", ("write",), False, False, True), thp)
    for label, kwargs in (("ACCESS_LIKELY", dict(access_likely=True)), ("WRITE_LIKELY", dict(write_likely=True)),
                          ("both", dict(access_likely=True, write_likely=True))):
        hints = abi.hint_abi()
        raw = abi.WRITEPROTECT_MODE_WP | (hints.access_likely if kwargs.get("access_likely") else 0) \
            | (hints.write_likely if kwargs.get("write_likely") else 0)
        code = _errno_of(lambda: b.writeprotect(r, True, raw_mode=raw))
        if code != errno.EINVAL:
            problems.append(f"{what}: MODE_WP + {label}: got {_errname(code)}, expected EINVAL")
    state = b.observe(r, 0, b.channels()[0])
    if state.uffd_wp:
        problems.append(f"{what}: a rejected protect still set uffd-wp")
    return problems + _still_pmd_mapped(b, r, f"{what}: after the rejected calls")


def clause_7(b: Backend, kind: MemoryKind, thp: bool = False) -> list[str]:
    """Hints populate nothing: empty PTEs and uffd-wp markers end as un-protect without hints leaves them."""
    features = (Feature.ACCESS_HINTS, Feature.WP_UNPOPULATED)
    _open(b, features)
    problems = []
    starts = [("empty", ()), ("uffd-wp marker", ("protect",))]
    if kind is MemoryKind.ANON and b.swap and not thp:   # swapping a THP out splits it: not a PMD case
        starts.append(("swapped", ("write", "pageout")))
    for name, setup in starts:
        pair = []
        mappings = []
        for hinted in (False, True):
            r = _region(b, kind, (), thp, name)
            for op in setup:
                if op == "protect":
                    b.protect(r)
                elif op == "pageout":
                    b.madvise(r, "pageout")
                else:
                    _apply(b, r, op)
            b.unprotect(r, access_likely=hinted, write_likely=hinted)
            pair.append(b.observe(r, 0, b.channels()[0]))
            if thp:
                mappings.append(b.thp_mapping(r))
        plain, hinted_state = pair
        label = f"{memory_label(kind, thp)} {name}, un-protect with both hints"
        if hinted_state.present:
            problems.append(f"{label}: the page was populated")
        if thp:
            # every base page of the PMD range, not only the first
            plain_map, hinted_map = mappings
            if hinted_map.populated:
                problems.append(f"{label}: the PMD range was populated: {hinted_map}")
            if (plain_map.present, plain_map.uffd_wp) != (hinted_map.present, hinted_map.uffd_wp):
                problems.append(f"{label}: {hinted_map.present} present and {hinted_map.uffd_wp} uffd-wp base "
                                f"pages, without hints {plain_map.present} and {plain_map.uffd_wp}")
        for field in ("present", "swapped", "uffd_wp"):
            if getattr(plain, field) != getattr(hinted_state, field):
                problems.append(f"{label}: {field} is {getattr(hinted_state, field)}, "
                                f"without hints {getattr(plain, field)}")
    return problems


def clause_8(b: Backend, kind: MemoryKind, thp: bool = False) -> list[str]:
    """Where soft-dirty tracking needs the write fault, the PTE is not made writable, so not dirtied."""
    _open(b, (Feature.ACCESS_HINTS,))
    problems = []
    setup = ("write", "free", "clear_soft_dirty") if kind is MemoryKind.ANON else ("read", "clear_soft_dirty")
    for hint in ("write_likely", "both"):
        r = _region(b, kind, setup, thp, "clean, soft-dirty armed")
        b.protect(r)
        b.unprotect(r, access_likely=hint == "both", write_likely=True)
        label = f"{memory_label(kind, thp)} clean, soft-dirty tracking armed, un-protect {hint}"
        views = _views(b, r)
        problems += _expect(label, views, present=True, dirty=False, soft_dirty=False)
        for channel, st in views.items():
            if st.writable:
                problems.append(f"{label}: made writable (seen through {channel})")
        problems += _still_pmd_mapped(b, r, label)
    return problems


CLAUSES: dict[int, Callable[..., list[str]]] = {
    1: clause_1, 2: clause_2, 3: clause_3, 4: clause_4, 5: clause_5, 6: clause_6, 7: clause_7, 8: clause_8,
}
#: the memory kinds each clause is about
CLAUSE_KINDS = {n: KINDS for n in CLAUSES}
CLAUSE_KINDS[4] = SHARED_KINDS


def clause_needs_soft_dirty(n: int) -> bool:
    return n == 8


def _errno_of(call) -> Optional[int]:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


def _errname(code: Optional[int]) -> str:
    return "success" if not code else errno.errorcode.get(code, str(code))


def run_clause(n: int, make_backend: Callable[[], Backend]) -> dict[str, list[str]]:
    """Run clause ``n`` on each of its kinds, each on a fresh backend; {kind: violations}."""
    out = {}
    for kind in CLAUSE_KINDS[n]:
        b = make_backend()
        try:
            out[kind.value] = CLAUSES[n](b, kind)
        finally:
            b.close()
    return out
