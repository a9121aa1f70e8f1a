"""Adan with compact optimizer state: the memory it saves and the training it keeps.

    python examples/compact_state.py            # a few seconds on 2 CPU cores
    python examples/compact_state.py --steps 20 # a smoke run

Trains the same small bfloat16 MLP with ``state_dtype`` float32, bfloat16 and int8, and with
the bfloat16 parameters updated by Kahan compensation instead of rounding to nearest, then
prints the optimizer state's bytes per parameter, the final loss and the step time. (On this
task the parameters' rounding matters more than the state's format: rounding to nearest
loses the small late updates that Kahan keeps.) It ends by loading the float32 run's
checkpoint into an int8 optimizer: the state is converted on load.
"""

from __future__ import annotations

import argparse
import io
import time

import torch
from torch import nn

import adan


def state_bytes_per_param(opt: torch.optim.Optimizer) -> float:
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    n_bytes = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    return n_bytes / n_params


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10))
    return model.to(torch.bfloat16)


def make_data(n: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 64, generator=g)
    y = (x[:, :10] * torch.linspace(1, 2, 10)).argmax(dim=1)
    return x.to(torch.bfloat16), y


def train(opt: torch.optim.Optimizer, model: nn.Module, steps: int, batch: int = 256) -> tuple[float, float]:
    x, y = make_data()
    times, loss = [], float("nan")
    for step in range(steps):
        i = (step * batch) % len(x)
        loss_t = nn.functional.cross_entropy(model(x[i : i + batch]).float(), y[i : i + batch])
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
        loss = loss_t.item()
    return loss, sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    settings = {
        "float32 state": dict(),
        "bfloat16 state": dict(state_dtype="bfloat16"),
        "int8 state": dict(state_dtype="int8"),
        "float32 state, Kahan parameters": dict(param_update="kahan"),
        "int8 state, Kahan parameters": dict(state_dtype="int8", param_update="kahan"),
    }
    print(f"{'optimizer state':30s} {'bytes/param':>11s} {'final loss':>10s} {'step ms':>8s}")
    checkpoint = None
    for name, kw in settings.items():
        model = make_model()
        opt = adan.Adan(model.parameters(), lr=3e-3, weight_decay=0.02, **kw)
        loss, step_s = train(opt, model, args.steps)
        print(f"{name:30s} {state_bytes_per_param(opt):11.2f} {loss:10.4f} {step_s * 1e3:8.2f}")
        if checkpoint is None:
            checkpoint = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, checkpoint)

    checkpoint.seek(0)
    saved = torch.load(checkpoint, weights_only=True)
    model = make_model(seed=1)
    model.load_state_dict(saved["model"])
    opt = adan.Adan(model.parameters(), lr=3e-3, weight_decay=0.02, state_dtype="int8")
    opt.load_state_dict(saved["opt"])  # float32 state, quantised on load
    weight_state = opt.state[model[2].weight]
    print(f"\nfloat32 checkpoint loaded into state_dtype='int8': exp_avg is {weight_state['exp_avg'].dtype}, "
          f"{state_bytes_per_param(opt):.2f} bytes/param; it trains on:")  # fmt: skip
    loss, _ = train(opt, model, max(1, args.steps // 10))
    print(f"loss after {max(1, args.steps // 10)} more steps: {loss:.4f}")


if __name__ == "__main__":
    main()
