"""Median optimizer step time of every Adan path against torch.optim.AdamW, as ratios.

Run (the table in the README and the closing notes comes from exactly this)::

    python benchmarks/step_time.py                      # both cases, 1 and 2 threads
    python benchmarks/step_time.py --cases small --threads 2 --reps 9

Rows with ``bfloat16 state``/``int8 state`` use ``Adan(state_dtype=...)``; the
``state B/param`` column is the optimizer state's bytes per parameter (step counters
included; the floor's is its four float32 buffers).

Cases:
  large  ~25.2M float32 parameters in 96 tensors (12 transformer-like blocks)
  small  1000 tensors of 1000 float32 elements

All contenders run in one process, on their own copies of the parameters (sharing the
gradient tensors), interleaved round-robin so that machine noise hits them alike. In each
round a contender takes ``--burst`` consecutive steps and the first is not timed: on these
VMs memory left idle for a second or two (while the other contenders run) makes the next
step up to 2x slower, whoever takes it (measured 2026-11-30: the floor kernel took 37-41 ms
at 2 threads after torch-ops contenders, 22 ms in a short run; a 0.5 s pause before every
step made fused AdamW 51 ms instead of 20). Each row is the median over the timed steps of
``--reps`` rounds, and ``x fused AdamW`` divides it
by the median of torch's fused AdamW in the same case and thread count; ``x floor`` by
the floor: a kernel built and threaded like the fused one that only reads 6 and writes
5 arrays (Adan's minimum memory traffic).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from array import array
from pathlib import Path
from typing import Callable

import torch

import adan
from adan import _compact
from adan._native import load_library

FLOOR_SOURCE = Path(__file__).parent / "floor_kernel.c"
COMPILE_FOREACH = False


class FloorStep:
    """Not an optimizer: the same-traffic floor kernel (reads 6 arrays, writes 5)."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.fn = load_library(FLOOR_SOURCE).floor_step
        self.fn.restype = ctypes.c_int
        self.buffers = [[torch.zeros_like(p) for p in params] for _ in range(4)]
        self.tensors = lists = [params, [p.grad for p in params], *self.buffers]  # kept alive: raw pointers below
        self.ptrs = [array("q", [t.data_ptr() for t in lst]) for lst in lists]
        self.numels = array("q", [p.numel() for p in params])

    def step(self) -> None:
        addr = [ctypes.c_void_p(a.buffer_info()[0]) for a in self.ptrs]
        self.fn(ctypes.c_int64(len(self.numels)), ctypes.c_void_p(self.numels.buffer_info()[0]), *addr,
                ctypes.c_int32(torch.get_num_threads()))


class CompiledStep:
    """``opt.step`` compiled by torch.compile (inductor); the fused kernel is one opaque op.

    (Compiling the foreach path instead makes inductor generate code for every tensor:
    for the 1000-tensor case that took over 10 minutes here, so it is not a default row;
    ``--compile-foreach`` adds it.)
    """

    def __init__(self, params: list[torch.nn.Parameter], **kwargs):
        self.opt = adan.Adan(params, lr=1e-3, **kwargs)
        self.step = torch.compile(self.opt.step)


def make_case(name: str, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name == "large":
        shapes = []
        for _ in range(12):
            shapes += [(512, 512)] * 4 + [(1024, 512), (512, 1024), (512,), (512,)]
    elif name == "small":
        shapes = [(1000,)] * 1000
    else:
        raise ValueError(f"unknown case {name!r}")
    return [torch.randn(s, generator=g).to(dtype) for s in shapes]


def contenders(case: str) -> dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    """Name -> factory. Optional peers are listed only when importable."""
    table = {
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "adan single-tensor": lambda ps: adan.Adan(ps, lr=1e-3, foreach=False),
        "adan foreach": lambda ps: adan.Adan(ps, lr=1e-3, foreach=True),
        "adan fused": lambda ps: adan.Adan(ps, lr=1e-3, fused=True),
        "adan default (fused=None)": lambda ps: adan.Adan(ps, lr=1e-3),  # fused where it runs, chosen by the optimizer
        "adan fused, bfloat16 state": lambda ps: adan.Adan(ps, lr=1e-3, fused=True, state_dtype="bfloat16"),
        "adan fused, int8 state": lambda ps: adan.Adan(ps, lr=1e-3, fused=True, state_dtype="int8"),
        "adan single-tensor, bfloat16 state": lambda ps: adan.Adan(ps, lr=1e-3, foreach=False, fused=False, state_dtype="bfloat16"),
        "adan single-tensor, int8 state": lambda ps: adan.Adan(ps, lr=1e-3, foreach=False, fused=False, state_dtype="int8"),
        "floor (reads 6, writes 5)": FloorStep,
    }
    try:
        import pytorch_optimizer  # optional external peer with the reference maths

        table["pytorch_optimizer Adan"] = lambda ps: pytorch_optimizer.Adan(ps, lr=1e-3, foreach=True)
    except ImportError:
        pass
    if case == "large":  # dynamo traces the step once per tensor: 1000 tensors take many minutes
        table["adan fused, torch.compile"] = CompiledStep
        table["adan fused, bfloat16 state, torch.compile"] = lambda ps: CompiledStep(ps, state_dtype="bfloat16")
        table["adan fused, int8 state, torch.compile"] = lambda ps: CompiledStep(ps, state_dtype="int8")
    if COMPILE_FOREACH:
        table["adan foreach, torch.compile"] = lambda ps: CompiledStep(ps, foreach=True)
    return table


def state_bytes_per_param(opt, params: list[torch.Tensor]) -> float:
    """Optimizer state bytes per parameter (the floor: its four float32 buffers)."""
    if isinstance(opt, FloorStep):
        return sum(t.numel() * t.element_size() for lst in opt.buffers for t in lst) / sum(p.numel() for p in params)
    return _compact.state_bytes_per_param(getattr(opt, "opt", opt))


def bench_case(
    case: str, threads: int, reps: int, warmup: int = 2, dtype: torch.dtype = torch.float32, burst: int = 3
) -> dict[str, tuple[float, float]]:
    torch.set_num_threads(threads)
    values = make_case(case, dtype)
    grads = [torch.randn_like(v) * 1e-2 for v in values]
    runs = {}
    for name, factory in contenders(case).items():
        if factory is FloorStep and dtype != torch.float32:
            continue  # the floor kernel reads float32 arrays
        params = [torch.nn.Parameter(v.clone()) for v in values]
        for p, g in zip(params, grads):
            p.grad = g
        opt = factory(params)
        for _ in range(warmup):
            opt.step()
        runs[name] = (opt, [], state_bytes_per_param(opt, params))
    for _ in range(reps):
        for name, (opt, times, _) in runs.items():
            opt.step()  # after the others' steps: not timed (see the module docstring)
            for _ in range(burst - 1):
                t0 = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t0)
    return {name: (statistics.median(times), nbytes) for name, (_, times, nbytes) in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["large", "small"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--burst", type=int, default=3, help="consecutive steps per contender and round; the first is not timed")
    parser.add_argument("--only", nargs="*", help="names of the implementations to run (besides the two baselines)")
    parser.add_argument("--compile-foreach", action="store_true", help="add a compiled foreach step (slow to compile)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="parameter dtype")
    args = parser.parse_args()
    if args.burst < 2:
        parser.error("--burst must be at least 2 (the first step of each burst is not timed)")
    global COMPILE_FOREACH
    COMPILE_FOREACH = args.compile_foreach
    if args.only:
        keep = lambda name: name.startswith("torch AdamW fused") or name.startswith("floor") or any(o == name for o in args.only)
        global contenders
        full = contenders
        contenders = lambda case: {k: v for k, v in full(case).items() if keep(k)}

    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, adan {adan.__version__}, {args.dtype} parameters, reps {args.reps} (medians)\n")
    print("| case | threads | implementation | state B/param | median ms | x fused AdamW | x floor |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for case in args.cases:
        for threads in args.threads:
            medians = bench_case(case, threads, args.reps, dtype=dtype, burst=args.burst)
            base = medians["torch AdamW fused"][0]
            floor = medians.get("floor (reads 6, writes 5)", (None,))[0]
            for name, (t, nbytes) in medians.items():
                vs_floor = f"{t / floor:.2f}" if floor else "–"
                print(f"| {case} | {threads} | {name} | {nbytes:.2f} | {t * 1e3:.2f} | {t / base:.2f} | {vs_floor} |", flush=True)


if __name__ == "__main__":
    main()
