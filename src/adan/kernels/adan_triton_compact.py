"""Fused Adan step for CUDA in Triton with compact state: the contract of ``adan_cpu_compact.c``.

One program updates one block: up to ``BLOCK`` (256) consecutive columns of one row of a
tensor viewed as ``rows x cols`` (see :mod:`adan._compact` for the layout and the code
maps). It decodes m, v, n to float32, applies the update of ``adan_triton.py``, and
encodes back: ``FMT`` 0 float32, 1 bfloat16 (stochastic rounding), 2 int8 (companded
codes, one float32 scale per block, the previous gradient in bfloat16). ``PU`` chooses how
a bfloat16/float16 parameter is written: 0 nearest, 1 stochastic rounding, 2 Kahan
(``comp`` holds the residual). Random bits come from ``tl.randint4x`` (Philox) keyed by a
seed read from device memory, so nothing syncs with the host.

Runs on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``) for testing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from adan._checks import check_state_shapes
from adan._codes import BLOCK, ParamUpdate
from adan._compact import block_layout, scale_shape
from adan._formats import format_of
from adan.kernels.adan_triton import _bits, _f64, step_coefficients


@triton.jit
def _to_bf16_sr(x, r):
    """float32 -> bfloat16 with stochastic rounding by the low 16 bits of ``r`` (uint32)."""
    bits = x.to(tl.uint32, bitcast=True) + (r & 0xFFFF)
    rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x != x, x.to(tl.bfloat16), rounded)


@triton.jit
def _adan_compact_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, ms_ptr, vs_ptr, ns_ptr, comp_ptr, coef_ptr, scalars_ptr, seed_ptr,
    cols, n_blocks, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits,
    FMT: tl.constexpr, PU: tl.constexpr, LOW_PRECISION: tl.constexpr, NO_PROX: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    found_inf = tl.load(scalars_ptr + 2)
    if found_inf == 0:
        pid = tl.program_id(0).to(tl.int64)
        row = pid // n_blocks
        j = pid % n_blocks
        col = j * BLOCK + tl.arange(0, BLOCK)
        mask = col < cols
        offs = row * cols + col

        lr = tl.load(scalars_ptr)
        b1, b2, b3 = _f64(b1_bits).to(tl.float32), _f64(b2_bits).to(tl.float32), _f64(b3_bits).to(tl.float32)
        omb1 = (1.0 - _f64(b1_bits)).to(tl.float32)
        omb2 = (1.0 - _f64(b2_bits)).to(tl.float32)
        omb3 = (1.0 - _f64(b3_bits)).to(tl.float32)
        wd = _f64(wd_bits)
        pre = ((1.0 - lr * wd) if NO_PROX else lr * 0.0 + 1.0).to(tl.float32)
        post = (lr * 0.0 + 1.0 if NO_PROX else 1.0 / (1.0 + lr * wd)).to(tl.float32)
        gm = tl.load(scalars_ptr + 1).to(tl.float32)
        a1 = tl.load(coef_ptr).to(tl.float32)
        a2 = tl.load(coef_ptr + 1).to(tl.float32)
        c3 = tl.load(coef_ptr + 2).to(tl.float32)
        keep = tl.load(coef_ptr + 3).to(tl.float32)
        r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), offs)  # four uint32 streams per element

        # decode
        if FMT == 2:
            fm = tl.load(ms_ptr + pid) / 16129.0
            fv = tl.load(vs_ptr + pid) / 16129.0
            fn = tl.load(ns_ptr + pid) / 4228250625.0
            qm = tl.load(m_ptr + offs, mask=mask, other=0).to(tl.float32)
            qv = tl.load(v_ptr + offs, mask=mask, other=0).to(tl.float32)
            qn = tl.load(n_ptr + offs, mask=mask, other=0).to(tl.float32)
            m = tl.where(qm == -128.0, float("nan"), qm * tl.abs(qm) * fm)  # -128 marks NaN/inf
            v = tl.where(qv == -128.0, float("nan"), qv * tl.abs(qv) * fv)
            qn2 = qn * qn
            n = qn2 * qn2 * fn
        else:
            m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            n = tl.load(n_ptr + offs, mask=mask, other=0.0).to(tl.float32)

        # update (the maths of adan_triton.py, in float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * gm
        d = (g + tl.load(neg_ptr + offs, mask=mask, other=0.0).to(tl.float32)) * keep
        m = b1 * m + omb1 * g
        v = b2 * v + omb2 * d
        u = g + b2 * d
        n = b3 * n + omb3 * (u * u)
        denom = tl.sqrt(n) * c3 + _f64(eps_bits).to(tl.float32)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if LOW_PRECISION and PU == 2:
            p += tl.load(comp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = (p * pre - (a1 * m + a2 * v) / denom) * post

        # parameter
        if LOW_PRECISION and PU == 1:
            tl.store(p_ptr + offs, _to_bf16_sr(p, r2), mask=mask)
        elif LOW_PRECISION and PU == 2:
            stored = p.to(p_ptr.dtype.element_ty)
            tl.store(p_ptr + offs, stored, mask=mask)
            tl.store(comp_ptr + offs, (p - stored.to(tl.float32)).to(comp_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)

        # encode
        if FMT == 0:
            tl.store(neg_ptr + offs, -g, mask=mask)
            tl.store(m_ptr + offs, m, mask=mask)
            tl.store(v_ptr + offs, v, mask=mask)
            tl.store(n_ptr + offs, n, mask=mask)
        else:
            tl.store(neg_ptr + offs, _to_bf16_sr(-g, r3), mask=mask)
        if FMT == 1:
            tl.store(m_ptr + offs, _to_bf16_sr(m, r0), mask=mask)
            tl.store(v_ptr + offs, _to_bf16_sr(v, r0 >> 16), mask=mask)
            tl.store(n_ptr + offs, _to_bf16_sr(n, r1), mask=mask)
        if FMT == 2:
            # Non-finite values stay out of the scales; a non-finite n marks its element's m.
            okn = tl.abs(n) < float("inf")
            okm = (tl.abs(m) < float("inf")) & okn
            okv = tl.abs(v) < float("inf")
            m = tl.where(okm, m, 0.0)
            v = tl.where(okv, v, 0.0)
            n = tl.where(okn, n, 0.0)
            am = tl.max(tl.where(mask, tl.abs(m), 0.0), axis=0)
            av = tl.max(tl.where(mask, tl.abs(v), 0.0), axis=0)
            an = tl.max(tl.where(mask, n, 0.0), axis=0)
            tl.store(ms_ptr + pid, am)
            tl.store(vs_ptr + pid, av)
            tl.store(ns_ptr + pid, an)
            im = tl.where(am > 0, 1.0 / am, 0.0)
            iv = tl.where(av > 0, 1.0 / av, 0.0)
            inn = tl.where(an > 0, 1.0 / an, 0.0)
            cm = tl.floor(tl.sqrt(tl.abs(m) * im) * 127.0 + 0.5)
            cv = tl.floor(tl.sqrt(tl.abs(v) * iv) * 127.0 + 0.5)
            cn = tl.floor(tl.sqrt(tl.sqrt(n * inn)) * 255.0 + 0.5)
            cn = tl.where((n > 0) & (cn < 1.0), 1.0, cn)
            tl.store(m_ptr + offs, tl.where(okm, tl.where(m < 0, -cm, cm), -128.0).to(tl.int8), mask=mask)
            tl.store(v_ptr + offs, tl.where(okv, tl.where(v < 0, -cv, cv), -128.0).to(tl.int8), mask=mask)
            tl.store(n_ptr + offs, cn.to(tl.uint8), mask=mask)


def launch_triton_compact(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    state_scales: list | None,
    param_comps: list | None,
    param_update: str,
    scalars: Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    generator: torch.Generator | None = None,
) -> None:
    """One fused compact-state step over same-device tensors (one launch per tensor)."""
    device = params[0].device
    check_state_shapes(
        params,
        (("grad", grads), ("exp_avg", exp_avgs), ("exp_avg_diff", exp_avg_diffs), ("exp_avg_sq", exp_avg_sqs),
         ("neg_pre_grad", neg_pre_grads), ("param_comp", param_comps)),
        state_scales, scale_shape,
    )  # fmt: skip
    if any(not p.is_contiguous() for p in params):
        raise ValueError("fused Adan needs contiguous parameters (use foreach=True for strided ones)")
    if param_update == "stochastic" and any(p.dtype == torch.float16 for p in params):
        raise ValueError("param_update='stochastic' rounds to bfloat16; float16 parameters take 'kahan'")
    coefs = step_coefficients(state_steps, scalars, beta1, beta2, beta3, device)
    if generator is not None and generator.device != device:
        generator = None
    seed = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int32, device=device, generator=generator)  # no host sync
    hp = [_bits(beta1), _bits(beta2), _bits(beta3), _bits(eps), _bits(weight_decay)]
    for k, p in enumerate(params):
        rows, cols = block_layout(p.shape)
        n_blocks = -(-cols // BLOCK)
        if rows * n_blocks == 0:
            continue
        g = grads[k] if grads[k].is_contiguous() else grads[k].contiguous()
        fmt = format_of(exp_avgs[k])
        ms, vs, ns = state_scales[k] if fmt.scale_keys else (scalars, scalars, scalars)  # unused placeholders
        comp = param_comps[k] if param_comps is not None and param_comps[k] is not None else p
        low = p.dtype in (torch.bfloat16, torch.float16)
        _adan_compact_kernel[(rows * n_blocks,)](
            p, g, exp_avgs[k], exp_avg_diffs[k], exp_avg_sqs[k], neg_pre_grads[k], ms, vs, ns, comp, coefs[k], scalars,
            seed, cols, n_blocks, *hp,
            FMT=int(fmt.code), PU=int(ParamUpdate[param_update.upper()]), LOW_PRECISION=low, NO_PROX=bool(no_prox), BLOCK=BLOCK,
        )  # fmt: skip
