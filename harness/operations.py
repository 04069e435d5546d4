"""The operation language: what a sequence, a scenario or a check asks a backend to do, typed.

:class:`Hints`
    the hints of an un-protect (none, ACCESS_LIKELY, WRITE_LIKELY, both): how
    people, the command line and the mode word spell them.
the operations
    one frozen dataclass each (:class:`Read`, :class:`Unprotect`,
    :class:`Move`, ...); ``op.act(backend, regions)`` does it,
    ``op.words()`` is its compact spelling (``("unprotect", 0, "W")``, what
    ``uffd-harness sim run`` prints).
:class:`Setup`
    the regions a sequence runs on (a memory kind and a registration each)
    and the features it negotiates; :func:`start` makes them on a backend.
:func:`apply`
    one operation, its outcome as a value: 0, ``("signal", n)`` or ``("errno", n)``.

The differential tests (:mod:`harness.backends.differential`), the
simulator's scenarios (:mod:`harness.sim.scenarios`) and the contract
(:mod:`harness.backends.contract`) speak it; the simulator's profiles are
handed a :class:`Hints`.  Each ``repr`` is the Python source that makes the
value, so a sequence printed by a failing test can be pasted as a test.
"""

from __future__ import annotations

import abc
import enum
import functools
from dataclasses import dataclass, fields
from typing import ClassVar, Sequence, Union

from harness import abi
from harness.abi import Feature, RegisterMode
from harness.backends.base import Backend, RegionRef
from harness.memory import PROT_READ, PROT_RW, MemoryKind


class Hints(enum.Flag):
    """The hints an un-protect carries (``UFFDIO_WRITEPROTECT`` without MODE_WP): none, either or both.

    The members' values are not the mode bits: those are the uapi header's in
    force (:func:`harness.abi.hint_abi`), which :meth:`mode_bits` and
    :meth:`from_mode` read.
    """

    NONE = 0
    ACCESS_LIKELY = 1
    WRITE_LIKELY = 2
    BOTH = ACCESS_LIKELY | WRITE_LIKELY

    # cached on the member (each value is one): the simulator's profiles ask for every PTE an un-protect visits
    @functools.cached_property
    def access_likely(self) -> bool:
        return Hints.ACCESS_LIKELY in self

    @functools.cached_property
    def write_likely(self) -> bool:
        return Hints.WRITE_LIKELY in self

    @property
    def label(self) -> str:
        """How checks, test ids and reports name them: "ACCESS_LIKELY", "WRITE_LIKELY", "both", "no hints"."""
        if self is Hints.BOTH:
            return "both"
        if self is Hints.NONE:
            return "no hints"
        return str(self.name)  # the mode bit's own name

    @property
    def short(self) -> str:
        """The command line's spelling (``sim run --hints``): "", "A", "W" or "AW"."""
        return ("A" if self.access_likely else "") + ("W" if self.write_likely else "")

    @classmethod
    def parse(cls, short: str) -> Hints:
        """The hints a short spelling names ("", "A", "W", "AW"); ValueError for anything else."""
        for hints in cls.__members__.values():
            if hints.short == short:
                return hints
        raise ValueError(f"hints {short!r}: one of {', '.join(repr(h.short) for h in cls.__members__.values())}")

    @classmethod
    def of(cls, *, access_likely: bool, write_likely: bool) -> Hints:
        return (cls.ACCESS_LIKELY if access_likely else cls.NONE) | (cls.WRITE_LIKELY if write_likely else cls.NONE)

    def mode_bits(self) -> int:
        """Their bits of the ``UFFDIO_WRITEPROTECT`` mode word (composed by :func:`harness.abi.writeprotect_mode`)."""
        return abi.writeprotect_mode(False, access_likely=self.access_likely, write_likely=self.write_likely)

    @classmethod
    def from_mode(cls, mode: int) -> Hints:
        """The hints set in a ``UFFDIO_WRITEPROTECT`` mode word."""
        bits = abi.hint_abi()
        return cls.of(access_likely=bool(mode & bits.access_likely), write_likely=bool(mode & bits.write_likely))

    def __repr__(self) -> str:
        return f"Hints.{self.name}"


#: the combinations with a hint, in the order the checks run them
HINT_COMBINATIONS = (Hints.ACCESS_LIKELY, Hints.WRITE_LIKELY, Hints.BOTH)


# -- the set-up steps of a contract case ---------------------------------------------------


class Step(enum.StrEnum):
    """A set-up step of a contract case (:class:`harness.backends.contract.Case`): applied to every page
    of the case's range at once, where an :class:`Op` names one page.  The value is how a case's set-up
    is printed ("write, free")."""

    READ = "read"
    WRITE = "write"
    #: every other page, from the first: empty entries beside present ones in one page table
    WRITE_ALTERNATE = "write_alternate"
    #: MADV_FREE, then idle-page marking: an anonymous PTE old and clean, still present and writable
    FREE = "free"
    #: MADV_PAGEOUT: anonymous pages swapped out
    PAGEOUT = "pageout"
    #: clear_refs 1, then idle-page marking: every PTE old
    CLEAR_YOUNG = "clear_young"
    #: clear_refs 4: soft-dirty tracking armed (the PTEs write-protected for it)
    CLEAR_SOFT_DIRTY = "clear_soft_dirty"
    #: UFFDIO_WRITEPROTECT over the whole range
    PROTECT = "protect"
    #: the instrumentation's mkold: the entry itself made old (hugetlb, which nothing else reaches)
    MAKE_OLD = "make_old"


# -- the operations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Op(abc.ABC):
    """One step of a sequence, on regions addressed by their index in the :class:`Setup`."""

    #: the first of :meth:`words`
    name: ClassVar[str]

    @abc.abstractmethod
    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        """Do it on ``b``: the signal an access got, else 0 (a failed call raises its OSError)."""

    def words(self) -> tuple[Union[str, int], ...]:
        """The compact spelling, name first: ``("read", 0)``, ``("unprotect", 0, "W")``."""
        return (self.name, *(getattr(self, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Read(Op):
    """A load from the region's page."""

    region: int
    name = "read"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        return b.read(regions[self.region])


@dataclass(frozen=True)
class Write(Op):
    """A store to the region's page."""

    region: int
    name = "write"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        return b.write(regions[self.region])


@dataclass(frozen=True)
class Protect(Op):
    """``UFFDIO_WRITEPROTECT`` with MODE_WP over the region."""

    region: int
    name = "protect"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.protect(regions[self.region])
        return 0


@dataclass(frozen=True)
class Unprotect(Op):
    """``UFFDIO_WRITEPROTECT`` without MODE_WP over the region, with ``hints``."""

    region: int
    hints: Hints = Hints.NONE
    name = "unprotect"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.unprotect(regions[self.region], access_likely=self.hints.access_likely, write_likely=self.hints.write_likely)
        return 0

    def words(self) -> tuple[Union[str, int], ...]:
        return (self.name, self.region, self.hints.short)


@dataclass(frozen=True)
class _Madvise(Op):
    """madvise() of the region, with the advice :meth:`harness.backends.base.Backend.madvise` names ``name``."""

    region: int

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.madvise(regions[self.region], self.name)
        return 0


@dataclass(frozen=True)
class Free(_Madvise):
    """MADV_FREE: an anonymous PTE stays present and writable, old and clean."""

    name = "free"


@dataclass(frozen=True)
class DontNeed(_Madvise):
    """MADV_DONTNEED: the PTE is zapped."""

    name = "dontneed"


@dataclass(frozen=True)
class PageOut(_Madvise):
    """MADV_PAGEOUT: reclaim the page (to swap, where there is swap)."""

    name = "pageout"


@dataclass(frozen=True)
class Copy(Op):
    """``UFFDIO_COPY`` into the region's page."""

    region: int
    name = "copy"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.copy(regions[self.region])
        return 0


@dataclass(frozen=True)
class ZeroPage(Op):
    """``UFFDIO_ZEROPAGE`` on the region's page."""

    region: int
    name = "zeropage"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.zeropage(regions[self.region])
        return 0


@dataclass(frozen=True)
class Poison(Op):
    """``UFFDIO_POISON`` on the region's page."""

    region: int
    name = "poison"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.poison(regions[self.region])
        return 0


@dataclass(frozen=True)
class Move(Op):
    """``UFFDIO_MOVE`` of the page of region ``src`` to region ``dst``."""

    dst: int
    src: int
    allow_src_holes: bool = False
    name = "move"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.move(regions[self.dst], 0, regions[self.src], 0, allow_src_holes=self.allow_src_holes)
        return 0

    def words(self) -> tuple[Union[str, int], ...]:
        return (self.name, self.dst, self.src) + (("holes",) if self.allow_src_holes else ())


@dataclass(frozen=True)
class Mprotect(Op):
    """mprotect() of the region: read-only, or read-write again."""

    region: int
    writable: bool
    name = "mprotect"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.mprotect(regions[self.region], PROT_RW if self.writable else PROT_READ)
        return 0

    def words(self) -> tuple[Union[str, int], ...]:
        return (self.name, self.region, "rw" if self.writable else "r")


@dataclass(frozen=True)
class Fork(Op):
    """fork() a child that exits at once: what that leaves behind in the parent."""

    name = "fork"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.fork()
        return 0


@dataclass(frozen=True)
class ClearRefs(Op):
    """Write ``value`` (:data:`harness.abi.CLEAR_REFS_ALL`, ``CLEAR_REFS_SOFT_DIRTY``) to /proc/self/clear_refs:
    every region at once."""

    value: int
    name = "clear_refs"

    def act(self, b: Backend, regions: Sequence[RegionRef]) -> int:
        b.clear_refs(self.value)
        return 0


#: what :func:`apply` returns: 0, ("signal", n) for an access that got signal n, ("errno", n) for a failed call
Outcome = Union[int, tuple[str, int]]


def apply(b: Backend, regions: Sequence[RegionRef], op: Op) -> Outcome:
    """Do ``op`` on ``b``; its outcome as a value, so that two backends' outcomes compare."""
    try:
        sig = op.act(b, regions)
    except OSError as exc:
        if exc.errno is None:
            raise  # not a call's failure (both backends raise theirs with the errno)
        return ("errno", exc.errno)
    return ("signal", sig) if sig else 0


# -- the regions -----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Setup:
    """The regions of a sequence, one one-page VMA each (its memory kind and its registration), and the
    features negotiated before they are made."""

    kinds: tuple[MemoryKind, ...]
    register: tuple[RegisterMode, ...]
    features: tuple[Feature, ...] = ()

    def __post_init__(self) -> None:
        if len(self.kinds) != len(self.register):
            raise ValueError(f"{len(self.kinds)} memory kinds but {len(self.register)} registrations: one per region")

    def __repr__(self) -> str:
        kinds = _tuple_source(_enum_source(k) for k in self.kinds)
        register = _tuple_source(_enum_source(m) for m in self.register)
        features = _tuple_source(_enum_source(f) for f in self.features)
        return f"Setup(kinds={kinds}, register={register}, features={features})"


def start(b: Backend, setup: Setup) -> list[RegionRef]:
    """Open ``b``'s userfaultfd with the set-up's features and make its regions, in order."""
    b.api(setup.features)
    return [b.create(kind, 1, mode) for kind, mode in zip(setup.kinds, setup.register, strict=True)]


def source_imports(setup: Setup, ops: Sequence[Op]) -> list[str]:
    """The import lines the ``repr`` of ``setup`` and ``ops`` needs, one per module, sorted."""
    values = [*setup.kinds, *setup.register, *setup.features]
    values += [getattr(op, f.name) for op in ops for f in fields(op)]
    classes = {Setup} | {type(op) for op in ops} | {type(v) for v in values if isinstance(v, enum.Enum)}
    modules: dict[str, set[str]] = {}
    for cls in classes:
        modules.setdefault(cls.__module__, set()).add(cls.__name__)
    return [f"from {module} import {', '.join(sorted(names))}" for module, names in sorted(modules.items())]


def _enum_source(value: enum.Enum) -> str:
    """``MemoryKind.ANON``; a combination of flags as their union: ``RegisterMode.MISSING | RegisterMode.WP``."""
    members = list(value) if isinstance(value, enum.Flag) else [value]
    return " | ".join(f"{type(m).__name__}.{m.name}" for m in members)


def _tuple_source(items) -> str:
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
