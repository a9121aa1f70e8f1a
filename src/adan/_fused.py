"""The fused Adan path: one pass over all elements, on the CPU (C/OpenMP) or CUDA (Triton).

The kernels' entry points: :func:`fused_full` (full-precision state) and
:func:`fused_compact` (compact state, where :func:`compact_kernels_run`); the dispatch
between them lives in :mod:`adan._functional`. In eager mode the kernels are called
directly (a ctypes call on the CPU); under ``torch.compile`` full-precision state goes
through the custom op ``adan::fused_adan_`` so that the compiler sees one opaque op that
mutates the parameters and the state in place.

Scalars that may be tensors (lr, the clip factor, GradScaler's scale and found_inf) are
folded into one small float64 tensor ``scalars = [lr, grad_multiplier, found_inf]`` on
the parameters' device, which the kernels read themselves: no host sync. The step
counts are incremented by the kernels, and the bias corrections are computed there in
double from them.
"""

from __future__ import annotations

import ctypes
import warnings
from array import array
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from adan._checks import ValidatedLayouts, check_state_shapes
from adan._codes import ParamUpdate, dtype_code
from adan._compact import block_layout, full_dtype, scale_shape
from adan._formats import format_of
from adan._lists import TensorLists
from adan._native import BuildError, load_library

__all__ = ["fused_available", "state_dtype_for"]

_KERNEL_SOURCE = Path(__file__).parent / "kernels" / "adan_cpu.c"
_COMPACT_SOURCE = Path(__file__).parent / "kernels" / "adan_cpu_compact.c"
_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_LOW_PRECISION = (torch.bfloat16, torch.float16)
_cpu_lib: Optional[ctypes.CDLL] = None
_cpu_error: Optional[str] = None
_warned = False


# bfloat16/float16 parameters keep float32 moments; others their own dtype.
state_dtype_for = full_dtype


def _load_cpu() -> Optional[ctypes.CDLL]:
    global _cpu_lib, _cpu_error
    if _cpu_lib is None and _cpu_error is None:
        try:
            lib = load_library(_KERNEL_SOURCE)
        except (BuildError, OSError) as exc:
            _cpu_error = str(exc)
            return None
        fn = lib.adan_fused_step
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p,  # n, dtype, numels
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # p, g, m, v
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # n, neg, steps, scalars
            ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double,
            ctypes.c_int32, ctypes.c_int32,
        ]
        compact = load_library(_COMPACT_SOURCE).adan_fused_step_compact
        compact.restype = ctypes.c_int
        compact.argtypes = [
            ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,  # n, dtype, format, param_update
            *[ctypes.c_void_p] * 15,  # rows, cols, p, g, m, v, n, neg, 3 scales, comps, steps, scalars, seed
            ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_double,
            ctypes.c_int32, ctypes.c_int32,
        ]
        lib.compact = compact
        _cpu_lib = lib
    return _cpu_lib


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def fused_available(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether the fused kernel can run on ``device`` (compiling the CPU kernel if needed)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _load_cpu() is not None
    if device.type == "cuda":
        return _triton_available()
    return False


def unavailable_reason(device: torch.device) -> str:
    if device.type == "cpu":
        _load_cpu()
        return f"the CPU kernel could not be built: {_cpu_error}"
    if device.type == "cuda":
        return "the CUDA kernel needs Triton (pip install triton)"
    return f"no fused Adan kernel for device type {device.type!r}"


def warn_fallback(device: torch.device) -> None:
    """One warning per process when fused=None cannot use the fused kernel."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"adan: falling back from the fused kernel to the foreach path: {unavailable_reason(device)}",
            RuntimeWarning,
            stacklevel=4,
        )


def _as_f64(x: Union[Tensor, float], device: torch.device) -> Tensor:
    if torch.is_tensor(x):
        return x.detach().reshape(()).to(device=device, dtype=torch.float64)
    # torch.full launches a fill with the value as an argument: no host-to-device copy,
    # so this stays legal under CUDA-graph capture.
    return torch.full((), float(x), dtype=torch.float64, device=device)


def scalars_of(
    lr: Union[Tensor, float],
    clip_coef: Optional[Tensor],
    maximize: bool,
    grad_scale: Optional[Tensor],
    found_inf: Optional[Tensor],
    device: torch.device,
) -> Tensor:
    """``[lr, grad_multiplier, found_inf]`` as float64 on ``device``, without a host sync."""
    if device.type == "cpu" and not any(torch.is_tensor(x) for x in (lr, clip_coef, grad_scale, found_inf)):
        return torch.tensor([float(lr), -1.0 if maximize else 1.0, 0.0], dtype=torch.float64)
    mult = _as_f64(grad_multiplier(clip_coef, maximize, grad_scale, device), device)
    inf = _as_f64(found_inf, device) if found_inf is not None else _as_f64(0.0, device)
    return torch.stack([_as_f64(lr, device), mult, inf])


def grad_multiplier(
    clip_coef: Optional[Tensor], maximize: bool, grad_scale: Optional[Tensor], device: torch.device
) -> Union[Tensor, float]:
    """What the kernels multiply every gradient by: the maximize sign, the clip factor and
    GradScaler's ``1 / scale``, in float64 (the kernels round it to their compute type)."""
    sign = -1.0 if maximize else 1.0
    if clip_coef is None and grad_scale is None:
        return sign
    mult = _as_f64(sign, device)
    if clip_coef is not None:
        mult = mult * _as_f64(clip_coef, device)
    if grad_scale is not None:
        mult = mult / _as_f64(grad_scale, device)
    return mult


def _flat_grads(params: list[Tensor], grads: list[Tensor], dtype: torch.dtype) -> None:
    """What memory safety needs before a CPU kernel reads every tensor as a flat array of
    its parameter's numel: contiguous parameters (else ``ValueError``), and gradients made
    contiguous in the parameters' dtype (replaced in ``grads``). In as few Python-level
    passes as possible: this runs every step."""
    odd = [k for k, (p, g) in enumerate(zip(params, grads)) if not (p.is_contiguous() and g.is_contiguous() and g.dtype == dtype)]
    for k in odd:
        p = params[k]
        if not p.is_contiguous():
            raise ValueError(
                f"fused Adan needs contiguous parameters; parameter {k} of shape {tuple(p.shape)} has strides "
                f"{p.stride()} (use foreach=True, or make the parameter contiguous)"
            )
        grads[k] = grads[k].to(dtype).contiguous()  # (.to(memory_format=...) may return a strided self)


_LAYOUTS = ValidatedLayouts()


def _named(grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, comps=None):
    return (("grad", grads), ("exp_avg", exp_avgs), ("exp_avg_diff", exp_avg_diffs), ("exp_avg_sq", exp_avg_sqs),
            ("neg_pre_grad", neg_pre_grads), ("param_comp", comps))  # fmt: skip


def _pointer_table(slots: list[list[Tensor]]) -> tuple[array, list[int]]:
    """The data pointers of equally long tensor lists in one array, and each list's address
    in it (keep the array alive while the kernel runs)."""
    table = array("q", [t.data_ptr() for lst in slots for t in lst])
    base, _ = table.buffer_info()
    stride = len(slots[0]) * table.itemsize
    return table, [base + i * stride for i in range(len(slots))]


def _launch_cpu(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    scalars: Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
) -> None:
    """One kernel call for a bucket of CPU tensors of one parameter dtype."""
    lib = _load_cpu()
    if lib is None:
        raise RuntimeError(f"fused=True: {unavailable_reason(torch.device('cpu'))}")
    dtype = params[0].dtype
    if dtype not in _FUSED_DTYPES:
        raise TypeError(f"fused Adan supports float32, float64, bfloat16 and float16 parameters, not {dtype}")
    sdtype = state_dtype_for(dtype)
    _flat_grads(params, grads, dtype)
    # The state needs no per-step check: Adan creates it (and load_state_dict casts it)
    # as contiguous tensors of the parameter's shape in state_dtype_for(dtype), with
    # float32 step counters on the CPU. Check the first of each slot as a safeguard.
    if not (exp_avgs[0].dtype == exp_avg_diffs[0].dtype == exp_avg_sqs[0].dtype == neg_pre_grads[0].dtype == sdtype):
        raise TypeError(f"fused Adan: the state of {dtype} parameters must be {sdtype}")
    if state_steps[0].dtype != torch.float32 or not state_steps[0].is_cpu:
        raise TypeError("fused Adan: state 'step' must be float32 tensors on the CPU")

    table, slots = _pointer_table([params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps])
    numels = array("q", [p.numel() for p in params])
    n = len(params)
    _LAYOUTS.check(
        table[:n].tobytes() + table[2 * n :].tobytes() + numels.tobytes(),
        lambda: check_state_shapes(params, _named(grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads)),
    )
    scalars = scalars.contiguous()
    rc = lib.adan_fused_step(
        len(params), dtype_code(dtype), numels.buffer_info()[0], *slots, scalars.data_ptr(),
        beta1, beta2, beta3, eps, weight_decay, int(no_prox), torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"fused Adan CPU kernel failed with code {rc}")


def _launch_cpu_compact(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    state_scales: Optional[list],
    param_comps: Optional[list],
    param_update: str,
    scalars: Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    generator: Optional[torch.Generator] = None,
) -> None:
    """One compact-kernel call for CPU tensors of one parameter dtype and one state format."""
    lib = _load_cpu()
    if lib is None:
        raise RuntimeError(f"fused=True: {unavailable_reason(torch.device('cpu'))}")
    dtype = params[0].dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"fused Adan's compact formats support float32, bfloat16 and float16 parameters, not {dtype}")
    fmt = format_of(exp_avgs[0])
    _flat_grads(params, grads, dtype)
    layouts = [block_layout(p.shape) for p in params]
    rows = array("q", [r for r, _ in layouts])
    cols = array("q", [c for _, c in layouts])
    slots = [params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads]
    if fmt.scale_keys:
        slots += [[s[j] for s in state_scales] for j in range(3)]
    comps = param_comps if param_update == "kahan" and dtype != torch.float32 else None
    if comps is not None:
        slots.append(comps)
    slots.append(state_steps)
    table, addresses = _pointer_table(slots)
    n = len(params)
    _LAYOUTS.check(
        table[:n].tobytes() + table[2 * n :].tobytes() + rows.tobytes() + cols.tobytes(),
        lambda: check_state_shapes(
            params, _named(grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, comps), state_scales, scale_shape
        ),
    )
    at = iter(addresses)
    p_, g_, m_, v_, n_, neg_ = (next(at) for _ in range(6))
    ms_, vs_, ns_ = (next(at) for _ in range(3)) if fmt.scale_keys else (None, None, None)
    comps_ = next(at) if comps is not None else None
    steps_ = next(at)
    if generator is not None and generator.device.type != "cpu":
        generator = None
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=generator)
    scalars = scalars.contiguous()
    rc = lib.compact(
        len(params), dtype_code(dtype), fmt.code, ParamUpdate[param_update.upper()], rows.buffer_info()[0], cols.buffer_info()[0],
        p_, g_, m_, v_, n_, neg_, ms_, vs_, ns_, comps_, steps_, scalars.data_ptr(), seed.data_ptr(),
        beta1, beta2, beta3, eps, weight_decay, int(no_prox), torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"fused Adan CPU compact kernel failed with code {rc}")


def _fused_impl(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    scalars: Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
) -> None:
    lists = [params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps]
    if len({p.dtype for p in params}) == 1 and params[0].device.type == "cpu":
        buckets = [(lists, params[0].device)]  # the common case, without grouping costs (grads is already a copy)
    else:
        grouped = torch._C._group_tensors_by_device_and_dtype(lists, False)
        buckets = [(bucket, device) for (device, _), (bucket, _) in grouped.items()]
    for bucket, device in buckets:
        if device.type == "cpu":
            _launch_cpu(*bucket, scalars.to(device), beta1, beta2, beta3, eps, weight_decay, no_prox)
        elif device.type == "cuda":
            from adan.kernels.adan_triton import launch_triton

            launch_triton(*bucket, scalars.to(device), beta1, beta2, beta3, eps, weight_decay, no_prox)
        else:
            raise RuntimeError(f"fused=True: {unavailable_reason(device)}")


@torch.library.custom_op(
    "adan::fused_adan_",
    mutates_args=("params", "exp_avgs", "exp_avg_diffs", "exp_avg_sqs", "neg_pre_grads", "state_steps"),
)
def _fused_op(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    scalars: Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
) -> None:
    """One fused Adan step, in place (see ``adan/kernels/adan_cpu.c`` for the maths)."""
    _fused_impl(
        params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps,
        scalars, beta1, beta2, beta3, eps, weight_decay, no_prox,
    )  # fmt: skip


def fused_full(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    scalars: Tensor,
    hparams: tuple[float, float, float, float, float, bool],
) -> None:
    """The fused step of full-precision state: the kernels directly in eager mode, the custom
    op ``adan::fused_adan_`` under ``torch.compile``."""
    args = (list(params), list(grads), exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps, scalars, *hparams)
    if torch.compiler.is_compiling():
        torch.ops.adan.fused_adan_(*args)
    else:
        _fused_impl(*args)


def compact_kernels_run(params: list[Tensor]) -> bool:
    """Whether the compact kernels can take these tensors (eager, all CPU or all CUDA with Triton)."""
    if torch.compiler.is_compiling():
        return False
    on_cpu = all(p.is_cpu for p in params)
    return on_cpu or (all(p.is_cuda for p in params) and _triton_available())


def fused_compact(
    lists: TensorLists, param_update: str, scalars: Tensor, hparams, generator: Optional[torch.Generator] = None
) -> None:
    """Compact tensors (see :func:`compact_kernels_run`): one compact-kernel call per (device,
    parameter dtype, state format), the C kernel on the CPU, the Triton kernel on CUDA."""
    params, exp_avgs = lists.params, lists.exp_avgs
    buckets: dict[tuple, list[int]] = {}
    for i, (p, m) in enumerate(zip(params, exp_avgs)):
        buckets.setdefault((p.device, p.dtype, m.dtype), []).append(i)
    for (device, _, _), idx in buckets.items():
        if device.type == "cuda":
            from adan.kernels.adan_triton_compact import launch_triton_compact as launch
        else:
            launch = _launch_cpu_compact
        keep = set(idx)
        part = lists.select([i in keep for i in range(len(params))])
        launch(*part, param_update, scalars.to(device), *hparams, generator=generator)
