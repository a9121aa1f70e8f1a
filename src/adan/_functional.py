r"""Functional Adan: :func:`adan` and the paths behind it.

The layout follows ``torch/optim/adamw.py``: :func:`adan` dispatches to
``_single_tensor_adan`` (a per-tensor loop of in-place ops), ``_multi_tensor_adan``
(``torch._foreach_*`` over device/dtype buckets) or ``_fused_adan`` (one kernel pass,
:mod:`adan._fused`). All take the tensors by name (:class:`adan._lists.TensorLists`), the
hyper-parameters (:class:`adan._maths.HParams`) and the options of the step, and implement the
same update (code convention, see :mod:`adan.reference` for the paper's)::

    g     = clip * grad                   (-clip * grad with maximize=True)
    d     = g - g'                        (g' = g at the first step)
    m     = b1 m + (1 - b1) g             exp_avg
    v     = b2 v + (1 - b2) d             exp_avg_diff
    n     = b3 n + (1 - b3) (g + b2 d)^2  exp_avg_sq
    denom = sqrt(n) / sqrt(1 - b3^t) + eps
    p     = p - lr (m / (1 - b1^t) + b2 v / (1 - b2^t)) / denom
    p     = p / (1 + lr wd)               (no_prox=True: p (1 - lr wd) before the update)
    g'    = g                             stored as ``neg_pre_grad = -g``

:func:`prepare_update` checks an update and returns it as a launch that writes when
called; :meth:`Adan.step` prepares every group's before it runs any, so bad input raises
with every tensor unchanged. No path reads a tensor back to the host: the step count ``t``
lives in a tensor, the bias corrections are computed from it in float64 (tensor
arithmetic, or inside the kernel), and the global clipping factor stays a tensor. bfloat16/float16 parameters
keep float32 moments and are updated with float32 maths on every path.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from adan import _backends, _compact, _formats, _fused
from adan._checks import check_state_shapes
from adan._clip import _has_foreach_kernels
from adan._compact import LOW_PRECISION
from adan._formats import MOMENTS
from adan._lists import TensorLists
from adan._maths import HParams, bias_corrections

__all__ = ["adan", "LR"]

LR = Union[float, Tensor]


def _grad_scale(clip_coef: Optional[Tensor], maximize: bool) -> Union[Tensor, float, None]:
    """The factor the gradient is multiplied by: clipping and the sign of ``maximize``."""
    if clip_coef is None:
        return -1.0 if maximize else None
    return -clip_coef if maximize else clip_coef


def _scale_grads(grads: list[Tensor], scale: Union[Tensor, float], device: torch.device) -> list[Tensor]:
    """``scale * grad`` in each gradient's own dtype (a 0-d gradient would otherwise promote)."""
    if torch.is_tensor(scale):
        scale = scale.to(device)
    scaled = torch._foreach_mul(grads, scale)
    return [s if s.dtype == g.dtype else s.to(g.dtype) for s, g in zip(scaled, grads)]


def _step_coefficients(
    steps: list[Tensor], lr: LR, beta1: float, beta2: float, beta3: float
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Optional[list[bool]]]:
    """From (already incremented) step counts, in float64: ``lr / (1 - b1^t)``,
    ``lr b2 / (1 - b2^t)``, ``1 / sqrt(1 - b3^t)`` and ``keep = [t != 1]``; and which
    tensors are at their first step, where the counts are CPU tensors in eager mode (read
    from CPU memory, as torch.optim reads them; no device is synchronised), else ``None``."""
    t = torch.stack(steps).to(torch.float64)
    host = steps[0].device.type == "cpu" and not torch.compiler.is_compiling()
    fresh = (t == 1).tolist() if host else None
    return (*bias_corrections(t, lr, beta1, beta2, beta3), (t != 1).to(torch.float64)), fresh


# CPU tensors above a slice are updated slice by slice, so that the dozen passes of the
# non-fused update run on data that stays in the L2 caches: this many elements per thread
# (each op splits a slice among the threads). On 2 cores, at 2 threads, on step_time.py's large
# case, slices of 2^17 elements took 18-21% less time than slices of 2^16 with float32 and
# bfloat16 state, and 11% more with int8 state (docs/benchmarks.md).
_CHUNK_PER_THREAD = 1 << 16


def _chunk() -> int:
    """Elements per slice of the CPU update (a multiple of the int8 block)."""
    return _CHUNK_PER_THREAD * torch.get_num_threads()


def _sliced(t: Tensor) -> bool:
    """Whether ``t`` is updated slice by slice: a contiguous CPU tensor larger than a slice,
    outside a trace. A GPU would pay a kernel launch per op and slice (a 25M-parameter model:
    384 slices of a few dozen ops each, every step), and gains nothing from it."""
    # (a trace asks no thread count: dynamo does not take it)
    return t.device.type == "cpu" and not torch.compiler.is_compiling() and t.numel() > _chunk() and t.is_contiguous()


def _adan_lists(
    p: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    v: list[Tensor],
    n: list[Tensor],
    neg: list[Tensor],
    coefs: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    fresh: Optional[list[bool]],
    scale: Union[Tensor, float, None],
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    lr: LR,
    weight_decay: float,
    no_prox: bool,
) -> None:
    """The non-fused update on lists of tensors of one device and dtype, in place.

    ``coefs`` = (``lr / (1 - b1^t)``, ``lr b2 / (1 - b2^t)``, ``1 / sqrt(1 - b3^t)``,
    ``[t != 1]``), 1-D float64 tensors with one value per tensor. ``fresh`` says which
    tensors are at their first step, whose previous gradient is the current one (``None``:
    not known on the host, so the difference is multiplied by ``[t != 1]`` instead). The
    ``neg_pre_grad`` buffers carry
    ``d``, then ``(g + b2 d) / b2``, then the denominator, and finally ``-g``: apart
    from a scaled or upcast gradient, nothing is allocated.

    On the CPU every ``_foreach`` op is a loop over per-tensor ops, and a Python scalar
    costs a wrapped-tensor allocation per tensor there; 0-d tensors (``_c``) and the
    per-tensor-value overloads (``addcmul``/``addcdiv`` with a 1-D tensor) avoid it.
    """
    device = p[0].device
    cpu = device.type == "cpu" and not torch.compiler.is_compiling()
    _c = (lambda x: torch.tensor(x, dtype=torch.float64)) if cpu else (lambda x: x)
    step_size, step_size_diff, inv_bc3_sqrt, keep = coefs
    work = p
    if p[0].dtype != m[0].dtype:  # low-precision parameters: float32 maths and state
        g = [x.to(m[0].dtype) for x in g]
        work = [x.to(m[0].dtype) for x in p]
    if scale is not None:  # after the upcast: the clip factor multiplies in float32, as in the kernels
        g = _scale_grads(g, scale, device)
    if torch.is_tensor(lr):  # weight decay's 1 +- lr wd in float64, whatever the lr tensor's dtype
        lr = lr.to(dtype=torch.float64)
    if fresh is not None:  # g' = g at a tensor's first step
        for i in [i for i, f in enumerate(fresh) if f]:
            neg[i].copy_(g[i]).neg_()
    torch._foreach_add_(neg, g)  # d = g - g'
    if fresh is None:
        torch._foreach_mul_(neg, keep.to(device).unbind())
    torch._foreach_lerp_(m, g, 1 - beta1)
    torch._foreach_lerp_(v, neg, 1 - beta2)
    torch._foreach_mul_(n, _c(beta3))
    if beta2 >= 0.01:  # n += (1 - b3) (g + b2 d)^2, as (1 - b3) b2^2 (d + g / b2)^2: one pass fewer
        torch._foreach_add_(neg, g, alpha=1 / beta2)
        torch._foreach_addcmul_(n, neg, neg, value=(1 - beta3) * beta2 * beta2)
    else:  # tiny b2: 1 / b2 would overflow
        torch._foreach_mul_(neg, _c(beta2))
        torch._foreach_add_(neg, g)
        torch._foreach_addcmul_(n, neg, neg, value=1 - beta3)
    torch._foreach_copy_(neg, n)
    torch._foreach_sqrt_(neg)
    if cpu:  # neg * c3 as neg + (c3 - 1) * neg * 1, with per-tensor values
        torch._foreach_addcmul_(neg, neg, [_ONE] * len(neg), inv_bc3_sqrt - 1)
    else:
        torch._foreach_mul_(neg, inv_bc3_sqrt.to(device).unbind())
    torch._foreach_add_(neg, _c(eps))  # denom = sqrt(n) / sqrt(1 - b3^t) + eps
    if weight_decay != 0 and no_prox:
        torch._foreach_mul_(work, _c(1 - lr * weight_decay) if not torch.is_tensor(lr) else 1 - lr * weight_decay)
    if cpu and step_size.device.type == "cpu":
        # One value per tensor, read by the kernel from CPU memory: no temporaries.
        torch._foreach_addcdiv_(work, m, neg, -step_size)
        torch._foreach_addcdiv_(work, v, neg, -step_size_diff)
    else:  # step counts on the device (capturable) or traced: 0-d tensor scalars
        update = torch._foreach_mul(v, step_size_diff.to(device).unbind())
        torch._foreach_add_(update, torch._foreach_mul(m, step_size.to(device).unbind()))
        torch._foreach_div_(update, neg)
        torch._foreach_sub_(work, update)
    if weight_decay != 0 and not no_prox:
        torch._foreach_div_(work, _c(1 + lr * weight_decay) if not torch.is_tensor(lr) else 1 + lr * weight_decay)
    if work is not p:
        torch._foreach_copy_(p, work)
    torch._foreach_copy_(neg, g)
    torch._foreach_neg_(neg)


_ONE = torch.ones(())


def _increment(steps: list[Tensor]) -> None:
    """``steps += 1``; on the CPU with a 0-d tensor (a Python 1 costs an allocation per tensor)."""
    if steps[0].device.type == "cpu" and not torch.compiler.is_compiling():
        torch._foreach_add_(steps, [_ONE] * len(steps))
    else:
        torch._foreach_add_(steps, 1)


def _chunks(tensors: tuple[Tensor, ...]):
    """Equal slices of at most :func:`_chunk` elements of same-shaped tensors (whole if strided)."""
    if not all(map(_sliced, tensors)):
        yield tensors
        return
    numel, chunk = tensors[0].numel(), _chunk()
    flat = [t.view(-1) for t in tensors]
    for start in range(0, numel, chunk):
        yield tuple(f[start : start + chunk] for f in flat)


def _check_shapes(lists: TensorLists) -> None:
    named = (("grad", lists.grads), ("exp_avg", lists.exp_avgs), ("exp_avg_diff", lists.exp_avg_diffs),
             ("exp_avg_sq", lists.exp_avg_sqs), ("neg_pre_grad", lists.neg_pre_grads), ("param_comp", lists.param_comps))  # fmt: skip
    check_state_shapes(lists.params, named, lists.state_scales, _compact.scale_shape)


def _per_tensor(lists, coefs: tuple[Tensor, ...], fresh: Optional[list[bool]], indices, kwargs) -> None:
    """Update the tensors at ``indices`` one at a time (slice by slice on the CPU)."""
    for i in indices:
        tensor_coefs = tuple(c[i : i + 1] for c in coefs)
        tensor_fresh = None if fresh is None else [fresh[i]]
        for p, g, m, v, n, neg in _chunks(tuple(lst[i] for lst in lists)):
            _adan_lists([p], [g], [m], [v], [n], [neg], tensor_coefs, fresh=tensor_fresh, **kwargs)


def _row_chunks(rows: int, cols: int):
    """Slices ``(rows, cols)`` of about :func:`_chunk` elements of a ``rows x cols`` tensor
    (its block layout) that never split a block."""
    if rows > 1:
        step = max(1, _chunk() // cols)
        for r in range(0, rows, step):
            yield slice(r, r + step), slice(None)
    else:
        chunk = _chunk()  # a multiple of BLOCK
        for c in range(0, cols, chunk):
            yield slice(None), slice(c, c + chunk)


class _Piece(NamedTuple):
    """A whole compact tensor, or a slice of one, with its state: one unit of a batch."""

    index: int  # the tensor's position in its lists (coefficients, first step)
    p: Tensor
    g: Tensor
    m: Tensor
    v: Tensor
    n: Tensor
    neg: Tensor
    comp: Optional[Tensor]
    scales: Optional[tuple[Tensor, Tensor, Tensor]]


def _pieces(lists: TensorLists, i: int):
    """Tensor ``i`` of ``lists`` as pieces: whole, or slices that never split a block."""
    p, g, m, v, n, neg = (lst[i] for lst in lists.dense[:6])
    scales = lists.state_scales[i] if lists.state_scales is not None else None
    comp = lists.param_comps[i] if lists.param_comps is not None else None
    if not _sliced(p):
        yield _Piece(i, p, g, m, v, n, neg, comp, scales)
        return
    rows, cols = _compact.block_layout(p.shape)
    for r, c in _row_chunks(rows, cols):
        # the state is laid out like p (contiguous here); a gradient may be strided
        pv, mv, vv, nv, negv, compv = (None if t is None else t.view(rows, cols)[r, c] for t in (p, m, v, n, neg, comp))
        bc = c if c == slice(None) else slice(c.start // _compact.BLOCK, -(-c.stop // _compact.BLOCK))
        scale_views = None if scales is None else tuple(s[r, bc] for s in scales)
        yield _Piece(i, pv, g.reshape(rows, cols)[r, c], mv, vv, nv, negv, compv, scale_views)


# Elements per batch of the compact torch-ops update: on the CPU a slice's worth (the L2
# cache), elsewhere as many as keep the float32 scratch (16 bytes an element) at 256 MiB.
_DEVICE_BATCH = 1 << 24


def _compact_update(
    lists: TensorLists, param_update: str, generator, coefs: tuple[Tensor, ...], fresh: Optional[list[bool]], kwargs
) -> None:
    """The update for compact state or rounded parameters, in batches.

    Tensors (large CPU ones in slices) are gathered into batches of one state format and
    a slice's elements (:func:`_chunk`) on the CPU (:data:`_DEVICE_BATCH` elsewhere); each batch is
    decoded to float32, updated by ``_adan_lists`` (the one place the maths lives) and
    encoded back, so a thousand small tensors cost a few dozen ops, not a few dozen each.
    At a parameter's first step its previous gradient is the current one, exactly (the
    stored one may have been rounded). ``fresh``: which tensors are at their first step,
    when known on the host (else a tensor comparison decides).
    """
    kwargs = dict(kwargs)
    scale = kwargs.pop("scale")
    cpu = lists.params[0].device.type == "cpu" and not torch.compiler.is_compiling()
    limit = _chunk() if cpu else _DEVICE_BATCH
    filling: dict[_formats.StateFormat, tuple[list[_Piece], int]] = {}  # format -> (batch, its elements)
    for i in range(len(lists.params)):
        fmt = _formats.format_of(lists.exp_avgs[i])
        for piece in _pieces(lists, i):
            batch, size = filling.get(fmt, ([], 0))
            if batch and size + piece.p.numel() > limit:
                _compact_batch(fmt, batch, lists, coefs, fresh, scale, param_update, generator, kwargs)
                batch, size = [], 0
            batch.append(piece)
            filling[fmt] = (batch, size + piece.p.numel())
    for fmt, (batch, _) in filling.items():
        _compact_batch(fmt, batch, lists, coefs, fresh, scale, param_update, generator, kwargs)


def _compact_batch(fmt, batch: list[_Piece], lists, coefs, fresh, scale, param_update, generator, kwargs) -> None:
    """One batch of pieces of one format: decode (to float32 buffers the step may overwrite,
    or the float32 state itself), update, encode."""
    device = batch[0].p.device
    states = []
    for piece in batch:
        state = {"exp_avg": piece.m, "exp_avg_diff": piece.v, "exp_avg_sq": piece.n}
        if piece.scales is not None:
            state.update(zip((fmt.scale_keys[k] for k in MOMENTS), piece.scales))
        states.append(state)
    negs = [piece.neg for piece in batch]
    g32 = [pc.g.float() if pc.g.dtype != torch.float32 else pc.g for pc in batch]
    if scale is not None:
        g32 = _scale_grads(g32, scale, device)
    work = fmt.decode_all(states, negs)
    m32, v32, n32, neg32 = work.values
    for piece, g, neg in zip(batch, g32, neg32):  # g' = g at a tensor's first step
        first = fresh[piece.index] if fresh is not None else lists.state_steps[piece.index].to(device) == 1
        if first is True:
            neg.copy_(g).neg_()
        elif first is not False:  # a 0-d bool tensor (steps on the device, or traced)
            neg.copy_(torch.where(first, -g, neg))
    p32 = []
    for piece in batch:
        if piece.p.dtype in LOW_PRECISION:
            p32.append(piece.p.float() if piece.comp is None else piece.p.float() + piece.comp.float())
        else:
            p32.append(piece.p)  # float32 parameters are updated in place
    index = torch.tensor([piece.index for piece in batch])
    batch_coefs = tuple(c[index.to(c.device)] for c in coefs)
    _adan_lists(p32, g32, m32, v32, n32, neg32, batch_coefs, fresh=[False] * len(batch), scale=None, **kwargs)  # g' set above
    fmt.encode_all(states, negs, work, generator)
    for piece, value in zip(batch, p32):
        if value is not piece.p:
            _compact.write_param(piece.p, value, param_update, piece.comp, generator)


class _Options(NamedTuple):
    """What a path takes besides the tensors and the hyper-parameters."""

    lr: LR
    clip_coef: Optional[Tensor]
    maximize: bool
    param_update: str
    generator: Optional[torch.Generator]
    grad_scale: Optional[Tensor] = None  # fused only
    found_inf: Optional[Tensor] = None  # fused only


def _lists_kwargs(hp: HParams, opts: _Options) -> dict:
    return dict(scale=_grad_scale(opts.clip_coef, opts.maximize), lr=opts.lr, **hp._asdict())


def _single_tensor_adan(lists: TensorLists, hp: HParams, opts: _Options) -> None:
    """A per-tensor loop of in-place ops (slice by slice on the CPU)."""
    kwargs = _lists_kwargs(hp, opts)
    for part, compact in zip(lists.split_compact(opts.param_update), (True, False)):
        if not part.params:
            continue
        _increment(part.state_steps)
        coefs, fresh = _step_coefficients(part.state_steps, opts.lr, hp.beta1, hp.beta2, hp.beta3)
        if compact:
            _compact_update(part, opts.param_update, opts.generator, coefs, fresh, kwargs)
        else:
            _per_tensor(part.dense[:6], coefs, fresh, range(len(part.params)), kwargs)


def _multi_tensor_adan(lists: TensorLists, hp: HParams, opts: _Options) -> None:
    """``torch._foreach_*`` ops over device/dtype buckets (compact state in batches, see
    :func:`_compact_update`)."""
    compact, rest = lists.split_compact(opts.param_update)
    if compact.params:
        _single_tensor_adan(compact, hp, opts)
    if not rest.params:
        return
    buckets = Optimizer._group_tensors_by_device_and_dtype(list(rest.dense))
    kwargs = _lists_kwargs(hp, opts)
    for (*tensors, steps), _ in buckets.values():
        _increment(steps)
        coefs, fresh = _step_coefficients(steps, opts.lr, hp.beta1, hp.beta2, hp.beta3)
        if tensors[0][0].device.type != "cpu" or torch.compiler.is_compiling():
            _adan_lists(*tensors, coefs, fresh=fresh, **kwargs)
            continue
        # On the CPU, work in cache-sized pieces: a large tensor slice by slice, small
        # ones in foreach batches of about a slice's elements.
        chunk = _chunk()
        numels = [t.numel() for t in tensors[0]]
        _per_tensor(tensors, coefs, fresh, [i for i, k in enumerate(numels) if k > chunk], kwargs)
        batch, size = [], 0
        for i, k in enumerate(numels + [chunk + 1]):  # a sentinel flushes the last batch
            if batch and (size + k > chunk or i == len(numels)):
                idx = torch.tensor(batch)
                part = [[lst[j] for j in batch] for lst in tensors]
                part_fresh = None if fresh is None else [fresh[j] for j in batch]
                _adan_lists(*part, tuple(c[idx] for c in coefs), fresh=part_fresh, **kwargs)
                batch, size = [], 0
            if i < len(numels) and k <= chunk:
                batch.append(i)
                size += k


def _fused_adan(lists: TensorLists, hp: HParams, opts: _Options) -> _fused.Launch:
    """The fused path, checked, as a launch: full-precision state through
    :func:`adan._fused.fused_full`; compact state through the compact kernels where they run
    (eagerly or, under ``torch.compile``, as a custom op), else (CUDA without Triton)
    through the torch ops of the single-tensor path."""
    device = lists.params[0].device
    scalars = _fused.scalars_of(opts.lr, opts.clip_coef, opts.maximize, opts.grad_scale, opts.found_inf, device)
    compact, rest = lists.split_compact(opts.param_update)
    launches = []
    if compact.params:
        if _fused.compact_kernels_run(compact.params):
            launches.append(_fused.fused_compact(compact, opts.param_update, scalars, hp, generator=opts.generator))
        elif opts.grad_scale is not None or opts.found_inf is not None:
            raise RuntimeError(
                "fused Adan: compact state (state_dtype != 'float32' or param_update != 'nearest') with a GradScaler "
                f"needs the compact kernels, which do not run here: {_fused.unavailable_reason(device)}"
            )
        else:  # the multiplier folds the clip factor and the maximize sign, as the kernels take it
            _check_shapes(compact)
            folded = opts._replace(lr=scalars[0], clip_coef=scalars[1], maximize=False)
            launches.append(lambda: _single_tensor_adan(compact, hp, folded))
    if rest.params:
        launches.append(_fused.fused_full(rest, scalars, hp))
    return _fused.sequence(launches)


_PLAIN = (Tensor, torch.nn.Parameter)
_PLAIN_SET = set(_PLAIN)
_FUSED_DTYPES = {torch.float32, torch.float64, torch.bfloat16, torch.float16}


def _default_to_foreach(params: list[Tensor]) -> bool:
    return all(type(p) in _PLAIN and _has_foreach_kernels(p.device) for p in params)


def _fused_suits(params: list[Tensor]) -> bool:
    """Plain, contiguous tensors of a dtype and device the fused kernel handles."""
    # Set comprehensions over cheap attributes: this runs every step for fused=None.
    return (
        {type(p) for p in params} <= _PLAIN_SET
        and {p.dtype for p in params} <= _FUSED_DTYPES
        and _backends.device_type_of(params) in _backends.BACKENDS
        and all([p.is_contiguous() for p in params])
    )


def _resolve_path(params: list[Tensor], foreach: Optional[bool], fused: Optional[bool]) -> tuple[bool, bool]:
    """(foreach, fused) for these tensors: fused wherever it is available, unless told."""
    if fused is None and not foreach:
        if foreach is None and _fused_suits(params):
            device = params[0].device  # one device type (_fused_suits), and availability is per type
            if _fused.fused_available(device):
                return False, True
            _fused.warn_fallback(device)
        fused = False
    if foreach is None:
        foreach = not fused and _default_to_foreach(params)
    return bool(foreach), bool(fused)


def adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: Optional[bool] = None,
    fused: Optional[bool] = None,
    clip_coef: Optional[Tensor] = None,
    beta1: float,
    beta2: float,
    beta3: float,
    lr: LR,
    weight_decay: float,
    eps: float,
    no_prox: bool,
    maximize: bool = False,
    capturable: bool = False,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
    state_scales: Optional[list[Optional[tuple[Tensor, Tensor, Tensor]]]] = None,
    param_comps: Optional[list[Optional[Tensor]]] = None,
    param_update: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> None:
    """Functional Adan: update ``params`` and the state lists in place.

    ``neg_pre_grads`` holds minus the previous (scaled) gradient; at a parameter's first
    step (its count in ``state_steps`` is 0 before the call) every path takes the previous
    gradient to be the current one, so the buffers may start as zeros, as the
    ``torch.optim`` functional APIs take their state. ``clip_coef`` multiplies every gradient (see
    :func:`global_clip_coefficient`). ``grad_scale``/``found_inf`` (fused only) unscale
    the gradients and skip the step on inf. ``generator`` supplies the stochastic-rounding
    bits of compact state (torch's default generator when ``None``). Every gradient and
    state tensor must have its parameter's shape (``ValueError`` otherwise). See
    :class:`Adan` for the rest.
    """
    lists = TensorLists(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps, state_scales, param_comps)
    opts = _Options(lr, clip_coef, maximize, param_update, generator, grad_scale, found_inf)
    prepare_update(lists, HParams(beta1, beta2, beta3, eps, weight_decay, no_prox), opts, foreach, fused)()


def prepare_update(lists: TensorLists, hp: HParams, opts: _Options, foreach: Optional[bool], fused: Optional[bool]) -> _fused.Launch:
    """Check one update (shapes, devices, dtypes, options) and return it as a launch, which
    writes when called. :meth:`Adan.step` prepares every group before it launches any, so
    a bad one raises with every tensor as it was; :func:`adan` runs it at once."""
    if not lists.params:
        return _nothing
    if torch.is_tensor(opts.lr) and opts.lr.dim() != 0:  # any one-element lr, as torch.optim takes it
        opts = opts._replace(lr=opts.lr.reshape(()))
    foreach, fused = _resolve_path(lists.params, foreach, fused)
    if not fused and (opts.grad_scale is not None or opts.found_inf is not None):
        raise RuntimeError("grad_scale and found_inf are supported by the fused path only")
    if fused:  # (the fused launchers check once per memory layout)
        return _fused_adan(lists, hp, opts)
    _check_shapes(lists)
    path = _multi_tensor_adan if foreach else _single_tensor_adan
    return lambda: path(lists, hp, opts)


def _nothing() -> None:
    pass
