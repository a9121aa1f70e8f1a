"""Fused Adan step for CUDA in Triton with compact state: the contract of ``adan_cpu_compact.c``.

One program updates one block: up to ``BLOCK`` (256) consecutive columns of one row of a
tensor viewed as ``rows x cols`` (see :mod:`adan._compact` for the layout and the code
maps). It decodes m, v, n to float32, applies the update of
:mod:`adan.kernels.triton_common`, and encodes back, by ``FMT`` (a :class:`adan._codes.Format`):
float32, bfloat16 (stochastic rounding) or int8 (companded codes, one float32 scale per
block, the previous gradient in bfloat16). ``PU`` (a :class:`adan._codes.ParamUpdate`)
chooses how a bfloat16/float16 parameter is written: nearest, stochastic rounding, or
Kahan (``comp`` holds the residual). Random bits come from ``tl.randint4x`` (Philox) keyed by a
seed read from device memory, so nothing syncs with the host.

Runs on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``) for testing.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from adan._codes import BLOCK, FLT_MIN, NONFINITE_CODE, Format, ParamUpdate
from adan._compact import block_layout
from adan._formats import format_of
from adan._checks import flat_grads
from adan._lists import TensorLists
from adan._maths import HParams
from adan.kernels.triton_common import (
    adan_update, bucket_tables, capturing, check_layout, count_step, hparam_bits, step_scalars, table_pointer,
    to_bf16_sr,
)  # fmt: skip

__all__ = ["prepare_compact", "launch_compact"]

# The codes of adan/_codes.py, as compile-time constants of the kernel.
_F32 = tl.constexpr(int(Format.F32))
_BF16 = tl.constexpr(int(Format.BF16))
_INT8 = tl.constexpr(int(Format.INT8))
_STOCHASTIC = tl.constexpr(int(ParamUpdate.STOCHASTIC))
_KAHAN = tl.constexpr(int(ParamUpdate.KAHAN))
_NONFINITE = tl.constexpr(float(NONFINITE_CODE))
_FLT_MIN = tl.constexpr(FLT_MIN)


@triton.jit
def _compact_block(
    p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, ms_ptr, vs_ptr, ns_ptr, comp_ptr, scalars_ptr, seed_ptr,
    betas, eps, gm, a1, a2, c3, keep, pre, post, tile, cols, n_blocks,
    FMT: tl.constexpr, PU: tl.constexpr, LOW_PRECISION: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Block ``tile`` (row ``tile // n_blocks``) of one tensor: decode, update, encode."""
    row = tile // n_blocks
    j = tile % n_blocks
    col = j * BLOCK + tl.arange(0, BLOCK)
    mask = col < cols
    offs = row * cols + col

    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), offs)  # four uint32 streams per element

    # decode
    if FMT == _INT8:
        fm = tl.load(ms_ptr + tile) / 16129.0
        fv = tl.load(vs_ptr + tile) / 16129.0
        fn = tl.load(ns_ptr + tile) / 4228250625.0
        qm = tl.load(m_ptr + offs, mask=mask, other=0).to(tl.float32)
        qv = tl.load(v_ptr + offs, mask=mask, other=0).to(tl.float32)
        qn = tl.load(n_ptr + offs, mask=mask, other=0).to(tl.float32)
        m = tl.where(qm == _NONFINITE, float("nan"), qm * tl.abs(qm) * fm)  # marks NaN/inf
        v = tl.where(qv == _NONFINITE, float("nan"), qv * tl.abs(qv) * fv)
        qn2 = qn * qn
        n = qn2 * qn2 * fn
    else:
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        n = tl.load(n_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    # update (in float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * gm
    prev = tl.load(neg_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if LOW_PRECISION and PU == _KAHAN:
        p += tl.load(comp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m, v, n, p = adan_update(g, prev, m, v, n, p, betas, eps, a1, a2, c3, keep, pre, post)

    # parameter
    if LOW_PRECISION and PU == _STOCHASTIC:
        tl.store(p_ptr + offs, to_bf16_sr(p, r2), mask=mask)
    elif LOW_PRECISION and PU == _KAHAN:
        stored = p.to(p_ptr.dtype.element_ty)
        tl.store(p_ptr + offs, stored, mask=mask)
        tl.store(comp_ptr + offs, (p - stored.to(tl.float32)).to(comp_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)

    # encode
    if FMT == _F32:
        tl.store(neg_ptr + offs, -g, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(n_ptr + offs, n, mask=mask)
    else:
        tl.store(neg_ptr + offs, to_bf16_sr(-g, r3), mask=mask)
    if FMT == _BF16:
        tl.store(m_ptr + offs, to_bf16_sr(m, r0), mask=mask)
        tl.store(v_ptr + offs, to_bf16_sr(v, r0 >> 16), mask=mask)
        tl.store(n_ptr + offs, to_bf16_sr(n, r1), mask=mask)
    if FMT == _INT8:
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
        am = tl.where((am > 0) & (am < _FLT_MIN), _FLT_MIN, am)  # a subnormal maximum: see _compact.block_scale
        av = tl.where((av > 0) & (av < _FLT_MIN), _FLT_MIN, av)
        an = tl.where((an > 0) & (an < _FLT_MIN), _FLT_MIN, an)
        tl.store(ms_ptr + tile, am)
        tl.store(vs_ptr + tile, av)
        tl.store(ns_ptr + tile, an)
        im = tl.where(am > 0, 1.0 / am, 0.0)
        iv = tl.where(av > 0, 1.0 / av, 0.0)
        inn = tl.where(an > 0, 1.0 / tl.sqrt(an), 0.0)  # n's code from sqrt(n) / sqrt(max): as the CPU kernel
        cm = tl.floor(tl.sqrt(tl.abs(m) * im) * 127.0 + 0.5)
        cv = tl.floor(tl.sqrt(tl.abs(v) * iv) * 127.0 + 0.5)
        cn = tl.floor(tl.sqrt(tl.sqrt(n) * inn) * 255.0 + 0.5)
        cn = tl.where((n > 0) & (cn < 1.0), 1.0, cn)
        tl.store(m_ptr + offs, tl.where(okm, tl.where(m < 0, -cm, cm), _NONFINITE).to(tl.int8), mask=mask)
        tl.store(v_ptr + offs, tl.where(okv, tl.where(v < 0, -cv, cv), _NONFINITE).to(tl.int8), mask=mask)
        tl.store(n_ptr + offs, cn.to(tl.uint8), mask=mask)


@triton.jit
def _compact_program(
    p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, ms_ptr, vs_ptr, ns_ptr, comp_ptr, step_ptr, arrival_ptr, programs,
    scalars_ptr, seed_ptr, tile, cols, n_blocks, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits,
    FMT: tl.constexpr, PU: tl.constexpr, LOW_PRECISION: tl.constexpr, NO_PROX: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One program: block ``tile`` of one tensor (none when ``tile`` is -1: an empty
    tensor), then the step count."""
    betas, eps, gm, a1, a2, c3, keep, pre, post, t = step_scalars(
        scalars_ptr, step_ptr, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, NO_PROX, tl.float32
    )
    if tile >= 0:
        _compact_block(
            p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, ms_ptr, vs_ptr, ns_ptr, comp_ptr, scalars_ptr, seed_ptr,
            betas, eps, gm, a1, a2, c3, keep, pre, post, tile, cols, n_blocks, FMT, PU, LOW_PRECISION, BLOCK,
        )  # fmt: skip
    count_step(step_ptr, arrival_ptr, programs, t)


@triton.jit
def _adan_compact_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, ms_ptr, vs_ptr, ns_ptr, comp_ptr, step_ptr, arrival_ptr, scalars_ptr,
    seed_ptr, cols, n_blocks, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits,
    FMT: tl.constexpr, PU: tl.constexpr, LOW_PRECISION: tl.constexpr, NO_PROX: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One tensor (used under CUDA-graph capture, where a pointer table cannot be copied in)."""
    if tl.load(scalars_ptr + 2) == 0:  # found_inf
        tile = tl.where(n_blocks > 0, tl.program_id(0).to(tl.int64), -1)
        _compact_program(
            p_ptr, g_ptr, m_ptr, v_ptr, n_ptr, neg_ptr, ms_ptr, vs_ptr, ns_ptr, comp_ptr, step_ptr, arrival_ptr,
            tl.num_programs(0), scalars_ptr, seed_ptr, tile, cols, n_blocks, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits,
            FMT, PU, LOW_PRECISION, NO_PROX, BLOCK,
        )  # fmt: skip


@triton.jit
def _adan_compact_table_kernel(
    table_ptr, grads_ptr, tiles_ptr, arrivals_ptr, scalars_ptr, seed_ptr, n_tensors, b1_bits, b2_bits, b3_bits,
    eps_bits, wd_bits, P_DT: tl.constexpr, S_DT: tl.constexpr, NEG_DT: tl.constexpr, SCALE_DT: tl.constexpr,
    N_DT: tl.constexpr, FMT: tl.constexpr, PU: tl.constexpr, LOW_PRECISION: tl.constexpr, NO_PROX: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Every tensor of a bucket in one launch. ``table``: ten rows of ``n_tensors`` data
    pointers (p, m, v, n, neg, the three scales, comp, step), then each tensor's ``cols``
    and ``n_blocks``; ``grads``: the gradients' pointers; program ``i`` updates block
    ``tiles[3i + 1]`` of tensor ``tiles[3i]``, one of its ``tiles[3i + 2]`` programs."""
    if tl.load(scalars_ptr + 2) == 0:  # found_inf
        pid = tl.program_id(0).to(tl.int64)
        k = tl.load(tiles_ptr + 3 * pid)
        _compact_program(
            table_pointer(table_ptr, n_tensors, k, 0, P_DT),
            table_pointer(grads_ptr, n_tensors, k, 0, P_DT),
            table_pointer(table_ptr, n_tensors, k, 1, S_DT),
            table_pointer(table_ptr, n_tensors, k, 2, S_DT),
            table_pointer(table_ptr, n_tensors, k, 3, N_DT),
            table_pointer(table_ptr, n_tensors, k, 4, NEG_DT),
            table_pointer(table_ptr, n_tensors, k, 5, SCALE_DT),
            table_pointer(table_ptr, n_tensors, k, 6, SCALE_DT),
            table_pointer(table_ptr, n_tensors, k, 7, SCALE_DT),
            table_pointer(table_ptr, n_tensors, k, 8, P_DT),
            table_pointer(table_ptr, n_tensors, k, 9, tl.float32),
            arrivals_ptr + k, tl.load(tiles_ptr + 3 * pid + 2), scalars_ptr, seed_ptr, tl.load(tiles_ptr + 3 * pid + 1),
            tl.load(table_ptr + 10 * n_tensors + k), tl.load(table_ptr + 11 * n_tensors + k),
            b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, FMT, PU, LOW_PRECISION, NO_PROX, BLOCK,
        )  # fmt: skip


_NUM_WARPS = 2  # the fastest of 1, 2, 4, 8 warps per 256-value block (benchmarks/gpu_tune.py)

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
              torch.int8: tl.int8, torch.uint8: tl.uint8}  # fmt: skip


def prepare_compact(
    lists: TensorLists, param_update: str, scalars: Tensor, hp: HParams, generator: Optional[torch.Generator] = None
) -> Callable[[], None]:
    """Check tensors of one device and parameter dtype and put their tables on the device;
    return their launch: one per state format (a launch per tensor under CUDA-graph
    capture), which draws the rounding seed."""
    by_format: dict[torch.dtype, list[int]] = {}
    for k, m in enumerate(lists.exp_avgs):
        by_format.setdefault(m.dtype, []).append(k)
    if len(by_format) > 1:  # one launch per state format
        launches = [
            prepare_compact(lists.select([k in set(idx) for k in range(len(lists.params))]), param_update, scalars, hp, generator)
            for idx in by_format.values()
        ]

        def launch_all() -> None:
            for launch in launches:
                launch()

        return launch_all
    params = lists.params
    device = params[0].device
    lists = lists._replace(grads=flat_grads(params, lists.grads, params[0].dtype))
    grads = lists.grads
    if param_update == "stochastic" and any(p.dtype == torch.float16 for p in params):
        raise ValueError("param_update='stochastic' rounds to bfloat16; float16 parameters take 'kahan'")
    if generator is not None and generator.device != device:
        generator = None
    bits = hparam_bits(hp)
    fmt = format_of(lists.exp_avgs[0])
    scales = [lists.state_scales[k] if fmt.scale_keys else (p, p, p) for k, p in enumerate(params)]  # (p: unused)
    comps = [c if c is not None else p for p, c in zip(params, lists.param_comps or [None] * len(params))]  # (p: unused)
    states = [lists.exp_avgs, lists.exp_avg_diffs, lists.exp_avg_sqs, lists.neg_pre_grads,
              *([s[j] for s in scales] for j in range(3)), comps]  # fmt: skip
    consts = dict(
        FMT=int(fmt.code), PU=int(ParamUpdate[param_update.upper()]), LOW_PRECISION=params[0].dtype in (torch.bfloat16, torch.float16),
        NO_PROX=bool(hp.no_prox), BLOCK=BLOCK, num_warps=_NUM_WARPS,
    )  # fmt: skip

    def draw_seed() -> Tensor:
        return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int32, device=device, generator=generator)  # no host sync

    check = lambda: check_layout(lists, lists.param_comps)  # noqa: E731
    if not capturing(device):
        def sizes() -> tuple[list[int], list[int]]:
            # A tensor's tiles are its blocks, rows x n_blocks; the table's sizes part carries cols and n_blocks.
            layouts = [block_layout(p.shape) for p in params]
            n_blocks = [-(-cols // BLOCK) for _, cols in layouts]
            return [rows * nb for (rows, _), nb in zip(layouts, n_blocks)], [c for _, c in layouts] + n_blocks

        table, grad_table, tiles, arrivals = bucket_tables([params, *states, lists.state_steps], grads, sizes, 1, device, check)
        dtypes = dict(P_DT=_TL_DTYPES[params[0].dtype], S_DT=_TL_DTYPES[lists.exp_avgs[0].dtype],
                      N_DT=_TL_DTYPES[lists.exp_avg_sqs[0].dtype], NEG_DT=_TL_DTYPES[lists.neg_pre_grads[0].dtype],
                      SCALE_DT=tl.float32)  # fmt: skip
        return lambda: _adan_compact_table_kernel[(tiles.numel() // 3,)](
            table, grad_table, tiles, arrivals, scalars, draw_seed(), len(params), *bits, **dtypes, **consts
        )
    check()  # under capture: a launch per tensor, no table, checked every time

    def launch() -> None:
        seed = draw_seed()
        arrivals = torch.zeros(len(params), dtype=torch.int32, device=device)  # (zeroed by a captured fill at each replay)
        for k, p in enumerate(params):
            rows, cols = block_layout(p.shape)
            n_blocks = -(-cols // BLOCK) if rows else 0
            _adan_compact_kernel[(max(1, rows * n_blocks),)](
                p, grads[k], *(slot[k] for slot in states), lists.state_steps[k], arrivals[k], scalars, seed, cols,
                n_blocks, *bits, **consts,
            )  # fmt: skip

    return launch


def launch_compact(
    lists: TensorLists, param_update: str, scalars: Tensor, hp: HParams, generator: Optional[torch.Generator] = None
) -> None:
    """:func:`prepare_compact` and its launch at once."""
    prepare_compact(lists, param_update, scalars, hp, generator)()
