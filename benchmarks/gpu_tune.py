"""Launch-parameter sweep of the Triton kernels, and where the host time of a step goes.

    python benchmarks/gpu_tune.py          # about a minute on one GPU

1. The full-state kernel's tile (``adan_triton._BLOCK``) and warps (``_NUM_WARPS``), and the
   compact kernel's warps (its tile is the 256-value scale block), timed on a bucket of
   226M float32 parameters (96 tensors) and on the 25.2M-parameter case of
   ``step_time.py``: medians of CUDA events over whole ``step()`` calls, against torch's
   fused AdamW on the same tensors. Bytes per parameter: Adan 44 (float32 state), AdamW 28.
2. A profile of the host side of one fused step on 1000 tensors of 1000 elements (where
   the kernel takes microseconds): cProfile's top functions by own time.
"""

from __future__ import annotations

import cProfile
import io
import itertools
import pstats
import sys

import torch

from adan import Adan
from adan.kernels import adan_triton, adan_triton_compact
from gpu_check import _time as time_cuda  # benchmarks/ is the script's directory


def _time(fn, reps: int = 15) -> float:
    """Median ms of ``reps`` CUDA-event timings, after three warm-up calls."""
    for _ in range(3):
        fn()
    return time_cuda(fn, reps)


def _params(shapes):
    g = torch.Generator(device="cuda").manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=g)) for s in shapes]
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps


CASES = {
    "226M params, 96 tensors": [(1024, 4096), (4096, 1024), (1024, 1024), (1024,)] * 24,
    "25.2M params, 96 tensors": ([(512, 512)] * 4 + [(1024, 512), (512, 1024), (512,), (512,)]) * 12,
}


def sweep() -> None:
    print("| case | Adan state | BLOCK | warps | Adan ms | AdamW ms | x AdamW | Adan TB/s | AdamW TB/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for case, shapes in CASES.items():
        ps = _params(shapes)
        n = sum(p.numel() for p in ps)
        adamw = torch.optim.AdamW(ps, lr=1e-3, fused=True)
        t_w = _time(adamw.step)
        del adamw
        opt = Adan(ps, lr=1e-3, fused=True)
        defaults = adan_triton._BLOCK, adan_triton._NUM_WARPS, adan_triton_compact._NUM_WARPS
        for block, warps in itertools.product((1024, 2048, 4096), (4, 8, 16)):
            adan_triton._BLOCK, adan_triton._NUM_WARPS = block, warps
            t = _time(opt.step)
            print(f"| {case} | float32 | {block} | {warps} | {t:.3f} | {t_w:.3f} | {t / t_w:.2f} | {44 * n / t / 1e9:.2f} | {28 * n / t_w / 1e9:.2f} |", flush=True)
        adan_triton._BLOCK, adan_triton._NUM_WARPS = defaults[:2]
        del opt
        for fmt in ("bfloat16", "int8"):
            opt = Adan(ps, lr=1e-3, fused=True, state_dtype=fmt)
            for warps in (1, 2, 4, 8):
                adan_triton_compact._NUM_WARPS = warps
                t = _time(opt.step)
                print(f"| {case} | {fmt} | 256 | {warps} | {t:.3f} | {t_w:.3f} | {t / t_w:.2f} | | |", flush=True)
            adan_triton_compact._NUM_WARPS = defaults[2]
            del opt
        del ps
        torch.cuda.empty_cache()


def host_profile() -> None:
    ps = _params([(1000,)] * 1000)
    opt = Adan(ps, lr=1e-3, fused=True)
    for _ in range(5):
        opt.step()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(20):
        opt.step()
    torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
    print(out.getvalue())


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to tune")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    sweep()
    host_profile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
