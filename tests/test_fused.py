"""The fused path: CPU kernel (and the Triton kernel under its interpreter) against the others."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import adan
from adan import Adan
from adan._fused import fused_available
from conftest import assert_rel_close
from optim_info import OPTIMIZER_INPUTS, PATHS

pytestmark = pytest.mark.skipif(not fused_available("cpu"), reason="no C compiler for the fused CPU kernel")


def _run(kwargs, shapes, dtype, steps=6, seed=0, **path):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]
    opt = Adan(params, **kwargs, **path)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("config", OPTIMIZER_INPUTS, ids=str)
def test_fused_equals_single_tensor_float32(config):
    shapes = [(5, 4), (7,), (), (0, 3), (300, 301)]
    fused, o_fused = _run(config.kwargs, shapes, torch.float32, fused=True)
    single, o_single = _run(config.kwargs, shapes, torch.float32, foreach=False)
    for a, b in zip(fused, single):
        assert_rel_close(a, b, 2e-6)
        for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad", "step"):
            assert_rel_close(o_fused.state[a][key], o_single.state[b][key], 2e-6, key)


@pytest.mark.parametrize("dtype,rel", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)], ids=str)
@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_low_precision_params_use_float32_state_and_maths(dtype, rel, path):
    """bf16/fp16 parameters: float32 moments on every path, results within a few ulps of each other."""
    kwargs = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=5.0)
    shapes = [(64, 33), (1000,), ()]
    low, o_low = _run(kwargs, shapes, dtype, **PATHS[path])
    ref, _ = _run(kwargs, shapes, dtype, foreach=False)
    hi, _ = _run(kwargs, shapes, torch.float32, foreach=False)  # same data, float32 parameters
    for a, b, c in zip(low, ref, hi):
        assert a.dtype == dtype and o_low.state[a]["exp_avg"].dtype == torch.float32
        assert_rel_close(a.float(), b.float(), rel)
        assert_rel_close(a.float(), c, 20 * rel)


@pytest.mark.parametrize("numel", [0, 1, 3, 4097, 1_000_003])
@pytest.mark.parametrize("threads", [1, 2])
def test_sizes_and_threads(numel, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kwargs = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=10.0)
        fused, _ = _run(kwargs, [(numel,), (5,)], torch.float32, steps=3, fused=True)
        single, _ = _run(kwargs, [(numel,), (5,)], torch.float32, steps=3, foreach=False)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(fused, single):
        assert_rel_close(a, b, 2e-6)


def test_default_picks_fused_and_fused_true_rejects_strided_params():
    base = torch.randn(6, 4)
    strided = base.t().requires_grad_()  # not contiguous
    strided.grad = torch.ones_like(strided)
    with pytest.raises(ValueError, match="fused Adan needs contiguous parameters"):
        Adan([strided], fused=True).step()
    # fused=None takes the foreach path for it, with the same numbers.
    a = base.t().contiguous().t().requires_grad_()  # transposed strides, own storage
    b = base.t().contiguous().t().requires_grad_()
    assert not a.is_contiguous()
    for p in (a, b):
        p.grad = torch.ones_like(p)
    Adan([a], lr=0.1).step()
    Adan([b], lr=0.1, foreach=True).step()
    assert torch.equal(a, b)


@pytest.mark.skipif(not fused_available("cpu"), reason="no C compiler")
def test_default_path_is_chosen_once_and_again_when_the_kernel_refuses(monkeypatch):
    """A default group that took the fused path keeps it without choosing again (choosing
    reads every parameter). When its parameters stop suiting the kernel, here a conv
    weight turned channels_last in the middle of training, the step chooses again and
    takes the foreach path, as a fresh step would, instead of raising; it then tracks a
    twin that ran the foreach path throughout."""
    choices = []
    real = adan.optimizer._resolve_path
    monkeypatch.setattr(adan.optimizer, "_resolve_path", lambda *a: choices.append(a[1:]) or real(*a))
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=gen))
    twin = torch.nn.Parameter(w.detach().clone())
    opt, ref = Adan([w], lr=1e-2), Adan([twin], lr=1e-2, foreach=True)
    for step in range(6):
        if step == 3:
            for p in (w, twin):
                p.data = p.data.contiguous(memory_format=torch.channels_last)
            assert not w.is_contiguous()
        g = torch.randn(w.shape, generator=gen)
        w.grad, twin.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        assert_rel_close(w, twin, 1e-5)
        if step == 2:  # chosen at the first step only
            assert [c for c in choices if c == (None, None)] == [(None, None)]
    assert opt._fused_paths == {}  # foreach now: chosen at every step, nothing kept
    assert len([c for c in choices if c == (None, None)]) == 1 + 1 + 2  # steps 0; 3 (after the refusal); 4 and 5


def test_fused_is_the_default_where_available(monkeypatch):
    calls = []
    real = adan._fused._prepare_full
    monkeypatch.setattr(adan._fused, "_prepare_full", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = torch.zeros(4, requires_grad=True)
    p.grad = torch.ones(4)
    Adan([p]).step()
    assert calls == [1]


def _scaler_run(fused: bool, grads_scale=1024.0, inject_inf_at=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt = Adan(model.parameters(), lr=1e-2, weight_decay=0.02, max_grad_norm=0.5, **({"fused": True} if fused else {"foreach": True}))
    scaler = torch.amp.GradScaler("cpu", init_scale=grads_scale, growth_interval=1000)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    snapshots = []
    for step in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step == inject_inf_at:
            model.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        snapshots.append([p.detach().clone() for p in model.parameters()])
    return model, opt, snapshots


def test_grad_scaler_scale_and_found_inf_are_honoured():
    fused, opt, _ = _scaler_run(True)
    plain, _, _ = _scaler_run(False)  # GradScaler unscales in place, then a normal step
    assert opt._step_supports_amp_scaling
    for a, b in zip(fused.parameters(), plain.parameters()):
        assert_rel_close(a, b, 1e-5)

    _, opt_inf, snaps = _scaler_run(True, inject_inf_at=2)
    for before, after in zip(snaps[1], snaps[2]):  # the step with an inf was skipped
        assert torch.equal(before, after)
    assert all(s["step"].item() == 4 for s in opt_inf.state.values())  # 5 steps, one skipped
    for p in snaps[-1]:
        assert torch.isfinite(p).all()


def test_fused_step_allocates_nothing_model_sized():
    params = [torch.zeros(1 << 18, requires_grad=True) for _ in range(8)]  # 2M elements, 8 MB
    for p in params:
        p.grad = torch.randn_like(p)
    opt = Adan(params, fused=True, max_grad_norm=1.0, weight_decay=0.02)
    opt.step()  # state creation happens here
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events())
    assert allocated < 64 * 1024, f"fused step allocated {allocated} bytes"


def _run_isolated(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=600)


def test_without_a_compiler_fused_true_raises_and_default_warns_once(tmp_path):
    code = """
        import warnings, torch
        from adan import Adan
        p = torch.zeros(3, requires_grad=True); p.grad = torch.ones(3)
        try:
            Adan([p], fused=True)
        except RuntimeError as e:
            print("RAISED:", e)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            opt = Adan([p], lr=0.1)
            opt.step(); opt.step()
        print("WARNINGS:", len([x for x in w if "falling back" in str(x.message)]))
        q = torch.zeros(3, requires_grad=True); q.grad = torch.ones(3)
        o2 = Adan([q], lr=0.1, foreach=True); o2.step(); o2.step()
        print("EQUAL:", torch.equal(p, q))
    """
    out = _run_isolated(code, {"CC": "/nonexistent/cc", "ADAN_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "RAISED: fused=True: the CPU kernel could not be built" in out.stdout
    assert "WARNINGS: 1" in out.stdout
    assert "EQUAL: True" in out.stdout


def test_kernel_cache_is_reused(tmp_path):
    code = "import torch, adan._fused as f; print(f.fused_available('cpu'))"
    for _ in range(2):
        out = _run_isolated(code, {"ADAN_CACHE_DIR": str(tmp_path)})
        assert out.stdout.strip() == "True", out.stderr
    assert len(list(tmp_path.glob("adan_cpu-*.so"))) == 1


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="Triton is not installed (pip install triton) for its CPU interpreter",
)
def test_triton_kernel_under_the_interpreter_matches_the_cpu_kernel():
    code = """
        import torch
        from adan._fused import scalars_of
        from adan._lists import TensorLists
        from adan._maths import HParams
        from adan.kernels import cpu
        from unittest import mock
        from adan.kernels import adan_triton
        from adan.kernels.adan_triton import launch_full
        worst = {}
        for dt in (torch.float32, torch.float64, torch.bfloat16):
            sd = torch.float32 if dt == torch.bfloat16 else dt
            # many tiny tensors, sizes that are not multiples of the tile, an empty one, a scalar
            shapes = [(3, 5), (4097,), (0,), ()] + [(k,) for k in range(1, 40)] + [(1024,), (1025,), (2048, 3)]
            g0 = torch.Generator().manual_seed(0)
            pa = [torch.randn(s, generator=g0).to(dt) for s in shapes]
            pb = [p.clone() for p in pa]
            sa = [[torch.zeros(s, dtype=sd) for s in shapes] for _ in range(4)]
            sb = [[t.clone() for t in lst] for lst in sa]
            pc, sc_ = [p.clone() for p in pa], [[t.clone() for t in lst] for lst in sa]
            ta, tb, tc = ([torch.zeros(()) for _ in shapes] for _ in range(3))
            for step in range(4):
                grads = [torch.randn(s, generator=g0).to(dt) for s in shapes]
                found = torch.tensor(1.0 if step == 2 else 0.0)
                sc = scalars_of(torch.tensor(1e-2), torch.tensor(0.7), step == 3, torch.tensor(2.0), found, torch.device("cpu"))
                hp = HParams(0.98, 0.92, 0.99, 1e-8, 0.02, step == 1)
                launch_full(TensorLists(pa, grads, *sa, ta), sc, hp)  # one launch for the bucket
                cpu.launch_full(TensorLists(pb, list(grads), *sb, tb), sc, hp)
                with mock.patch.object(adan_triton, "capturing", lambda device: True):  # a launch per tensor
                    launch_full(TensorLists(pc, grads, *sc_, tc), sc, hp)
            err = max(((a.double() - b.double()).abs().max() / b.double().abs().max()).item() for a, b in zip(pa, pb) if a.numel())
            worst[str(dt)] = err
            assert [t.item() for t in ta] == [t.item() for t in tb] == [3.0] * len(shapes)
            assert all(torch.equal(a, c) for a, c in zip(pa, pc)), "one launch and a launch per tensor differ"
            assert all(torch.equal(a, c) for x, y in zip(sa, sc_) for a, c in zip(x, y))
        print(worst)
    """
    out = _run_isolated(code, {"TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    worst = eval(out.stdout.strip().splitlines()[-1])
    assert worst["torch.float64"] < 1e-14
    assert worst["torch.float32"] < 1e-6
    assert worst["torch.bfloat16"] < 3e-2


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="Triton is not installed (pip install triton) for its CPU interpreter",
)
def test_triton_compact_kernel_under_the_interpreter_matches_the_cpu_compact_kernel():
    """Same start, same gradients: one optimizer steps with the CPU compact kernel, a copy
    with the Triton one. Stochastic rounding draws other bits in each (bfloat16 state and
    stochastically rounded parameters differ by that noise); Kahan is compared on p + comp,
    because the interpreter rounds to bfloat16 by truncation where CUDA rounds to nearest."""
    code = """
        import torch
        from adan import Adan, _formats as F, _fused
        from adan._lists import TensorLists
        from adan._maths import HParams
        from adan.kernels.adan_triton_compact import launch_compact
        res = {}
        for fmt, pdt, pu in [("int8", torch.float32, "nearest"), ("bfloat16", torch.float32, "nearest"),
                             ("int8", torch.bfloat16, "kahan"), ("int8", torch.float16, "kahan"),
                             ("float32", torch.bfloat16, "stochastic")]:
            runs = []
            for _ in range(2):
                torch.manual_seed(0)
                ps = [torch.randn(s, dtype=pdt, requires_grad=True) for s in [(300, 40), (5000,), (64, 8, 3, 3), (7,)]]
                runs.append((ps, Adan(ps, lr=1e-2, weight_decay=0.02, state_dtype=fmt, param_update=pu, fused=True)))
            (pa, oa), (pb, ob) = runs
            g = torch.Generator().manual_seed(1)
            for step in range(4):
                grads = [torch.randn(p.shape, generator=g).to(pdt) * 0.1 for p in pa]
                for p, q, gr in zip(pa, pb, grads):
                    p.grad, q.grad = gr, gr.clone()
                found = torch.tensor(1.0 if step == 2 else 0.0)
                oa.grad_scale, oa.found_inf = torch.tensor(1.0), found
                oa.step()
                lists = ob._gather_group(ob.param_groups[0])
                ob._store(lists.pop("pending"))  # the state a first step makes, as step() stores it
                sc = _fused.scalars_of(1e-2, None, False, torch.tensor(1.0), found, torch.device("cpu"))
                idx = [i for i, (p, m) in enumerate(zip(lists["params"], lists["exp_avgs"])) if F.is_compact(p, m, pu)]
                pick = lambda key: [lists[key][i] for i in idx] if lists.get(key) is not None else None
                keys = ("params", "grads", "exp_avgs", "exp_avg_diffs", "exp_avg_sqs", "neg_pre_grads", "state_steps",
                        "state_scales", "param_comps")
                launch_compact(TensorLists(*(pick(k) for k in keys)), pu, sc, HParams(0.98, 0.92, 0.99, 1e-8, 0.02, False))
            big = [i for i, p in enumerate(pa) if F.is_compact(p, oa.state[p]["exp_avg"], pu)]
            val = lambda ps, o, i: ps[i].float() + (o.state[ps[i]]["param_comp"].float() if pu == "kahan" else 0)
            err = max(((val(pa, oa, i) - val(pb, ob, i)).norm() / val(pa, oa, i).norm()).item() for i in big)
            dec = lambda o, q: F.format_of(o.state[q]["exp_avg"]).decode(o.state[q], "exp_avg")
            merr = max(((dec(oa, pa[i]) - dec(ob, pb[i])).norm() / dec(oa, pa[i]).norm()).item() for i in big)
            steps = [ob.state[pb[i]]["step"].item() for i in big]
            res[f"{fmt}/{pdt}/{pu}"] = (err, merr, steps)
        print(res)
    """
    out = _run_isolated(code, {"TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    res = eval(out.stdout.strip().splitlines()[-1])  # measured: 2.6e-5 (int8), 5e-5 (bf16 state), 6e-3 (SR params)
    for key, (err, merr, steps) in res.items():
        assert steps and all(s == 3.0 for s in steps), (key, steps)  # the found_inf step skipped
        limit = {"bfloat16/torch.float32/nearest": 2e-3, "float32/torch.bfloat16/stochastic": 2e-2}.get(key, 2e-4)
        assert err < limit, (key, err)
        assert merr < (2e-2 if key.startswith("bfloat16") else 1e-5), (key, merr)


@pytest.mark.skipif(not fused_available("cpu"), reason="no C compiler")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
@pytest.mark.parametrize("weight_decay", [0.3, 2 / 3])
def test_fused_rounds_every_low_precision_value_like_torch(dtype, state_dtype, weight_decay):
    """Every one of the 65536 bit patterns as a parameter, a zero gradient: the step is the
    proximal decay ``p / (1 + lr wd)`` in float32, then rounding to nearest, which must match
    torch's conversion bit for bit (subnormals, infinities and NaNs included). With
    ``wd = 2/3`` the factor is 0.75, whose products fall exactly half-way between two
    low-precision values a quarter of the time: the ties must go to even."""
    p = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).clone().requires_grad_()
    post = torch.tensor(1 / (1 + 0.5 * weight_decay), dtype=torch.float32)
    expected = (p.detach().float() * post).to(dtype)
    opt = Adan([p], lr=0.5, weight_decay=weight_decay, fused=True, state_dtype=state_dtype)
    p.grad = torch.zeros_like(p)
    opt.step()
    nan = expected.isnan()
    assert torch.equal(p.detach().view(torch.int16)[~nan], expected.view(torch.int16)[~nan])
    assert p.detach()[nan].isnan().all()


@pytest.mark.skipif(not fused_available("cpu"), reason="no C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_takes_strided_gradients(dtype):
    """A transposed or broadcast gradient of a contiguous parameter: the kernel reads flat
    arrays, so such a gradient must be made contiguous first (``Tensor.to(memory_format=...)``
    returns a strided tensor unchanged when the dtype already matches: a bug once)."""
    results = {}
    for path, kw in (("single", dict(foreach=False, fused=False)), ("fused", dict(fused=True))):
        torch.manual_seed(0)
        ps = [torch.randn(30, 40, dtype=dtype, requires_grad=True), torch.randn(5, 7, dtype=dtype, requires_grad=True)]
        opt = Adan(ps, lr=1e-2, **kw)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            ps[0].grad = torch.randn(40, 30, generator=g).to(dtype).t()
            ps[1].grad = torch.randn(1, 7, generator=g).to(dtype).expand(5, 7)
            opt.step()
        results[path] = [p.detach().double() for p in ps]
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
    for a, b in zip(results["single"], results["fused"]):
        assert (a - b).abs().max() <= tol * a.abs().max(), (a - b).abs().max()


def test_gpu_scripts_run_without_cuda():
    """benchmarks/gpu_check.py and gpu_tune.py say so and exit 0 where there is no GPU (and
    gpu_tune's import of gpu_check's timer resolves)."""
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run benchmarks/gpu_check.py itself")
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    out = subprocess.run([sys.executable, str(bench / "gpu_check.py"), "--quick"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "no CUDA device: skipping" in out.stdout, out.stderr[-2000:]
    out = subprocess.run([sys.executable, str(bench / "gpu_tune.py")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "no CUDA device: nothing to tune" in out.stdout, out.stderr[-2000:]


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="Triton is not installed (pip install triton) for its CPU interpreter",
)
def test_triton_compact_one_launch_per_bucket_equals_a_launch_per_tensor():
    """Many tiny and odd-sized tensors (int8 codes on all of them, whatever their size): the
    bucket's single launch and one launch per tensor (as under CUDA-graph capture) write the
    same bits, given the same seed; and both stay within rounding of the C compact kernel."""
    code = """
        import torch
        from unittest import mock
        from adan._fused import scalars_of
        from adan._lists import TensorLists
        from adan._maths import HParams
        from adan.kernels import adan_triton_compact as tc, cpu
        shapes = [(1,), (7,), (255,), (256,), (257,), (3, 300), (2, 513), ()]
        res = {}
        for fmt, pdt, pu in [("int8", torch.float32, "nearest"), ("bfloat16", torch.bfloat16, "kahan")]:
            g0 = torch.Generator().manual_seed(0)
            p0 = [torch.randn(s, generator=g0).to(pdt) for s in shapes]
            def state():
                ps = [p.clone() for p in p0]
                if fmt == "int8":
                    ms = [[torch.zeros(s, dtype=dt) for s in shapes] for dt in (torch.int8, torch.int8, torch.uint8)]
                    from adan._compact import scale_shape
                    scales = [tuple(torch.zeros(scale_shape(torch.Size(s))) for _ in range(3)) for s in shapes]
                else:
                    ms = [[torch.zeros(s, dtype=torch.bfloat16) for s in shapes] for _ in range(3)]
                    scales = None
                negs = [torch.zeros(s, dtype=torch.bfloat16) for s in shapes]
                comps = [torch.zeros_like(p) for p in ps] if pu == "kahan" else None
                return TensorLists(ps, None, *ms, negs, [torch.zeros(()) for _ in shapes], scales, comps)
            a, b, c = state(), state(), state()
            for step in range(3):
                grads = [torch.randn(s, generator=g0).to(pdt) for s in shapes]
                sc = scalars_of(1e-2, None, False, None, None, torch.device("cpu"))
                hp = HParams(0.98, 0.92, 0.99, 1e-8, 0.02, False)
                torch.manual_seed(step)
                tc.launch_compact(a._replace(grads=grads), pu, sc, hp)
                torch.manual_seed(step)
                with mock.patch.object(tc, "capturing", lambda device: True):
                    tc.launch_compact(b._replace(grads=grads), pu, sc, hp)
                cpu.launch_compact(c._replace(grads=list(grads)), pu, sc, hp)
            flat = lambda lst: [t for x in lst for t in (x if isinstance(x, tuple) else (x,))]  # scales are triples
            same = all(torch.equal(x, y) for la, lb in zip(a, b) if la is not None
                       for x, y in zip(flat(la), flat(lb)) if x.numel())
            err = max(((x.double() - z.double()).norm() / z.double().norm()).item() for x, z in zip(a.params, c.params))
            res[fmt] = (same, err, [t.item() for t in a.state_steps])
        print(res)
    """
    out = _run_isolated(code, {"TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    res = eval(out.stdout.strip().splitlines()[-1])
    for fmt, (same, err, steps) in res.items():
        assert same, fmt
        assert err < 2e-2, (fmt, err)
        assert steps == [3.0] * len(steps), (fmt, steps)


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_compact_state_of_several_parameter_dtypes_takes_a_kernel_call_each(state_dtype):
    """A group mixing float32 and bfloat16 parameters, with compact state: the fused step
    calls the compact kernel once per parameter dtype (a single call would read one dtype for
    all), bit for bit as two optimizers of one dtype each that draw their rounding seeds from
    one generator in the same order (float32 first, as the group lists it first)."""
    torch.manual_seed(0)
    shapes = [(64, 80), (5000,), (70, 90)]
    f32 = [torch.randn(s) for s in shapes]
    b16 = [torch.randn(s).bfloat16() for s in shapes]
    mixed = [t.clone().requires_grad_() for pair in zip(f32, b16) for t in pair]  # float32, bfloat16, float32, ...
    alone = {torch.float32: [t.clone().requires_grad_() for t in f32], torch.bfloat16: [t.clone().requires_grad_() for t in b16]}
    kw = dict(lr=1e-2, weight_decay=0.02, state_dtype=state_dtype, fused=True)
    opt = Adan(mixed, **kw)
    opts = {dtype: Adan(ps, **kw) for dtype, ps in alone.items()}
    opts[torch.bfloat16]._generators = opts[torch.float32]._generators  # one stream of seeds
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for i, (pf, pb) in enumerate(zip(*alone.values())):
            pf.grad = torch.randn(pf.shape, generator=g)
            pb.grad = torch.randn(pb.shape, generator=g).bfloat16()
            mixed[2 * i].grad, mixed[2 * i + 1].grad = pf.grad.clone(), pb.grad.clone()
        opt.step()
        for o in opts.values():
            o.step()
    apart = [q for pair in zip(*alone.values()) for q in pair]
    for p, q in zip(mixed, apart):
        theirs = opts[q.dtype].state[q]
        assert theirs["exp_avg"].dtype == (torch.int8 if state_dtype == "int8" else torch.bfloat16)
        assert torch.equal(p, q)
        assert opt.state[p].keys() == theirs.keys()
        assert all(torch.equal(value, theirs[key]) for key, value in opt.state[p].items())
