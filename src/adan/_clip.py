"""Global gradient-norm clipping, without a host sync, across devices, shards and ranks."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _get_foreach_kernels_supported_devices

__all__ = ["global_clip_coefficient", "shard_group", "DTensor"]

try:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.placement_types import Shard as _Shard
except ImportError:  # a torch built without distributed support
    DTensor = _Shard = None


def _has_foreach_kernels(device: torch.device) -> bool:
    return device.type == "cpu" or device.type in _get_foreach_kernels_supported_devices()


def _squared_norm(grads: list[Tensor], acc_dtype: torch.dtype, device: torch.device) -> Tensor:
    buckets = Optimizer._group_tensors_by_device_and_dtype([grads])
    norms = []
    for (bucket,), _ in buckets.values():  # keys are (None, None) under torch.compile
        if _has_foreach_kernels(bucket[0].device):
            bucket_norms = torch._foreach_norm(bucket, 2.0, dtype=acc_dtype)
        else:
            bucket_norms = [torch.linalg.vector_norm(g, dtype=acc_dtype) for g in bucket]
        norms.extend(n.to(device) for n in bucket_norms)
    return torch.linalg.vector_norm(torch.stack(norms)).square()


def global_clip_coefficient(
    grads: list[Tensor],
    max_norm: float,
    eps: float,
    *,
    grad_scale: Optional[Tensor] = None,
    shard_groups: Optional[list[Any]] = None,
    partition_group: Optional[Any] = None,
) -> Tensor:
    """``min(1, max_norm / (||grads||_2 + eps))`` as a 0-d tensor, without a host sync.

    The norm is accumulated in float32, or float64 when any gradient is float64. With
    ``grad_scale`` (gradients still multiplied by a loss scale) the norm is divided by it.

    Distributed: ``shard_groups[i]`` is the process group over which ``grads[i]`` is one
    shard of a DTensor gradient (``None`` for a whole tensor); ``partition_group`` is a
    group over which every rank holds a different partition of the gradients (ZeRO).
    Squared norms of shards are summed with one ``all_reduce`` per group; whole tensors
    are counted once, except under ``partition_group``, which reduces everything.
    """
    acc_dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    shard_groups = shard_groups or [None] * len(grads)
    by_group: dict[Any, list[Tensor]] = {}
    for g, group in zip(grads, shard_groups):
        by_group.setdefault(group, []).append(g)
    total_sq = torch.zeros((), dtype=acc_dtype, device=device)
    for group, members in by_group.items():
        sq = _squared_norm(members, acc_dtype, device)
        if group is not None and partition_group is None:
            torch.distributed.all_reduce(sq, group=group)
        total_sq = total_sq + sq
    if partition_group is not None:
        torch.distributed.all_reduce(total_sq, group=partition_group)
    total = total_sq.sqrt()
    if grad_scale is not None:
        total = total / grad_scale.to(device=device, dtype=total.dtype)
    return (max_norm / (total + eps)).clamp(max=1.0)


def shard_group(grad: Tensor) -> Any:
    """The process group over which a DTensor gradient is sharded (1-D mesh, Shard placement)."""
    if not isinstance(grad, DTensor):
        return None
    mesh, placements = grad.device_mesh, grad.placements
    if mesh.ndim != 1 or not all(isinstance(pl, _Shard) for pl in placements):
        raise NotImplementedError(
            f"Adan's clipping handles DTensor gradients sharded on a 1-D mesh (FSDP2); got {placements} on a {mesh.ndim}-D mesh"
        )
    return mesh.get_group()
