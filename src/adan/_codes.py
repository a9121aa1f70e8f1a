"""The integer codes the kernels take for dtypes, state formats and parameter updates.

Defined once here. The C kernels are compiled with them as ``-D`` macros
(:func:`c_defines`, used by :mod:`adan._native`), the Triton kernels receive them as
``constexpr`` arguments, and the Python launchers look them up here: no table is written
twice.
"""

from __future__ import annotations

from enum import IntEnum

import torch

__all__ = ["DType", "Format", "ParamUpdate", "c_defines", "dtype_code"]


BLOCK = 256  # values per float32 scale of an int8 state buffer
NONFINITE_CODE = -128  # m and v codes run over [-127, 127]; this one marks a NaN/inf element
FLT_MIN = 2.0**-126  # the smallest scale of an int8 block (the smallest normal float32)


class DType(IntEnum):
    """A parameter's dtype, as the fused kernels read it."""

    F32 = 0
    F64 = 1
    BF16 = 2
    F16 = 3


class Format(IntEnum):
    """How optimizer state is stored (see :mod:`adan._formats`)."""

    F32 = 0
    BF16 = 1
    INT8 = 2


class ParamUpdate(IntEnum):
    """How a low-precision parameter is written back."""

    NEAREST = 0
    STOCHASTIC = 1
    KAHAN = 2


_TORCH_DTYPES = {torch.float32: DType.F32, torch.float64: DType.F64, torch.bfloat16: DType.BF16, torch.float16: DType.F16}


def dtype_code(dtype: torch.dtype) -> DType:
    """The kernel code of a parameter dtype (``KeyError`` for one no kernel takes)."""
    return _TORCH_DTYPES[dtype]


def c_defines() -> tuple[str, ...]:
    """``NAME=value`` for every code, as the C kernels expect them (``ADAN_DT_F32=0``...)."""
    prefixes = {DType: "ADAN_DT", Format: "ADAN_FMT", ParamUpdate: "ADAN_PU"}
    codes = tuple(f"{prefixes[enum]}_{member.name}={member.value}" for enum in prefixes for member in enum)
    return (*codes, f"ADAN_BLOCK={BLOCK}", f"ADAN_NONFINITE_CODE=({NONFINITE_CODE})")
