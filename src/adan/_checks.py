"""Checks that keep the kernels memory-safe and the options honest.

The fused kernels read every state buffer as a flat array of its parameter's ``numel``:
a parameter resized in place (``p.data = torch.cat(...)``) after its state was made
would have them write past the ends of the buffers. :func:`check_state_shapes` runs on
every path before any kernel or op touches memory, at the cost of comparing shape
tuples (no device access, no host sync).
"""

from __future__ import annotations

from itertools import chain
from operator import attrgetter
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["StateShapeError", "check_state_shapes", "check_bucket", "check_devices", "check_uniform_dtypes", "named_buffers", "flat_grads", "check_foreign_options", "check_no_duplicates", "LayoutCache", "layout_of"]

# Options of other optimizers (or of Adan variants) that change the update. A group that
# sets one of them to a true value was made for something else: loading it as plain Adan
# would silently run different maths.
FOREIGN_OPTIONS = {
    "caution": "timm's cautious Adan (cadan)",
    "amsgrad": "AMSGrad (Adam/AdamW)",
    "nesterov": "Nesterov momentum (SGD/NAdam)",
    "momentum": "momentum (SGD/RMSprop)",
    "decoupled_weight_decay": "decoupled weight decay (NAdam/RAdam/Adam)",
    "corrected_weight_decay": "corrected weight decay (timm)",
    "momentum_decay": "NAdam's momentum decay",
    "centered": "centered RMSprop",
    "lr_decay": "Adagrad's lr decay",
}


class StateShapeError(ValueError):
    """A gradient or state buffer whose shape does not match its parameter's."""

    def __init__(self, index: int, name: str, param_shape: tuple, shape: tuple, where: Optional[str] = None):
        self.index, self.name, self.param_shape, self.shape = index, name, param_shape, shape
        super().__init__(self.describe(where or f"parameter {index}"))

    def describe(self, where: str) -> str:
        return (
            f"Adan: {where} has shape {self.param_shape} but its {self.name!r} has shape {self.shape}; "
            "was the parameter resized in place (p.data = ...) after its optimizer state was made? "
            "Build a new optimizer, or drop the parameter's state (del opt.state[p]), after resizing it"
        )


def check_state_shapes(
    params: Sequence[Tensor],
    named_lists: Iterable[tuple[str, Optional[Sequence[Optional[Tensor]]]]],
    scales: Optional[Sequence[Optional[tuple[Tensor, ...]]]] = None,
    scale_shape: Any = None,
) -> None:
    """Raise :class:`StateShapeError` unless every tensor of every list has its parameter's
    shape (``None`` lists and entries are skipped), and every int8 scale triple has
    ``scale_shape(p.shape)``. Comparing shape tuples costs about 0.1 us a tensor."""
    shapes = [p.shape for p in params]
    for name, tensors in named_lists:
        if tensors is None:
            continue
        if [t.shape if t is not None else s for t, s in zip(tensors, shapes)] != shapes:
            for i, (t, s) in enumerate(zip(tensors, shapes)):
                if t is not None and t.shape != s:
                    raise StateShapeError(i, name, tuple(s), tuple(t.shape))
    if scales is not None and any(s is not None for s in scales):
        for i, (triple, s) in enumerate(zip(scales, shapes)):
            if triple is None:
                continue
            want = tuple(scale_shape(s))
            for name, t in zip(("exp_avg_scale", "exp_avg_diff_scale", "exp_avg_sq_scale"), triple):
                if tuple(t.shape) != want:
                    raise StateShapeError(i, name, tuple(s), tuple(t.shape))


def named_buffers(lists: Any, comps: Optional[Sequence[Optional[Tensor]]] = None) -> tuple:
    """The per-parameter lists of a ``TensorLists`` that must match their parameters, by
    name (for the errors of :func:`check_state_shapes` and :func:`check_devices`)."""
    return (("grad", lists.grads), ("exp_avg", lists.exp_avgs), ("exp_avg_diff", lists.exp_avg_diffs),
            ("exp_avg_sq", lists.exp_avg_sqs), ("neg_pre_grad", lists.neg_pre_grads), ("param_comp", comps))  # fmt: skip


def check_devices(device: torch.device, named_lists: Iterable[tuple[str, Optional[Sequence[Optional[Tensor]]]]]) -> None:
    """Raise ``ValueError`` unless every tensor of every list (``None`` skipped) is on
    ``device``: a kernel handed another device's pointer would read foreign memory. Run by
    the fused launchers with each new memory layout."""
    for name, tensors in named_lists:
        for t in tensors or ():
            if t is not None and t.device != device:
                raise ValueError(
                    f"fused Adan: a {name!r} is on {t.device} and its parameter on {device}; was the model moved after "
                    "its optimizer state was made? Move the state as well (state_dict, then load_state_dict, does)"
                )


def check_uniform_dtypes(named_lists: Iterable[tuple[str, Optional[Sequence[Optional[Tensor]]]]]) -> None:
    """Raise ``TypeError`` unless the tensors of each list (``None`` skipped) share one dtype:
    a kernel reads a whole list in the dtype of its first tensor, and a narrower one would
    have it read past the buffer's end. Run by the fused launchers with each new layout."""
    for name, tensors in named_lists:
        dtypes = {t.dtype for t in tensors or () if t is not None}
        if len(dtypes) > 1:
            raise TypeError(f"fused Adan: the {name!r} buffers of one bucket mix dtypes {sorted(map(str, dtypes))}")


def check_one_kind(params: Sequence[Tensor]) -> None:
    """Raise unless the parameters of one kernel call share one device (``ValueError``) and
    one dtype (``TypeError``): the kernel reads every parameter in the first one's dtype, so a
    narrower one would be written past its end. The optimizer groups them so; this guards the
    launchers and the custom ops, which take any lists."""
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(f"fused Adan: one kernel call got parameters on several devices ({', '.join(sorted(map(str, devices)))})")
    dtypes = {p.dtype for p in params}
    if len(dtypes) > 1:
        raise TypeError(f"fused Adan: one kernel call got parameters of several dtypes {sorted(map(str, dtypes))}")


def check_bucket(lists: Any, comps: Optional[Sequence[Optional[Tensor]]] = None, scale_shape: Any = None) -> None:
    """The full check of one kernel bucket (a ``TensorLists``) before its data pointers go
    into a table: every buffer (and int8 scale triple) shaped like its parameter, on the
    parameters' device and of one dtype per list, and float32 step counts. Run by the fused
    launchers, C and Triton, for each new memory layout."""
    check_one_kind(lists.params)
    check_state_shapes(lists.params, named_buffers(lists, comps), lists.state_scales, scale_shape)
    scales = [t for triple in lists.state_scales or () if triple is not None for t in triple]
    named = (*named_buffers(lists, comps), ("scale", scales), ("step", lists.state_steps))
    check_devices(lists.params[0].device, named)
    check_uniform_dtypes(named)
    if lists.state_steps[0].dtype != torch.float32:
        raise TypeError(f"fused Adan: state 'step' must be float32 tensors, not {lists.state_steps[0].dtype}")


def flat_grads(params: list[Tensor], grads: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """Contiguous parameters (else ``ValueError``), and the gradients as contiguous tensors
    of the parameters' dtype (a new list where any had to change), each of its parameter's
    size (else :class:`StateShapeError`: the kernels read a parameter's worth of it; autograd
    and the ``.grad`` setter keep that so, ``p.grad.data = ...`` need not). With ``map`` over
    the methods: this runs every step, over every tensor. Shared by the C and Triton launchers."""
    if list(map(Tensor.numel, grads)) != list(map(Tensor.numel, params)):
        check_state_shapes(params, [("grad", grads)])  # (raises, naming the first)
    if all(map(Tensor.is_contiguous, params)) and all(map(Tensor.is_contiguous, grads)) and {g.dtype for g in grads} == {dtype}:
        return grads
    grads = list(grads)
    for k, p in enumerate(params):
        if not p.is_contiguous():
            raise ValueError(
                f"fused Adan needs contiguous parameters; parameter {k} of shape {tuple(p.shape)} has strides "
                f"{p.stride()} (use foreach=True, or make the parameter contiguous)"
            )
        if not grads[k].is_contiguous() or grads[k].dtype != dtype:
            grads[k] = grads[k].to(dtype).contiguous()  # (.to(memory_format=...) may return a strided self)
    return grads


# (Tensor.size() builds the same torch.Size as .shape in a third of the time: these run every step.)
_data_ptr, _size, _nbytes = Tensor.data_ptr, Tensor.size, attrgetter("nbytes")


def layout_of(slots: list[list[Tensor]]) -> tuple[list[int], list]:
    """What :class:`LayoutCache` compares a bucket's layout by: every tensor's data pointer,
    slot after slot, then the parameters' shapes (``slots[0]``) and every other tensor's
    size in bytes. An address says nothing of what lies there now: a buffer freed and a
    smaller one allocated in its place (allocators do that, the CUDA caching allocator
    first of all), or a view of the same memory that is shorter or of a narrower dtype.
    (A parameter's shape, with the one dtype of its bucket, which the launchers take anew
    each step, gives its size.)"""
    pointers = list(map(_data_ptr, chain.from_iterable(slots)))
    return pointers, [*map(_size, slots[0]), *map(_nbytes, chain.from_iterable(slots[1:]))]


class LayoutCache:
    """What the fused launchers (C and Triton) build from a bucket's memory layout (its
    pointer tables), kept for the layouts that :func:`check_state_shapes` has passed, so that a
    step whose tensors sit where they sat last step skips both the check (about 1.5 us a
    tensor) and the table's construction.

    The caller reads every tensor's data pointer and size in bytes, and every parameter's
    shape, each step (:func:`layout_of`) and passes them in: a layout is reused only when
    all of them are equal, so a state tensor replaced or loaded (even by a smaller one at
    the same address), a parameter resized or moved (``p.data = ...``), state made by
    ``restart_opt`` or a new parameter group all build (and check) again, and no kernel
    reads through a stale pointer. Gradients, new every step, are no part of a layout:
    :func:`flat_grads` checks their sizes at every step. A bucket is found by its size and
    its first pointer; the least recently used of ``capacity`` are kept.
    """

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self.entries: dict[tuple[int, int], tuple[list[int], list, Any]] = {}

    def get(self, pointers: list[int], shapes: list, build: Callable[[], Any]) -> Any:
        """The value ``build()`` made for this exact layout, or a new one (``build`` runs the
        full check, and raises where it fails: nothing is kept then)."""
        key = (len(pointers), pointers[0] if pointers else 0)
        entry = self.entries.pop(key, None)
        if entry is None or entry[0] != pointers or entry[1] != shapes:
            entry = (pointers, shapes, build())
        self.entries[key] = entry  # (re)inserted last: the most recently used
        while len(self.entries) > self.capacity:
            self.entries.pop(next(iter(self.entries)))
        return entry[2]


def check_foreign_options(group: dict[str, Any], where: str) -> None:
    """Refuse a group that turns on an option of another optimizer (see FOREIGN_OPTIONS)."""
    for key, what in FOREIGN_OPTIONS.items():
        if group.get(key):
            raise ValueError(
                f"{where} sets {key}={group[key]!r}, an option of {what} that plain Adan does not implement; "
                f"loading or running it as Adan would silently change the maths (remove {key!r} to use plain Adan)"
            )


def check_no_duplicates(params: Sequence[Any], where: str) -> None:
    """Refuse a parameter listed twice: the fused kernel would update it from two threads."""
    seen: set[int] = set()
    for i, p in enumerate(params):
        if id(p) in seen:
            raise ValueError(
                f"{where} lists the same parameter twice (position {i}, shape {tuple(p.shape)}); "
                "it would be updated twice per step (and raced on by the fused kernel's threads)"
            )
        seen.add(id(p))
