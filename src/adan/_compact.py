r"""The codecs and the block layout of compact optimizer state, and low-precision parameter updates.

Adan keeps four buffers per parameter (m, v, n and the previous gradient): 16 bytes per
float32 parameter, twice AdamW's. ``Adan(state_dtype=...)`` stores them in one of the
formats of :mod:`adan._formats`: ``"float32"`` (default, 16 bytes per parameter),
``"bfloat16"`` (8 bytes, *stochastic rounding*: a value between two bfloat16 neighbours
becomes either, with probabilities that make the rounding unbiased, so updates smaller than
half a bfloat16 step are kept on average) or ``"int8"`` (about 5.05 bytes: m and v as signed
8-bit codes, n as unsigned ones, one float32 scale per block of :data:`BLOCK` values, the
previous gradient in stochastically rounded bfloat16). Under ``"int8"``, tensors with fewer
than :data:`MIN_INT8_NUMEL` elements keep float32 state, as bitsandbytes and torchao do, and
so do tensors whose rows (see below) are narrower than :data:`MIN_INT8_COLS`: a (4096, 1)
column would otherwise pay a scale per element.

The update itself is written once per backend (``_adan_lists`` in :mod:`adan._functional`
for the torch paths, ``kernels/adan_cpu_compact.c`` for the fused CPU kernel,
``kernels/adan_triton_compact.py`` for CUDA): a format only says how the buffers are
decoded to float32 before it and encoded after it. This module holds those codecs.

**Block layout.** A tensor is viewed as ``rows x cols`` with ``rows = shape[0]`` (1 for 0-
and 1-D tensors) and ``cols = numel / rows``; a block is up to ``BLOCK`` consecutive
columns of one row, and the scales have shape ``(rows, ceil(cols / BLOCK))``. Rows are what
FSDP2 shards, so the codes and the scales of a sharded parameter are sharded alike.

**Code maps** (companding: one ``sqrt`` to encode; the torch ops decode through a 256-entry
table of the same values). With ``s`` the block's largest magnitude::

    signed   (m, v): q = sign(x) floor(127 sqrt(|x| / s) + 1/2)      x' = s sign(q) (q / 127)^2
    unsigned (n)   : q = max(floor(255 (x / s)^(1/4) + 1/2), [x > 0])  x' = s (q / 255)^4

The square-root map resolves values down to ``s / 64516`` (a linear map: ``s / 254``), and
the error is at most ``s (2 sqrt(|x| / s) + 1/254) / 254``. The map for n is the same map
applied to ``sqrt(n)``, the quantity that divides the update; a positive n never becomes
0, so a small n cannot turn into an ``eps``-sized denominator and a huge step.

**Low-precision parameters** (bfloat16/float16) are updated in float32 and written back by
``param_update``: ``"nearest"`` (default), ``"stochastic"`` (stochastic rounding, bfloat16
parameters) or ``"kahan"`` (a compensation buffer ``param_comp`` of the parameter's dtype
holds what rounding the parameter lost, and is added back at the next step).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from adan._codes import BLOCK, FLT_MIN, NONFINITE_CODE

__all__ = [
    "BLOCK",
    "block_scale",
    "MIN_INT8_NUMEL",
    "PARAM_UPDATES",
    "block_layout",
    "scale_shape",
    "quantize_signed",
    "dequantize_signed",
    "quantize_unsigned",
    "dequantize_unsigned",
    "random_bits",
    "round_to_bf16",
    "round_to_bf16_",
    "state_bytes",
    "state_bytes_per_param",
]

MIN_INT8_NUMEL = 4096
MIN_INT8_COLS = 16  # narrower rows would pay more for their scales than they save
PARAM_UPDATES = ("nearest", "stochastic", "kahan")
LOW_PRECISION = (torch.bfloat16, torch.float16)

COMP_KEY = "param_comp"


# ------------------------------------------------------------------- layout
def block_layout(shape: torch.Size) -> tuple[int, int]:
    """``(rows, cols)``: the tensor as rows of ``cols`` elements, blocked along the columns."""
    if len(shape) < 2:
        return 1, (shape[0] if shape else 1)
    cols = 1
    for s in shape[1:]:
        cols *= s
    return shape[0], cols


def scale_shape(shape: torch.Size) -> tuple[int, int]:
    rows, cols = block_layout(shape)
    return rows, -(-cols // BLOCK)


def _blocks(x: Tensor) -> Tensor:
    """``x`` (float32, any shape) as ``(rows, n_blocks, BLOCK)``, zero-padded."""
    rows, cols = block_layout(x.shape)
    flat = x.reshape(rows, cols)
    pad = -cols % BLOCK
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(rows, (cols + pad) // BLOCK, BLOCK)


def _unblock(b: Tensor, shape: torch.Size) -> Tensor:
    rows, cols = block_layout(shape)
    return b.reshape(rows, b.shape[1] * BLOCK)[:, :cols].reshape(shape)


# ------------------------------------------------------------------ int8 maps
def block_scale(amax: Tensor) -> Tensor:
    """A block's scale from its largest finite magnitude: that magnitude, but at least
    ``FLT_MIN`` (the smallest normal float32) where it is positive. ``1 / amax`` of a
    subnormal maximum overflows to inf, which would turn every code of the block into the
    non-finite mark; a state decaying towards zero (an unused embedding row's m) gets there.
    The kernels do the same."""
    return torch.where((amax > 0) & (amax < FLT_MIN), FLT_MIN, amax)


def quantize_signed(x: Tensor) -> tuple[Tensor, Tensor]:
    """Signed companded 8-bit codes (int8, shaped like ``x``) and per-block scales (float32).

    The scale is the largest *finite* magnitude; a NaN or infinite value gets the code
    :data:`NONFINITE_CODE` (decoded as NaN), so it stays in its element and never
    spoils the scale of the other values of its block."""
    b = _blocks(x.float())
    mag = b.abs()
    scale = block_scale(torch.nan_to_num(mag, nan=0.0, posinf=0.0).amax(dim=-1))
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    # A finite value's code lies in [-127, 127]; a NaN or infinite one's is NaN or +-inf here
    # (inf * 0 is NaN where the block has no finite non-zero value), mapped to the mark.
    codes = mag.mul_(inv.unsqueeze(-1)).sqrt_().mul_(127.0).add_(0.5).floor_().mul_(b.sign())
    mark = float(NONFINITE_CODE)
    codes = codes.nan_to_num_(nan=mark, posinf=mark, neginf=mark).to(torch.int8)
    return _unblock(codes, x.shape), scale


_CODE_VALUES: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _code_values(device: torch.device) -> tuple[Tensor, Tensor]:
    """Every 8-bit code's value before its block's scale, indexed by the code's bits read as
    uint8: ``q |q|`` for signed codes (NaN for the mark), ``(q^2)^2`` for unsigned ones, as
    float32 computes them. Decoding by table lookup takes three passes where the formulas
    took up to eight (the tables are bit-identical to them)."""
    tables = _CODE_VALUES.get(device)
    if tables is None:
        q = torch.arange(256, dtype=torch.float32)
        signed = torch.where(q < 128, q, q - 256)
        signed = torch.where(signed == NONFINITE_CODE, float("nan"), signed * signed.abs())
        q2 = q * q
        tables = _CODE_VALUES[device] = (signed.to(device), (q2 * q2).to(device))
    return tables


def _lookup(table: Tensor, codes: Tensor) -> Tensor:
    index = codes.reshape(-1).view(torch.uint8).to(torch.int32)
    return torch.index_select(table, 0, index).view(codes.shape)


def dequantize_signed(codes: Tensor, scale: Tensor) -> Tensor:
    """float32 values of signed codes: ``scale * sign(q) * (q / 127)^2`` (NaN for -128)."""
    values = _blocks(_lookup(_code_values(codes.device)[0], codes))
    return _unblock(values.mul_((scale / 16129.0).unsqueeze(-1)), codes.shape)


def quantize_unsigned(x: Tensor) -> tuple[Tensor, Tensor]:
    """Unsigned companded 8-bit codes (uint8) of ``x >= 0`` and per-block scales (float32)."""
    b = torch.nan_to_num(_blocks(x.float()), nan=0.0, posinf=0.0, neginf=0.0)  # m carries the mark (mark_nonfinite)
    scale = block_scale(b.amax(dim=-1))
    # (x / s)^(1/4) as sqrt(sqrt(x) / sqrt(s)), as the kernels take it: they have sqrt(x) from the update
    inv = torch.where(scale > 0, 1.0 / scale.sqrt(), torch.zeros_like(scale))
    q = b.sqrt().mul_(inv.unsqueeze(-1)).sqrt_().mul_(255.0).add_(0.5).floor_()
    # A positive value never becomes 0: at least sign(b) = [b > 0] for the finite b >= 0 here
    # (one float pass: 7-9 us on 64K elements, where a comparison and its conversion took 74-82,
    # benchmarks/codec_ops.py).
    torch.maximum(q, b.sign(), out=q)
    return _unblock(q.to(torch.uint8), x.shape), scale


def dequantize_unsigned(codes: Tensor, scale: Tensor) -> Tensor:
    """float32 values of unsigned codes: ``scale * (q / 255)^4``."""
    values = _blocks(_lookup(_code_values(codes.device)[1], codes))
    return _unblock(values.mul_((scale / 4228250625.0).unsqueeze(-1)), codes.shape)


# ------------------------------------------------------------------ rounding
def _usable(generator: Optional[torch.Generator], device: torch.device) -> Optional[torch.Generator]:
    """``generator``, unless it is another device's or the step is traced (dynamo takes none)."""
    if generator is not None and (generator.device != device or torch.compiler.is_compiling()):
        return None
    return generator


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    """A tensor of integer ``dtype`` whose every bit (the sign bit included) is uniformly random.

    Drawn as 64-bit words over int64's full range, which torch's generators fill with one
    64-bit draw per word; an int32 draw over its full range costs a 64-bit draw per element
    (2.2-2.5x the time on the CPU, benchmarks/codec_ops.py), and ``random_()`` leaves the sign bit 0."""
    generator = _usable(generator, device)
    if torch.compiler.is_compiling():  # dynamo traces randint, not random_
        half = 2 ** (torch.iinfo(dtype).bits - 1)
        return torch.randint(-half, half, shape, dtype=dtype, device=device, generator=generator)
    numel = 1
    for s in shape:
        numel *= s
    words = -(-numel * torch.iinfo(dtype).bits // 64)
    bits = torch.empty(words, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    return bits.view(dtype)[:numel].view(shape)


def rounding_bits(shape: torch.Size, device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    """16 uniform random bits (int32) per element and half, from one draw of 32: shape
    ``(2, *shape)``, the low halves then the high ones, for the stochastic rounding of two
    buffers each (as the fused CPU kernel shares them)."""
    bits = random_bits(tuple(shape), torch.int32, device, generator)
    halves = torch.empty((2, *shape), dtype=torch.int32, device=device)
    torch.bitwise_and(bits, 0xFFFF, out=halves[0])
    torch.bitwise_right_shift(bits, 16, out=halves[1])
    halves[1].bitwise_and_(0xFFFF)
    return halves


def round_to_bf16_(x: Tensor, noise: Tensor) -> Tensor:
    """Stochastically round float32 ``x`` (contiguous) in place to values bfloat16 holds
    exactly, by the random bits ``noise`` (int32 in ``[0, 2^16)``, broadcast to ``x``), as
    :func:`round_to_bf16` does; converting the result to bfloat16 is then exact."""
    # Every NaN first becomes the canonical quiet NaN (0x7fc00000), which the addition and
    # truncation keep a NaN; a NaN whose payload fills the top mantissa bits (as the NaNs of
    # clamp/maximum do) would carry into the sign, and one with only low payload bits would
    # truncate to inf. Infinities stay. One pass: an isnan mask and a masked fill took 7-9x as
    # long (benchmarks/codec_ops.py).
    x.nan_to_num_(nan=float("nan"), posinf=float("inf"), neginf=float("-inf"))
    x.view(torch.int32).add_(noise).bitwise_and_(-65536)
    return x


def round_to_bf16(
    x: Tensor, stochastic: bool = True, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None
) -> Tensor:
    """float32 -> bfloat16, stochastically rounded: ``P(up) = (x - down) / (up - down)``.

    Adding 16 random bits below bfloat16's last mantissa bit and truncating does it (``noise``:
    those bits, int32 in ``[0, 2^16)``, drawn here if not given); NaNs stay NaN.
    """
    if not stochastic:
        return x.float().to(torch.bfloat16)  # through float32, as the stochastic branch
    if noise is None:
        noise = random_bits(tuple(x.shape), torch.int16, x.device, generator).to(torch.int32).bitwise_and_(0xFFFF)
    work = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return round_to_bf16_(work, noise).to(torch.bfloat16)


# ------------------------------------------------------------------ formats
def is_dtensor(p: Tensor) -> bool:
    return hasattr(p, "device_mesh") and hasattr(p, "to_local")


def int8_eligible(p: Tensor) -> bool:
    """Large enough, rows wide enough, and (for DTensors) sharded by rows so that blocks never
    straddle ranks."""
    if p.numel() < MIN_INT8_NUMEL or p.dtype == torch.float64 or block_layout(p.shape)[1] < MIN_INT8_COLS:
        return False
    if is_dtensor(p):
        from torch.distributed.tensor.placement_types import Replicate, Shard

        ok = p.ndim >= 2 and all(isinstance(pl, Replicate) or (isinstance(pl, Shard) and pl.dim == 0) for pl in p.placements)
        return ok
    return True


def full_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The "float32" format's dtype: float32 for low-precision parameters, else their own."""
    return torch.float32 if param_dtype in LOW_PRECISION else param_dtype


def state_bytes(state: dict) -> int:
    """Bytes held by one parameter's optimizer state (every tensor, the step included)."""
    total = 0
    for value in state.values():
        if torch.is_tensor(value):
            local = value.to_local() if is_dtensor(value) else value
            total += local.numel() * local.element_size()
    return total


def state_bytes_per_param(opt: torch.optim.Optimizer) -> float:
    """Bytes of ``opt``'s state (every tensor, step counters included) per parameter; works
    for any torch optimizer."""
    n_params = sum(p.numel() for group in opt.param_groups for p in group["params"])
    return sum(state_bytes(s) for s in opt.state.values()) / max(1, n_params)


# ------------------------------------------------------- buffers
def scales_like(p: Tensor) -> Tensor:
    """Zero scales for ``p``: a DTensor sharded by rows when ``p`` is one."""
    if is_dtensor(p):
        from torch.distributed.tensor import DTensor

        local = p.to_local()
        g_rows, g_nb = scale_shape(p.shape)  # the local shard holds some of the rows, whole
        return DTensor.from_local(
            torch.zeros(local.shape[0], g_nb, dtype=torch.float32, device=local.device),
            p.device_mesh, p.placements, run_check=False, shape=torch.Size((g_rows, g_nb)), stride=(g_nb, 1),
        )  # fmt: skip
    return torch.zeros(scale_shape(p.shape), dtype=torch.float32, device=p.device)


def mark_nonfinite(m: Tensor, n: Tensor) -> Tensor:
    """``m`` with NaN where ``n`` is not finite: n's 8-bit code cannot say NaN or inf, so an
    int8 state keeps a non-finite element's mark in m (whose code -128 decodes as NaN). The
    element then stays non-finite, as with float32 state, and its block is unharmed.

    As ``m + (n - n)``: ``n - n`` is 0 for a finite n and NaN otherwise (the sum turns a -0 of
    m into +0, which the codes do not tell apart)."""
    return m + (n - n)


def write_param(
    p: Tensor, value: Tensor, mode: str, comp: Optional[Tensor], generator: Optional[torch.Generator] = None
) -> None:
    """Store float32 ``value`` into low-precision ``p`` by rounding ``mode``."""
    if p.dtype not in LOW_PRECISION or mode == "nearest":
        p.copy_(value)
    elif mode == "stochastic":
        p.copy_(round_to_bf16(value, generator=generator))
    else:  # kahan: keep what rounding lost
        p.copy_(value)
        comp.copy_(value - p.float())
