"""Swap AdamW for Adan: train the same small network with both and print the losses.

    python examples/quickstart.py

A student MLP learns a random teacher network's 10-class labels (a synthetic task that
needs no download); both optimizers get the same initialisation, data order,
warmup + cosine schedule and weight decay. Adan follows the reference repository's
guidance: betas (0.98, 0.92, 0.99), a larger learning rate than AdamW's.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

import adan


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in teacher.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(2 * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        x = torch.randn(n, 32, generator=g)
        y = teacher(x).argmax(dim=1)
    return x, y


def train(make_optimizer, epochs: int = 8, batch: int = 256, seed: int = 0) -> list[tuple[float, float]]:
    x, y = make_data(34_000)
    x_val, y_val = x[30_000:], y[30_000:]
    x, y = x[:30_000], y[:30_000]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))
    opt = make_optimizer(model.parameters())
    steps = epochs * (len(x) // batch)
    warmup = steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
    )
    order = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=order)
        total = 0.0
        for i in range(len(x) // batch):
            idx = perm[i * batch : (i + 1) * batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            val = nn.functional.cross_entropy(model(x_val), y_val).item()
        history.append((total / (len(x) // batch), val))
    return history


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    runs = {
        "AdamW (lr 2e-3, wd 0.05)": lambda ps: torch.optim.AdamW(ps, lr=2e-3, weight_decay=0.05),
        "Adan  (lr 1e-2, wd 0.02)": lambda ps: adan.Adan(ps, lr=1e-2, weight_decay=0.02),
    }
    results = {}
    for name, make in runs.items():
        t0 = time.perf_counter()
        results[name] = train(make)
        print(f"trained {name} in {time.perf_counter() - t0:.1f}s", flush=True)
    names = list(results)
    print("\nepoch | " + " | ".join(f"{n}: train / val loss" for n in names))
    for epoch in range(len(results[names[0]])):
        cells = [f"{results[n][epoch][0]:.4f} / {results[n][epoch][1]:.4f}" for n in names]
        print(f"{epoch + 1:5d} | " + " | ".join(f"{c:>33}" for c in cells))


if __name__ == "__main__":
    main()
