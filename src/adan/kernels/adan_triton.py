"""Fused Adan step for CUDA in Triton, full-precision state: the contract of ``adan_cpu.c``.

:func:`launch_full` takes one bucket (one device, one parameter dtype) and needs no host
sync, so it is safe under CUDA-graph capture (``capturable=True``): the step counts live
on the device and are incremented there (not when ``found_inf`` is set), the bias
corrections are computed from them in float64 tensor arithmetic, and the kernel reads
``scalars = [lr, grad_multiplier, found_inf]`` from device memory. The maths is in
:mod:`adan.kernels.triton_common`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from adan._lists import TensorLists
from adan._maths import HParams
from adan.kernels.triton_common import adan_update, hparam_bits, prepare, step_coefficients, step_scalars

__all__ = ["launch_full"]

_BLOCK = 1024


@triton.jit
def _adan_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, coef_ptr, scalars_ptr, numel,
    b1_bits, b2_bits, b3_bits, eps_bits, wd_bits,
    NO_PROX: tl.constexpr, COMPUTE_F64: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    found_inf = tl.load(scalars_ptr + 2)
    if found_inf == 0:
        ct: tl.constexpr = tl.float64 if COMPUTE_F64 else tl.float32
        betas, eps, gm, a1, a2, c3, keep, pre, post = step_scalars(
            scalars_ptr, coef_ptr, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, NO_PROX, ct
        )
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
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


def launch_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> None:
    """One fused Adan step over a bucket of same-device, same-dtype tensors."""
    params = lists.params
    device = params[0].device
    grads = prepare(lists._replace(state_scales=None))
    coefs = step_coefficients(lists.state_steps, scalars, hp, device)
    compute_f64 = params[0].dtype == torch.float64
    bits = hparam_bits(hp)
    for k, p in enumerate(params):
        numel = p.numel()
        if numel == 0:
            continue
        _adan_kernel[(triton.cdiv(numel, _BLOCK),)](
            p, grads[k], lists.exp_avgs[k], lists.exp_avg_diffs[k], lists.exp_avg_sqs[k], lists.neg_pre_grads[k],
            coefs[k], scalars, numel, *bits, NO_PROX=bool(hp.no_prox), COMPUTE_F64=compute_f64, BLOCK=_BLOCK,
        )  # fmt: skip
