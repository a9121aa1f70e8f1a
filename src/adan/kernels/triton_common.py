"""What both Triton kernels share: the element update, the per-step scalars, bfloat16
stochastic rounding, and the launchers' checks. The maths is that of ``adan_math.h``.

Hyper-parameters travel as the bit patterns of float64 values (Triton would pass a Python
float as float32), so float64 parameters get float64 maths throughout. Runs on the CPU
under Triton's interpreter (``TRITON_INTERPRET=1``) for testing.
"""

from __future__ import annotations

import struct
from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from adan._checks import LayoutCache, check_state_shapes
from adan._compact import scale_shape
from adan._lists import TensorLists
from adan._maths import HParams, bias_corrections

__all__ = [
    "hparam_bits", "step_coefficients", "check_shapes", "capturing", "bucket_tables", "table_pointer",
    "step_scalars", "adan_update", "to_bf16_sr",
]  # fmt: skip


def _bits(x: float) -> int:
    """The IEEE-754 float64 bit pattern of ``x`` as a signed int64 kernel argument."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def hparam_bits(hp: HParams) -> list[int]:
    """beta1, beta2, beta3, eps and weight decay as float64 bit patterns."""
    return [_bits(hp.beta1), _bits(hp.beta2), _bits(hp.beta3), _bits(hp.eps), _bits(hp.weight_decay)]


def step_coefficients(state_steps: list[Tensor], scalars: Tensor, hp: HParams, device: torch.device) -> Tensor:
    """Steps += 1 (unless found_inf), then per tensor ``[lr/(1-b1^t), lr b2/(1-b2^t),
    1/sqrt(1-b3^t), t != 1]`` in float64 on ``device``: tensor arithmetic, no host sync."""
    not_inf = (scalars[2] == 0).to(state_steps[0].dtype)
    # A list of tensors, not one: _foreach_add_(list, tensor) reads the tensor on the host
    # (a sync, and an error under CUDA-graph capture; seen on an H200 with torch 2.11).
    torch._foreach_add_(state_steps, [not_inf] * len(state_steps) if state_steps[0].device == not_inf.device else
                        [not_inf.to(s.device) for s in state_steps])  # fmt: skip
    t = torch.stack(state_steps).to(device=device, dtype=torch.float64)
    a1, a2, c3 = bias_corrections(t, scalars[0], hp.beta1, hp.beta2, hp.beta3)
    return torch.stack([a1, a2, c3, (t != 1).to(torch.float64)], dim=1).contiguous()


def check_shapes(lists: TensorLists, comps: Optional[list] = None) -> None:
    """Every buffer (and int8 scale) shaped like its parameter: the full check, run by
    :func:`bucket_tables` for each new memory layout."""
    check_state_shapes(
        lists.params,
        (("grad", lists.grads), ("exp_avg", lists.exp_avgs), ("exp_avg_diff", lists.exp_avg_diffs),
         ("exp_avg_sq", lists.exp_avg_sqs), ("neg_pre_grad", lists.neg_pre_grads), ("param_comp", comps)),
        lists.state_scales, scale_shape,
    )  # fmt: skip


def capturing(device: torch.device) -> bool:
    """Whether CUDA-graph capture is on: a pointer table copied in now would be replayed stale."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# Device tables per memory layout (see LayoutCache): the state tables with their tiles, and
# the gradients' pointers (which the caching allocator often hands back unchanged).
_STATE_TABLES = LayoutCache()
_GRAD_TABLES = LayoutCache()


def _on_device(values: list[int], device: torch.device) -> Tensor:
    """int64 ``values`` on ``device``: one copy from pinned memory, no host sync."""
    host = torch.tensor(values, dtype=torch.int64, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


def bucket_tables(
    slots: list[list[Tensor]], grads: list[Tensor], sizes: Callable[[], tuple[list[int], list[int]]], tile: int,
    device: torch.device, check: Callable[[], None],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(table, grad_table, tiles)`` on ``device`` for one launch over a bucket.

    ``sizes()`` gives ``(counts, extra)``. ``table``: the data pointers of every slot (a
    row per slot, the parameters first), then ``extra`` (per-tensor sizes).
    ``grad_table``: the gradients' data pointers. ``tiles``: ``(tensor index, first
    element)`` per program of ``tile`` elements, ``counts[k]`` programs for tensor ``k``.

    Each step reads every pointer and every parameter's shape (no device access); a table
    is built, after ``check()`` passed, only for a layout not seen in the last few steps,
    so a state tensor replaced or loaded, a parameter resized or moved, ``restart_opt`` or
    a new parameter group never let a kernel read through a stale pointer.
    """
    params = slots[0]
    pointers = [t.data_ptr() for slot in slots for t in slot]
    shapes = [device, *(p.shape for p in params)]

    def build() -> tuple[Tensor, Tensor]:
        check()
        counts, extra = sizes()
        count = torch.tensor(counts, dtype=torch.int64)
        index = torch.repeat_interleave(torch.arange(len(counts)), count)
        first = torch.cumsum(count, 0) - count  # each tensor's first tile
        start = (torch.arange(int(count.sum())) - first[index]) * tile
        return _on_device(pointers + extra, device), torch.stack([index, start], 1).reshape(-1).to(device)

    table, tiles = _STATE_TABLES.get(pointers, shapes, build)
    grad_pointers = [g.data_ptr() for g in grads]
    grad_table = _GRAD_TABLES.get(grad_pointers, [device], lambda: _on_device(grad_pointers, device))
    return table, grad_table, tiles


@triton.jit
def table_pointer(table_ptr, n_tensors, k, slot: tl.constexpr, DT: tl.constexpr):
    """Tensor ``k``'s data pointer in row ``slot`` of a pointer table, typed ``DT``."""
    return tl.load(table_ptr + slot * n_tensors + k).to(tl.pointer_type(DT))


@triton.jit
def _f64(bits):
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def step_scalars(scalars_ptr, coef_ptr, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, NO_PROX: tl.constexpr, ct: tl.constexpr):
    """The scalars of one tensor's update in the compute type ``ct``: the betas and one minus
    them, eps, the gradient multiplier, the coefficients a1, a2, c3, keep (0 at the first
    step) and the weight-decay factors pre and post (see ``adan_math.h``)."""
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
    betas = (b1.to(ct), b2.to(ct), b3.to(ct), (1.0 - b1).to(ct), (1.0 - b2).to(ct), (1.0 - b3).to(ct))
    return betas, _f64(eps_bits).to(ct), gm, a1, a2, c3, keep, pre.to(ct), post.to(ct)


@triton.jit
def adan_update(g, prev, m, v, n, p, betas, eps, a1, a2, c3, keep, pre, post):
    """The element update (``ADAN_ELEMENT`` in ``adan_math.h``): the new m, v, n and p."""
    b1, b2, b3, omb1, omb2, omb3 = betas
    d = (g + prev) * keep
    m = b1 * m + omb1 * g
    v = b2 * v + omb2 * d
    u = g + b2 * d
    n = b3 * n + omb3 * (u * u)
    denom = tl.sqrt(n) * c3 + eps
    p = (p * pre - (a1 * m + a2 * v) / denom) * post
    return m, v, n, p


@triton.jit
def to_bf16_sr(x, r):
    """float32 -> bfloat16 with stochastic rounding by the low 16 bits of ``r`` (uint32)."""
    bits = x.to(tl.uint32, bitcast=True) + (r & 0xFFFF)
    rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x != x, x.to(tl.bfloat16), rounded)
