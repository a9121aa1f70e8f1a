"""Bit-identity check: run many configurations, save every tensor; compare against a baseline.
usage: python bitcheck.py save OUT.pt | python bitcheck.py compare BASE.pt"""
import itertools, sys, torch
from adan import Adan

def configs():
    paths = [dict(foreach=False), dict(foreach=True), dict(fused=True)]
    for path, fmt, pu, dtype, opts in itertools.product(
        paths, ["float32", "bfloat16", "int8"], ["nearest", "stochastic", "kahan"],
        [torch.float32, torch.bfloat16, torch.float16, torch.float64],
        [dict(), dict(weight_decay=0.05), dict(weight_decay=0.05, no_prox=True), dict(max_grad_norm=0.3),
         dict(maximize=True, max_grad_norm=1.0), dict(lr=torch.tensor(0.01), weight_decay=0.02), dict(betas=(0.9, 0.005, 0.999))]):
        if pu == "stochastic" and dtype == torch.float16:
            continue
        if dtype == torch.float64 and (fmt != "float32" or pu != "nearest"):
            continue
        yield path, fmt, pu, dtype, opts

def run(path, fmt, pu, dtype, opts):
    torch.manual_seed(0)
    shapes = [(70, 90), (5000,), (3,), (64, 300), ()]
    params = [torch.randn(s, dtype=torch.float32).to(dtype).requires_grad_() for s in shapes]
    opt = Adan(params, **{"lr": 0.01, **opts}, state_dtype=fmt, param_update=pu, **path)
    gen = torch.Generator().manual_seed(1)
    out = []
    for step in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        if step == 2:
            params[2].grad = None
        opt.step()
    out = [p.detach().clone() for p in params]
    for p in params:
        for k, v in sorted(opt.state[p].items()):
            if torch.is_tensor(v):
                out.append(v.detach().clone())
    return out

def main():
    mode, file = sys.argv[1], sys.argv[2]
    res = {}
    for c in configs():
        key = repr(c)
        res[key] = run(*c)
    if mode == "save":
        torch.save(res, file); print("saved", len(res)); return
    base = torch.load(file)
    bad = 0
    assert base.keys() == res.keys(), "config sets differ"
    for k in base:
        a, b = base[k], res[k]
        ok = len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and
              torch.equal(x.view(torch.uint8) if x.dim() else x.reshape(1).view(torch.uint8),
                          y.view(torch.uint8) if y.dim() else y.reshape(1).view(torch.uint8)) for x, y in zip(a, b))
        if not ok:
            bad += 1; print("DIFF", k)
    print(f"{len(base) - bad}/{len(base)} configs bit-identical")
    sys.exit(1 if bad else 0)

main()
