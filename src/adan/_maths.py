"""The hyper-parameters of one update, and its per-step scalars, written once for every
Python-side path.

From the step count ``t`` (already incremented) and the learning rate, in float64::

    a1 = lr / (1 - b1^t)          the bias-corrected step size of m
    a2 = lr b2 / (1 - b2^t)       the same for v, with the Nesterov weight b2
    c3 = 1 / sqrt(1 - b3^t)       the bias correction of sqrt(n)

The torch paths (:mod:`adan._functional`) use this function; the C kernels
(``adan_math.h``) and the Triton kernels (``triton_common.step_scalars``) compute the same
three numbers in double from the same formulas, inside the kernel.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor

__all__ = ["HParams", "bias_corrections"]


class HParams(NamedTuple):
    """The hyper-parameters every kernel takes, frozen for one update (the learning rate
    travels separately, in ``scalars``, because it may be a tensor)."""

    beta1: float
    beta2: float
    beta3: float
    eps: float
    weight_decay: float
    no_prox: bool


def bias_corrections(t: Tensor, lr: Union[float, Tensor], beta1: float, beta2: float, beta3: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(a1, a2, c3)`` for float64 step counts ``t`` (any shape); ``lr`` a float or a tensor."""
    if isinstance(lr, Tensor):
        lr = lr.to(device=t.device, dtype=torch.float64)
    return lr / (1 - beta1**t), lr * beta2 / (1 - beta2**t), (1 - beta3**t).rsqrt()
