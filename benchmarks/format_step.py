"""One state format's fused step on the large case, against torch's fused AdamW and fused Adan
with float32 state, interleaved in one process (medians of 11 rounds).

    python benchmarks/format_step.py bfloat16 1     # state_dtype, threads

For before/after checks of a kernel change on a noisy machine: alternate it between two
checkouts (``PYTHONPATH=<checkout>/src``) and compare the ratios.
"""
import sys, time, statistics, torch, adan
fmt, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
shapes = []
for _ in range(12):
    shapes += [(512, 512)] * 4 + [(1024, 512), (512, 1024), (512,), (512,)]
vals = [torch.randn(s, generator=g) for s in shapes]
grads = [torch.randn(s, generator=g) * 1e-2 for s in shapes]
def mk(vs):
    ps = [torch.nn.Parameter(v.clone()) for v in vs]
    for p, gr in zip(ps, grads): p.grad = gr
    return ps
opt = adan.Adan(mk(vals), lr=1e-3, fused=True, state_dtype=fmt)
f32 = adan.Adan(mk(vals), lr=1e-3, fused=True)
aw = torch.optim.AdamW(mk(vals), lr=1e-3, fused=True)
for _ in range(2): opt.step(); f32.step(); aw.step()
ta, tf, tw = [], [], []
for _ in range(11):
    for o, ts in ((opt, ta), (f32, tf), (aw, tw)):
        t0 = time.perf_counter(); o.step(); ts.append(time.perf_counter() - t0)
a, f, w = map(statistics.median, (ta, tf, tw))
print(f"{fmt} t{threads}: {a*1e3:.1f} ms, x AdamW {a/w:.3f}, x adan f32 {a/f:.3f}")
