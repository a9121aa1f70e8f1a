r"""Compact optimizer state and low-precision parameter updates.

Adan keeps four buffers per parameter (m, v, n and the previous gradient): 16 bytes per
float32 parameter, twice AdamW's. ``Adan(state_dtype=...)`` stores them in one of:

``"float32"`` (default)
    full precision: float32 (float64 for float64 parameters). 16 bytes per parameter.
``"bfloat16"``
    all four buffers in bfloat16, written with *stochastic rounding* (a value between two
    bfloat16 neighbours becomes either, with probabilities that make the rounding
    unbiased), so that updates smaller than half a bfloat16 step are kept on average
    instead of lost. 8 bytes per parameter.
``"int8"``
    m and v as signed 8-bit codes, n as unsigned 8-bit codes, each with one float32 scale
    per block of :data:`BLOCK` values; the previous gradient in bfloat16 (stochastically
    rounded). About 5.05 bytes per parameter. Tensors with fewer than :data:`MIN_INT8_NUMEL`
    elements keep float32 state, as bitsandbytes and torchao do, and so do tensors whose rows
    (see below) are narrower than :data:`MIN_INT8_COLS`: a (4096, 1) column would otherwise
    pay a scale per element.

The update itself is written once per backend (``_adan_lists`` in :mod:`adan.optimizer`
for the torch paths, ``kernels/adan_cpu_compact.c`` for the fused CPU kernel,
``kernels/adan_triton_compact.py`` for CUDA): a format only says how the buffers are
decoded to float32 before it and encoded after it.

**Block layout.** A tensor is viewed as ``rows x cols`` with ``rows = shape[0]`` (1 for 0-
and 1-D tensors) and ``cols = numel / rows``; a block is up to ``BLOCK`` consecutive
columns of one row, and the scales have shape ``(rows, ceil(cols / BLOCK))``. Rows are what
FSDP2 shards, so the codes and the scales of a sharded parameter are sharded alike.

**Code maps** (companding; no lookup table, one ``sqrt`` to encode). With ``s`` the block's
largest magnitude::

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

from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "BLOCK",
    "MIN_INT8_NUMEL",
    "STATE_DTYPES",
    "PARAM_UPDATES",
    "block_layout",
    "scale_shape",
    "quantize_signed",
    "dequantize_signed",
    "quantize_unsigned",
    "dequantize_unsigned",
    "round_to_bf16",
    "state_bytes",
    "state_bytes_per_param",
]

BLOCK = 256
NONFINITE_CODE = -128  # m and v codes run over [-127, 127]; -128 marks a NaN/inf element
MIN_INT8_NUMEL = 4096
MIN_INT8_COLS = 16  # narrower rows would pay more for their scales than they save
STATE_DTYPES = ("float32", "bfloat16", "int8")
PARAM_UPDATES = ("nearest", "stochastic", "kahan")
LOW_PRECISION = (torch.bfloat16, torch.float16)

SCALE_KEYS = {"exp_avg": "exp_avg_scale", "exp_avg_diff": "exp_avg_diff_scale", "exp_avg_sq": "exp_avg_sq_scale"}
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
def quantize_signed(x: Tensor) -> tuple[Tensor, Tensor]:
    """Signed companded 8-bit codes (int8, shaped like ``x``) and per-block scales (float32).

    The scale is the largest *finite* magnitude; a NaN or infinite value gets the code
    :data:`NONFINITE_CODE` (decoded as NaN), so it stays in its element and never
    spoils the scale of the other values of its block."""
    b = _blocks(x.float())
    finite = b.isfinite()
    mag = torch.where(finite, b.abs(), 0.0)
    scale = mag.amax(dim=-1)
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    mag = torch.floor((mag * inv.unsqueeze(-1)).sqrt() * 127.0 + 0.5)
    codes = torch.where(finite, mag * b.sign(), float(NONFINITE_CODE)).to(torch.int8)
    return _unblock(codes, x.shape), scale


def dequantize_signed(codes: Tensor, scale: Tensor) -> Tensor:
    """float32 values of signed codes: ``scale * sign(q) * (q / 127)^2`` (NaN for -128)."""
    q = _blocks(codes.float())
    values = q * q.abs() * (scale / 16129.0).unsqueeze(-1)
    values = torch.where(q == NONFINITE_CODE, float("nan"), values)
    return _unblock(values, codes.shape)


def quantize_unsigned(x: Tensor) -> tuple[Tensor, Tensor]:
    """Unsigned companded 8-bit codes (uint8) of ``x >= 0`` and per-block scales (float32)."""
    b = _blocks(x.float())
    b = torch.where(b.isfinite(), b, 0.0)  # see quantize_signed: m carries the mark (mark_nonfinite)
    scale = b.amax(dim=-1)
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.floor((b * inv.unsqueeze(-1)).sqrt().sqrt() * 255.0 + 0.5)
    q = torch.maximum(q, (b > 0).float())  # a positive value never becomes 0
    return _unblock(q.to(torch.uint8), x.shape), scale


def dequantize_unsigned(codes: Tensor, scale: Tensor) -> Tensor:
    """float32 values of unsigned codes: ``scale * (q / 255)^4``."""
    q = _blocks(codes.float())
    q2 = q * q
    return _unblock(q2 * q2 * (scale / 4228250625.0).unsqueeze(-1), codes.shape)


# ------------------------------------------------------------------ rounding
def round_to_bf16(x: Tensor, stochastic: bool = True, generator: Optional[torch.Generator] = None) -> Tensor:
    """float32 -> bfloat16, stochastically rounded: ``P(up) = (x - down) / (up - down)``.

    Adding 16 random bits below bfloat16's last mantissa bit and truncating does it;
    NaNs stay NaN.
    """
    x = x.float()
    if not stochastic:
        return x.to(torch.bfloat16)
    x = x.contiguous()
    if generator is not None and (generator.device != x.device or torch.compiler.is_compiling()):
        generator = None  # another device than the generator's, or traced (dynamo takes no generator)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    rounded = (x.view(torch.int32) + noise).bitwise_and_(-65536).view(torch.float32)
    return torch.where(torch.isnan(x), x, rounded).to(torch.bfloat16)


# ------------------------------------------------------------------ formats
def check_options(state_dtype: object, param_update: object) -> None:
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} (choose one of {', '.join(map(repr, STATE_DTYPES))})")
    if param_update not in PARAM_UPDATES:
        raise ValueError(f"Invalid param_update: {param_update!r} (choose one of {', '.join(map(repr, PARAM_UPDATES))})")


def _is_dtensor(p: Tensor) -> bool:
    return hasattr(p, "device_mesh") and hasattr(p, "to_local")


def int8_eligible(p: Tensor) -> bool:
    """Large enough, rows wide enough, and (for DTensors) sharded by rows so that blocks never
    straddle ranks."""
    if p.numel() < MIN_INT8_NUMEL or p.dtype == torch.float64 or block_layout(p.shape)[1] < MIN_INT8_COLS:
        return False
    if _is_dtensor(p):
        from torch.distributed.tensor.placement_types import Replicate, Shard

        ok = p.ndim >= 2 and all(isinstance(pl, Replicate) or (isinstance(pl, Shard) and pl.dim == 0) for pl in p.placements)
        return ok
    return True


def format_for(p: Tensor, state_dtype: str) -> str:
    """The format of ``p``'s state: ``"float32"``, ``"bfloat16"`` or ``"int8"``."""
    if p.dtype == torch.float64:
        return "float32"  # float64 parameters keep float64 state
    if state_dtype == "int8" and not int8_eligible(p):
        return "float32"
    return state_dtype


def full_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The "float32" format's dtype: float32 for low-precision parameters, else their own."""
    return torch.float32 if param_dtype in LOW_PRECISION else param_dtype


def state_format(exp_avg: Tensor) -> str:
    """The format a state is stored in, read from its ``exp_avg`` buffer."""
    if exp_avg.dtype == torch.int8:
        return "int8"
    if exp_avg.dtype == torch.bfloat16:
        return "bfloat16"
    return "float32"


def state_bytes(state: dict) -> int:
    """Bytes held by one parameter's optimizer state (every tensor, the step included)."""
    total = 0
    for value in state.values():
        if torch.is_tensor(value):
            local = value.to_local() if _is_dtensor(value) else value
            total += local.numel() * local.element_size()
    return total


def state_bytes_per_param(opt: torch.optim.Optimizer) -> float:
    """Bytes of ``opt``'s state (every tensor, step counters included) per parameter; works
    for any torch optimizer."""
    n_params = sum(p.numel() for group in opt.param_groups for p in group["params"])
    return sum(state_bytes(s) for s in opt.state.values()) / max(1, n_params)


# ------------------------------------------------------- encode / decode state
def _zeros_like_local(p: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


def _scales_like(p: Tensor) -> Tensor:
    """Zero scales for ``p``: a DTensor sharded by rows when ``p`` is one."""
    if _is_dtensor(p):
        from torch.distributed.tensor import DTensor

        local = p.to_local()
        g_rows, g_nb = scale_shape(p.shape)  # the local shard holds some of the rows, whole
        return DTensor.from_local(
            torch.zeros(local.shape[0], g_nb, dtype=torch.float32, device=local.device),
            p.device_mesh, p.placements, run_check=False, shape=torch.Size((g_rows, g_nb)), stride=(g_nb, 1),
        )  # fmt: skip
    return torch.zeros(scale_shape(p.shape), dtype=torch.float32, device=p.device)


def new_buffers(p: Tensor, fmt: str) -> dict[str, Tensor]:
    """Zero m, v and n for ``p`` in format ``fmt`` (scales included)."""
    if fmt == "int8":
        return {
            "exp_avg": _zeros_like_local(p, torch.int8),
            "exp_avg_scale": _scales_like(p),
            "exp_avg_diff": _zeros_like_local(p, torch.int8),
            "exp_avg_diff_scale": _scales_like(p),
            "exp_avg_sq": _zeros_like_local(p, torch.uint8),
            "exp_avg_sq_scale": _scales_like(p),
        }
    dtype = torch.bfloat16 if fmt == "bfloat16" else full_dtype(p.dtype)
    return {key: _zeros_like_local(p, dtype) for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq")}


def neg_dtype(p: Tensor, fmt: str) -> torch.dtype:
    """The dtype of the previous-gradient buffer: bfloat16 in the compact formats."""
    return full_dtype(p.dtype) if fmt == "float32" else torch.bfloat16


def decode(state: dict, key: str) -> Optional[Tensor]:
    """Buffer ``key`` of a state, as a full-precision tensor (``None`` if absent)."""
    value = state.get(key)
    if value is None:
        return None
    if value.dtype == torch.int8:
        return dequantize_signed(value, state[SCALE_KEYS[key]])
    if value.dtype == torch.uint8:
        return dequantize_unsigned(value, state[SCALE_KEYS[key]])
    return value.float() if value.dtype in LOW_PRECISION else value


def mark_nonfinite(m: Tensor, n: Tensor) -> Tensor:
    """``m`` with NaN where ``n`` is not finite: n's 8-bit code cannot say NaN or inf, so an
    int8 state keeps a non-finite element's mark in m (whose code -128 decodes as NaN). The
    element then stays non-finite, as with float32 state, and its block is unharmed."""
    return torch.where(n.isfinite(), m, float("nan"))


def encode_into(
    state: dict, key: str, value: Tensor, stochastic: bool = True, generator: Optional[torch.Generator] = None
) -> None:
    """Write full-precision ``value`` into buffer ``key`` of ``state``, in its format."""
    target = state[key]
    if target.dtype == torch.int8:
        codes, scale = quantize_signed(value)
        target.copy_(codes)
        state[SCALE_KEYS[key]].copy_(scale)
    elif target.dtype == torch.uint8:
        codes, scale = quantize_unsigned(value)
        target.copy_(codes)
        state[SCALE_KEYS[key]].copy_(scale)
    elif target.dtype == torch.bfloat16:
        target.copy_(round_to_bf16(value, stochastic, generator))
    else:
        target.copy_(value)


def conform_state(p: Tensor, saved: dict, fmt: str, comp: bool) -> dict[str, Tensor]:
    """The buffers of a saved state (uncast tensors) in format ``fmt`` for parameter ``p``.

    The same format is copied; another one is decoded and re-encoded, so a checkpoint
    saved with one ``state_dtype`` loads into an optimizer with another.
    """
    out = new_buffers(p, fmt)
    same = state_format(saved["exp_avg"]) == fmt and (fmt != "float32" or saved["exp_avg"].dtype == out["exp_avg"].dtype)
    if same:
        for key, buf in out.items():
            buf.copy_(saved[key])
    else:
        if _is_dtensor(p):
            raise NotImplementedError(
                "loading a sharded (DTensor) checkpoint into another state_dtype is not supported; "
                "load it with the state_dtype it was saved with"
            )
        for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq"):
            encode_into(out, key, decode(saved, key), stochastic=False)
    if torch.is_tensor(saved.get("neg_pre_grad")):
        out["neg_pre_grad"] = _zeros_like_local(p, neg_dtype(p, fmt)).copy_(saved["neg_pre_grad"])
    if comp:
        out[COMP_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if torch.is_tensor(saved.get(COMP_KEY)):
            out[COMP_KEY].copy_(saved[COMP_KEY])
    return out


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


# ------------------------------------------------- which tensors are compact
COMPACT_STATE = {torch.int8, torch.bfloat16}  # exp_avg dtypes of the compact formats


def is_compact(p: Tensor, m: Tensor, param_update: str) -> bool:
    """State in a compact format, or a low-precision parameter not rounded to nearest."""
    return m.dtype in COMPACT_STATE or (param_update != "nearest" and p.dtype in LOW_PRECISION)


class TensorLists(NamedTuple):
    """The per-tensor lists of one update, by name, in one buffer order (m, v, n), as the
    kernels take them. ``state_scales`` (int8 state) and ``param_comps`` (Kahan) may be
    ``None``, or hold ``None`` entries."""

    params: list
    grads: list
    exp_avgs: list
    exp_avg_diffs: list
    exp_avg_sqs: list
    neg_pre_grads: list
    state_steps: list
    state_scales: Optional[list] = None
    param_comps: Optional[list] = None

    @property
    def dense(self) -> tuple[list, list, list, list, list, list, list]:
        """The seven lists every path has (the optional two left out)."""
        return self[:7]

    def select(self, keep: list[bool]) -> "TensorLists":
        return TensorLists(*(None if lst is None else [t for t, k in zip(lst, keep) if k] for lst in self))

    def split_compact(self, param_update: str) -> tuple["TensorLists", "TensorLists"]:
        """(the tensors that take the compact update, the others). Each tensor is checked
        only when some state is compact or parameters are rounded otherwise: this runs
        every step."""
        if param_update == "nearest" and COMPACT_STATE.isdisjoint({m.dtype for m in self.exp_avgs}):
            return TensorLists(*([] if lst is not None else None for lst in self)), self
        compact = [is_compact(p, m, param_update) for p, m in zip(self.params, self.exp_avgs)]
        return self.select(compact), self.select([not c for c in compact])
