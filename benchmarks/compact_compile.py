"""Compact state under torch.compile against the eager fused float32 step.

    python benchmarks/compact_compile.py bfloat16 2      # state format, threads

On 4 tensors of 1024 x 2048 float32 parameters (8.4M), interleaved, medians of 9 steps after 2
warm-up steps, each row as a ratio to the eager fused float32 step of the same run:
- ``fused float32``: ``Adan(fused=True)``, eager (the baseline);
- ``compiled, FMT state``: ``torch.compile(opt.step)`` of ``Adan(fused=True, state_dtype=FMT)``;
- ``single-tensor eager, FMT state``: the torch-ops path (``foreach=False, fused=False``).
It also prints the seconds the first compiled step took (tracing and compiling included).
Few tensors keep the compile short, which the 96-tensor case of ``step_time.py`` does not
when the compiled step traces the torch ops.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import adan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state_dtype", choices=["bfloat16", "int8"])
    parser.add_argument("threads", type=int)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    fmt = args.state_dtype
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(1024, 2048, generator=gen) for _ in range(4)]
    grads = [torch.randn_like(v) * 1e-2 for v in values]

    def make(**kwargs) -> adan.Adan:
        params = [torch.nn.Parameter(v.clone()) for v in values]
        for p, g in zip(params, grads):
            p.grad = g
        return adan.Adan(params, lr=1e-3, **kwargs)

    fused = make(fused=True)
    compiled = torch.compile(make(fused=True, state_dtype=fmt).step)
    single = make(foreach=False, fused=False, state_dtype=fmt)
    t0 = time.perf_counter()
    compiled()
    print(f"first compiled step (compile included): {time.perf_counter() - t0:.1f} s")
    steps = {"fused float32": fused.step, f"compiled, {fmt} state": compiled, f"single-tensor eager, {fmt} state": single.step}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(2):
        for step in steps.values():
            step()
    for _ in range(args.reps):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["fused float32"])
    print("| threads | step | median ms | x eager fused float32 |\n|---:|---|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {args.threads} | {name} | {med * 1e3:.2f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
