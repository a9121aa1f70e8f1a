"""What both Triton kernels share: the element update, the per-step scalars and step
counts, bfloat16 stochastic rounding, and the launchers' checks. The maths is that of
``adan_math.h``.

The kernels count the steps themselves, in the one launch of a bucket: every program of
tensor ``k`` reads its count ``s`` and computes the bias corrections of ``t = s + 1`` in
float64 (:func:`step_scalars`), then arrives on the tensor's counter; the last program to
arrive, when every other one has read ``s``, stores ``t`` and resets the counter
(:func:`count_step`). No torch op runs per step for the counts or the corrections.

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

from adan._checks import LayoutCache, check_bucket, layout_of
from adan._compact import scale_shape
from adan._lists import TensorLists
from adan._maths import HParams

__all__ = [
    "hparam_bits", "check_layout", "capturing", "bucket_tables", "table_pointer", "step_scalars", "count_step",
    "adan_update", "to_bf16_sr",
]  # fmt: skip


def _bits(x: float) -> int:
    """The IEEE-754 float64 bit pattern of ``x`` as a signed int64 kernel argument."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def hparam_bits(hp: HParams) -> list[int]:
    """beta1, beta2, beta3, eps and weight decay as float64 bit patterns."""
    return [_bits(hp.beta1), _bits(hp.beta2), _bits(hp.beta3), _bits(hp.eps), _bits(hp.weight_decay)]


def check_layout(lists: TensorLists, comps: Optional[list] = None) -> None:
    """:func:`adan._checks.check_bucket` (shapes, devices, dtypes), run by :func:`bucket_tables`
    for each new memory layout and on every call under CUDA-graph capture."""
    check_bucket(lists, comps, scale_shape)


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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(table, grad_table, tiles, arrivals)`` on ``device`` for one launch over a bucket.

    ``sizes()`` gives ``(counts, extra)``. ``table``: the data pointers of every slot (a
    row per slot, the parameters first, the step counts last), then ``extra`` (per-tensor
    sizes). ``grad_table``: the gradients' data pointers. ``tiles``: ``(tensor index, first
    element, programs of the tensor)`` per program of ``tile`` elements, ``counts[k]``
    programs for tensor ``k``; an empty tensor has one program with first element -1,
    which only counts its step. ``arrivals``: the tensors' int32 counters for
    :func:`count_step`, zero between launches.

    Each step reads every pointer and size (:func:`adan._checks.layout_of`; no device
    access); a table is built, after ``check()`` passed, only for a layout not seen in the
    last few steps, so a state tensor replaced or loaded (even at the same address), a
    parameter resized or moved, ``restart_opt`` or a new parameter group never let a
    kernel read through a stale pointer.
    """
    pointers, extents = layout_of(slots)
    shapes = [device, tile, *extents]  # (the tile size too: gpu_tune.py changes it between steps)

    def build() -> tuple[Tensor, Tensor, Tensor]:
        check()
        counts, extra = sizes()
        count = torch.tensor(counts, dtype=torch.int64)
        empty = count == 0
        count = count.clamp(min=1)
        index = torch.repeat_interleave(torch.arange(len(counts)), count)
        first = torch.cumsum(count, 0) - count  # each tensor's first tile
        start = torch.where(empty[index], -1, (torch.arange(int(count.sum())) - first[index]) * tile)
        tiles = torch.stack([index, start, count[index]], 1).reshape(-1).to(device)
        return _on_device(pointers + extra, device), tiles, torch.zeros(len(counts), dtype=torch.int32, device=device)

    table, tiles, arrivals = _STATE_TABLES.get(pointers, shapes, build)
    grad_pointers = [g.data_ptr() for g in grads]
    grad_table = _GRAD_TABLES.get(grad_pointers, [device], lambda: _on_device(grad_pointers, device))
    return table, grad_table, tiles, arrivals


@triton.jit
def table_pointer(table_ptr, n_tensors, k, slot: tl.constexpr, DT: tl.constexpr):
    """Tensor ``k``'s data pointer in row ``slot`` of a pointer table, typed ``DT``."""
    return tl.load(table_ptr + slot * n_tensors + k).to(tl.pointer_type(DT))


@triton.jit
def _f64(bits):
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _pow(b, t):
    """``b ** t`` in float64 for an integer-valued count ``t >= 1`` (0 for ``b == 0``)."""
    return tl.exp(t * tl.log(b))


@triton.jit
def step_scalars(scalars_ptr, step_ptr, b1_bits, b2_bits, b3_bits, eps_bits, wd_bits, NO_PROX: tl.constexpr, ct: tl.constexpr):
    """The scalars of one tensor's update in the compute type ``ct``: the betas and one minus
    them, eps, the gradient multiplier, the coefficients a1, a2, c3, keep (0 at the first
    step) and the weight-decay factors pre and post (see ``adan_math.h``); and the new step
    count ``t`` (float64), which :func:`count_step` stores. The coefficients come from ``t``
    in float64, as the C kernels compute them."""
    lr = tl.load(scalars_ptr)
    t = tl.load(step_ptr).to(tl.float64) + 1.0
    b1, b2, b3 = _f64(b1_bits), _f64(b2_bits), _f64(b3_bits)
    wd = _f64(wd_bits)
    pre = (1.0 - lr * wd) if NO_PROX else lr * 0.0 + 1.0
    post = lr * 0.0 + 1.0 if NO_PROX else 1.0 / (1.0 + lr * wd)
    gm = tl.load(scalars_ptr + 1).to(ct)
    a1 = (lr / (1.0 - _pow(b1, t))).to(ct)
    a2 = (lr * b2 / (1.0 - _pow(b2, t))).to(ct)
    c3 = (1.0 / tl.sqrt(1.0 - _pow(b3, t))).to(ct)
    keep = tl.where(t == 1.0, 0.0, 1.0).to(ct)
    betas = (b1.to(ct), b2.to(ct), b3.to(ct), (1.0 - b1).to(ct), (1.0 - b2).to(ct), (1.0 - b3).to(ct))
    return betas, _f64(eps_bits).to(ct), gm, a1, a2, c3, keep, pre.to(ct), post.to(ct), t


@triton.jit
def count_step(step_ptr, arrival_ptr, programs, t):
    """Arrive on a tensor's counter; the last of its ``programs`` to arrive stores the new
    count ``t`` and resets the counter. Every program reads the old count before it arrives
    (the barrier holds the program's warps until all of them are past that read), so no
    program sees a count another has already advanced."""
    tl.debug_barrier()
    arrived = tl.atomic_add(arrival_ptr, 1)
    if arrived == programs - 1:
        tl.store(step_ptr, t.to(tl.float32))
        tl.atomic_xchg(arrival_ptr, 0)


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
