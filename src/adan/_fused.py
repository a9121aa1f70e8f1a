"""The fused Adan path: one pass over all elements, by the backend of the tensors' device.

The entry points: :func:`fused_full` (full-precision state) and :func:`fused_compact`
(compact state, where :func:`compact_kernels_run`); the dispatch between them lives in
:mod:`adan._functional`, the kernels behind :mod:`adan._backends` (C/OpenMP on the CPU,
Triton on CUDA). Both check every bucket and return its launch (a :data:`Launch`): nothing
is written until the caller runs the launches, after every bucket of every group passed.
In eager mode the kernels are called directly (a ctypes call on the CPU); under
``torch.compile`` they go through the custom ops ``adan::fused_adan_`` (full-precision
state) and ``adan::fused_adan_compact_`` (compact state), so that the compiler sees one
opaque op per bucket that mutates the parameters and the state in place.

Scalars that may be tensors (lr, the clip factor, GradScaler's scale and found_inf) are
folded into one small float64 tensor ``scalars = [lr, grad_multiplier, found_inf]`` on
the parameters' device, which the kernels read themselves: no host sync. The step
counts are incremented by the kernels, and the bias corrections are computed there in
double from them.
"""

from __future__ import annotations

import warnings
from operator import attrgetter
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from adan import _backends
from adan._compact import full_dtype
from adan._lists import TensorLists
from adan._maths import HParams

__all__ = ["fused_available", "state_dtype_for"]

Launch = Callable[[], None]  # a checked update that writes when called

_warned = False


# bfloat16/float16 parameters keep float32 moments; others their own dtype.
state_dtype_for = full_dtype


def fused_available(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether the fused kernel can run on ``device`` (compiling the CPU kernel if needed)."""
    return _backends.available(torch.device(device))


def unavailable_reason(device: torch.device) -> str:
    return _backends.unavailable_reason(torch.device(device))


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


_is_cpu, _is_cuda = attrgetter("is_cpu"), attrgetter("is_cuda")


def sequence(launches: list[Launch]) -> Launch:
    """One launch that runs ``launches`` in order."""

    def launch_all() -> None:
        for launch in launches:
            launch()

    return launches[0] if len(launches) == 1 else launch_all


def _one_bucket(params: list[Tensor]) -> bool:
    """Whether ``params`` share one device and one dtype, read without a device object per
    tensor: the common case, which skips the grouping."""
    return len({p.dtype for p in params}) == 1 and (
        all(map(_is_cpu, params)) or (all(map(_is_cuda, params)) and len(set(map(Tensor.get_device, params))) == 1)
    )


def _prepare_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> Launch:
    """One launch per (device, parameter dtype) bucket, by the device's backend."""
    params = lists.params
    if _one_bucket(params):
        buckets = [(lists, params[0].device)]  # the common case: one device, one dtype, no grouping costs
    else:
        grouped = torch._C._group_tensors_by_device_and_dtype(list(lists.dense), False)
        buckets = [(TensorLists(*bucket), device) for (device, _), (bucket, _) in grouped.items()]
    launches = []
    for bucket, device in buckets:
        backend = _backends.get(device)
        if backend is None:
            raise RuntimeError(f"fused=True: {unavailable_reason(device)}")
        launches.append(backend.prepare_full(bucket, scalars.to(device), hp))
    return sequence(launches)


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
    """One fused Adan step, in place (see ``adan/kernels/adan_math.h`` for the maths)."""
    lists = TensorLists(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps)
    _prepare_full(lists, scalars, HParams(beta1, beta2, beta3, eps, weight_decay, no_prox))()


def fused_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> Launch:
    """The fused step of full-precision state, checked, as a launch: the kernels directly in
    eager mode, the custom op ``adan::fused_adan_`` under ``torch.compile`` (which checks
    when it runs)."""
    if torch.compiler.is_compiling():
        return lambda: torch.ops.adan.fused_adan_(*lists.dense, scalars, *hp)
    return _prepare_full(lists, scalars, hp)


def compact_kernels_run(params: list[Tensor]) -> bool:
    """Whether the compact kernels can take these tensors: one device type whose backend
    has a compact kernel that runs here (eagerly, or under ``torch.compile`` as the custom
    op ``adan::fused_adan_compact_``)."""
    backend = _backends.BACKENDS.get(_backends.device_type_of(params))
    return backend is not None and backend.prepare_compact is not None and backend.is_available()


@torch.library.custom_op(
    "adan::fused_adan_compact_",
    mutates_args=(
        "params", "exp_avgs", "exp_avg_diffs", "exp_avg_sqs", "neg_pre_grads", "state_steps",
        "m_scales", "v_scales", "n_scales", "param_comps",
    ),
)  # fmt: skip
def _fused_compact_op(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    m_scales: list[Tensor],
    v_scales: list[Tensor],
    n_scales: list[Tensor],
    param_comps: list[Tensor],
    param_update: str,
    scalars: Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
) -> None:
    """One compact-kernel call for one bucket, in place. The scale lists (int8 state) and the
    compensation buffers (Kahan) are empty where the bucket has none; the stochastic-rounding
    seed comes from torch's default generator (a traced step takes none)."""
    scales = list(zip(m_scales, v_scales, n_scales)) if m_scales else None
    lists = TensorLists(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps, scales, param_comps or None)
    hp = HParams(beta1, beta2, beta3, eps, weight_decay, no_prox)
    _backends.get(params[0].device).prepare_compact(lists, param_update, scalars, hp)()


def _compact_op_args(part: TensorLists, param_update: str) -> tuple:
    """The custom op's optional lists for one bucket: the three scale lists (int8 state)
    and the compensation buffers (Kahan updates of low-precision parameters), else empty."""
    first = part.state_scales[0] if part.state_scales is not None else None
    scales = [[s[j] for s in part.state_scales] for j in range(3)] if first is not None else [[]] * 3
    kahan = param_update == "kahan" and part.params[0].dtype != torch.float32 and part.param_comps is not None
    return (*scales, part.param_comps if kahan else [])


def fused_compact(
    lists: TensorLists, param_update: str, scalars: Tensor, hp: HParams, generator: Optional[torch.Generator] = None
) -> Launch:
    """Compact tensors (see :func:`compact_kernels_run`), checked, as a launch: one
    compact-kernel call per (device, parameter dtype, state format); under
    ``torch.compile`` each is the custom op."""
    params, exp_avgs = lists.params, lists.exp_avgs
    # (dynamo traces no module-level getter: a traced step takes the general grouping)
    if not torch.compiler.is_compiling() and _one_bucket(params) and len({m.dtype for m in exp_avgs}) == 1:
        parts = [lists]  # the common case (a key per tensor took about 1 ms a step with a thousand)
    else:
        buckets: dict[tuple, set[int]] = {}
        for i, (p, m) in enumerate(zip(params, exp_avgs)):  # (get_device and is_cuda: no device object per tensor)
            buckets.setdefault((p.get_device(), p.is_cpu, p.is_cuda, p.dtype, m.dtype), set()).add(i)
        parts = [lists.select([i in keep for i in range(len(params))]) for keep in buckets.values()]
    launches = []
    for part in parts:
        device = part.params[0].device
        if torch.compiler.is_compiling():
            args = (*part.dense, *_compact_op_args(part, param_update), param_update, scalars.to(device), *hp)
            launches.append(lambda args=args: torch.ops.adan.fused_adan_compact_(*args))
        else:
            launches.append(_backends.get(device).prepare_compact(part, param_update, scalars.to(device), hp, generator=generator))
    return sequence(launches)
