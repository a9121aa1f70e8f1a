"""The optimizers under comparison and their settings (``optimizers.json``)."""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any, Iterable

import torch

import adan

OPTIMIZERS = ("adan", "adamw", "adam", "sgd", "lamb", "adan-bf16", "adan-int8")
# Adan with compact state: Adan's settings (and its tuned learning rate), another state_dtype.
COMPACT = {"adan-bf16": "bfloat16", "adan-int8": "int8"}


class ExperimentError(ValueError):
    """A bad command line, configuration or data directory, with what to do about it."""


def load_config(path: str | None = None) -> dict[str, Any]:
    """The optimizer settings: the packaged ``optimizers.json`` or the file at ``path``."""
    if path is None:
        text = resources.files("adan.experiments").joinpath("optimizers.json").read_text()
    else:
        with open(path) as f:
            text = f.read()
    config = json.loads(text)
    unknown = set(config["optimizers"]) - set(OPTIMIZERS)
    if unknown:
        raise ExperimentError(f"config names unknown optimizers {sorted(unknown)}; known: {', '.join(OPTIMIZERS)}")
    return config


def parse_optimizers(text: str, allowed: Iterable[str] = OPTIMIZERS) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    allowed = list(allowed)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ExperimentError(f"unknown optimizer(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}")
    return names


def settings(config: dict[str, Any], name: str, family: str) -> dict[str, Any]:
    if name in COMPACT and name not in config["optimizers"]:
        return {**settings(config, "adan", family), "state_dtype": COMPACT[name]}
    try:
        return dict(config["optimizers"][name][family])
    except KeyError:
        raise ExperimentError(f"optimizers.json has no {family!r} settings for {name!r}") from None


def make_optimizer(name: str, params, hp: dict[str, Any]) -> torch.optim.Optimizer:
    """Build optimizer ``name`` with hyper-parameters ``hp`` (from :func:`settings`)."""
    hp = dict(hp)
    if "betas" in hp:
        hp["betas"] = tuple(hp["betas"])
    if name == "adan" or name in COMPACT:
        return adan.Adan(params, **hp)
    if name == "adamw":
        return torch.optim.AdamW(params, **hp)
    if name == "adam":
        return torch.optim.Adam(params, **hp)
    if name == "sgd":
        return torch.optim.SGD(params, **hp)
    if name == "lamb":
        try:
            from pytorch_optimizer import Lamb
        except ImportError as exc:
            raise ExperimentError("LAMB comes from pytorch-optimizer: pip install 'adan[experiments]'") from exc
        return Lamb(params, **hp)
    raise ExperimentError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LambdaLR factor: linear warmup over ``warmup_fraction`` of the steps, then cosine to 0."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
