"""The optimizers under comparison, and the learning-rate schedule they all share."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

import adan

OPTIMIZERS = ("adan", "adamw", "adam", "sgd", "lamb", "adan-bf16", "adan-int8")
# Adan with compact state: Adan's hyper-parameters, another state_dtype.
COMPACT = {"adan-bf16": "bfloat16", "adan-int8": "int8"}


class ExperimentError(ValueError):
    """A bad command line, configuration or data directory, with what to do about it."""


def parse_optimizers(text: str, allowed: Iterable[str] = OPTIMIZERS) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    allowed = list(allowed)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ExperimentError(f"unknown optimizer(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}")
    return names


def optimizer_class(name: str) -> type:
    """The class of optimizer ``name``."""
    if name == "adan" or name in COMPACT:
        return adan.Adan
    if name in ("adamw", "adam", "sgd"):
        return {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    if name == "lamb":
        try:
            from pytorch_optimizer import Lamb
        except ImportError as exc:
            raise ExperimentError("LAMB comes from pytorch-optimizer: pip install 'adan[experiments]'") from exc
        return Lamb
    raise ExperimentError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def make_optimizer(name: str, params, hp: dict[str, Any]) -> torch.optim.Optimizer:
    """Build optimizer ``name`` with hyper-parameters ``hp``."""
    hp = dict(hp)
    if "betas" in hp:
        hp["betas"] = tuple(hp["betas"])
    if name in COMPACT:
        hp["state_dtype"] = COMPACT[name]
    return optimizer_class(name)(params, **hp)


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LambdaLR factor: linear warmup over ``warmup_fraction`` of the steps, then cosine to 0."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
