"""The CPU backend: the C/OpenMP kernels, called through ctypes.

``adan_cpu.c`` updates full-precision state, ``adan_cpu_compact.c`` compact state and
rounded low-precision parameters; both include ``adan_math.h``, where the update is
written. Each launcher (``prepare_full``, ``prepare_compact``) takes one bucket (one
parameter dtype; one state format for the compact kernel), checks it, builds a table of
data pointers and returns the one call, which the optimizer makes after every bucket of the
step passed: the kernel reads the step counts and ``scalars = [lr, grad_multiplier,
found_inf]`` itself, increments the counts and computes the bias corrections in double.

The kernels read every tensor as a flat array of its parameter's ``numel``, in the dtype of
its list's first tensor, so memory safety rests on the checks here: contiguous parameters
and gradients (gradients are made so), and state buffers of their parameter's shape, on its
device, of one dtype per list. The C++ host helper (``adan_host.cpp``, built at first use
against the installed torch) checks every tensor and writes the table at every step, in one
call (:func:`_table`). Where it is not built, or refuses a bucket, the Python path does it:
it reads every pointer and size each step and runs the full check once per memory layout
(see :class:`adan._checks.LayoutCache`); it is also the path that raises the errors.
"""

from __future__ import annotations

import ctypes
import os
from array import array
from pathlib import Path
from types import ModuleType
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from adan._checks import LayoutCache, check_bucket, flat_grads, layout_of
from adan._codes import ParamUpdate, dtype_code
from adan._compact import BLOCK, block_layout, full_dtype, scale_shape
from adan._formats import format_of
from adan._lists import TensorLists
from adan._maths import HParams
from adan._native import BuildError, load_extension, load_library

__all__ = ["available", "unavailable_reason", "prepare_full", "prepare_compact", "launch_full", "launch_compact"]

_KERNEL_SOURCE = Path(__file__).parent / "adan_cpu.c"
_COMPACT_SOURCE = Path(__file__).parent / "adan_cpu_compact.c"
_HOST_SOURCE = Path(__file__).parent / "adan_host.cpp"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_COMPACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HPARAMS = [ctypes.c_double] * 5 + [ctypes.c_int32, ctypes.c_int32]  # b1, b2, b3, eps, wd, no_prox, threads
_data_ptr, _numel = Tensor.data_ptr, Tensor.numel
_lib: Optional[ctypes.CDLL] = None
_error: Optional[str] = None


def _load() -> Optional[ctypes.CDLL]:
    global _lib, _error
    if _lib is None and _error is None:
        try:
            lib = load_library(_KERNEL_SOURCE)
            compact = load_library(_COMPACT_SOURCE).adan_fused_step_compact
        except (BuildError, OSError) as exc:
            _error = str(exc)
            return None
        lib.adan_fused_step.restype = ctypes.c_int
        lib.adan_fused_step.argtypes = [
            ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p,  # n, dtype, numels
            *[ctypes.c_void_p] * 8,  # p, g, m, v, n, neg, steps, scalars
            *_HPARAMS,
        ]
        compact.restype = ctypes.c_int
        compact.argtypes = [
            ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,  # n, dtype, format, param_update
            *[ctypes.c_void_p] * 15,  # rows, cols, p, g, m, v, n, neg, 3 scales, comps, steps, scalars, seed
            *_HPARAMS,
        ]
        lib.compact = compact
        _lib = lib
    return _lib


def available() -> bool:
    """Whether the kernels compiled (they are built at first use)."""
    return _load() is not None


def unavailable_reason() -> str:
    _load()
    return f"the CPU kernel could not be built: {_error}"


def _library() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"fused=True: {unavailable_reason()}")
    return lib


def _hparams(hp: HParams) -> tuple:
    return (hp.beta1, hp.beta2, hp.beta3, hp.eps, hp.weight_decay, int(hp.no_prox), torch.get_num_threads())


def host_helper() -> Optional[ModuleType]:
    """The C++ host helper (``adan_host.cpp``), built at first use, or ``None`` where it could
    not be built (no C++ compiler, no torch or Python headers) or is switched off
    (``ADAN_HOST_HELPER=0`` when it is first asked for): the launchers then check and read
    every tensor in Python (see :func:`_table`)."""
    global _host, _host_error
    if _host is None and _host_error is None:
        if os.environ.get("ADAN_HOST_HELPER", "1") == "0":
            _host_error = "switched off (ADAN_HOST_HELPER=0)"
            return None
        try:
            _host = load_extension(_HOST_SOURCE, "_adan_host")
        except (BuildError, OSError) as exc:
            _host_error = str(exc)
    return _host


_host: Optional[ModuleType] = None
_host_error: Optional[str] = None
# Reused per memory layout (see LayoutCache): the Python path's tables, without the gradients,
# one cache per kernel (a layout checked for one kernel's dtypes is not checked for the other's).
_FULL_TABLES = LayoutCache()
_COMPACT_TABLES = LayoutCache()


class _Table(NamedTuple):
    """One bucket's table for one kernel call: the address of each run of ``len(params)``
    int64 entries (the pointers of the parameters, the gradients, each buffer list, each
    scale list and the step counts; then the parameters' numel, rows and cols), and what
    must stay alive while the kernel reads through them."""

    runs: list[int]
    alive: tuple


def _runs(memory: array, count: int) -> list[int]:
    """The addresses of the ``count`` equal runs of ``memory``."""
    base, length = memory.buffer_info()
    stride = length // count * memory.itemsize
    return [base + i * stride for i in range(count)]


def _table(
    lists: TensorLists,
    buffers: tuple,
    scales: tuple,
    state_error: Callable[[], Optional[Exception]],
    cache: LayoutCache,
    comps: Optional[list] = None,
) -> _Table:
    """Check every tensor of a bucket and read its pointers, at every step: in one call of the
    host helper where it is built and takes the bucket, else in Python. ``state_error()``
    says what is wrong with the dtypes of the buffer lists' first tensors for this kernel
    (the lists are of one dtype each). The Python path is the one that raises, naming the
    problem, and that makes gradients of another dtype or layout flat; it reads every
    pointer and size, and runs the full check (:func:`check_bucket`) only for a layout it
    has not checked before (``cache``, this kernel's :class:`LayoutCache`)."""
    params, grads, steps = lists.params, lists.grads, lists.state_steps
    count = 6 + len(buffers) + len(scales)
    host = host_helper()
    if host is not None:
        memory = array("q", [0]) * (count * len(params))
        if (
            host.pack(params, grads, buffers, scales, steps, BLOCK, memory.buffer_info()[0])
            and steps[0].dtype == torch.float32
            and state_error() is None
        ):
            return _Table(_runs(memory, count), (memory, lists))
    grads = flat_grads(params, grads, params[0].dtype)
    slots = [params, *buffers, *scales, steps]
    pointers, extents = layout_of(slots)

    def build() -> array:
        check_bucket(lists._replace(grads=grads), comps, scale_shape)
        error = state_error()
        if error is not None:
            raise error
        layouts = [block_layout(p.shape) for p in params]
        return array("q", [*pointers, *map(_numel, params), *(r for r, _ in layouts), *(c for _, c in layouts)])

    memory = cache.get(pointers, extents, build)
    grad_run = array("q", map(_data_ptr, grads))
    runs = _runs(memory, count - 1)
    return _Table([runs[0], grad_run.buffer_info()[0], *runs[1:]], (memory, grad_run, lists, grads))


def prepare_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> Callable[[], None]:
    """Check a bucket of CPU tensors of one parameter dtype, full-precision state, and build
    its table; return the kernel call, which writes nothing before it runs."""
    lib = _library()
    params = lists.params
    dtype = params[0].dtype
    if dtype not in _DTYPES:
        raise TypeError(f"fused Adan supports float32, float64, bfloat16 and float16 parameters, not {dtype}")
    sdtype = full_dtype(dtype)
    # (int8 scales of a parameter that left its compact bucket are not this kernel's to read)
    lists = lists._replace(state_scales=None)
    buffers = (lists.exp_avgs, lists.exp_avg_diffs, lists.exp_avg_sqs, lists.neg_pre_grads)

    def state_error() -> Optional[Exception]:  # (Adan makes, and load_state_dict casts, state in sdtype)
        if any(b[0].dtype != sdtype for b in buffers):
            return TypeError(f"fused Adan: the state of {dtype} parameters must be {sdtype}")
        return None

    table = _table(lists, buffers, (), state_error, _FULL_TABLES)
    p_, g_, m_, v_, n_, neg_, steps_, numels_, _, _ = table.runs
    scalars = scalars.contiguous()

    def launch() -> None:
        _alive = table.alive  # (the closure keeps the memory the raw pointers name until the call)
        rc = lib.adan_fused_step(
            len(params), dtype_code(dtype), numels_, p_, g_, m_, v_, n_, neg_, steps_, scalars.data_ptr(), *_hparams(hp)
        )
        if rc != 0:
            raise RuntimeError(f"fused Adan CPU kernel failed with code {rc}")

    return launch


def prepare_compact(
    lists: TensorLists, param_update: str, scalars: Tensor, hp: HParams, generator: Optional[torch.Generator] = None
) -> Callable[[], None]:
    """Check CPU tensors of one parameter dtype and one state format and build their table;
    return the compact-kernel call (which draws the rounding seed), writing nothing before."""
    lib = _library()
    params = lists.params
    dtype = params[0].dtype
    if dtype not in _COMPACT_DTYPES:
        raise TypeError(f"fused Adan's compact formats support float32, bfloat16 and float16 parameters, not {dtype}")
    fmt = format_of(lists.exp_avgs[0])
    comps = lists.param_comps if param_update == "kahan" and dtype != torch.float32 else None
    buffers = (lists.exp_avgs, lists.exp_avg_diffs, lists.exp_avg_sqs, lists.neg_pre_grads)
    buffers += (comps,) if comps is not None else ()
    scales = tuple([s[j] for s in lists.state_scales] for j in range(3)) if fmt.scale_keys else ()
    table = _table(lists, buffers, scales, lambda: None, _COMPACT_TABLES, comps)
    p_, g_, m_, v_, n_, neg_, *rest = table.runs
    comps_ = rest.pop(0) if comps is not None else None
    scales_ = [rest.pop(0) for _ in range(3)] if scales else [None] * 3
    steps_, _, rows_, cols_ = rest
    if generator is not None and generator.device.type != "cpu":
        generator = None
    scalars = scalars.contiguous()

    def launch() -> None:
        _alive = table.alive  # (the closure keeps the memory the raw pointers name until the call)
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=generator)
        rc = lib.compact(
            len(params), dtype_code(dtype), fmt.code, ParamUpdate[param_update.upper()], rows_, cols_, p_, g_, m_, v_,
            n_, neg_, *scales_, comps_, steps_, scalars.data_ptr(), seed.data_ptr(), *_hparams(hp),
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"fused Adan CPU compact kernel failed with code {rc}")

    return launch


def launch_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> None:
    """:func:`prepare_full` and its call at once."""
    prepare_full(lists, scalars, hp)()


def launch_compact(
    lists: TensorLists, param_update: str, scalars: Tensor, hp: HParams, generator: Optional[torch.Generator] = None
) -> None:
    """:func:`prepare_compact` and its call at once."""
    prepare_compact(lists, param_update, scalars, hp, generator)()
