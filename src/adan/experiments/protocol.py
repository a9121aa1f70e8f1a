"""The tuning protocol: declared search spaces, quasi-random trials, seeds, selection.

Every optimizer has one search space, the same on every workload (AlgoPerf's external
tuning: no per-workload hand-tuning). A space is a box over hyper-parameters, searched
with a scrambled Sobol sequence (``torch.quasirandom.SobolEngine``), log-uniform where
marked. Every optimizer gets the same number of trials on a workload.

* ``lr``: log-uniform over 1.5-2 decades around the optimizer's recommended value
  (Adan's around 5-10x Adam's, as its reference repository recommends);
* ``weight_decay`` (log-uniform) for the decoupled/proximal optimizers (AdamW, Adan,
  LAMB) and SGD; plain Adam keeps none, which is what makes it Adam;
* ``warmup``: the warmup fraction of a linear-warmup + cosine-decay schedule, up to 30% of
  the budget (the reference recipes warm up for long);
* Adan's ``beta3`` through ``1 - beta3``, log-uniform in [1e-3, 2e-2] (0.98-0.999: the
  reference says tune beta3 first).

Seeds: tuning trials use :data:`TUNING_SEED`, the target-setting runs
:data:`TARGET_SEEDS` and reported runs ``0, 1, ...``: the three sets are disjoint, so the
reported numbers never include a run that chose the configuration. Within a seed every
optimizer gets the same initialisation and data order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = ["Dim", "SEARCH_SPACES", "DEFAULTS", "trials", "at_edge", "hparams_of", "TUNING_SEED", "TARGET_SEEDS"]

TUNING_SEED = 1000
TARGET_SEEDS = (100, 101, 102)
EDGE = 0.1  # a chosen value in the outer 10% of a dimension's (log) range "sits at an edge"


@dataclass(frozen=True)
class Dim:
    name: str
    low: float
    high: float
    log: bool = True

    def value(self, u: float) -> float:
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)

    def position(self, x: float) -> float:
        """Where ``x`` lies in the range, 0 (low) to 1 (high)."""
        if self.log:
            return (math.log(x) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (x - self.low) / (self.high - self.low)


_WARMUP = Dim("warmup", 0.0, 0.3, log=False)
SEARCH_SPACES: dict[str, tuple[Dim, ...]] = {
    "adan": (Dim("lr", 1e-3, 5e-2), Dim("weight_decay", 1e-3, 0.2), _WARMUP, Dim("one_minus_beta3", 1e-3, 2e-2)),
    "adamw": (Dim("lr", 1e-4, 1e-2), Dim("weight_decay", 1e-3, 0.3), _WARMUP),
    "adam": (Dim("lr", 1e-4, 1e-2), _WARMUP),
    "sgd": (Dim("lr", 3e-3, 3e-1), Dim("weight_decay", 1e-5, 1e-3), _WARMUP),
    "lamb": (Dim("lr", 1e-3, 5e-2), Dim("weight_decay", 1e-3, 0.2), _WARMUP),
}
# The fixed settings of each optimizer (not tuned).
FIXED: dict[str, dict[str, Any]] = {
    "adan": {"betas12": (0.98, 0.92)},
    "adamw": {"betas": (0.9, 0.999)},
    "adam": {"betas": (0.9, 0.999)},
    "sgd": {"momentum": 0.9, "nesterov": True},
    "lamb": {"betas": (0.9, 0.999)},
}
# The recommended (untuned) settings, the centre of each space: the quick smoke test's.
DEFAULTS: dict[str, dict[str, float]] = {
    "adan": {"lr": 6e-3, "weight_decay": 0.02, "warmup": 0.05, "one_minus_beta3": 0.01},
    "adamw": {"lr": 1e-3, "weight_decay": 0.05, "warmup": 0.05},
    "adam": {"lr": 1e-3, "warmup": 0.05},
    "sgd": {"lr": 0.05, "weight_decay": 5e-4, "warmup": 0.05},
    "lamb": {"lr": 5e-3, "weight_decay": 0.02, "warmup": 0.05},
}


def trials(optimizer: str, n: int, seed: int = 0) -> list[dict[str, float]]:
    """``n`` quasi-random points of ``optimizer``'s space (reproducible for a seed)."""
    space = SEARCH_SPACES[optimizer]
    points = torch.quasirandom.SobolEngine(len(space), scramble=True, seed=seed).draw(n, dtype=torch.float64)
    return [{d.name: d.value(float(u)) for d, u in zip(space, row)} for row in points]


def at_edge(optimizer: str, trial: dict[str, float]) -> list[str]:
    """The dimensions in which ``trial`` lies in the outer :data:`EDGE` of the space."""
    out = []
    for d in SEARCH_SPACES[optimizer]:
        pos = d.position(trial[d.name])
        if pos < EDGE:
            out.append(f"{d.name} low")
        elif pos > 1 - EDGE:
            out.append(f"{d.name} high")
    return out


def hparams_of(optimizer: str, trial: dict[str, float], extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The optimizer's constructor keywords for a trial (``warmup`` is the schedule's)."""
    hp: dict[str, Any] = {k: v for k, v in FIXED[optimizer].items() if k != "betas12"}
    hp["lr"] = trial["lr"]
    if "weight_decay" in trial:
        hp["weight_decay"] = trial["weight_decay"]
    if optimizer == "adan":
        hp["betas"] = (*FIXED["adan"]["betas12"], 1.0 - trial["one_minus_beta3"])
    hp.update(extra or {})
    return hp
