"""Per-step overhead on many small tensors: fused Adan against torch's fused AdamW.

    python benchmarks/small_step.py [float32|bfloat16|int8] [--tensors 1000] [--steps 150] [--default]

1000 tensors of 1000 float32 elements, one thread; the two optimizers' steps are
interleaved one by one and the median of each is printed with their ratio. Adan is built
with ``fused=True``, or with ``--default`` as users build it (``fused=None``: the path is
chosen at the first step, and kept). Made for
before/after checks of Python-side changes on a noisy machine: run it alternately against
two checkouts (``PYTHONPATH=<checkout>/src``), several rounds, and compare the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import adan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state_dtype", nargs="?", default="float32", choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--tensors", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--default", action="store_true", help="fused=None (the default) instead of fused=True")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(1000, generator=g)) for _ in range(args.tensors)]
    for p in params:
        p.grad = torch.randn(1000, generator=g) * 1e-2
    opt = adan.Adan(params, lr=1e-3, fused=None if args.default else True, state_dtype=args.state_dtype)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for q, p in zip(twins, params):
        q.grad = p.grad
    adamw = torch.optim.AdamW(twins, lr=1e-3, fused=True)
    for _ in range(5):
        opt.step()
        adamw.step()
    t_adan, t_adamw = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        opt.step()
        t1 = time.perf_counter()
        adamw.step()
        t_adan.append(t1 - t0)
        t_adamw.append(time.perf_counter() - t1)
    a, w = statistics.median(t_adan), statistics.median(t_adamw)
    print(f"{args.state_dtype}: adan {'default' if args.default else 'fused'} {a * 1e3:.2f} ms, torch AdamW fused {w * 1e3:.2f} ms, ratio {a / w:.3f}")


if __name__ == "__main__":
    main()
