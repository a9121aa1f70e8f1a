"""One prepared GPU check: correctness of every CUDA path, then timings, in one table.

    python benchmarks/gpu_check.py            # about 2-3 minutes on one GPU
    python benchmarks/gpu_check.py --quick    # fewer repetitions

On a machine without CUDA it says so, skips the CUDA parts and exits 0 (the CPU paths are
the test suite's). On CUDA it checks, each against the single-tensor path in float64 or
at float32 tolerances:

* the fused Triton kernel in float32, bfloat16 and float16 (with clipping and weight decay);
* compact state (bfloat16, int8) through the Triton compact kernel against the CPU kernel;
* GradScaler with ``fused=True``: an inf gradient skips the step (step counts included);
* ``capturable=True`` under CUDA-graph capture, replayed, against eager;
* ``torch.compile`` of the step against eager;

then times fused Adan against torch's fused AdamW and a device-to-device copy of Adan's
bytes (its memory floor: 44 bytes per float32 parameter) on the large (25.2M parameters in
96 tensors) and small (1000 x 1000) cases, and prints one Markdown table (medians of CUDA
events).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from adan import Adan


def _check(name: str, fn, results: list) -> None:
    start = time.perf_counter()
    try:
        detail = fn()
        results.append((name, "ok", detail or "", time.perf_counter() - start))
    except Exception as exc:  # report every check, keep going
        results.append((name, "FAILED", f"{type(exc).__name__}: {exc}"[:300], time.perf_counter() - start))


def _params(shapes, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(device=device, dtype=dtype)) for s in shapes]


def _run(opt_kw, dtype, device, steps=5, shapes=((256, 64), (64,), (1000,), (3, 5, 7)), **extra):
    ps = _params(shapes, dtype, device)
    opt = Adan(ps, **opt_kw, **extra)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(device=device, dtype=dtype)
        opt.step()
    return ps, opt


def check_fused_parity(dtype) -> str:
    kw = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=1.0)
    fused, of = _run(kw, dtype, "cuda", fused=True)
    single, os_ = _run(kw, dtype, "cuda", foreach=False)
    for a, b in zip(fused, single):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(of.state[a]["exp_avg_sq"], os_.state[b]["exp_avg_sq"])
    return f"{dtype} fused == single-tensor"


def check_compact(fmt) -> str:
    kw = dict(lr=1e-2, weight_decay=0.02, state_dtype=fmt)
    shapes = ((300, 40), (5000,), (64, 8, 3, 3))
    cuda, oc = _run(kw, torch.float32, "cuda", shapes=shapes, fused=True)
    cpu, _ = _run(kw, torch.float32, "cpu", shapes=shapes, fused=True)
    err = max(((a.cpu() - b).norm() / b.norm()).item() for a, b in zip(cuda, cpu))
    assert err < (2e-3 if fmt == "bfloat16" else 2e-4), err
    return f"{fmt} state: Triton vs CPU kernel, relative error {err:.1e}"


def check_one_launch_per_bucket(fmt) -> str:
    """300 tiny and odd-sized tensors: the Triton kernels' one launch per bucket (pointer and
    tile tables) against the single-tensor path (float32) or the CPU compact kernel."""
    shapes = tuple((k % 37 + 1, k % 5 + 1) if k % 3 else (k * 7 + 1,) for k in range(300)) + ((64, 300), (33, 257))  # int8-eligible
    kw = dict(lr=1e-2, weight_decay=0.02, state_dtype=fmt)
    cuda, _ = _run(kw, torch.float32, "cuda", shapes=shapes, fused=True)
    if fmt == "float32":
        other, _ = _run(kw, torch.float32, "cuda", shapes=shapes, foreach=False)
    else:
        other, _ = _run(kw, torch.float32, "cpu", shapes=shapes, fused=True)
    err = max(((a.cpu() - b.cpu()).norm() / b.cpu().norm()).item() for a, b in zip(cuda, other))
    assert err < {"float32": 1e-5, "bfloat16": 2e-3}.get(fmt, 2e-4), err
    return f"{len(shapes)} tensors, {fmt} state: relative error {err:.1e}"


def check_grad_scaler() -> str:
    ps = _params(((128, 128),), torch.float32, "cuda")
    opt = Adan(ps, lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    before = ps[0].detach().clone()
    ps[0].grad = torch.full_like(ps[0], float("inf"))
    scaler.step(opt)
    scaler.update()
    assert torch.equal(ps[0], before) and (not opt.state[ps[0]] or opt.state[ps[0]]["step"].item() == 0)
    ps[0].grad = torch.randn_like(ps[0])
    scaler.step(opt)
    assert not torch.equal(ps[0], before)
    return "inf skipped the step, the next one ran"


def check_cuda_graph() -> str:
    kw = dict(lr=torch.tensor(1e-2, device="cuda"), weight_decay=0.02, capturable=True, fused=True)
    ps = _params(((256, 64), (64,)), torch.float32, "cuda")
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, ref_opt = Adan(ps, **kw), Adan(ref, **{**kw, "lr": torch.tensor(1e-2, device="cuda")})
    grads = [torch.randn_like(p) for p in ps]
    for p, q, g in zip(ps, ref, grads):
        p.grad, q.grad = g.clone(), g.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.step()
            ref_opt.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(3):
        graph.replay()
        ref_opt.step()
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a, b)
    return "3 replays == 3 eager steps"


def check_compile() -> str:
    kw = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=1.0)
    ps, opt = _run(kw, torch.float32, "cuda", steps=1)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ref_opt = Adan(ref, **kw)
    ref_opt.load_state_dict(opt.state_dict())
    step = torch.compile(opt.step)
    for _ in range(3):
        for p, q in zip(ps, ref):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        step()
        ref_opt.step()
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a, b)
    return "compiled step == eager"


def _time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timings(reps: int) -> list[tuple]:
    cases = {
        "large (25.2M params, 96 tensors)": [(1024, 4096), (4096, 1024), (1024, 1024), (1024,)] * 24,
        "small (1000 x 1000 elements)": [(1000,)] * 1000,
    }
    rows = []
    for case, shapes in cases.items():
        adan_ps = _params(shapes, torch.float32, "cuda")
        adamw_ps = [torch.nn.Parameter(p.detach().clone()) for p in adan_ps]
        for p, q in zip(adan_ps, adamw_ps):
            p.grad = torch.randn_like(p)
            q.grad = p.grad
        adan_opt = Adan(adan_ps, lr=1e-3, fused=True)
        adamw_opt = torch.optim.AdamW(adamw_ps, lr=1e-3, fused=True)
        n = sum(p.numel() for p in adan_ps)
        src = torch.empty(n * 11, device="cuda")  # 44 bytes per parameter: half read, half written
        dst = torch.empty(n * 11, device="cuda")
        for _ in range(3):
            adan_opt.step()
            adamw_opt.step()
            dst.copy_(src)
        t_adan, t_adamw, t_copy = _time(adan_opt.step, reps), _time(adamw_opt.step, reps), _time(lambda: dst.copy_(src), reps)
        gbs = 2 * src.numel() * 4 / (t_copy / 1e3) / 1e9
        rows.append((case, t_adan, t_adamw, t_copy, gbs))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    if not torch.cuda.is_available():
        print("no CUDA device: skipping the CUDA checks and timings (the CPU paths are tested by `make test`)")
        return 0
    try:
        import triton

        print(f"triton {triton.__version__}, {torch.cuda.get_device_name()}")
    except ImportError:
        print(f"{torch.cuda.get_device_name()}, no triton: fused=True cannot run on CUDA")
    results: list = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        _check(f"fused parity {dtype}", lambda d=dtype: check_fused_parity(d), results)
    for fmt in ("bfloat16", "int8"):
        _check(f"compact {fmt}", lambda f=fmt: check_compact(f), results)
    for fmt in ("float32", "bfloat16", "int8"):
        _check(f"one launch per bucket, {fmt}", lambda f=fmt: check_one_launch_per_bucket(f), results)
    _check("GradScaler inf skip", check_grad_scaler, results)
    _check("capturable under CUDA graphs", check_cuda_graph, results)
    _check("torch.compile", check_compile, results)
    print("\n| check | result | detail | s |\n|---|---|---|---:|")
    for name, status, detail, secs in results:
        print(f"| {name} | {status} | {detail} | {secs:.1f} |")
    rows = timings(5 if args.quick else 20)
    print("\n| case | adan fused ms | torch fused AdamW ms | copy of Adan's bytes ms (GB/s) | x AdamW | x copy floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for case, a, w, c, gbs in rows:
        print(f"| {case} | {a:.3f} | {w:.3f} | {c:.3f} ({gbs:.0f}) | {a / w:.2f} | {a / c:.2f} |")
    return 1 if any(r[1] != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
