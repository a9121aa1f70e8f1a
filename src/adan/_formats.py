"""State formats: how a parameter's Adan state is stored, one class each, in one registry.

A format says which buffers a parameter's state holds, in which dtypes and shapes, how
they are decoded to full precision before the update and encoded after it, and which
code the kernels know it by. Nothing else in the package looks at a buffer's dtype to
learn its format: creation (:meth:`StateFormat.new_buffers`), loading and conversion
(:func:`conform_state`), checkpoint validation (:meth:`StateFormat.expected`),
``restart_opt`` and the path dispatch ask the format. The update itself is written once
per backend and never changes with the format (see :mod:`adan._compact` for the codecs).

Adding a format is one class here plus one :func:`register` call (and its branch in the
kernels that should run it fused; elsewhere it runs on the torch paths, through
``decode``/``encode``).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Optional

import torch
from torch import Tensor

from adan import _compact
from adan._codes import Format
from adan._compact import LOW_PRECISION, full_dtype

__all__ = ["StateFormat", "Decoded", "FORMATS", "register", "get", "format_for", "format_of", "conform_state", "MOMENTS"]

MOMENTS = ("exp_avg", "exp_avg_diff", "exp_avg_sq")


def _zeros_like(p: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


class Decoded(NamedTuple):
    """A batch of states (whole parameters' or slices of them) decoded for one torch-ops
    update: ``values`` = the lists of m, v, n and previous-gradient buffers in full
    precision, which the update overwrites in place (they are the state itself where it is
    stored in full precision); ``scratch``: the one buffer they are views of, where the
    format decodes into one."""

    values: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]
    scratch: Optional[Tensor] = None


class StateFormat:
    """One way of storing m, v, n and the previous gradient."""

    name: ClassVar[str]
    code: ClassVar[Format]
    compact: ClassVar[bool]  # updated by the compact kernels (decode, update, encode)
    marker: ClassVar[Optional[torch.dtype]] = None  # the exp_avg dtype that identifies a compact format
    scale_keys: ClassVar[dict[str, str]] = {}  # moment -> its scale buffer, if any

    def eligible(self, p: Tensor) -> bool:
        """Whether ``p`` can keep its state in this format (else it keeps float32 state)."""
        return p.dtype != torch.float64

    def moment_dtypes(self, p: Tensor) -> dict[str, torch.dtype]:
        raise NotImplementedError

    def neg_dtype(self, p: Tensor) -> torch.dtype:
        """The dtype of the previous-gradient buffer ``neg_pre_grad``."""
        return torch.bfloat16

    def matches(self, exp_avg: Tensor) -> bool:
        """Whether a state whose ``exp_avg`` is this tensor is stored in this format."""
        return exp_avg.dtype == self.marker

    def new_buffers(self, p: Tensor) -> dict[str, Tensor]:
        """Zero m, v and n (and their scales) for ``p``."""
        return {key: _zeros_like(p, dtype) for key, dtype in self.moment_dtypes(p).items()}

    def new_neg(self, p: Tensor) -> Tensor:
        return _zeros_like(p, self.neg_dtype(p))

    def expected(self, p: Tensor) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Every buffer's (dtype, shape) for ``p``: what a loaded state must hold."""
        shape = tuple(p.shape)
        return {key: (dtype, shape) for key, dtype in self.moment_dtypes(p).items()}

    def decode(self, state: dict, key: str) -> Tensor:
        """Buffer ``key`` of ``state`` as a full-precision tensor."""
        value = state[key]
        return value.float() if value.dtype in LOW_PRECISION else value

    def encode(self, state: dict, key: str, value: Tensor, stochastic: bool = True,
               generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> None:  # fmt: skip
        """Write full-precision ``value`` into buffer ``key`` of ``state`` (``noise``: its
        rounding bits, where the format rounds stochastically and the caller drew them)."""
        state[key].copy_(value)

    def decode_neg(self, neg: Tensor) -> Tensor:
        """The previous-gradient buffer as a full-precision tensor."""
        return neg.float() if neg.dtype in LOW_PRECISION else neg

    def encode_neg(self, neg: Tensor, value: Tensor, generator: Optional[torch.Generator] = None,
                   noise: Optional[Tensor] = None) -> None:  # fmt: skip
        """Write ``value`` into the previous-gradient buffer (stochastically rounded if bfloat16)."""
        neg.copy_(_compact.round_to_bf16(value, True, generator, noise) if neg.dtype == torch.bfloat16 else value)

    def decode_all(self, states: list[dict], negs: list[Tensor]) -> Decoded:
        """m, v, n (of each of ``states``) and the previous gradients ``negs``, for one
        torch-ops update of the batch; a state at a time, unless the format does better."""
        values = [[self.decode(state, k) for state in states] for k in MOMENTS]
        return Decoded((*values, [self.decode_neg(neg) for neg in negs]))

    def encode_all(self, states: list[dict], negs: list[Tensor], work: Decoded, generator: Optional[torch.Generator] = None) -> None:
        """Write the updated ``work`` (from :meth:`decode_all`) back into ``states`` and ``negs``."""
        for i, (state, neg) in enumerate(zip(states, negs)):
            m, v, n, g_neg = (values[i] for values in work.values)
            m = self.mark_nonfinite(m, n)
            for key, value in zip(MOMENTS, (m, v, n)):
                self.encode(state, key, value, generator=generator)
            self.encode_neg(neg, g_neg, generator)

    def scales(self, state: dict) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        """The scale buffers of m, v and n, for the kernels (``None`` if the format has none)."""
        return None

    def mark_nonfinite(self, m: Tensor, n: Tensor) -> Tensor:
        """``m`` before encoding: a format whose n cannot hold NaN/inf marks the element in m."""
        return m

    def bytes_per_param(self, param_dtype: torch.dtype) -> float:
        """Bytes of m, v, n and the previous gradient per parameter (scales included)."""
        probe = torch.empty(1024, 4096, dtype=param_dtype, device="meta")
        buffers = {**self.new_buffers(probe), "neg_pre_grad": self.new_neg(probe)}
        return sum(b.numel() * b.element_size() for b in buffers.values()) / probe.numel()

    def __repr__(self) -> str:
        return f"<state format {self.name!r}>"


class Float32(StateFormat):
    """Full precision: float32 (float64 for float64 parameters). 16 bytes per parameter."""

    name, code, compact = "float32", Format.F32, False

    def eligible(self, p: Tensor) -> bool:
        return True

    def moment_dtypes(self, p: Tensor) -> dict[str, torch.dtype]:
        return dict.fromkeys(MOMENTS, full_dtype(p.dtype))

    def neg_dtype(self, p: Tensor) -> torch.dtype:
        return full_dtype(p.dtype)

    def matches(self, exp_avg: Tensor) -> bool:  # asked after the formats with a marker dtype
        return exp_avg.is_floating_point() or exp_avg.is_complex()


class BFloat16(StateFormat):
    """All four buffers in bfloat16, stochastically rounded. 8 bytes per parameter."""

    name, code, compact, marker = "bfloat16", Format.BF16, True, torch.bfloat16

    def moment_dtypes(self, p: Tensor) -> dict[str, torch.dtype]:
        return dict.fromkeys(MOMENTS, torch.bfloat16)

    def encode(self, state, key, value, stochastic=True, generator=None, noise=None) -> None:
        state[key].copy_(_compact.round_to_bf16(value, stochastic, generator, noise))

    # The torch-ops update decodes a batch's four buffers into one float32 scratch laid out
    # [[m, n], [v, g']] (each row the batch's buffers end to end) and rounds it with one set
    # of in-place ops: the low halves of one 32-bit draw per element round m and n, the high
    # halves v and g'. Copies in and out are one foreach op per buffer.
    def decode_all(self, states: list[dict], negs: list[Tensor]) -> Decoded:
        total = sum(neg.numel() for neg in negs)
        scratch = torch.empty((2, 2, total), dtype=torch.float32, device=negs[0].device)
        # views shaped like the buffers, end to end, made in one C++ loop (a Python loop of
        # .view calls cost 13-15% of a step on a thousand small tensors, with the slice generator)
        m32, n32, v32, neg32 = (torch._utils._unflatten_dense_tensors(row, negs) for row in scratch.view(4, -1))
        for dst, src in zip((m32, v32, n32), MOMENTS):
            torch._foreach_copy_(dst, [state[src] for state in states])
        torch._foreach_copy_(neg32, negs)
        return Decoded((m32, v32, n32, neg32), scratch)

    def encode_all(self, states: list[dict], negs: list[Tensor], work: Decoded, generator: Optional[torch.Generator] = None) -> None:
        scratch = work.scratch
        noise = _compact.rounding_bits(scratch.shape[2:], scratch.device, generator)
        _compact.round_to_bf16_(scratch, noise.unsqueeze(1))
        m32, v32, n32, neg32 = work.values
        for src, key in zip((m32, v32, n32), MOMENTS):
            torch._foreach_copy_([state[key] for state in states], src)
        torch._foreach_copy_(negs, neg32)


class Int8(StateFormat):
    """m and v as signed companded 8-bit codes, n as unsigned ones, each with a float32 scale
    per block; the previous gradient in bfloat16. About 5.05 bytes per parameter."""

    name, code, compact, marker = "int8", Format.INT8, True, torch.int8
    scale_keys = {"exp_avg": "exp_avg_scale", "exp_avg_diff": "exp_avg_diff_scale", "exp_avg_sq": "exp_avg_sq_scale"}

    def eligible(self, p: Tensor) -> bool:
        return _compact.int8_eligible(p)

    def moment_dtypes(self, p: Tensor) -> dict[str, torch.dtype]:
        return {"exp_avg": torch.int8, "exp_avg_diff": torch.int8, "exp_avg_sq": torch.uint8}

    def new_buffers(self, p: Tensor) -> dict[str, Tensor]:
        out = {}
        for key, dtype in self.moment_dtypes(p).items():
            out[key] = _zeros_like(p, dtype)
            out[self.scale_keys[key]] = _compact.scales_like(p)
        return out

    def expected(self, p: Tensor) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        out = super().expected(p)
        out.update({key: (torch.float32, _compact.scale_shape(p.shape)) for key in self.scale_keys.values()})
        return out

    def decode(self, state, key) -> Tensor:
        scale = state[self.scale_keys[key]]
        if key == "exp_avg_sq":
            return _compact.dequantize_unsigned(state[key], scale)
        return _compact.dequantize_signed(state[key], scale)

    def encode(self, state, key, value, stochastic=True, generator=None, noise=None) -> None:
        quantize = _compact.quantize_unsigned if key == "exp_avg_sq" else _compact.quantize_signed
        codes, scale = quantize(value)
        state[key].copy_(codes)
        state[self.scale_keys[key]].copy_(scale)

    def scales(self, state: dict) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        if self.scale_keys["exp_avg"] not in state:
            return None
        return tuple(state[self.scale_keys[k]] for k in MOMENTS)

    def mark_nonfinite(self, m: Tensor, n: Tensor) -> Tensor:
        return _compact.mark_nonfinite(m, n)


FORMATS: dict[str, StateFormat] = {}
_LOOKUP: list[StateFormat] = []  # the order format_of asks them in


def register(fmt: StateFormat) -> StateFormat:
    """Make ``fmt`` a ``state_dtype`` choice (names and codes are unique)."""
    if fmt.name in FORMATS or any(f.code == fmt.code for f in FORMATS.values()):
        raise ValueError(f"a state format named {fmt.name!r} or coded {int(fmt.code)} is already registered")
    FORMATS[fmt.name] = fmt
    _LOOKUP[:] = sorted(FORMATS.values(), key=lambda f: f.marker is None)  # exact dtypes first
    return fmt


for _fmt in (Float32(), BFloat16(), Int8()):
    register(_fmt)
FULL = FORMATS["float32"]
SCALE_KEYS = {k for f in FORMATS.values() for k in f.scale_keys.values()}  # every format's scale buffers
COMPACT_DTYPES = frozenset(f.marker for f in FORMATS.values() if f.compact)  # for the per-step dispatch


def get(name: str) -> StateFormat:
    return FORMATS[name]


def check_options(state_dtype: object, param_update: object) -> None:
    if state_dtype not in FORMATS:
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} (choose one of {', '.join(map(repr, FORMATS))})")
    if param_update not in _compact.PARAM_UPDATES:
        choices = ", ".join(map(repr, _compact.PARAM_UPDATES))
        raise ValueError(f"Invalid param_update: {param_update!r} (choose one of {choices})")


def format_for(p: Tensor, state_dtype: str) -> StateFormat:
    """The format ``p``'s new state takes under ``state_dtype`` (float32 where ineligible)."""
    fmt = FORMATS[state_dtype]
    return fmt if fmt.eligible(p) else FULL


def format_of(exp_avg: Tensor) -> StateFormat:
    """The format a parameter's state is stored in, read from its ``exp_avg`` buffer."""
    for fmt in _LOOKUP:
        if fmt.matches(exp_avg):
            return fmt
    raise ValueError(f"no state format stores exp_avg as {exp_avg.dtype}")


def is_compact(p: Tensor, m: Tensor, param_update: str) -> bool:
    """State in a compact format, or a low-precision parameter not rounded to nearest."""
    return m.dtype in COMPACT_DTYPES or (param_update != "nearest" and p.dtype in LOW_PRECISION)


def conform_state(p: Tensor, saved: dict, fmt: StateFormat, comp: bool) -> dict[str, Tensor]:
    """The buffers of a saved state (uncast tensors) in format ``fmt`` for parameter ``p``.

    The same format is copied; another one is decoded and re-encoded, so a checkpoint
    saved with one ``state_dtype`` loads into an optimizer with another.
    """
    out = fmt.new_buffers(p)
    source = format_of(saved["exp_avg"])
    if source is fmt and (fmt is not FULL or saved["exp_avg"].dtype == out["exp_avg"].dtype):
        for key, buf in out.items():
            buf.copy_(saved[key])
    else:
        if _compact.is_dtensor(p):
            raise NotImplementedError(
                "loading a sharded (DTensor) checkpoint into another state_dtype is not supported; "
                "load it with the state_dtype it was saved with"
            )
        for key in MOMENTS:
            fmt.encode(out, key, source.decode(saved, key), stochastic=False)
    if torch.is_tensor(saved.get("neg_pre_grad")):
        out["neg_pre_grad"] = fmt.new_neg(p).copy_(saved["neg_pre_grad"])
    if comp:
        out[_compact.COMP_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if torch.is_tensor(saved.get(_compact.COMP_KEY)):
            out[_compact.COMP_KEY].copy_(saved[_compact.COMP_KEY])
    return out
