"""Fused Adan step for CUDA in Triton: the same maths and contract as ``adan_cpu.c``.

``launch_triton`` takes one bucket (one device, one parameter dtype) and needs no host
sync, so it is safe under CUDA-graph capture (``capturable=True``): the step counts
live on the device and are incremented there (not when ``found_inf`` is set), the bias
corrections are computed from them in float64 tensor arithmetic, and the kernel reads
``scalars = [lr, grad_multiplier, found_inf]`` from device memory. Hyper-parameters
travel as the bit patterns of float64 values (Triton would pass a Python float as
float32), so float64 parameters get float64 maths throughout.

Runs on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``) for testing.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch import Tensor

from adan._checks import check_state_shapes
from adan._maths import bias_corrections

_BLOCK = 1024


def _bits(x: float) -> int:
    """The IEEE-754 float64 bit pattern of ``x`` as a signed int64 kernel argument."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


@triton.jit
def _f64(bits):
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _adan_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, coef_ptr, scalars_ptr, numel,
    b1_bits, b2_bits, b3_bits, eps_bits, wd_bits,
    NO_PROX: tl.constexpr, COMPUTE_F64: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    found_inf = tl.load(scalars_ptr + 2)
    if found_inf == 0:
        ct = tl.float64 if COMPUTE_F64 else tl.float32
        lr = tl.load(scalars_ptr)
        b1, b2, b3 = _f64(b1_bits), _f64(b2_bits), _f64(b3_bits)
        wd = _f64(wd_bits)
        pre = (1.0 - lr * wd) if NO_PROX else lr * 0.0 + 1.0
        post = lr * 0.0 + 1.0 if NO_PROX else 1.0 / (1.0 + lr * wd)
        gm = tl.load(scalars_ptr + 1).to(ct)
        a1 = tl.load(coef_ptr).to(ct)
        a2 = tl.load(coef_ptr + 1).to(ct)
        c3 = tl.load(coef_ptr + 2).to(ct)
        keep = tl.load(coef_ptr + 3).to(ct)

        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ct) * gm
        d = (g + tl.load(neg_ptr + offs, mask=mask, other=0.0).to(ct)) * keep
        m = b1.to(ct) * tl.load(m_ptr + offs, mask=mask, other=0.0).to(ct) + (1.0 - b1).to(ct) * g
        v = b2.to(ct) * tl.load(v_ptr + offs, mask=mask, other=0.0).to(ct) + (1.0 - b2).to(ct) * d
        u = g + b2.to(ct) * d
        n = b3.to(ct) * tl.load(n_ptr + offs, mask=mask, other=0.0).to(ct) + (1.0 - b3).to(ct) * (u * u)
        denom = tl.sqrt(n) * c3 + _f64(eps_bits).to(ct)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(ct)
        p = (p * pre.to(ct) - (a1 * m + a2 * v) / denom) * post.to(ct)

        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
        tl.store(n_ptr + offs, n.to(n_ptr.dtype.element_ty), mask=mask)
        tl.store(neg_ptr + offs, (-g).to(neg_ptr.dtype.element_ty), mask=mask)
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


def step_coefficients(
    state_steps: list[Tensor], scalars: Tensor, beta1: float, beta2: float, beta3: float, device: torch.device
) -> Tensor:
    """Steps += 1 (unless found_inf), then per tensor ``[lr/(1-b1^t), lr b2/(1-b2^t),
    1/sqrt(1-b3^t), t != 1]`` in float64 on ``device``: tensor arithmetic, no host sync."""
    not_inf = (scalars[2] == 0).to(state_steps[0].dtype)
    torch._foreach_add_(state_steps, [not_inf.to(s.device) for s in state_steps])
    t = torch.stack(state_steps).to(device=device, dtype=torch.float64)
    a1, a2, c3 = bias_corrections(t, scalars[0], beta1, beta2, beta3)
    return torch.stack([a1, a2, c3, (t != 1).to(torch.float64)], dim=1).contiguous()


def launch_triton(
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
    """One fused Adan step over a bucket of same-device, same-dtype tensors."""
    device = params[0].device
    check_state_shapes(
        params,
        (("grad", grads), ("exp_avg", exp_avgs), ("exp_avg_diff", exp_avg_diffs), ("exp_avg_sq", exp_avg_sqs),
         ("neg_pre_grad", neg_pre_grads)),
    )  # fmt: skip
    if any(not p.is_contiguous() for p in params):
        raise ValueError("fused Adan needs contiguous parameters (use foreach=True for strided ones)")
    grads = [g if g.dtype == p.dtype and g.is_contiguous() else g.to(p.dtype).contiguous() for p, g in zip(params, grads)]
    coefs = step_coefficients(state_steps, scalars, beta1, beta2, beta3, device)
    compute_f64 = params[0].dtype == torch.float64
    hp = [_bits(beta1), _bits(beta2), _bits(beta3), _bits(eps), _bits(weight_decay)]
    for k, p in enumerate(params):
        numel = p.numel()
        if numel == 0:
            continue
        grid = (triton.cdiv(numel, _BLOCK),)
        _adan_kernel[grid](
            p, grads[k], exp_avgs[k], exp_avg_diffs[k], exp_avg_sqs[k], neg_pre_grads[k], coefs[k], scalars, numel,
            *hp, NO_PROX=bool(no_prox), COMPUTE_F64=compute_f64, BLOCK=_BLOCK,
        )  # fmt: skip
