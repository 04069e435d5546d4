"""Does the benchmark see what it claims to?  ``uffd-harness bench --self-test``.

Two checks, on this host, with the real C loops (not a pytest: it times):

separation
    first touches of young+dirty and of old+clean PTEs (read and write),
    batches interleaved, until the 95% bootstrap intervals of their medians
    do not overlap, within :data:`BUDGET_S` seconds of measuring.
repeatability
    two independent runs of the same scenario agree on the median within
    :data:`AGREEMENT`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from harness.timing import stats
from harness.timing.scenarios import BY_NAME, Context

BUDGET_S = 2.0
AGREEMENT = 0.10
PAGES = 128
PAIRS = (
    ("first_touch.young_dirty.write", "first_touch.old_clean.write"),
    ("first_touch.young_dirty.read", "first_touch.old_clean.read"),
)
REPEAT_BATCHES = 3


@dataclass
class Separation:
    fast: str
    slow: str
    fast_median: float
    fast_ci: tuple[float, float]
    slow_median: float
    slow_ci: tuple[float, float]
    samples_each: int
    measuring_s: float
    separated: bool


@dataclass
class Agreement:
    scenario: str
    median_1: float
    median_2: float
    relative_difference: float
    agreed: bool


@dataclass
class SelfTest:
    separations: list[Separation] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            bool(self.separations)
            and all(s.separated for s in self.separations)
            and bool(self.agreements)
            and all(a.agreed for a in self.agreements)
        )

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "budget_s": BUDGET_S,
            "agreement": AGREEMENT,
            "separations": [asdict(s) for s in self.separations],
            "agreements": [asdict(a) for a in self.agreements],
        }


def _batches(name: str, ctx: Context, count: int) -> tuple[list[float], float]:
    samples: list[float] = []
    spent = 0.0
    for _ in range(count):
        t0 = time.perf_counter()
        samples.extend(BY_NAME[name].run(ctx).samples)
        spent += time.perf_counter() - t0
    return samples, spent


def separate(fast: str, slow: str, ctx: Context, budget_s: float = BUDGET_S) -> Separation:
    """Interleave batches of ``fast`` and ``slow`` until their median intervals part, or the budget ends.

    Intervals are two-level bootstraps (batches, then samples), so at least
    :data:`stats.MIN_BATCHES_FOR_CLUSTERING` batches of each are measured.
    """
    a: list[list[float]] = []
    b: list[list[float]] = []
    spent = 0.0
    ci_a = ci_b = (0.0, 0.0)
    separated = False
    while spent < budget_s:
        for name, into in ((fast, a), (slow, b)):
            got, dt = _batches(name, ctx, 1)
            into.append(got)
            spent += dt
        if len(a) < stats.MIN_BATCHES_FOR_CLUSTERING:
            continue
        flat_a, flat_b = [x for g in a for x in g], [x for g in b for x in g]
        ci_a = stats.bootstrap_median_ci(flat_a, resamples=1000, batches=a)
        ci_b = stats.bootstrap_median_ci(flat_b, resamples=1000, batches=b)
        if not stats.intervals_overlap(ci_a, ci_b):
            separated = ci_a[1] < ci_b[0]  # and in the expected direction
            break
    flat_a, flat_b = [x for g in a for x in g], [x for g in b for x in g]
    return Separation(
        fast,
        slow,
        stats.median(flat_a),
        ci_a,
        stats.median(flat_b),
        ci_b,
        len(flat_a),
        spent,
        separated and spent < budget_s,
    )


def agree(name: str, ctx: Context, batches: int = REPEAT_BATCHES) -> Agreement:
    one, _ = _batches(name, ctx, batches)
    two, _ = _batches(name, ctx, batches)
    m1, m2 = stats.median(one), stats.median(two)
    rel = stats.relative_difference(m1, m2)
    return Agreement(name, m1, m2, rel if rel is not None else float("inf"), rel is not None and rel <= AGREEMENT)


def run(pages: int = PAGES, budget_s: float = BUDGET_S) -> SelfTest:
    ctx = Context(pages=pages, check_state=False)
    result = SelfTest()
    for fast, slow in PAIRS:
        result.separations.append(separate(fast, slow, ctx, budget_s))
    for fast, slow in PAIRS[:1]:
        for name in (fast, slow):
            result.agreements.append(agree(name, ctx))
    return result


def report_lines(result: SelfTest) -> list[str]:
    lines = []
    for s in result.separations:
        lines.append(
            f"{'ok    ' if s.separated else 'FAILED'} separation: {s.fast} median {s.fast_median:.0f} "
            f"[{s.fast_ci[0]:.0f}, {s.fast_ci[1]:.0f}] vs {s.slow} median {s.slow_median:.0f} "
            f"[{s.slow_ci[0]:.0f}, {s.slow_ci[1]:.0f}]; {s.samples_each} samples each, "
            f"{1000 * s.measuring_s:.0f} ms of measuring (budget {BUDGET_S:.0f} s)"
        )
    for a in result.agreements:
        lines.append(
            f"{'ok    ' if a.agreed else 'FAILED'} repeatability: {a.scenario} medians {a.median_1:.0f} "
            f"and {a.median_2:.0f} differ by {100 * a.relative_difference:.1f}% "
            f"(limit {100 * AGREEMENT:.0f}%)"
        )
    lines.append("self-test " + ("passed" if result.passed else "FAILED"))
    return lines
