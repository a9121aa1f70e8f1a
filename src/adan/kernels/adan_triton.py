"""Fused Adan step for CUDA in Triton, full-precision state: the contract of ``adan_cpu.c``.

:func:`prepare_full` takes one bucket (one device, one parameter dtype) and needs no host
sync, so it is safe under CUDA-graph capture (``capturable=True``): the step counts live
on the device, the kernel advances them itself (not when ``found_inf`` is set) and
computes the bias corrections from them in float64, and it reads ``scalars = [lr,
grad_multiplier, found_inf]`` from device memory. The maths is in
:mod:`adan.kernels.triton_common`. A bucket is one launch and nothing else: the kernel reads
each tensor's data pointers from a table (as torch's ``multi_tensor_apply`` does), and each
program updates ``BLOCK`` elements of one tensor, so tiny tensors cost one program each.
"""

from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from adan._checks import flat_grads
from adan._lists import TensorLists
from adan._maths import HParams
from adan.kernels.triton_common import (
    adan_update, bucket_tables, capturing, check_layout, count_step, hparam_bits, step_scalars, table_pointer,
)  # fmt: skip

__all__ = ["prepare_full", "launch_full"]

_BLOCK = 1024
_NUM_WARPS = 4  # 4 and 8 warps of 1024 elements tie within noise on an H200; larger tiles lose (benchmarks/gpu_tune.py)


@triton.jit
def _update_block(
    p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, step_ptr, arrival_ptr, programs, scalars_ptr, start, numel,
    b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, NO_PROX: tl.constexpr, ct: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Load, update and store ``BLOCK`` elements of one tensor from ``start`` on (none when
    ``start`` is -1: an empty tensor), then count the step."""
    betas, eps, gm, a1, a2, c3, keep, pre, post, t = step_scalars(
        scalars_ptr, step_ptr, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, NO_PROX, ct
    )
    if start >= 0:
        offs = start + tl.arange(0, BLOCK)
        mask = offs < numel
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ct) * gm
        m, v, n, p = adan_update(
            g,
            tl.load(neg_ptr + offs, mask=mask, other=0.0).to(ct),
            tl.load(m_ptr + offs, mask=mask, other=0.0).to(ct),
            tl.load(v_ptr + offs, mask=mask, other=0.0).to(ct),
            tl.load(n_ptr + offs, mask=mask, other=0.0).to(ct),
            tl.load(p_ptr + offs, mask=mask, other=0.0).to(ct),
            betas, eps, a1, a2, c3, keep, pre, post,
        )  # fmt: skip
        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
        tl.store(n_ptr + offs, n.to(n_ptr.dtype.element_ty), mask=mask)
        tl.store(neg_ptr + offs, (-g).to(neg_ptr.dtype.element_ty), mask=mask)
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    count_step(step_ptr, arrival_ptr, programs, t)


@triton.jit
def _adan_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, step_ptr, arrival_ptr, scalars_ptr, numel,
    b1_bits, b2_bits, b3_bits, eps_bits, wd_bits,
    NO_PROX: tl.constexpr, COMPUTE_F64: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One tensor (used under CUDA-graph capture, where a pointer table cannot be copied in)."""
    if tl.load(scalars_ptr + 2) == 0:  # found_inf
        start = tl.where(numel > 0, tl.program_id(0).to(tl.int64) * BLOCK, -1)
        _update_block(
            p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, step_ptr, arrival_ptr, tl.num_programs(0), scalars_ptr, start, numel,
            b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, NO_PROX, tl.float64 if COMPUTE_F64 else tl.float32, BLOCK,
        )  # fmt: skip


@triton.jit
def _adan_table_kernel(
    table_ptr, grads_ptr, tiles_ptr, arrivals_ptr, scalars_ptr, n_tensors,
    b1_bits, b2_bits, b3_bits, eps_bits, wd_bits,
    NO_PROX: tl.constexpr, P_DT: tl.constexpr, S_DT: tl.constexpr, COMPUTE_F64: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Every tensor of a bucket in one launch. ``table`` holds six rows of ``n_tensors`` data
    pointers (p, m, v, n, neg, step) and then the tensors' sizes, ``grads`` the gradients'
    pointers; program ``i`` updates elements ``tiles[3i + 1]`` onwards of tensor
    ``tiles[3i]``, one of its ``tiles[3i + 2]`` programs."""
    if tl.load(scalars_ptr + 2) == 0:  # found_inf
        pid = tl.program_id(0).to(tl.int64)
        k = tl.load(tiles_ptr + 3 * pid)
        _update_block(
            table_pointer(table_ptr, n_tensors, k, 0, P_DT),
            table_pointer(grads_ptr, n_tensors, k, 0, P_DT),
            table_pointer(table_ptr, n_tensors, k, 1, S_DT),
            table_pointer(table_ptr, n_tensors, k, 2, S_DT),
            table_pointer(table_ptr, n_tensors, k, 3, S_DT),
            table_pointer(table_ptr, n_tensors, k, 4, S_DT),
            table_pointer(table_ptr, n_tensors, k, 5, tl.float32),
            arrivals_ptr + k, tl.load(tiles_ptr + 3 * pid + 2), scalars_ptr,
            tl.load(tiles_ptr + 3 * pid + 1), tl.load(table_ptr + 6 * n_tensors + k),
            b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, NO_PROX, tl.float64 if COMPUTE_F64 else tl.float32, BLOCK,
        )  # fmt: skip


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def prepare_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> Callable[[], None]:
    """Check a bucket of same-device, same-dtype tensors and put its tables on the device;
    return its launch: one for the bucket (a launch per tensor under CUDA-graph capture)."""
    params = lists.params
    device = params[0].device
    lists = lists._replace(grads=flat_grads(params, lists.grads, params[0].dtype), state_scales=None)
    compute_f64 = params[0].dtype == torch.float64
    bits = hparam_bits(hp)
    states = [lists.exp_avgs, lists.exp_avg_diffs, lists.exp_avg_sqs, lists.neg_pre_grads]
    consts = dict(NO_PROX=bool(hp.no_prox), COMPUTE_F64=compute_f64, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    if not capturing(device):
        def sizes() -> tuple[list[int], list[int]]:
            numels = [p.numel() for p in params]
            return [-(-n // _BLOCK) for n in numels], numels

        table, grad_table, tiles, arrivals = bucket_tables(
            [params, *states, lists.state_steps], lists.grads, sizes, _BLOCK, device, lambda: check_layout(lists)
        )
        dtypes = dict(P_DT=_TL_DTYPES[params[0].dtype], S_DT=_TL_DTYPES[lists.exp_avgs[0].dtype])
        return lambda: _adan_table_kernel[(tiles.numel() // 3,)](
            table, grad_table, tiles, arrivals, scalars, len(params), *bits, **dtypes, **consts
        )
    check_layout(lists)  # under capture: a launch per tensor, no table, checked every time

    def launch() -> None:
        arrivals = torch.zeros(len(params), dtype=torch.int32, device=device)  # (zeroed by a captured fill at each replay)
        for k, p in enumerate(params):
            numel = p.numel()
            _adan_kernel[(max(1, triton.cdiv(numel, _BLOCK)),)](
                p, lists.grads[k], *(slot[k] for slot in states), lists.state_steps[k], arrivals[k], scalars, numel,
                *bits, **consts,
            )  # fmt: skip

    return launch


def launch_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> None:
    """:func:`prepare_full` and its launch at once."""
    prepare_full(lists, scalars, hp)()
