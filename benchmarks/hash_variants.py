"""The bfloat16-state kernel with other per-element rounding hashes, against the real one.

    python benchmarks/hash_variants.py time H0,H2,H1,none 1      # variants, threads
    python benchmarks/hash_variants.py spread H0,H2,H1            # per-element rounding rates

Each variant is ``adan_cpu_compact.c`` with the per-element hash (``mix32(key ^ ...)``)
replaced, built like the real kernel and swapped in for it. ``time`` runs every variant's
fused bfloat16-state step and torch's fused AdamW round-robin on step_time.py's large case
(an untimed step before each timed one) and prints medians as ratios to AdamW. ``spread``
measures what ``test_bfloat16_state_rounding_is_fresh_for_every_element_at_every_step``
asserts (the spread of per-element round-up rates over 64 seeds, 1.0 for independent draws).
``H0`` is the kernel's own hash (lowbias32); ``none`` uses the key alone (no per-element
mixing: timing only, its rounding is wrong).
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import adan
from adan._native import KERNEL_DIR, load_library
from adan.kernels import cpu

VARIANTS = {
    "H0": "x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16; return x;",
    "H1": "x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; return x;",
    "H2": "x *= 0x7feb352du; x ^= x >> 16; x *= 0x846ca68bu; return x;",
    "none": "return x;",
}


def build(name: str, workdir: Path):
    source = Path(cpu._COMPACT_SOURCE).read_text()
    hook = "static inline uint32_t mix32(uint32_t x) {"
    source = source.replace(hook, "static inline uint32_t elem32(uint32_t x) {" + VARIANTS[name] + "}\n" + hook, 1)
    source = re.sub(r"mix32\(key \^", "elem32(key ^", source)  # the per-element hashes only
    path = workdir / f"compact_{name}.c"
    path.write_text(source)
    fn = load_library(path, (KERNEL_DIR,)).adan_fused_step_compact
    real = cpu._load().compact
    fn.restype, fn.argtypes = real.restype, real.argtypes
    return fn


def spread(fns: dict) -> None:
    lib, c1, seeds, n = cpu._load(), 1.0 + 2.0**-9, 64, 4096
    for name, fn in fns.items():
        lib.compact = fn
        exact = {"exp_avg": 0.5 * c1, "exp_avg_sq": 0.25 * c1 * c1, "neg_pre_grad": -c1}
        draws: dict = {k: [] for k in exact}
        for seed in range(seeds):
            p = torch.zeros(n, requires_grad=True)
            opt = adan.Adan([p], lr=1e-30, betas=(0.5, 0.5, 0.75), state_dtype="bfloat16", fused=True)
            opt._generators[torch.device("cpu")] = torch.Generator().manual_seed(seed)
            p.grad = torch.full_like(p, c1)
            opt.step()
            for k in draws:
                draws[k].append(opt.state[p][k].double())
        out = []
        for k, value in exact.items():
            x = torch.stack(draws[k])
            lo, hi = x.min(), x.max()
            rate = float((value - lo) / (hi - lo))
            per_element = (x == hi).double().mean(0)
            out.append(f"{k}: spread {float(per_element.var()) / (rate * (1 - rate) / seeds):.3f}")
        print(name, "; ".join(out))


def timing(fns: dict, threads: int, rounds: int = 9) -> None:
    torch.set_num_threads(threads)
    lib, g = cpu._load(), torch.Generator().manual_seed(0)
    shapes = ([(512, 512)] * 4 + [(1024, 512), (512, 1024), (512,), (512,)]) * 12
    values = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g) * 1e-2 for s in shapes]

    def params():
        ps = [torch.nn.Parameter(v.clone()) for v in values]
        for p, gr in zip(ps, grads):
            p.grad = gr
        return ps

    opts = {name: adan.Adan(params(), lr=1e-3, fused=True, state_dtype="bfloat16") for name in fns}
    adamw = torch.optim.AdamW(params(), lr=1e-3, fused=True)

    def step(name):
        if name == "AdamW":
            adamw.step()
        else:
            lib.compact = fns[name]
            opts[name].step()

    names = [*fns, "AdamW"]
    times: dict = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step(name)  # untimed: memory left idle makes the next step slower, whoever takes it
            t0 = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - t0)
    w = statistics.median(times["AdamW"])
    print(f"{threads} thread(s), fused AdamW {w * 1e3:.1f} ms; x AdamW: " + ", ".join(f"{n} {statistics.median(times[n]) / w:.3f}" for n in fns))


def main() -> None:
    mode, names = sys.argv[1], sys.argv[2].split(",")
    with tempfile.TemporaryDirectory() as tmp:
        fns = {name: build(name, Path(tmp)) for name in names}
        if mode == "spread":
            spread(fns)
        else:
            timing(fns, int(sys.argv[3]))


if __name__ == "__main__":
    main()
