"""One prepared GPU check: correctness of every CUDA path, then timings, in one table.

    python benchmarks/gpu_check.py            # about a minute on one H200
    python benchmarks/gpu_check.py --quick    # fewer repetitions

On a machine without CUDA it says so, skips the CUDA parts and exits 0 (the CPU paths are
the test suite's). On CUDA it checks, each against the single-tensor path in float64 or
at float32 tolerances:

* the fused Triton kernel and the foreach path in float32, bfloat16 and float16 (with
  clipping and weight decay);
* compact state (bfloat16, int8) through the Triton compact kernel against the CPU kernel,
  and through the torch-ops path (what CUDA without Triton runs) against the CPU's, with the
  CUDA kernels one such step launches on 302 tensors (batched: a few per op, not per tensor);
* one launch per bucket on 302 tiny and odd-sized tensors, and one Adan kernel per step
  (counted by torch's profiler), in each state format;
* the step counts the kernels keep (the last program of a tensor to arrive stores it) on a
  16.8M-element tensor racing with tiny, empty and 0-d ones, in each state format;
* GradScaler with ``fused=True``: an inf gradient skips the step (step counts included);
* ``torch.compile`` of the default step and of the fused step in each state format;
* ``capturable=True`` under CUDA-graph capture, replayed, against eager (last: a failed
  capture breaks CUDA's random generator for what follows);

then times fused Adan (float32, bfloat16 and int8 state), the foreach path and the torch-ops
compact path (bfloat16 and int8 state, ``fused=False``) against
torch's fused AdamW and a device-to-device copy of Adan's bytes (its memory floor: 44 bytes
per float32 parameter) on 25.2M parameters in 96 tensors (``step_time.py``'s large case),
226.5M in 96, and 1000 tensors of 1000 elements, and prints Markdown tables (medians of
CUDA-event timings over ``--reps`` rounds, each round timing every contender once, in turn),
then the traceback of every failed check. Exit code 1 if any failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback

import torch

from adan import Adan


def _check(name: str, fn, results: list, tracebacks: list) -> None:
    start = time.perf_counter()
    try:
        detail = fn()
        results.append((name, "ok", detail or "", time.perf_counter() - start))
    except Exception as exc:  # report every check, keep going; the tracebacks follow the table
        results.append((name, "FAILED", f"{type(exc).__name__}: {exc}"[:300].replace("\n", " "), time.perf_counter() - start))
        tracebacks.append((name, traceback.format_exc()))


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


def check_parity(dtype, path: str) -> str:
    """The fused or foreach path against the single-tensor path, with clipping and weight decay."""
    kw = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=1.0)
    other, oo = _run(kw, dtype, "cuda", **({"fused": True} if path == "fused" else {"foreach": True}))
    single, os_ = _run(kw, dtype, "cuda", foreach=False)
    for a, b in zip(other, single):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(oo.state[a]["exp_avg_sq"], os_.state[b]["exp_avg_sq"])
    return f"{dtype} {path} == single-tensor"


def check_compact(fmt) -> str:
    kw = dict(lr=1e-2, weight_decay=0.02, state_dtype=fmt)
    shapes = ((300, 40), (5000,), (64, 8, 3, 3))
    cuda, oc = _run(kw, torch.float32, "cuda", shapes=shapes, fused=True)
    cpu, _ = _run(kw, torch.float32, "cpu", shapes=shapes, fused=True)
    err = max(((a.cpu() - b).norm() / b.norm()).item() for a, b in zip(cuda, cpu))
    assert err < (2e-3 if fmt == "bfloat16" else 2e-4), err
    return f"{fmt} state: Triton vs CPU kernel, relative error {err:.1e}"


def _kernels_of_a_step(ps, opt) -> list:
    """The CUDA kernels of one step (torch's profiler), after a step that makes the state."""
    from torch.profiler import ProfilerActivity, profile

    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def check_torch_ops_compact(fmt) -> str:
    """The torch-ops compact path on CUDA (``fused=False``: what runs without Triton) against
    the same path on the CPU, on 300 tiny tensors and two int8-eligible ones; then the CUDA
    kernels one of its steps launches, which batching keeps to a few per op."""
    shapes = tuple((k % 37 + 1, k % 5 + 1) if k % 3 else (k * 7 + 1,) for k in range(300)) + ((64, 300), (33, 257))
    kw = dict(lr=1e-2, weight_decay=0.02, state_dtype=fmt, foreach=True, fused=False)
    cuda, opt = _run(kw, torch.float32, "cuda", shapes=shapes)
    cpu, _ = _run(kw, torch.float32, "cpu", shapes=shapes)
    err = max(((a.cpu() - b).norm() / b.norm()).item() for a, b in zip(cuda, cpu))
    assert err < (2e-3 if fmt == "bfloat16" else 2e-4), err
    kernels = _kernels_of_a_step(cuda, opt)
    if fmt == "bfloat16":  # (int8 codes are made per tensor, for its blocks' scales)
        assert len(kernels) < len(shapes), f"{len(kernels)} kernels for {len(shapes)} tensors: not batched"
    return f"{fmt} state: CUDA vs CPU torch ops, relative error {err:.1e}; {len(kernels)} kernels a step for {len(shapes)} tensors"


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


def check_step_counts(fmt) -> str:
    """The kernels count the steps: the last of a tensor's programs to arrive stores the new
    count. A tensor of 16.8M elements (16,384 programs of the float32 kernel, 65,536 of the
    compact one) racing with tiny, odd-sized, empty and 0-d ones, for 7 steps: every count
    must be 7, and the float32 parameters equal the single-tensor path's."""
    shapes = ((4096, 4096), (0,), (), (1025,), (3, 300), (7,))
    kw = dict(lr=1e-2, weight_decay=0.02, state_dtype=fmt)
    ps, opt = _run(kw, torch.float32, "cuda", steps=7, shapes=shapes, fused=True)
    counts = sorted({opt.state[p]["step"].item() for p in ps})
    assert counts == [7.0], counts
    if fmt == "float32":
        single, _ = _run(kw, torch.float32, "cuda", steps=7, shapes=shapes, foreach=False)
        for a, b in zip(ps, single):
            torch.testing.assert_close(a, b)
    return f"{fmt} state: 7 steps counted on all {len(shapes)} tensors" + (", == single-tensor" if fmt == "float32" else "")


def check_launches(fmt) -> str:
    """Count the CUDA kernels one step launches (torch's profiler): the Adan kernel must run
    once for a bucket of 300 tensors."""
    shapes = tuple((k % 37 + 1, k % 5 + 1) if k % 3 else (k * 7 + 1,) for k in range(300))
    ps = _params(shapes, torch.float32, "cuda")
    kernels = _kernels_of_a_step(ps, Adan(ps, lr=1e-2, fused=True, state_dtype=fmt))
    adan = [e.name for e in kernels if "adan" in e.name]
    assert len(adan) == 1, adan
    others = sorted({e.name[:40] for e in kernels if "adan" not in e.name})
    return f"{fmt} state, 300 tensors: 1 Adan kernel ({adan[0]}), {len(kernels) - 1} other kernels/copies ({', '.join(others)[:160]})"


def check_compile_fused(fmt) -> str:
    """torch.compile of a fused step (the custom ops around the Triton kernels) against eager."""
    kw = dict(lr=1e-2, weight_decay=0.02, fused=True, state_dtype=fmt)
    shapes = ((300, 40), (5000,), (64, 8, 3, 3))
    ps = _params(shapes, torch.float32, "cuda")
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, ref_opt = Adan(ps, **kw), Adan(ref, **kw)
    step = torch.compile(opt.step)
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        for p, q in zip(ps, ref):
            p.grad = torch.randn(p.shape, generator=g).to("cuda")
            q.grad = p.grad.clone()
        torch.manual_seed(i)
        step()
        torch.manual_seed(i)
        ref_opt.step()
    err = max(((a - b).norm() / b.norm()).item() for a, b in zip(ps, ref))
    assert err < (1e-6 if fmt == "float32" else 2e-3), err
    return f"{fmt} state: compiled fused step vs eager, relative error {err:.1e}"


def check_grad_scaler() -> str:
    ps = _params(((128, 128),), torch.float32, "cuda")
    opt = Adan(ps, lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    scaler.scale(ps[0].sum())  # the scaler sets its scale up at the first scale()
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


def _elapsed_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _time(fn, reps: int) -> float:
    """Median of ``reps`` CUDA-event timings of ``fn()``."""
    return statistics.median(_elapsed_ms(fn) for _ in range(reps))


def _time_interleaved(fns: dict, reps: int) -> dict:
    """Medians of ``reps`` rounds in which every function runs once, in turn: noise on the
    host (which bounds the smaller cases) then hits every contender alike."""
    times: dict = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(_elapsed_ms(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def timings(reps: int) -> list[tuple]:
    cases = {
        "large (step_time.py's: 25.2M params, 96 tensors)": ([(512, 512)] * 4 + [(1024, 512), (512, 1024), (512,), (512,)]) * 12,
        "huge (226M params, 96 tensors)": [(1024, 4096), (4096, 1024), (1024, 1024), (1024,)] * 24,
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
        others = {
            "foreach": Adan(adan_ps, lr=1e-3, foreach=True),
            "bf16 state": Adan(adan_ps, lr=1e-3, fused=True, state_dtype="bfloat16"),
            "int8 state": Adan(adan_ps, lr=1e-3, fused=True, state_dtype="int8"),
            "torch ops, bf16 state": Adan(adan_ps, lr=1e-3, foreach=True, fused=False, state_dtype="bfloat16"),
            "torch ops, int8 state": Adan(adan_ps, lr=1e-3, foreach=True, fused=False, state_dtype="int8"),
        }
        n = sum(p.numel() for p in adan_ps)
        # Adan moves 44 bytes per parameter (24 read, 20 written): a copy of 22 bytes per
        # parameter moves as many (read once, written once).
        src = torch.empty(n * 11 // 2, device="cuda")
        dst = torch.empty(n * 11 // 2, device="cuda")
        for _ in range(3):
            adan_opt.step()
            adamw_opt.step()
            dst.copy_(src)
            for opt in others.values():
                opt.step()
        steps = {"fused, float32 state": adan_opt.step, **{name: opt.step for name, opt in others.items()}}
        t = _time_interleaved({**steps, "adamw": adamw_opt.step, "copy": lambda: dst.copy_(src)}, reps)
        gbs = 2 * src.numel() * 4 / (t["copy"] / 1e3) / 1e9
        rows.extend((case, name, t[name], t["adamw"], t["copy"], gbs) for name in steps)
        del others, adan_opt, adamw_opt, src, dst
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    parser.add_argument("--reps", type=int, default=20, help="timing rounds (each times every contender once)")
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
    tracebacks: list = []
    checks = [(f"fused parity {d}", lambda d=d: check_parity(d, "fused")) for d in (torch.float32, torch.bfloat16, torch.float16)]
    checks += [(f"foreach parity {d}", lambda d=d: check_parity(d, "foreach")) for d in (torch.float32, torch.bfloat16)]
    checks += [(f"compact {f}", lambda f=f: check_compact(f)) for f in ("bfloat16", "int8")]
    checks += [(f"torch-ops compact {f}", lambda f=f: check_torch_ops_compact(f)) for f in ("bfloat16", "int8")]
    checks += [(f"one launch per bucket, {f}", lambda f=f: check_one_launch_per_bucket(f)) for f in ("float32", "bfloat16", "int8")]
    checks += [(f"step counts, {f}", lambda f=f: check_step_counts(f)) for f in ("float32", "bfloat16", "int8")]
    checks += [(f"kernels per step, {f}", lambda f=f: check_launches(f)) for f in ("float32", "bfloat16", "int8")]
    checks += [("GradScaler inf skip", check_grad_scaler), ("torch.compile, default path", check_compile)]
    checks += [(f"torch.compile, fused {f}", lambda f=f: check_compile_fused(f)) for f in ("float32", "bfloat16", "int8")]
    for name, fn in checks:
        _check(name, fn, results, tracebacks)
        print(f"{results[-1][1]:6} {name} ({results[-1][3]:.1f} s)", flush=True)
    try:
        rows = timings(5 if args.quick else args.reps)
    except Exception:
        tracebacks.append(("timings", traceback.format_exc()))
        rows = []
    # Last: a capture that fails leaves CUDA's generator in capture mode, and every later
    # random draw on the device raises (seen once; it hid the checks after it).
    _check("capturable under CUDA graphs", check_cuda_graph, results, tracebacks)
    print(f"{results[-1][1]:6} capturable under CUDA graphs ({results[-1][3]:.1f} s)", flush=True)
    print("\n| check | result | detail | s |\n|---|---|---|---:|")
    for name, status, detail, secs in results:
        print(f"| {name} | {status} | {detail} | {secs:.1f} |")
    print("\n| case | Adan | Adan ms | torch fused AdamW ms | copy of Adan's bytes ms (GB/s) | x AdamW | x copy floor |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case, name, a, w, c, gbs in rows:
        print(f"| {case} | {name} | {a:.3f} | {w:.3f} | {c:.3f} ({gbs:.0f}) | {a / w:.2f} | {a / c:.2f} |")
    for name, tb in tracebacks:
        print(f"\n--- {name} ---\n{tb}")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
