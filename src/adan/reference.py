r"""A float64 NumPy reference of Adan that reads like the paper.

This module is the ground truth the fast paths are tested against. It favours
clarity over speed: one parameter at a time, every quantity named as in the paper.

Beta convention
---------------
The paper (Xie et al., Algorithm 1) writes small betas, e.g. ``(0.02, 0.08, 0.01)``,
and moving averages ``m = (1 - beta1) m + beta1 g``. The reference implementation
published with the paper, and this library, use the *code* convention
``beta_code = 1 - beta_paper``, e.g. ``(0.98, 0.92, 0.99)``:

=============================  ====================  ======================
quantity                       paper                 code (this library)
=============================  ====================  ======================
gradient average ``m``         ``beta1 = 0.02``      ``b1 = 0.98``
gradient-difference ``v``      ``beta2 = 0.08``      ``b2 = 0.92``
squared NME gradient ``n``     ``beta3 = 0.01``      ``b3 = 0.99``
weight of ``g_k - g_{k-1}``    ``1 - beta2``         ``b2``
=============================  ====================  ======================

Variant ``"official"`` (default): the reference implementation
--------------------------------------------------------------
Per parameter, step ``t = 1, 2, ...`` (the updates this parameter has received: the
group's step count whenever every parameter has a gradient at every step), gradient ``g`` (after optional
global-norm clipping) and previous gradient ``g'`` (``g' = g`` at the first step and at
the first step after :meth:`ReferenceAdan.restart`)::

    d = g - g'
    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) d
    n = b3 n + (1 - b3) (g + b2 d)^2
    denom = sqrt(n) / sqrt(1 - b3^t) + eps                  # eps outside the root
    p = p - lr (m / (1 - b1^t) + b2 v / (1 - b2^t)) / denom
    p = p / (1 + lr wd)        # proximal weight decay (no_prox=False, the default)
                               # no_prox=True: p = p (1 - lr wd) before the update

Variant ``"paper"``: Algorithm 1 as printed
-------------------------------------------
No bias correction, ``eps`` inside the square root, proximal weight decay, and the
moments initialised from the first gradients instead of from zero::

    step 1:  m = g_0,  v = 0,  n = g_0^2
    step 2:  m = b1 m + (1 - b1) g_1,  v = g_1 - g_0,  n = b3 n + (1 - b3)(g_1 + b2 d)^2
    step k:  m, v, n as in "official" (moving averages)
    p = (p - lr (m + b2 v) / sqrt(n + eps)) / (1 + lr wd)

Both variants share global-norm clipping: with ``max_grad_norm > 0`` every gradient of
every group is scaled by ``min(1, max_grad_norm / (||g||_2 + eps))`` (the norm over all
gradients, ``eps`` of the last group) before it enters the update and before it is
remembered as the previous gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

Variant = Literal["official", "paper"]
VARIANTS = ("official", "paper")


@dataclass
class ParamState:
    """Moments of one parameter: the reference implementation's names."""

    exp_avg: np.ndarray  # m
    exp_avg_diff: np.ndarray  # v
    exp_avg_sq: np.ndarray  # n
    previous_grad: np.ndarray | None = None  # g', None before the first step
    step: int = 0

    @classmethod
    def zeros_like(cls, p: np.ndarray) -> "ParamState":
        z = np.zeros_like(p, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy())


def adan_update(
    p: np.ndarray,
    g: np.ndarray,
    state: ParamState,
    *,
    lr: float,
    betas: tuple[float, float, float],
    eps: float,
    weight_decay: float,
    no_prox: bool,
    variant: Variant = "official",
) -> np.ndarray:
    """Return the parameter after one Adan step; ``state`` is updated in place.

    ``g`` is the gradient after clipping. See the module docstring for the maths.
    """
    b1, b2, b3 = betas
    p = np.asarray(p, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    state.step += 1
    t = state.step
    g_prev = g if state.previous_grad is None else state.previous_grad
    d = g - g_prev
    nme = g + b2 * d  # the Nesterov momentum estimate g_k + (1 - beta2_paper)(g_k - g_{k-1})

    if variant == "official":
        state.exp_avg = b1 * state.exp_avg + (1 - b1) * g
        state.exp_avg_diff = b2 * state.exp_avg_diff + (1 - b2) * d
        state.exp_avg_sq = b3 * state.exp_avg_sq + (1 - b3) * nme**2
        denom = np.sqrt(state.exp_avg_sq) / math.sqrt(1 - b3**t) + eps
        update = state.exp_avg / (1 - b1**t) + b2 * state.exp_avg_diff / (1 - b2**t)
        step = lr * update / denom
    elif variant == "paper":
        if t == 1:
            state.exp_avg = g.copy()
            state.exp_avg_diff = np.zeros_like(g)
            state.exp_avg_sq = g**2
        else:
            state.exp_avg = b1 * state.exp_avg + (1 - b1) * g
            state.exp_avg_diff = d if t == 2 else b2 * state.exp_avg_diff + (1 - b2) * d
            state.exp_avg_sq = b3 * state.exp_avg_sq + (1 - b3) * nme**2
        step = lr * (state.exp_avg + b2 * state.exp_avg_diff) / np.sqrt(state.exp_avg_sq + eps)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")

    if no_prox:
        p = p * (1 - lr * weight_decay) - step
    else:
        p = (p - step) / (1 + lr * weight_decay)
    state.previous_grad = g.copy()
    return p


def global_clip_factor(grads: Sequence[np.ndarray], max_grad_norm: float, eps: float) -> float:
    """``min(1, max_grad_norm / (||grads||_2 + eps))``, or 1 when clipping is off."""
    if max_grad_norm <= 0:
        return 1.0
    norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
    return min(1.0, max_grad_norm / (norm + eps))


@dataclass
class ParamGroup:
    params: list[np.ndarray]
    lr: float = 1e-3
    betas: tuple[float, float, float] = (0.98, 0.92, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    no_prox: bool = False
    states: list[ParamState] = field(default_factory=list)


class ReferenceAdan:
    """Adan over groups of float64 arrays, for tests and for reading.

    >>> opt = ReferenceAdan([{"params": [np.zeros(3)], "lr": 0.1}])
    >>> [p] = opt.step([[np.ones(3)]])[0]

    ``step(grads)`` takes ``grads[group][param]`` (``None`` skips a parameter, whose
    state is left untouched) and returns the new parameters in the same layout; it also
    keeps them in ``opt.groups[j].params``.
    """

    def __init__(
        self,
        groups: Sequence[dict],
        *,
        max_grad_norm: float = 0.0,
        variant: Variant = "official",
    ):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        if variant == "paper" and any(spec.get("no_prox", False) for spec in groups):
            raise ValueError("variant='paper' applies weight decay by proximation only; no_prox=True is not part of it")
        self.variant = variant
        self.max_grad_norm = max_grad_norm
        self.groups = []
        for spec in groups:
            spec = dict(spec)
            params = [np.array(p, dtype=np.float64) for p in spec.pop("params")]
            spec["betas"] = tuple(spec.get("betas", (0.98, 0.92, 0.99)))
            group = ParamGroup(params=params, **spec)
            group.states = [ParamState.zeros_like(p) for p in params]
            self.groups.append(group)

    def restart(self) -> None:
        """Reset every moment and step count (the reference ``restart_opt``)."""
        for group in self.groups:
            group.states = [ParamState.zeros_like(p) for p in group.params]

    def step(self, grads: Sequence[Sequence[np.ndarray | None]]) -> list[list[np.ndarray]]:
        if len(grads) != len(self.groups):
            raise ValueError(f"expected gradients for {len(self.groups)} groups, got {len(grads)}")
        present = [g for gs in grads for g in gs if g is not None]
        clip = global_clip_factor(present, self.max_grad_norm, self.groups[-1].eps)
        for group, group_grads in zip(self.groups, grads):
            for k, g in enumerate(group_grads):
                if g is None:
                    continue
                group.params[k] = adan_update(
                    group.params[k],
                    clip * np.asarray(g, dtype=np.float64),
                    group.states[k],
                    lr=group.lr,
                    betas=group.betas,
                    eps=group.eps,
                    weight_decay=group.weight_decay,
                    no_prox=group.no_prox,
                    variant=self.variant,
                )
        return [[p.copy() for p in group.params] for group in self.groups]
