"""Order statistics, bootstrap intervals and a plain verdict, for cycle samples.

Cycle counts are skewed (interrupts, a migrated vCPU, a cache miss in the
page walk) and quantised (the TSC may advance in steps), so every summary is
built on the median and quantiles, and intervals come from the percentile
bootstrap, which assumes nothing about the distribution.

numpy (which the ``bench`` extra brings with matplotlib) makes the bootstrap
fast; without it the same resampling runs in pure Python.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import asdict, dataclass
from typing import Optional, Sequence


@functools.cache
def _numpy():
    """numpy (it comes with matplotlib, the ``bench`` extra), or None.

    Imported on first use, not with this module: importing numpy takes
    2.4 s in a TCG guest, and the test suite imports this module while
    collecting, before its first test can run.
    """
    try:
        import numpy
    except ImportError:  # pragma: no cover - exercised where numpy is absent
        return None
    return numpy


#: verdicts of :func:`verdict`, in the words the tables print
FASTER = "faster"
SLOWER = "slower"
NO_DIFFERENCE = "no difference detected"

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
#: with fewer batches than this, resample samples only (a two-level bootstrap needs several batches)
MIN_BATCHES_FOR_CLUSTERING = 4


def quantile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation between order statistics.

    Matches ``numpy.quantile(..., method="linear")``.
    """
    if not samples:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    xs = sorted(samples)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(samples: Sequence[float]) -> float:
    return quantile(samples, 0.5)


def _resampled_medians(samples: Sequence[float], resamples: int, rng_seed: int) -> list[float]:
    """Medians of ``resamples`` bootstrap resamples (with replacement) of ``samples``."""
    n = len(samples)
    _np = _numpy()
    if _np is not None:
        data = _np.asarray(samples, dtype=float)
        rng = _np.random.default_rng(rng_seed)
        out = []
        chunk = max(1, 2_000_000 // n)  # bound memory: chunk x n indices at a time
        for start in range(0, resamples, chunk):
            rows = min(chunk, resamples - start)
            idx = rng.integers(0, n, size=(rows, n))
            out.extend(_np.median(data[idx], axis=1).tolist())
        return out
    rng = random.Random(rng_seed)
    return [median(rng.choices(samples, k=n)) for _ in range(resamples)]


def _resampled_medians_clustered(batches: Sequence[Sequence[float]], resamples: int, rng_seed: int) -> list[float]:
    """Two-level bootstrap: draw batches with replacement, then samples within each drawn batch.

    Samples of one batch share a moment, a region and a cache state, so
    they are not independent: resampling whole batches carries the
    batch-to-batch (drift) variance into the interval.
    """
    k = len(batches)
    _np = _numpy()
    if _np is not None and len({len(b) for b in batches}) == 1:
        data = _np.asarray(batches, dtype=float)  # k x m
        m = data.shape[1]
        rng = _np.random.default_rng(rng_seed)
        out = []
        chunk = max(1, 2_000_000 // (k * m))
        for start in range(0, resamples, chunk):
            rows = min(chunk, resamples - start)
            pick = rng.integers(0, k, size=(rows, k, 1))
            within = rng.integers(0, m, size=(rows, k, m))
            out.extend(_np.median(data[pick, within].reshape(rows, k * m), axis=1).tolist())
        return out
    rng = random.Random(rng_seed)
    out = []
    for _ in range(resamples):
        pooled: list[float] = []
        for b in rng.choices(batches, k=k):
            pooled.extend(rng.choices(b, k=len(b)))
        out.append(median(pooled))
    return out


def _medians(data, resamples: int, seed: int, batches) -> list[float]:
    if batches is not None and len(batches) >= MIN_BATCHES_FOR_CLUSTERING:
        return _resampled_medians_clustered(batches, resamples, seed)
    return _resampled_medians(data, resamples, seed)


def split_batches(samples: Sequence[float], sizes: Optional[Sequence[int]]) -> Optional[list[list[float]]]:
    """Cut ``samples`` into consecutive batches of ``sizes`` (None when sizes do not add up)."""
    if not sizes or sum(sizes) != len(samples):
        return None
    out, at = [], 0
    for n in sizes:
        out.append(list(samples[at : at + n]))
        at += n
    return out


def bootstrap_median_ci(
    samples: Sequence[float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batches: Optional[Sequence[Sequence[float]]] = None,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``samples``.

    With ``batches`` (the same samples cut into the batches they were
    measured in, at least :data:`MIN_BATCHES_FOR_CLUSTERING`), the bootstrap
    is two-level, so drift between batches widens the interval.
    """
    if len(samples) < 2:
        raise ValueError("a bootstrap interval needs at least two samples")
    return _percentile_interval(_medians(samples, resamples, seed, batches), confidence)


def _percentile_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2
    return quantile(values, alpha), quantile(values, 1.0 - alpha)


def _two_sample_medians(a, b, resamples: int, seed: int, batches_a, batches_b) -> tuple[list, list]:
    """Bootstrap medians of two independent runs (different seeds, so the resamples are independent)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a bootstrap interval needs at least two samples on each side")
    return _medians(a, resamples, seed, batches_a), _medians(b, resamples, seed + 1, batches_b)


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batches_a: Optional[Sequence[Sequence[float]]] = None,
    batches_b: Optional[Sequence[Sequence[float]]] = None,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``median(b) - median(a)`` (independent runs; batches as above)."""
    ma, mb = _two_sample_medians(a, b, resamples, seed, batches_a, batches_b)
    return _percentile_interval([y - x for x, y in zip(ma, mb, strict=True)], confidence)


def bootstrap_ratio_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batches_a: Optional[Sequence[Sequence[float]]] = None,
    batches_b: Optional[Sequence[Sequence[float]]] = None,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``median(b) / median(a)``."""
    ma, mb = _two_sample_medians(a, b, resamples, seed, batches_a, batches_b)
    if any(x == 0 for x in ma):
        raise ValueError("median of A resamples to zero: no ratio")
    return _percentile_interval([y / x for x, y in zip(ma, mb, strict=True)], confidence)


def verdict(diff_lo: float, diff_hi: float) -> str:
    """B against A from the interval of ``median(B) - median(A)`` (lower is better).

    The interval must exclude zero for a verdict; an interval touching zero
    (quantised samples make [0, 26] common) detects nothing.
    """
    if diff_lo > diff_hi:
        raise ValueError(f"empty interval [{diff_lo}, {diff_hi}]")
    if diff_hi < 0:
        return FASTER
    if diff_lo > 0:
        return SLOWER
    return NO_DIFFERENCE


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


@dataclass(frozen=True)
class Summary:
    """What the tables and the JSON say about one scenario's samples."""

    n: int
    median: float
    p10: float
    p90: float
    ci_lo: float
    ci_hi: float
    min: float
    max: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def summarize(
    samples: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    batches: Optional[Sequence[Sequence[float]]] = None,
) -> Summary:
    if len(samples) < 2:
        raise ValueError(f"need at least two samples to summarise, got {len(samples)}")
    lo, hi = bootstrap_median_ci(samples, confidence=confidence, resamples=resamples, seed=seed, batches=batches)
    return Summary(
        n=len(samples),
        median=median(samples),
        p10=quantile(samples, 0.1),
        p90=quantile(samples, 0.9),
        ci_lo=lo,
        ci_hi=hi,
        min=float(min(samples)),
        max=float(max(samples)),
    )


def relative_difference(a: float, b: float) -> Optional[float]:
    """|b - a| / a, or None when ``a`` is zero."""
    return abs(b - a) / a if a else None
