"""Adan with FSDP2 (``fully_shard``) and distributed checkpoints, on CPUs with gloo.

    torchrun --nproc_per_node=2 examples/fsdp_train.py [--steps 20] [--ckpt /tmp/adan_fsdp_ckpt]

Each rank holds half of every parameter (DTensor shards) and of Adan's state. Global-norm
clipping inside ``step()`` reduces the shards' squared norms across ranks (one
all_reduce), so it clips by the norm of the whole model, as a single process would.
Half-way through, the model and optimizer are saved with torch.distributed.checkpoint;
the run then restarts from that checkpoint and checks that it continues on the same
trajectory. Such a checkpoint also loads into a different number of processes (see
tests/test_distributed.py, which loads a 2-rank checkpoint into one process).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

from adan import Adan


def build(seed: int = 0) -> tuple[nn.Module, Adan]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model, Adan(model.parameters(), lr=5e-3, weight_decay=0.02, max_grad_norm=1.0)


def batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(64, 32, generator=g)
    y = x[:, :4].sum(dim=1, keepdim=True).sin()
    return x[rank::world], y[rank::world]  # every rank trains on its own slice of the batch


def train(model, opt, steps: range, rank: int, world: int) -> float:
    loss = torch.tensor(0.0)
    for step in steps:
        x, y = batch(step, rank, world)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    dist.all_reduce(loss)
    return loss.item() / world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ckpt", default=os.path.join("/tmp", "adan_fsdp_ckpt"))
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    half = args.steps // 2

    model, opt = build()
    loss = train(model, opt, range(half), rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=args.ckpt)
    if rank == 0:
        print(f"step {half}: loss {loss:.5f}; saved {args.ckpt}")
    loss = train(model, opt, range(half, args.steps), rank, world)
    final = [p.full_tensor() for p in model.parameters()]

    # A fresh model and optimizer (another init) restored from the checkpoint continue identically.
    model2, opt2 = build(seed=123)
    msd, osd = get_state_dict(model2, opt2)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=args.ckpt)
    set_state_dict(model2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    loss2 = train(model2, opt2, range(half, args.steps), rank, world)
    same = all(torch.equal(a, b.full_tensor()) for a, b in zip(final, model2.parameters()))
    if rank == 0:
        print(f"step {args.steps}: loss {loss:.5f}; resumed from the checkpoint: loss {loss2:.5f}, identical parameters: {same}")
    dist.barrier()
    dist.destroy_process_group()
    if not same:
        raise SystemExit("the resumed run diverged from the original")


if __name__ == "__main__":
    main()
