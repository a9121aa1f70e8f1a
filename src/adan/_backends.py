"""Fused backends: which device types have a fused Adan kernel, and how to launch it.

A :class:`Backend` says, for one device type, whether its kernels can run here (and why
not), how to launch them on one bucket of full-precision state and on one bucket of
compact state, and where its step counts live. :mod:`adan._fused` and the optimizer ask
this registry and never name a device type themselves. Supporting another device (MPS,
XPU, a CUDA C++ kernel) is one module with the two launchers plus one :func:`register`
call; every launcher has the signatures of :mod:`adan.kernels.cpu`::

    prepare_full(lists: TensorLists, scalars: Tensor, hp: HParams) -> Callable[[], None]
    prepare_compact(lists: TensorLists, param_update: str, scalars: Tensor, hp: HParams,
                    generator: Optional[torch.Generator]) -> Callable[[], None]

A launcher checks its bucket (raising on bad input) and returns the launch, which writes;
:mod:`adan._fused` prepares every bucket of a step before it launches any, so a bad one
leaves every tensor as it was. ``scalars`` is ``[lr, grad_multiplier, found_inf]`` in
float64 on the bucket's device; a launch increments the step counts itself (not when
``found_inf`` is set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from adan.kernels import cpu

__all__ = ["Backend", "BACKENDS", "register", "get", "device_type_of", "available", "unavailable_reason"]


@dataclass(frozen=True)
class Backend:
    device_type: str
    is_available: Callable[[], bool]
    reason: Callable[[], str]  # why it is not available
    prepare_full: Callable[..., Callable[[], None]]
    prepare_compact: Optional[Callable[..., Callable[[], None]]]  # None: compact state takes the torch ops
    steps_on_device: bool  # the kernels read the step counts on the device (else a CPU tensor)


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.device_type] = backend
    return backend


def get(device: torch.device) -> Optional[Backend]:
    return BACKENDS.get(device.type)


def device_type_of(tensors: list[torch.Tensor]) -> Optional[str]:
    """The one device type of ``tensors``, or ``None`` if they mix types. Cheap for CPU
    tensors (``is_cpu``; ``.device`` makes an object per tensor): this runs every step."""
    if {t.is_cpu for t in tensors} == {True}:
        return "cpu"
    types = {t.device.type for t in tensors}
    return types.pop() if len(types) == 1 else None


def available(device: torch.device) -> bool:
    backend = get(device)
    return backend is not None and backend.is_available()


def unavailable_reason(device: torch.device) -> str:
    backend = get(device)
    if backend is None:
        return f"no fused Adan kernel for device type {device.type!r}"
    return backend.reason()


# ------------------------------------------------------------------ the two we ship
register(Backend("cpu", cpu.available, cpu.unavailable_reason, cpu.prepare_full, cpu.prepare_compact, steps_on_device=False))


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda_full(*args, **kwargs) -> Callable[[], None]:  # Triton is imported at the first CUDA step only
    from adan.kernels.adan_triton import prepare_full

    return prepare_full(*args, **kwargs)


def _cuda_compact(*args, **kwargs) -> Callable[[], None]:
    from adan.kernels.adan_triton_compact import prepare_compact

    return prepare_compact(*args, **kwargs)


register(
    Backend(
        "cuda", _triton_available, lambda: "the CUDA kernel needs Triton (pip install triton)",
        _cuda_full, _cuda_compact, steps_on_device=True,
    )
)  # fmt: skip
