"""The CPU backend: the C/OpenMP kernels, called through ctypes.

``adan_cpu.c`` updates full-precision state, ``adan_cpu_compact.c`` compact state and
rounded low-precision parameters; both include ``adan_math.h``, where the update is
written. Each launcher (``prepare_full``, ``prepare_compact``) takes one bucket (one
parameter dtype; one state format for the compact kernel), checks it, builds a table of
data pointers and returns the one call, which the optimizer makes after every bucket of the
step passed: the kernel reads the step counts and ``scalars = [lr, grad_multiplier,
found_inf]`` itself, increments the counts and computes the bias corrections in double.

The kernels read every tensor as a flat array of its parameter's ``numel``, in the dtype of
its list's first tensor, so memory safety rests on the checks here: contiguous parameters
and gradients (gradients are made so), and state buffers of their parameter's shape, on its
device, of one dtype per list. That is checked, and the tables of pointers built, once per
memory layout (see :class:`adan._checks.LayoutCache`): each step reads every pointer and the
parameters' shapes, and only an unchanged layout skips both.
"""

from __future__ import annotations

import ctypes
from array import array
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from adan._checks import LayoutCache, check_bucket, flat_grads, layout_of
from adan._codes import ParamUpdate, dtype_code
from adan._compact import block_layout, full_dtype, scale_shape
from adan._formats import format_of
from adan._lists import TensorLists
from adan._maths import HParams
from adan._native import BuildError, load_library

__all__ = ["available", "unavailable_reason", "prepare_full", "prepare_compact", "launch_full", "launch_compact"]

_KERNEL_SOURCE = Path(__file__).parent / "adan_cpu.c"
_COMPACT_SOURCE = Path(__file__).parent / "adan_cpu_compact.c"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_COMPACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HPARAMS = [ctypes.c_double] * 5 + [ctypes.c_int32, ctypes.c_int32]  # b1, b2, b3, eps, wd, no_prox, threads
_data_ptr, _numel = Tensor.data_ptr, Tensor.numel
_lib: Optional[ctypes.CDLL] = None
_error: Optional[str] = None


def _load() -> Optional[ctypes.CDLL]:
    global _lib, _error
    if _lib is None and _error is None:
        try:
            lib = load_library(_KERNEL_SOURCE)
            compact = load_library(_COMPACT_SOURCE).adan_fused_step_compact
        except (BuildError, OSError) as exc:
            _error = str(exc)
            return None
        lib.adan_fused_step.restype = ctypes.c_int
        lib.adan_fused_step.argtypes = [
            ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p,  # n, dtype, numels
            *[ctypes.c_void_p] * 8,  # p, g, m, v, n, neg, steps, scalars
            *_HPARAMS,
        ]
        compact.restype = ctypes.c_int
        compact.argtypes = [
            ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,  # n, dtype, format, param_update
            *[ctypes.c_void_p] * 15,  # rows, cols, p, g, m, v, n, neg, 3 scales, comps, steps, scalars, seed
            *_HPARAMS,
        ]
        lib.compact = compact
        _lib = lib
    return _lib


def available() -> bool:
    """Whether the kernels compiled (they are built at first use)."""
    return _load() is not None


def unavailable_reason() -> str:
    _load()
    return f"the CPU kernel could not be built: {_error}"


def _library() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"fused=True: {unavailable_reason()}")
    return lib


def _hparams(hp: HParams) -> tuple:
    return (hp.beta1, hp.beta2, hp.beta3, hp.eps, hp.weight_decay, int(hp.no_prox), torch.get_num_threads())


# Reused per memory layout (see LayoutCache): the pointer tables of the full and compact launchers.
_FULL_TABLES = LayoutCache()
_COMPACT_TABLES = LayoutCache()


def _addresses(table: array, n_slots: int) -> list[int]:
    """The address of each slot's run of pointers in ``table`` (keep it alive while the kernel runs)."""
    base, length = table.buffer_info()
    stride = length // n_slots * table.itemsize
    return [base + i * stride for i in range(n_slots)]


def prepare_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> Callable[[], None]:
    """Check a bucket of CPU tensors of one parameter dtype, full-precision state, and build
    its tables; return the kernel call, which writes nothing before it runs."""
    lib = _library()
    params = lists.params
    dtype = params[0].dtype
    if dtype not in _DTYPES:
        raise TypeError(f"fused Adan supports float32, float64, bfloat16 and float16 parameters, not {dtype}")
    sdtype = full_dtype(dtype)
    # (int8 scales of a parameter that left its compact bucket are not this kernel's to read)
    lists = lists._replace(grads=flat_grads(params, lists.grads, dtype), state_scales=None)
    slots = [params, lists.exp_avgs, lists.exp_avg_diffs, lists.exp_avg_sqs, lists.neg_pre_grads, lists.state_steps]
    pointers, extents = layout_of(slots)

    def build() -> tuple[array, array]:
        # check_bucket: shapes, the CPU, one dtype per list, float32 steps; and that dtype is
        # the one this kernel reads (Adan makes, and load_state_dict casts, state in it).
        check_bucket(lists)
        firsts = (lists.exp_avgs[0], lists.exp_avg_diffs[0], lists.exp_avg_sqs[0], lists.neg_pre_grads[0])
        if any(t.dtype != sdtype for t in firsts):
            raise TypeError(f"fused Adan: the state of {dtype} parameters must be {sdtype}")
        return array("q", pointers), array("q", map(_numel, params))

    table, sizes = _FULL_TABLES.get(pointers, extents, build)
    p_, m_, v_, n_, neg_, steps_ = _addresses(table, len(slots))
    grads = array("q", map(_data_ptr, lists.grads))
    scalars = scalars.contiguous()

    def launch() -> None:
        _alive = (table, lists)  # (the closure keeps the memory the raw pointers name until the call)
        rc = lib.adan_fused_step(
            len(params), dtype_code(dtype), sizes.buffer_info()[0], p_, grads.buffer_info()[0], m_, v_, n_, neg_,
            steps_, scalars.data_ptr(), *_hparams(hp),
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"fused Adan CPU kernel failed with code {rc}")

    return launch


def prepare_compact(
    lists: TensorLists, param_update: str, scalars: Tensor, hp: HParams, generator: Optional[torch.Generator] = None
) -> Callable[[], None]:
    """Check CPU tensors of one parameter dtype and one state format and build their tables;
    return the compact-kernel call (which draws the rounding seed), writing nothing before."""
    lib = _library()
    params = lists.params
    dtype = params[0].dtype
    if dtype not in _COMPACT_DTYPES:
        raise TypeError(f"fused Adan's compact formats support float32, bfloat16 and float16 parameters, not {dtype}")
    fmt = format_of(lists.exp_avgs[0])
    lists = lists._replace(grads=flat_grads(params, lists.grads, dtype))
    slots = [params, lists.exp_avgs, lists.exp_avg_diffs, lists.exp_avg_sqs, lists.neg_pre_grads]
    if fmt.scale_keys:
        slots += [[s[j] for s in lists.state_scales] for j in range(3)]
    comps = lists.param_comps if param_update == "kahan" and dtype != torch.float32 else None
    if comps is not None:
        slots.append(comps)
    slots.append(lists.state_steps)
    pointers, extents = layout_of(slots)

    def build() -> tuple[array, array, array]:
        check_bucket(lists, comps, scale_shape)
        layouts = [block_layout(p.shape) for p in params]
        return array("q", pointers), array("q", [r for r, _ in layouts]), array("q", [c for _, c in layouts])

    table, rows, cols = _COMPACT_TABLES.get(pointers, extents, build)
    at = iter(_addresses(table, len(slots)))
    p_, m_, v_, n_, neg_ = (next(at) for _ in range(5))
    scales = [next(at) for _ in range(3)] if fmt.scale_keys else [None] * 3
    comps_ = next(at) if comps is not None else None
    steps_ = next(at)
    grads = array("q", map(_data_ptr, lists.grads))
    if generator is not None and generator.device.type != "cpu":
        generator = None
    scalars = scalars.contiguous()

    def launch() -> None:
        _alive = (table, lists)  # (the closure keeps the memory the raw pointers name until the call)
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=generator)
        rc = lib.compact(
            len(params), dtype_code(dtype), fmt.code, ParamUpdate[param_update.upper()], rows.buffer_info()[0],
            cols.buffer_info()[0], p_, grads.buffer_info()[0], m_, v_, n_, neg_, *scales, comps_, steps_,
            scalars.data_ptr(), seed.data_ptr(), *_hparams(hp),
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"fused Adan CPU compact kernel failed with code {rc}")

    return launch


def launch_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> None:
    """:func:`prepare_full` and its call at once."""
    prepare_full(lists, scalars, hp)()


def launch_compact(
    lists: TensorLists, param_update: str, scalars: Tensor, hp: HParams, generator: Optional[torch.Generator] = None
) -> None:
    """:func:`prepare_compact` and its call at once."""
    prepare_compact(lists, param_update, scalars, hp, generator)()
