"""What reading the data pointers costs inside a real step (cold caches), small case.

    python benchmarks/cold_pointer_reads.py

1000 float32 parameters of 1000 elements with fused Adan state; before each measurement a
large in-place op evicts the caches, as a backward pass would. Prints the medians (40 rounds)
of reading the parameters' pointers, every pointer the fused launcher reads (parameters and
the five state slots), the same warm, and a whole fused step.
"""

import statistics
import time

import torch

import adan
from adan.kernels import cpu

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
params = [torch.nn.Parameter(torch.randn(1000, generator=g)) for _ in range(1000)]
for p in params:
    p.grad = torch.randn(1000, generator=g) * 1e-2
opt = adan.Adan(params, lr=1e-3, fused=True)
for _ in range(3):
    opt.step()
states = [opt.state[p] for p in params]
slots = [params] + [[s[k] for s in states] for k in ("exp_avg", "exp_avg_diff", "exp_avg_sq", "neg_pre_grad", "step")]
big = torch.randn(8_000_000)
cold_params, cold_all, warm_all, step = [], [], [], []
for _ in range(40):
    big.mul_(1.0001)
    t = time.perf_counter()
    cpu._pointers(slots[:1])
    cold_params.append(time.perf_counter() - t)
    big.mul_(1.0001)
    t = time.perf_counter()
    cpu._pointers(slots)
    cold_all.append(time.perf_counter() - t)
    t = time.perf_counter()
    cpu._pointers(slots)
    warm_all.append(time.perf_counter() - t)
    big.mul_(1.0001)
    t = time.perf_counter()
    opt.step()
    step.append(time.perf_counter() - t)
ms = lambda x: statistics.median(x) * 1e3  # noqa: E731
print(f"pointers of the parameters, cold: {ms(cold_params):.3f} ms; of parameters and state, cold: {ms(cold_all):.3f} ms, "
      f"warm: {ms(warm_all):.3f} ms; fused step, cold: {ms(step):.3f} ms")
