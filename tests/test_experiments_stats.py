"""The study's statistics and tuning protocol on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from adan.experiments import protocol, stats  # noqa: E402
from adan.experiments.study import select  # noqa: E402


# ------------------------------------------------------------- time to target
def test_time_to_target_on_a_hand_made_curve():
    steps = [10, 20, 30, 40, 50]
    secs = [1.0, 2.0, 3.5, 4.0, 5.0]
    acc = [0.5, 0.7, 0.81, 0.79, 0.85]
    assert stats.time_to_target(steps, acc, 0.8, True, secs) == stats.Reach(30, 3.5)
    assert stats.time_to_target(steps, acc, 0.85, True, secs) == stats.Reach(50, 5.0)  # reached exactly, at the end
    assert not stats.time_to_target(steps, acc, 0.9, True, secs).reached
    loss = [3.0, 2.5, float("nan"), 1.9, 2.0]
    assert stats.time_to_target(steps, loss, 2.0, False, secs) == stats.Reach(40, 4.0)  # NaN never counts
    assert stats.time_to_target([], [], 1.0, True).steps is None


# ------------------------------------------------------------------ verdicts
@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_null_gives_no_detectable_difference_at_least_90_percent(method):
    rng = np.random.default_rng(0)
    sims, same = 400, 0
    for _ in range(sims):
        seed_effect = rng.normal(0, 1, 5)  # shared per seed: what pairing removes
        a = 0.8 + 0.01 * seed_effect + rng.normal(0, 0.005, 5)
        b = 0.8 + 0.01 * seed_effect + rng.normal(0, 0.005, 5)
        _, lo, hi = stats.paired_ci(a, b, method=method, n_boot=2000, seed=int(rng.integers(1 << 30)))
        same += stats.verdict(lo, hi, higher_is_better=True) == stats.SAME
    # t: 95% exactly (the verdicts use it); the percentile bootstrap under-covers with n = 5 (~85%)
    assert same / sims >= (0.9 if method == "t" else 0.8)


def test_a_real_shift_is_detected_in_the_right_direction():
    rng = np.random.default_rng(1)
    a = 0.80 + rng.normal(0, 0.003, 5)
    b = a - 0.02 + rng.normal(0, 0.003, 5)  # a is 2 points better
    mean, lo, hi = stats.paired_ci(a, b)
    assert 0.01 < lo < mean < hi and stats.verdict(lo, hi, higher_is_better=True) == stats.BETTER
    assert stats.verdict(lo, hi, higher_is_better=False) == stats.WORSE  # the same numbers as losses
    _, lo, hi = stats.paired_ci(b, a)
    assert stats.verdict(lo, hi, True) == stats.WORSE


def test_paired_ci_matches_the_t_formula_and_drops_nan_pairs():
    a, b = [1.0, 2.0, 3.0, float("nan")], [0.5, 1.0, 2.5, 1.0]
    mean, lo, hi = stats.paired_ci(a, b)
    d = np.array([0.5, 1.0, 0.5])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert mean == pytest.approx(d.mean()) and lo == pytest.approx(d.mean() - half) and hi == pytest.approx(d.mean() + half)
    assert stats.paired_ci([1.0], [0.0])[1] == -math.inf  # one pair says nothing
    with pytest.raises(ValueError, match="unknown method"):
        stats.paired_ci(a, b, method="wald")


def test_ratio_ci():
    a = [50, 52, 48, 51, 49]
    b = [100, 98, 103, 99, 101]
    r, lo, hi = stats.ratio_ci(a, b)
    assert r == pytest.approx(250 / 501) and lo < 0.5 < hi and hi < 0.6
    r, lo, hi = stats.ratio_ci([50, None, 40], [100, 90, None])  # only one pair reached
    assert r == 0.5 and math.isnan(lo)
    r, lo, hi = stats.ratio_ci([50, 60, None], [100, 100, 90])  # two pairs: a ratio, no interval
    assert r == pytest.approx(110 / 200) and math.isnan(lo) and math.isnan(hi)
    assert math.isnan(stats.ratio_ci([None], [1.0])[0])


# ------------------------------------------------------------------ protocol
@pytest.mark.parametrize("optimizer", list(protocol.SEARCH_SPACES))
def test_sobol_trials_are_reproducible_and_in_bounds(optimizer):
    first = protocol.trials(optimizer, 8)
    assert first == protocol.trials(optimizer, 8)
    assert first != protocol.trials(optimizer, 8, seed=1)
    space = protocol.SEARCH_SPACES[optimizer]
    for trial in first:
        assert set(trial) == {d.name for d in space}
        for d in space:
            assert d.low <= trial[d.name] <= d.high
    lrs = sorted(t["lr"] for t in first)
    lr = next(d for d in space if d.name == "lr")
    assert math.log10(lr.high / lr.low) >= 1.5  # >= 1.5 decades
    assert math.log(lrs[-1] / lrs[0]) > 0.6 * math.log(lr.high / lr.low)  # spread over the range, not clumped


def test_adan_space_covers_its_recommended_settings_and_beta3():
    space = {d.name: d for d in protocol.SEARCH_SPACES["adan"]}
    for name, value in protocol.DEFAULTS["adan"].items():
        assert space[name].low <= value <= space[name].high
    hp = protocol.hparams_of("adan", protocol.DEFAULTS["adan"])
    assert hp["betas"] == (0.98, 0.92, 0.99) and hp["lr"] == 6e-3
    warm = next(d for d in protocol.SEARCH_SPACES["adamw"] if d.name == "warmup")
    assert warm.high >= 0.3  # long warmup is in every space


def test_edges_are_flagged():
    inner = {"lr": 1e-3, "weight_decay": 0.02, "warmup": 0.15}
    assert protocol.at_edge("adamw", inner) == []
    assert protocol.at_edge("adamw", {**inner, "lr": 1.05e-4}) == ["lr low"]
    assert protocol.at_edge("adamw", {**inner, "warmup": 0.29}) == ["warmup high"]


def _record(vals, best=None):
    return {"curve": {"step": list(range(10, 10 * len(vals) + 1, 10)), "val": vals, "seconds": [1.0] * len(vals)},
            "final": {"best_val": best if best is not None else max(vals)}}  # fmt: skip


def test_selection_by_time_to_target_then_best_value():
    records = [
        _record([0.5, 0.7, 0.9, 0.95]),  # reaches 0.8 at step 30, best 0.95
        _record([0.85, 0.86, 0.86, 0.86]),  # reaches it first (step 10)
        _record([0.82, 0.9, 0.97, 0.97]),  # also step 10, better best value: wins the tie
        _record([0.5, 0.6, 0.7, 0.79]),  # never
    ]
    assert select(records, 0.8, True) == 2
    assert select(records, None, True) == 2  # no target: best value
    assert select(records[3:] + records[:1], 0.8, True) == 1  # one that reaches beats one that does not
    assert select([_record([0.1]), _record([float("nan")], best=float("nan"))], 0.5, True) == 0


def test_budget_claim_without_an_interval_has_no_verdict():
    from adan.experiments.report import _claims

    lines: list[str] = []
    claims = {"budget": [("w2", stats.ratio_ci([60, 62, None, None, None], [50, 50, 51, 49, 50]), 2, 5, 5),
                         ("w5", stats.ratio_ci([60, 62, 61, 60, 59], [50, 50, 51, 49, 50]), 5, 5, 5)]}  # fmt: skip
    _claims(lines, claims)
    text = "\n".join(lines)
    assert "w2: ratio 1.22 over fewer than 3 seed pairs" in text and "no interval, no verdict" in text
    assert "w5: ratio 1.21 [" in text and "slower than AdamW" in text
