"""The statistics of the study: time to a target, paired comparisons, verdicts.

Everything here is a pure function of numbers, tested on synthetic data with known
answers (``tests/test_experiments_stats.py``).

* :func:`time_to_target`: the first evaluation at which a validation curve reaches its
  target (AlgoPerf's "time to result"), in steps and in training seconds.
* :func:`paired_ci`: a confidence interval for the mean of paired differences (seed by
  seed, both optimizers sharing the seed's initialisation and data order), by Student's t
  (the default: exact for normal differences, and honest with 5 seeds) or a percentile
  bootstrap.
* :func:`verdict`: better / no detectable difference / worse, read off the interval and
  the metric's direction: a verdict word is only ever printed with its interval.
* :func:`ratio_ci`: the ratio of mean steps-to-target, with a paired bootstrap interval
  (the "half the budget" claim is a ratio of 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["Reach", "time_to_target", "paired_ci", "verdict", "ratio_ci", "summary"]

BETTER, SAME, WORSE = "better", "no detectable difference", "worse"


@dataclass(frozen=True)
class Reach:
    """When a run first reached its target: ``steps``/``seconds`` are ``None`` if never."""

    steps: Optional[int]
    seconds: Optional[float]

    @property
    def reached(self) -> bool:
        return self.steps is not None


def reaches(value: float, target: float, higher_is_better: bool) -> bool:
    if value != value:  # NaN (a diverged run) never reaches anything
        return False
    return value >= target if higher_is_better else value <= target


def time_to_target(
    steps: Sequence[int], values: Sequence[float], target: float, higher_is_better: bool, seconds: Optional[Sequence[float]] = None
) -> Reach:
    """The first evaluation at which ``values`` reaches ``target``."""
    for i, (s, v) in enumerate(zip(steps, values)):
        if reaches(v, target, higher_is_better):
            return Reach(int(s), float(seconds[i]) if seconds is not None else None)
    return Reach(None, None)


def best(values: Sequence[float], higher_is_better: bool) -> float:
    finite = [v for v in values if v == v]
    if not finite:
        return float("nan")
    return max(finite) if higher_is_better else min(finite)


def paired_ci(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, method: str = "t", n_boot: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``a - b`` over paired seeds (NaN pairs are dropped)."""
    diffs = np.array([x - y for x, y in zip(a, b) if x == x and y == y], dtype=float)
    n = len(diffs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(diffs.mean())
    if n == 1:
        return mean, float("-inf"), float("inf")
    if method == "t":
        from scipy.stats import t as student_t

        half = float(student_t.ppf(0.5 + level / 2, n - 1)) * float(diffs.std(ddof=1)) / math.sqrt(n)
        return mean, mean - half, mean + half
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = diffs[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return mean, float(lo), float(hi)
    raise ValueError(f"unknown method {method!r}: 't' or 'bootstrap'")


def verdict(low: float, high: float, higher_is_better: bool) -> str:
    """Adan minus the other: better if the whole interval lies on the good side of 0."""
    if not (low == low and high == high):
        return "n/a"
    if low > 0:
        return BETTER if higher_is_better else WORSE
    if high < 0:
        return WORSE if higher_is_better else BETTER
    return SAME


MIN_RATIO_PAIRS = 3  # seed pairs that both reached the target, for a bootstrap interval


def ratio_ci(
    a: Sequence[Optional[float]], b: Sequence[Optional[float]], level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """``mean(a) / mean(b)`` over the seeds where both are known, with a paired bootstrap
    percentile interval (``nan`` with fewer than :data:`MIN_RATIO_PAIRS` pairs: two pairs
    have three distinct resamples, whose spread is no interval at all)."""
    pairs = np.array([(x, y) for x, y in zip(a, b) if x is not None and y is not None], dtype=float).reshape(-1, 2)
    if len(pairs) == 0:
        return float("nan"), float("nan"), float("nan")
    ratio = float(pairs[:, 0].mean() / pairs[:, 1].mean())
    if len(pairs) < MIN_RATIO_PAIRS:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pairs), size=(n_boot, len(pairs)))
    boot = pairs[idx, 0].mean(axis=1) / pairs[idx, 1].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return ratio, float(lo), float(hi)


def summary(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN-free values)."""
    x = np.array([v for v in values if v == v], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
