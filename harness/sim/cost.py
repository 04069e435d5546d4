"""A first-touch cost model: what an access costs given the PTE it meets.

An access that the hardware completes costs ``base_access`` (a warm-TLB
hit on a young, dirty PTE), plus ``tlb_walk`` when the TLB is cold, plus one
micro-code assist: ``dirty_assist`` for a write to a clean PTE, else
``accessed_assist`` for any access to an old PTE.  An access that faults
costs ``minor_fault`` per kernel fault plus ``uffd_round_trip`` per fault
delivered to user space; the PTE the fault installs is young (and dirty for
a write), so no assist follows.

Parameters come from ``build/results/calibration.json`` as the benchmark
writes it (schema ``uffd-harness/calibration/1``, see :mod:`harness.timing`),
derived from its ``net_medians`` (cycles, the empty timed section subtracted)::

    base_access     = first_touch.young_dirty.read.warm_tlb
    tlb_walk        = first_touch.young_dirty.read - base_access
    accessed_assist = first_touch.old_dirty.read - first_touch.young_dirty.read
    dirty_assist    = first_touch.young_clean.write - first_touch.young_dirty.write
    uffd_round_trip = uffd.missing_roundtrip.py_handler (else .c_handler)

An optional top-level object ``"cost_model"`` in the same file sets any of
the fields below directly (``base_access``, ``tlb_walk``, ``accessed_assist``,
``dirty_assist``, ``minor_fault``, ``uffd_round_trip``; cycles) and wins over
derived values.  Missing figures keep the defaults, which come from BRIEF 4
(host, AMD EPYC, virtualised: young+dirty 52, old read 156, old+clean write 130
cycles) and, for faults, are rough assumptions (``assumed`` lists them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Optional

from harness import paths
from harness.memory import PAGE_SIZE
from harness.timing.documents import load_calibration

DEFAULT_CALIBRATION = paths.CALIBRATION_JSON

_FIELDS = ("base_access", "tlb_walk", "accessed_assist", "dirty_assist", "minor_fault", "uffd_round_trip")


@dataclass(frozen=True)
class CostModel:
    base_access: float = 18.0
    tlb_walk: float = 34.0
    accessed_assist: float = 104.0
    dirty_assist: float = 78.0
    minor_fault: float = 2500.0
    uffd_round_trip: float = 25000.0
    #: where the numbers came from
    source: str = "defaults (BRIEF 4)"
    #: fields still at their assumed defaults
    assumed: tuple = ("minor_fault", "uffd_round_trip")
    #: False under TCG: then the assists are not real
    models_hardware_assists: bool = True
    tsc_hz: Optional[float] = None

    @classmethod
    def load(cls, path: os.PathLike | str | None = None) -> "CostModel":
        """From a calibration file; the defaults when none is named and the default file does not exist.

        A file that is named must exist and be a calibration document
        (:mod:`harness.timing.documents`): a model that names a file as its
        source while holding the defaults would be a wrong answer.
        """
        if path is None:
            if not DEFAULT_CALIBRATION.exists():
                return cls()
            path = DEFAULT_CALIBRATION
        return cls.from_calibration(load_calibration(path), source=str(path))

    @classmethod
    def from_calibration(cls, doc: dict, source: str = "calibration", bound: str = "median") -> "CostModel":
        """The model of a calibration document.

        ``bound`` picks which figures: ``"median"`` (the point estimate), or
        ``"low"`` / ``"high"``, the ends of each derived cost's 95% interval,
        from the document's ``net_intervals`` by interval arithmetic (a
        difference ``a - b`` spans ``[a.lo - b.hi, a.hi - b.lo]``): the models
        whose predictions bound a projection.  A bound that the document has
        no interval for raises KeyError (calibrations before ``net_intervals``).
        """
        if bound not in ("median", "low", "high"):
            raise ValueError(f"bound must be median, low or high, not {bound!r}")
        net = doc.get("net_medians") or {}
        intervals = doc.get("net_intervals") or {}

        def have(*keys):
            return all(isinstance(net.get(k), (int, float)) for k in keys)

        def term(key: str, sign: int) -> float:
            """One term of a derived figure, at the end of its interval that moves the figure towards ``bound``."""
            if bound == "median":
                return net[key]
            lo, hi = intervals[key]
            return lo if (bound == "low") == (sign > 0) else hi

        def diff(a: str, b: str) -> float:
            return max(0.0, term(a, +1) - term(b, -1))

        values: dict = {}
        if have("first_touch.young_dirty.read.warm_tlb"):
            # a net figure below zero is a cheap access under the timer's noise (the empty section varies): zero
            values["base_access"] = max(0.0, term("first_touch.young_dirty.read.warm_tlb", +1))
            if have("first_touch.young_dirty.read"):
                values["tlb_walk"] = diff("first_touch.young_dirty.read", "first_touch.young_dirty.read.warm_tlb")
        if have("first_touch.old_dirty.read", "first_touch.young_dirty.read"):
            values["accessed_assist"] = diff("first_touch.old_dirty.read", "first_touch.young_dirty.read")
        if have("first_touch.young_clean.write", "first_touch.young_dirty.write"):
            values["dirty_assist"] = diff("first_touch.young_clean.write", "first_touch.young_dirty.write")
        for key in ("uffd.missing_roundtrip.py_handler", "uffd.missing_roundtrip.c_handler"):
            if have(key):
                values["uffd_round_trip"] = max(0.0, term(key, +1))
                break
        for key, value in (doc.get("cost_model") or {}).items():
            if key in _FIELDS:
                values[key] = float(value)
        assumed = tuple(f for f in cls.assumed if f not in values)
        return replace(
            cls(),
            **{k: float(v) for k, v in values.items()},
            source=source,
            assumed=assumed,
            models_hardware_assists=bool(doc.get("models_hardware_assists", True)),
            tsc_hz=doc.get("tsc_hz"),
        )

    def hardware_access(self, young: bool, dirty: bool, write: bool, cold_tlb: bool = True) -> dict:
        """The cost of an access the hardware completes, by component."""
        parts = {"base": self.base_access}
        if cold_tlb:
            parts["tlb_walk"] = self.tlb_walk
        if write and not dirty:
            parts["dirty_assist"] = self.dirty_assist
        elif not young:
            parts["accessed_assist"] = self.accessed_assist
        return parts

    def access(self, mm, addr: int, write: bool, cold_tlb: bool = True) -> "AccessCost":
        """Do the access on a simulator :class:`~harness.sim.model.Mm` and price the path it took."""
        vma = mm.find_vma(addr)
        pte = vma.ptes[(addr - vma.start) // PAGE_SIZE] if vma else None
        before = (
            pte is not None and pte.folio is not None,
            bool(pte and pte.young),
            bool(pte and pte.dirty),
            bool(pte and pte.write),
        )
        faults0, events0 = mm.stats["faults"], len(mm.events)
        signal = mm.access(addr, write)
        faults, events = mm.stats["faults"] - faults0, len(mm.events) - events0
        present, young, dirty, writable = before
        if faults == 0:
            parts = self.hardware_access(young, dirty, write, cold_tlb)
        else:
            parts = {"base": self.base_access, "minor_fault": self.minor_fault * faults}
            if cold_tlb:
                parts["tlb_walk"] = self.tlb_walk
            if events:
                parts["uffd_round_trip"] = self.uffd_round_trip * events
        return AccessCost(sum(parts.values()), parts, faults, events, signal)


@dataclass(frozen=True)
class AccessCost:
    cycles: float
    parts: dict = field(default_factory=dict)
    faults: int = 0
    events: int = 0
    signal: int = 0

    def describe(self) -> str:
        parts = " + ".join(f"{k} {v:.0f}" for k, v in self.parts.items())
        return f"{self.cycles:.0f} cycles ({parts})"
