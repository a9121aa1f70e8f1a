"""Tables that drive the parametrised optimizer tests (after torch's OptimizerInfo).

``OPTIMIZER_INPUTS`` lists the configurations every path is checked under;
``ERROR_INPUTS`` the invalid ones and the error each must raise; ``PATHS`` the
implementation choices a test runs over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class OptimizerInput:
    desc: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:  # pytest id
        return self.desc


@dataclass(frozen=True)
class ErrorInput:
    desc: str
    kwargs: dict[str, Any]
    error: type[Exception]
    match: str

    def __str__(self) -> str:
        return self.desc


def _tensor_lr(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


OPTIMIZER_INPUTS = [
    OptimizerInput("default"),
    OptimizerInput("prox_weight_decay", dict(lr=1e-2, weight_decay=0.02)),
    OptimizerInput("decoupled_weight_decay", dict(lr=1e-2, weight_decay=0.05, no_prox=True)),
    OptimizerInput("custom_betas_eps", dict(lr=5e-3, betas=(0.9, 0.9, 0.999), eps=1e-6)),
    OptimizerInput("zero_betas", dict(lr=1e-2, betas=(0.0, 0.0, 0.0))),
    OptimizerInput("clipping", dict(lr=1e-2, weight_decay=0.02, max_grad_norm=0.5)),
    OptimizerInput("maximize", dict(lr=1e-2, weight_decay=0.1, maximize=True)),
    OptimizerInput("maximize_clipping", dict(lr=1e-2, maximize=True, max_grad_norm=1.0)),
    OptimizerInput("tensor_lr", dict(lr=_tensor_lr(1e-2), weight_decay=0.02)),
    OptimizerInput("tensor_lr_decoupled", dict(lr=_tensor_lr(1e-2), weight_decay=0.02, no_prox=True)),
    OptimizerInput("capturable", dict(lr=1e-2, weight_decay=0.02, capturable=True)),
]

ERROR_INPUTS = [
    ErrorInput("negative_lr", dict(lr=-1e-3), ValueError, r"Invalid lr: -0\.001"),
    ErrorInput("nan_lr", dict(lr=float("nan")), ValueError, r"Invalid lr: nan"),
    ErrorInput("tensor_lr_shape", dict(lr=torch.ones(2)), ValueError, r"Invalid lr: Tensor lr must be 1-element"),
    ErrorInput("beta1_one", dict(betas=(1.0, 0.92, 0.99)), ValueError, r"Invalid beta1: betas\[0\]=1\.0"),
    ErrorInput("beta2_negative", dict(betas=(0.98, -0.1, 0.99)), ValueError, r"Invalid beta2: betas\[1\]=-0\.1"),
    ErrorInput("beta3_large", dict(betas=(0.98, 0.92, 1.5)), ValueError, r"Invalid beta3: betas\[2\]=1\.5"),
    ErrorInput("two_betas", dict(betas=(0.9, 0.999)), ValueError, r"Invalid betas: \(0\.9, 0\.999\)"),
    ErrorInput("negative_eps", dict(eps=-1e-8), ValueError, r"Invalid eps: -1e-08"),
    ErrorInput("negative_weight_decay", dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay: -0\.1"),
    ErrorInput("negative_max_grad_norm", dict(max_grad_norm=-1.0), ValueError, r"Invalid max_grad_norm: -1\.0"),
    ErrorInput("inf_max_grad_norm", dict(max_grad_norm=float("inf")), ValueError, r"Invalid max_grad_norm: inf"),
    ErrorInput("foreach_and_fused", dict(foreach=True, fused=True), ValueError, r"foreach=True and fused=True"),
]

# Each implementation path as the keyword arguments that select it.
PATHS = {
    "single": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),
}

# The axes of storage and precision, read from the registries: a new state format or
# param_update runs through every configuration below (tests/test_matrix.py) by itself.
from adan import _compact, _formats  # noqa: E402

STATE_FORMATS = tuple(_formats.FORMATS)
PARAM_UPDATES = _compact.PARAM_UPDATES
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def storage_axes():
    """Every valid (state_dtype, param_update, parameter dtype): float64 parameters keep
    full state and round to nearest; stochastic rounding is for bfloat16 parameters."""
    for fmt in STATE_FORMATS:
        for update in PARAM_UPDATES:
            for dtype in PARAM_DTYPES:
                if dtype == torch.float64 and (fmt != "float32" or update != "nearest"):
                    continue
                if update == "stochastic" and dtype == torch.float16:
                    continue
                yield pytest_param(fmt, update, dtype)


def pytest_param(fmt, update, dtype):
    import pytest

    return pytest.param(fmt, update, dtype, id=f"{fmt}-{update}-{str(dtype).removeprefix('torch.')}")
