"""What the per-step reads of the fused launcher cost inside a real step (cold caches), small case.

    python benchmarks/cold_pointer_reads.py

1000 float32 parameters of 1000 elements with fused Adan state, one thread; before each
measurement a large in-place op evicts the caches, as a backward pass would. Prints the
medians (40 rounds) of the reads every fused step makes whatever else it skips: the
parameters' pointers; every pointer (parameters and the five state slots); every pointer
and size (:func:`adan._checks.layout_of`, what the layout cache compares), cold and warm;
the gradients (fetched, checked of their parameters' sizes, contiguous and of one dtype,
their pointers); what replaces all of those where the C++ host helper is built (its
``pack``: every tensor checked and its pointer read, gradients included); and a whole
fused step (which takes the helper where it is built).
"""

import statistics
import time
from array import array
from itertools import chain
from operator import attrgetter

import torch

import adan
from adan._checks import layout_of
from adan._codes import BLOCK
from adan.kernels.cpu import host_helper

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
host = host_helper()
grad_list = list(map(attrgetter("grad"), params))
table = array("q", [0]) * (10 * len(params))


def pack() -> None:
    assert host.pack(params, grad_list, tuple(slots[1:5]), (), slots[5], BLOCK, table.buffer_info()[0])


def grads() -> None:
    gs = list(map(attrgetter("grad"), params))
    list(map(torch.Tensor.numel, gs)) == list(map(torch.Tensor.numel, params))
    all(map(torch.Tensor.is_contiguous, gs)) and {x.dtype for x in gs}
    list(map(torch.Tensor.data_ptr, gs))


reads = {
    "parameters' pointers": lambda: list(map(torch.Tensor.data_ptr, params)),
    "every pointer": lambda: list(map(torch.Tensor.data_ptr, chain.from_iterable(slots))),
    "every pointer and size (layout_of)": lambda: layout_of(slots),
    "gradients": grads,
    **({"the host helper (pack)": pack} if host is not None else {}),
    "fused step": opt.step,
}
times: dict[str, list[float]] = {name: [] for name in [*reads, "every pointer and size, warm"]}
for _ in range(40):
    for name, read in reads.items():
        big.mul_(1.0001)
        t = time.perf_counter()
        read()
        times[name].append(time.perf_counter() - t)
    t = time.perf_counter()
    layout_of(slots)
    times["every pointer and size, warm"].append(time.perf_counter() - t)
for name, ts in times.items():
    print(f"{name:36s} {statistics.median(ts) * 1e3:.3f} ms")
