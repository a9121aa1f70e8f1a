"""Per-op costs of the torch-ops compact path on one 64K-element slice, and what each change of
issue 14's last session replaced (the "before" rows are the replaced ops, rebuilt here).

    python benchmarks/codec_ops.py [threads]      # default 1

Prints microseconds per call (mean of 300 calls after 10 warm-up ones). The slice is a
32 x 2048 float32 tensor, the bfloat16 scratch 4 such buffers, as the CPU path uses them.
"""

from __future__ import annotations

import sys
import time

import torch

from adan import _compact as C
from adan import _functional as F
from adan._codes import NONFINITE_CODE


def bench(fn, calls: int = 300) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    n = 1 << 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2048, generator=g)
    scratch = torch.randn(2, 2, n, generator=g)
    codes, scale = C.quantize_signed(x)
    b = x.abs()

    def dequantize_signed_formula():  # the previous decoder: eight passes
        q = C._blocks(codes.float())
        values = q * q.abs() * (scale / 16129.0).unsqueeze(-1)
        return C._unblock(torch.where(q == NONFINITE_CODE, float("nan"), values), codes.shape)

    p, grad, m, v, nn, neg = (torch.randn(n, generator=g) for _ in range(6))
    nn.abs_()
    coefs = tuple(torch.tensor([c], dtype=torch.float64) for c in (1e-3, 1e-3, 1.0, 1.0))
    hp = dict(beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, lr=1e-3, weight_decay=0.0, no_prox=False)
    bf = [torch.randn(n, generator=g).bfloat16() for _ in range(4)]
    noise = C.rounding_bits((n,), x.device)
    rows = [
        ("NaN, before: isnan + masked_fill_ (4 x 64K)", lambda: scratch.masked_fill_(torch.isnan(scratch), float("nan"))),
        ("NaN, after: nan_to_num_ (4 x 64K)", lambda: scratch.nan_to_num_(nan=float("nan"), posinf=float("inf"), neginf=float("-inf"))),
        ("bits, before: randint over int32 (64K)", lambda: torch.randint(-(2**31), 2**31, (n,), dtype=torch.int32)),
        ("bits, after: random_bits, int64 words (64K int32)", lambda: C.random_bits((n,), torch.int32, x.device)),
        ("int8 decode, before: formula", dequantize_signed_formula),
        ("int8 decode, after: table (dequantize_signed)", lambda: C.dequantize_signed(codes, scale)),
        ("floor of 1, before: (b > 0).float()", lambda: (b > 0).float()),
        ("floor of 1, after: b.sign()", lambda: b.sign()),
        ("slice: _adan_lists (the update)", lambda: F._adan_lists([p], [grad], [m], [v], [nn], [neg], coefs, fresh=[False], scale=None, **hp)),
        ("slice: rounding_bits (32 bits an element)", lambda: C.rounding_bits((n,), x.device)),
        ("slice: 4 conversions bf16 -> f32", lambda: [s.copy_(t) for s, t in zip(scratch.view(4, -1), bf)]),
        ("slice: 4 conversions f32 -> bf16", lambda: [t.copy_(s) for s, t in zip(scratch.view(4, -1), bf)]),
        ("slice: round_to_bf16_ of the scratch", lambda: C.round_to_bf16_(scratch, noise.unsqueeze(1))),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| op | us |\n|---|---:|")
    for name, fn in rows:
        print(f"| {name} | {bench(fn):.0f} |")


if __name__ == "__main__":
    main()
