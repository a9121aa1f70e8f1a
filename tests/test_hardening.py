"""The edges: memory safety, the kernel cache, transactional checkpoints, numerics at the limits.

Each test names the item of the hardening issue it covers.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

from adan import Adan, adan
from adan import _compact, _formats, _native
from adan._fused import fused_available
from optim_info import PATHS

CPU_FUSED = fused_available("cpu")
ALL_PATHS = [p for p in PATHS if p != "fused" or CPU_FUSED]


def _host_buildable() -> bool:
    """A C++ compiler and Python's headers: the host helper must build then."""
    try:
        _native.cxx_compiler()
    except _native.BuildError:
        return False
    return (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


HOST_BUILDABLE = _host_buildable()


@pytest.fixture(params=["helper", "python"])
def cpu_host(request, monkeypatch):
    """Run a test through both ways the fused CPU launchers check a bucket and read its
    pointers: the C++ host helper, and the Python path they take where it is not built."""
    from adan.kernels import cpu

    if request.param == "python":
        monkeypatch.setattr(cpu, "host_helper", lambda: None)
    elif not HOST_BUILDABLE:
        pytest.skip("no C++ compiler or Python headers: the host helper is not built")
    else:
        assert cpu.host_helper() is not None, cpu._host_error  # a compiler, so it must build
    return request.param


def _model(seed: int = 0, dtype=None) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    return model if dtype is None else model.to(dtype)


def _train(opt, model, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=gen).to(next(model.parameters()).dtype)
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()


def _snapshot(opt) -> tuple:
    return copy.deepcopy(opt.param_groups), {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}


def _step_raises_and_changes_nothing(opt, params, match: str) -> None:
    before = [p.detach().clone() for p in params]
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    _assert_unchanged(opt, snap)


def _assert_unchanged(opt, snap) -> None:
    groups, state = snap
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in groups
    ]
    assert {id(p) for p in opt.state} == set(state)
    for p, s in opt.state.items():
        assert s.keys() == state[id(p)].keys()
        for k, v in s.items():
            assert torch.equal(v, state[id(p)][k]), k


# ------------------------------------------------- 1. a parameter resized in place
@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
def test_resized_parameter_raises_and_changes_nothing(path, state_dtype, cpu_host):
    emb = torch.nn.Parameter(torch.randn(64, 128))
    opt = Adan([emb], lr=1e-2, state_dtype=state_dtype, **PATHS[path])
    emb.grad = torch.randn_like(emb)
    opt.step()
    emb.data = torch.cat([emb.data, torch.randn(32, 128)])  # grow the embedding
    emb.grad = torch.randn_like(emb)
    _step_raises_and_changes_nothing(
        opt, [emb], r"parameter 0 of parameter group 0 has shape \(96, 128\) but its 'exp_avg' has shape \(64, 128\)"
    )


def test_functional_and_triton_launcher_check_shapes():
    p, g = torch.zeros(10), torch.zeros(10)
    bufs = [torch.zeros(10) for _ in range(3)] + [torch.zeros(5)]
    with pytest.raises(ValueError, match=r"'neg_pre_grad' has shape \(5,\)"):
        adan([p], [g], *[[b] for b in bufs], [torch.zeros(())], beta1=0.98, beta2=0.92, beta3=0.99, lr=1e-3,
             weight_decay=0.0, eps=1e-8, no_prox=False, fused=CPU_FUSED or None)  # fmt: skip
    pytest.importorskip("triton")
    from adan._lists import TensorLists
    from adan._maths import HParams
    from adan.kernels.adan_triton import launch_full
    from adan.kernels.adan_triton_compact import launch_compact

    hp, scalars = HParams(0.98, 0.92, 0.99, 1e-8, 0.0, False), torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'neg_pre_grad' has shape \(5,\)"):
        launch_full(TensorLists([p], [g], *[[b] for b in bufs], [torch.zeros(())]), scalars, hp)
    big = torch.zeros(64, 128)
    scales = (torch.zeros(64, 1), torch.zeros(64, 1), torch.zeros(32, 1))
    lists = TensorLists([big], [big], [big.to(torch.int8)], [big.to(torch.int8)], [big.to(torch.uint8)], [big.bfloat16()],
                        [torch.zeros(())], [scales], None)  # fmt: skip
    with pytest.raises(ValueError, match=r"'exp_avg_sq_scale' has shape \(32, 1\)"):
        launch_compact(lists, "nearest", scalars, hp)


# ------------------------------------------------------ 2, 3. the kernel cache
def _fresh_load(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_loaded", {})
    return _native.load_library(_native.KERNEL_DIR / "adan_cpu.c")


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
def test_kernel_cache_is_keyed_by_the_cpu(monkeypatch, tmp_path):
    _fresh_load(monkeypatch, tmp_path)
    first = sorted(tmp_path.glob("*.so"))
    monkeypatch.setattr(_native, "_cpu_id", lambda cc: "another-cpu")
    _fresh_load(monkeypatch, tmp_path)
    second = sorted(tmp_path.glob("*.so"))
    assert len(first) == 1 and len(second) == 2, "a different CPU must get its own library"
    assert "-march=native" in str(_native._FLAG_SETS[0]) and _native._cpu_id.__name__ == "<lambda>"


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_cached_library_is_rebuilt_not_loaded(tmp_path, damage):
    env = {**os.environ, "ADAN_CACHE_DIR": str(tmp_path)}
    code = "import adan._fused as f; assert f.fused_available('cpu'), f._cpu_error; print('ok')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    (lib,) = [p for p in tmp_path.glob("adan_cpu-*.so")]
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 3] if damage == "truncate" else data[:-64] + b"\0" * 64)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
    assert lib.read_bytes() == data  # rebuilt (the compiler is deterministic here)
    assert _native._verified(lib)


# ------------------------------------------------ 4. the same parameter twice
def test_duplicate_parameter_in_a_group_is_refused():
    w = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="lists the same parameter twice"):
        Adan([w, w])
    opt = Adan([torch.nn.Parameter(torch.randn(2))])
    with pytest.raises(ValueError, match="parameter group 1 lists the same parameter twice"):
        opt.add_param_group({"params": [w, w]})
    assert len(opt.param_groups) == 1


# ------------------------------------------- 5-9. checkpoints: validate, then load
def _trained(**kw):
    model = _model()
    opt = Adan(model.parameters(), lr=1e-2, weight_decay=0.02, **kw)
    _train(opt, model, 3)
    return model, opt


def _mutated(sd, fn):
    sd = copy.deepcopy(sd)
    fn(sd)
    return sd


BAD_STATE_DICTS = {
    "missing_exp_avg_diff": (lambda sd: sd["state"][0].pop("exp_avg_diff"), r"lacks \['exp_avg_diff'\]"),
    "missing_step": (lambda sd: sd["state"][1].pop("step"), r"lacks \['step'\]"),
    "missing_exp_avg": (lambda sd: sd["state"][2].pop("exp_avg"), r"lacks \['exp_avg'\]"),
    "extra_key": (lambda sd: sd["state"][0].update(max_exp_avg_sq=torch.zeros(16, 8)), r"unknown state \['max_exp_avg_sq'\]"),
    "int_moment": (lambda sd: sd["state"][0].update(exp_avg=torch.zeros(16, 8, dtype=torch.int64)), "must be floating point"),
    "fractional_step": (lambda sd: sd["state"][0].update(step=torch.tensor(2.5)), "'step' must be a whole number"),
    "nan_lr": (lambda sd: sd["param_groups"][0].update(lr=float("nan")), "Invalid lr: nan"),
    "negative_eps": (lambda sd: sd["param_groups"][0].update(eps=-1.0), "Invalid eps"),
    "two_betas": (lambda sd: sd["param_groups"][0].update(betas=(0.9, 0.999)), "Adan has three"),
    "cautious_adan": (lambda sd: sd["param_groups"][0].update(caution=True), r"caution=True.*cautious Adan"),
    "state_not_a_dict": (lambda sd: sd.update(state=[]), "expected a dict with 'state'"),
    "bad_rng": (lambda sd: sd.update(adan_rng=3), "'adan_rng' is not a generator record"),
}


@pytest.mark.parametrize("case", list(BAD_STATE_DICTS))
def test_malformed_state_dict_raises_and_changes_nothing(case):
    model, opt = _trained()
    fn, match = BAD_STATE_DICTS[case]
    bad = _mutated(opt.state_dict(), fn)
    model2, opt2 = _trained()
    snap = _snapshot(opt2)
    with pytest.raises(ValueError, match=match):
        opt2.load_state_dict(bad)
    _assert_unchanged(opt2, snap)
    _train(opt2, model2, 1)  # and it still works


def test_adamw_state_dict_is_refused_and_changes_nothing():
    model = _model()
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train(adamw, model, 2)
    _, opt = _trained()
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match=r"betas=\(0\.9, 0\.999\).*another optimizer"):
        opt.load_state_dict(adamw.state_dict())
    _assert_unchanged(opt, snap)
    assert opt.param_groups[0]["betas"] == (0.98, 0.92, 0.99)


def test_cautious_group_is_refused_when_added():
    opt = Adan([torch.nn.Parameter(torch.randn(2))])
    with pytest.raises(ValueError, match="caution=True"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "caution": True})
    opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "caution": False})  # plain Adan: fine


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
def test_path_choices_stay_the_optimizers_own():
    _, foreach_opt = _trained(foreach=True)
    model, fused_opt = _trained(fused=True)
    fused_opt.load_state_dict(foreach_opt.state_dict())
    assert all(g["fused"] is True and g["foreach"] is None for g in fused_opt.param_groups)
    fused_opt.grad_scale, fused_opt.found_inf = torch.tensor(2.0), torch.tensor(0.0)  # as GradScaler does
    _train(fused_opt, model, 1)


def test_checkpoint_without_previous_gradient_continues_alike_on_every_path():
    """Without neg_pre_grad the next gradient is also the previous one (d = 0), as the
    reference implementation does, on every path: the same as a state whose
    neg_pre_grad is minus that gradient."""
    torch.set_default_dtype(torch.float64)
    try:
        model, opt = _trained(max_grad_norm=0.5)
        sd = opt.state_dict()
        no_prev = _mutated(sd, lambda s: [v.pop("neg_pre_grad") for v in s["state"].values()])
        results = {}
        for path in ALL_PATHS:
            m2 = _model(seed=5)
            m2.load_state_dict(model.state_dict())
            o2 = Adan(m2.parameters(), lr=1e-2, weight_decay=0.02, max_grad_norm=0.5, **PATHS[path])
            o2.load_state_dict(no_prev)
            _train(o2, m2, 1, seed=9)
            results[path] = [p.detach().clone() for p in m2.parameters()]
        # the d = 0 continuation, built by hand: neg_pre_grad = -(clipped) current gradient
        m3 = _model(seed=5)
        m3.load_state_dict(model.state_dict())
        o3 = Adan(m3.parameters(), lr=1e-2, weight_decay=0.02, max_grad_norm=0.5, foreach=False)
        o3.load_state_dict(sd)
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(9))
        m3(x).square().mean().backward()
        grads = [p.grad for p in m3.parameters()]
        coef = float(torch.clamp(0.5 / (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) + 1e-8), max=1.0))
        for p, g in zip(m3.parameters(), grads):
            o3.state[p]["neg_pre_grad"] = -coef * g
        o3.step()
        for path, params in results.items():
            for a, b in zip(params, m3.parameters()):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=path)
    finally:
        torch.set_default_dtype(torch.float32)


def test_loading_does_not_alias_the_checkpoint():
    model, opt = _trained()
    sd = opt.state_dict()
    saved = copy.deepcopy(sd)
    opt2 = Adan(model.parameters(), lr=1e-2, weight_decay=0.02)
    opt2.load_state_dict(sd)
    _train(opt2, model, 2)
    for pid, s in saved["state"].items():
        for key, value in s.items():
            assert torch.equal(sd["state"][pid][key], value), key


# ------------------------------------------------------------- 10. int8 and NaN
@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_int8_nonfinite_gradient_stays_in_its_element(path, bad):
    runs = []
    for value in (bad, 0.0):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(64, 256))
        opt = Adan([w], lr=1e-2, state_dtype="int8", **PATHS[path])
        gen = torch.Generator().manual_seed(1)
        for step in range(3):
            w.grad = torch.randn(64, 256, generator=gen)
            if step == 0:
                w.grad[0, 5] = value
            opt.step()
        runs.append((w.detach().clone(), opt.state[w]))
    (w_bad, s_bad), (w_ok, _) = runs
    assert torch.isnan(w_bad[0, 5])
    mask = torch.ones_like(w_bad, dtype=torch.bool)
    mask[0, 5] = False
    assert torch.isfinite(w_bad[mask]).all(), "the rest of the block must stay finite"
    torch.testing.assert_close(w_bad[mask], w_ok[mask], rtol=1e-3, atol=1e-4)
    for key in ("exp_avg_scale", "exp_avg_diff_scale", "exp_avg_sq_scale"):
        assert torch.isfinite(s_bad[key]).all(), key
    m = _formats.format_of(s_bad["exp_avg"]).decode(s_bad, "exp_avg")
    assert torch.isnan(m[0, 5]) and torch.isfinite(m[mask]).all()


def test_int8_codec_marks_nonfinite_values():
    x = torch.randn(4, 512)
    x[1, 3], x[2, 300] = float("nan"), float("-inf")
    codes, scale = _compact.quantize_signed(x)
    assert torch.isfinite(scale).all()
    back = _compact.dequantize_signed(codes, scale)
    assert torch.isnan(back[1, 3]) and torch.isnan(back[2, 300])
    ok = torch.isfinite(x)
    assert torch.isfinite(back[ok]).all()
    ucodes, uscale = _compact.quantize_unsigned(x.abs())
    assert torch.isfinite(uscale).all() and torch.isfinite(_compact.dequantize_unsigned(ucodes, uscale)).all()


# ------------------------------------------- 11, 12. float32 maths on every path
def _one_step(path, p0, grad, **kw):
    p = torch.nn.Parameter(p0.clone())
    opt = Adan([p], **kw, **PATHS[path])
    for g in grad:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt.state[p]


@pytest.mark.parametrize("lr_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tensor_lr_keeps_weight_decay(lr_dtype):
    lr = torch.tensor(1e-3, dtype=lr_dtype)
    p0 = torch.randn(100) * 10
    grads = [torch.zeros(100)] * 3
    expected, _ = _one_step("single", p0, grads, lr=float(lr), weight_decay=0.5)
    assert not torch.equal(expected, p0)
    for path in ALL_PATHS:
        got, _ = _one_step(path, p0, grads, lr=lr, weight_decay=0.5)
        torch.testing.assert_close(got, expected, msg=path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_clipped_low_precision_gradients_agree_across_paths(dtype):
    torch.manual_seed(0)
    p0 = torch.randn(257).to(dtype)
    grads = [(torch.randn(257) * 3).to(dtype) for _ in range(4)]
    kw = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=1.0)
    ref_p, ref_s = _one_step("single", p0, grads, **kw)
    for path in ALL_PATHS:
        p, s = _one_step(path, p0, grads, **kw)
        torch.testing.assert_close(p, ref_p, msg=path)
        for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq", "neg_pre_grad"):
            torch.testing.assert_close(s[key], ref_s[key], msg=f"{path} {key}")  # float32 tolerances


# ------------------------------------------------- 13. the optimizer's own RNG
@pytest.mark.parametrize("path", ALL_PATHS)
def test_compact_state_leaves_torchs_generator_alone(path):
    draws = []
    for state_dtype, param_update in (("float32", "nearest"), ("bfloat16", "stochastic"), ("int8", "nearest")):
        model = _model(dtype=torch.bfloat16)
        opt = Adan(model.parameters(), lr=1e-2, state_dtype=state_dtype, param_update=param_update, **PATHS[path])
        torch.manual_seed(123)
        _train(opt, model, 3)
        draws.append(torch.rand(8))
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_rng_state_is_saved_and_restored():
    model, opt = _trained(state_dtype="bfloat16")
    sd = copy.deepcopy(opt.state_dict())
    assert "adan_rng" in sd
    model2 = _model(seed=9)
    model2.load_state_dict(model.state_dict())
    opt2 = Adan(model2.parameters(), lr=1e-2, weight_decay=0.02, state_dtype="bfloat16")
    opt2.load_state_dict(sd)
    _train(opt, model, 3, seed=4)
    _train(opt2, model2, 3, seed=4)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_kernel_cache_module_imports_cleanly_without_compiler_output():
    code = textwrap.dedent(
        """
        import adan._native as n
        print(len(n._cpu_id('cc')))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "16"


# ------------------------------------- the fused launchers' checked-layout cache
def _with_a_cached_layout(state_dtype: str) -> tuple[torch.nn.Parameter, Adan]:
    """A fused optimizer two steps in: its launcher's layout is cached."""
    w = torch.nn.Parameter(torch.randn(64, 128))
    opt = Adan([w], lr=1e-2, state_dtype=state_dtype, fused=True)
    for _ in range(2):
        w.grad = torch.randn_like(w)
        opt.step()
    return w, opt


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
def test_layout_cache_never_lets_a_changed_layout_through(state_dtype, cpu_host):
    """The fused CPU launchers check a layout once; every way the layout can change is
    checked again: state replaced, parameter resized, load_state_dict, restart_opt,
    add_param_group."""
    w, opt = _with_a_cached_layout(state_dtype)
    good = opt.state[w]["exp_avg_diff"]
    opt.state[w]["exp_avg_diff"] = torch.zeros(32, 128, dtype=good.dtype)  # replaced by a wrong one
    with pytest.raises(ValueError, match=r"'exp_avg_diff' has shape \(32, 128\)"):
        opt.step()
    opt.state[w]["exp_avg_diff"] = good
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(sd)  # new state tensors: checked, and fine
    opt.step()
    opt.restart_opt()
    opt.step()
    extra = torch.nn.Parameter(torch.randn(64, 128))
    extra.grad = torch.randn_like(extra)
    opt.add_param_group({"params": [extra]})
    opt.step()
    w.data = torch.randn(128, 128)  # resized after all of that
    w.grad = torch.randn_like(w)
    with pytest.raises(ValueError, match=r"has shape \(128, 128\) but its 'exp_avg' has shape \(64, 128\)"):
        opt.step()


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
@pytest.mark.parametrize(
    "state_dtype, smaller, error",
    [
        ("float32", "rows", r"'exp_avg_diff' has shape \(32, 128\)"),
        ("bfloat16", "rows", r"'exp_avg_diff' has shape \(32, 128\)"),
        ("int8", "rows", r"'exp_avg_diff' has shape \(32, 128\)"),
        ("float32", "dtype", r"the state of torch.float32 parameters must be torch.float32"),
    ],
)
def test_a_smaller_buffer_at_the_same_address_is_checked(state_dtype, smaller, error, cpu_host):
    """The layout cache compares addresses, and an address may hold a smaller buffer now: a
    freed buffer's memory handed to a smaller one (the CUDA caching allocator does that
    first of all), or, as here, a view of the first rows, or of the same memory in a
    narrower dtype, which starts where the old buffer did. Taken for the cached layout,
    the kernel would write a whole parameter's worth into it; the step must check it
    instead and refuse, before anything is written (it used to step silently)."""
    w, opt = _with_a_cached_layout(state_dtype)
    good = opt.state[w]["exp_avg_diff"]
    bad = good[:32] if smaller == "rows" else good.view(torch.int16)[:, :128]
    assert bad.data_ptr() == good.data_ptr() and bad.nbytes < good.nbytes
    opt.state[w]["exp_avg_diff"] = bad
    w.grad = torch.randn_like(w)
    before, snap = w.detach().clone(), _snapshot(opt)
    with pytest.raises((ValueError, TypeError), match=error):
        opt.step()
    assert torch.equal(w, before)
    _assert_unchanged(opt, snap)
    opt.state[w]["exp_avg_diff"] = good
    opt.step()
    assert not torch.equal(w, before)


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
def test_a_gradient_resized_through_data_is_checked_every_step(state_dtype, cpu_host):
    """Gradients are not part of a cached layout (they change every step), and the kernels
    read a parameter's worth of each. Autograd and the ``.grad`` setter keep a gradient
    shaped like its parameter; ``p.grad.data = ...`` does not, so every step checks the
    sizes (the kernel used to read past the end of a smaller gradient)."""
    w, opt = _with_a_cached_layout(state_dtype)
    w.grad = torch.randn_like(w)
    w.grad.data = torch.randn(32, 128)
    _step_raises_and_changes_nothing(opt, [w], r"parameter 0 of parameter group 0 has shape \(64, 128\) but its 'grad' has shape \(32, 128\)")
    w.grad = torch.randn_like(w)
    opt.step()


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
def test_a_bad_group_raises_before_any_group_is_updated(path, state_dtype):
    """step() checks and prepares every group's update before it writes any: a parameter
    resized in the second group (weight-decay and no-decay groups are the usual pair) leaves
    the first group's parameters, moments, step counts and seeded previous gradients as
    they were (before, the first group was updated and then the step raised)."""
    a, b = torch.nn.Parameter(torch.randn(64, 300)), torch.nn.Parameter(torch.randn(8))
    opt = Adan([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=1e-2, weight_decay=0.1,
               state_dtype=state_dtype, **PATHS[path])  # fmt: skip
    for _ in range(2):
        a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
        opt.step()
    opt.restart_opt()  # a's next step seeds its previous gradient: that write waits for the checks too
    b.data = torch.randn(16)
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    _step_raises_and_changes_nothing(opt, [a], r"parameter 0 of parameter group 1 has shape \(16,\)")


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("slot", ["exp_avg", "neg_pre_grad", "step"])
@pytest.mark.parametrize("fault", ["device", "dtype"])
def test_state_on_another_device_or_of_another_dtype_raises_and_changes_nothing(state_dtype, slot, fault, cpu_host):
    """The kernels read a bucket's buffers through raw pointers, each list in the dtype of
    its first tensor: a buffer of the second parameter that is narrower (float16 where
    float32 is read: writes past its end) or on another device (here ``meta``; a CUDA
    pointer in the C kernel, or a host one in a GPU kernel) must be refused before any
    kernel runs, also once its layout was cached."""
    ws = [torch.nn.Parameter(torch.randn(64, 300)) for _ in range(2)]
    opt = Adan(ws, lr=1e-2, state_dtype=state_dtype, fused=True)
    for _ in range(2):
        for w in ws:
            w.grad = torch.randn_like(w)
        opt.step()  # the layout is now cached
    good = opt.state[ws[1]][slot]
    bad = good.to("meta") if fault == "device" else good.to(torch.float16 if good.dtype != torch.float16 else torch.float32)
    opt.state[ws[1]][slot] = bad
    before = [w.detach().clone() for w in ws]
    steps = [opt.state[w]["step"].clone() for w in ws[:1]]
    error = ValueError if fault == "device" else TypeError
    # (a float16 moment among bfloat16 ones is not compact state: its parameter moves to the float32 bucket,
    # whose launcher names it; the compact bucket, prepared first, must not have run)
    match = f"'{slot}' is on meta" if fault == "device" else f"'{slot}' buffers of one bucket mix dtypes|must be torch.float32"
    with pytest.raises(error, match=match):
        opt.step()
    assert all(torch.equal(w, b) for w, b in zip(ws, before))
    assert torch.equal(opt.state[ws[0]]["step"], steps[0])
    opt.state[ws[1]][slot] = good
    opt.step()
    assert not torch.equal(ws[0], before[0])


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fault", ["dtype", "device"])
def test_a_kernel_call_refuses_parameters_of_several_dtypes_or_devices(state_dtype, fault, cpu_host):
    """The launchers (and the custom ops that call them) take any lists; the optimizer
    groups parameters by device and dtype before it calls them. A kernel reads every
    parameter in the first one's dtype, on its device: a bfloat16 parameter after a float32
    one was written past its end (the heap was corrupted when a test forced the grouping
    off), and a parameter elsewhere than its state was written through a foreign pointer.
    Both must be refused, with nothing written."""
    from adan import _fused
    from adan._lists import TensorLists
    from adan._maths import HParams
    from adan.kernels import cpu

    other = torch.randn(64, 300).to(torch.bfloat16) if fault == "dtype" else torch.empty(64, 300, device="meta")
    params = [torch.randn(64, 300), other]
    shape = params[0].shape
    sdtype = torch.float32 if state_dtype == "float32" else torch.bfloat16
    state = [[torch.zeros(shape, dtype=sdtype) for _ in params] for _ in range(4)]  # m, v, n, g' (all on the CPU)
    grads = [torch.randn(shape).to(p.dtype) for p in params]
    steps = [torch.zeros((), dtype=torch.float32) for _ in params]
    lists = TensorLists(params, grads, *state, steps)
    scalars = _fused.scalars_of(1e-2, None, False, None, None, torch.device("cpu"))
    hp = HParams(0.98, 0.92, 0.99, 1e-8, 0.0, False)
    before = params[0].clone()
    error, match = (TypeError, "parameters of several dtypes") if fault == "dtype" else (ValueError, "several devices")
    with pytest.raises(error, match=match):
        if state_dtype == "float32":
            cpu.launch_full(lists, scalars, hp)
        else:
            cpu.launch_compact(lists, "nearest", scalars, hp)
    assert torch.equal(params[0], before) and all(s == 0 for s in steps)


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
def test_a_layout_the_compact_kernel_took_is_checked_again_for_the_full_kernel(cpu_host):
    """The two kernels read different dtypes: bfloat16 state is the compact kernel's, and the
    full kernel would read it as float32, past its end. A layout the compact launcher checked
    (and, on the Python path, cached) must not pass for the full launcher."""
    from adan import _fused
    from adan._lists import TensorLists
    from adan._maths import HParams
    from adan.kernels import cpu

    params = [torch.randn(64, 300).to(torch.bfloat16)]
    state = [[torch.zeros(64, 300, dtype=torch.bfloat16)] for _ in range(4)]
    steps = [torch.zeros((), dtype=torch.float32)]
    lists = TensorLists(params, [torch.randn(64, 300).to(torch.bfloat16)], *state, steps)
    scalars = _fused.scalars_of(1e-2, None, False, None, None, torch.device("cpu"))
    hp = HParams(0.98, 0.92, 0.99, 1e-8, 0.0, False)
    cpu.launch_compact(lists, "nearest", scalars, hp)
    before = params[0].clone()
    with pytest.raises(TypeError, match="the state of torch.bfloat16 parameters must be torch.float32"):
        cpu.launch_full(lists, scalars, hp)
    assert torch.equal(params[0], before) and steps[0] == 1


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
def test_cached_pointer_tables_follow_every_change_of_layout(state_dtype, cpu_host):
    """The fused CPU launchers reuse a layout's pointer tables while every pointer and shape
    is unchanged. After each way of moving memory under the optimizer, the fused steps must
    still update the tensors the optimizer holds now: they track a foreach twin step for
    step. A table kept past any of these changes would update freed or stale memory and
    drift from the twin."""
    bf16 = state_dtype != "float32"
    follow_layout_changes(state_dtype, torch.bfloat16 if bf16 else torch.float32, 2e-2 if bf16 else 1e-5)


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="Triton is not installed (pip install triton) for its CPU interpreter",
)
def test_triton_device_tables_follow_every_change_of_layout():
    """The same for the Triton launchers (and their int8 encoder on a subnormal block), which keep each layout's pointer table (and the
    gradients' pointers) on the device: run under Triton's interpreter on CPU tensors, as
    the backend of the CPU. Float32 parameters: the kernels' rounding draws differ from the
    foreach path's, by far less than the 1e-3 tolerance (a stale table would leave a
    parameter or a state behind by a whole step, about lr = 1e-2)."""
    code = f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from unittest import mock
        import torch
        from adan import _backends
        from adan.kernels import adan_triton, adan_triton_compact
        from test_hardening import follow_layout_changes
        triton_on_cpu = _backends.Backend("cpu", lambda: True, lambda: "", adan_triton.prepare_full,
                                          adan_triton_compact.prepare_compact, steps_on_device=False)
        with mock.patch.dict(_backends.BACKENDS, {{"cpu": triton_on_cpu}}):
            for fmt in ("float32", "bfloat16", "int8"):
                follow_layout_changes(fmt, torch.float32, 1e-3 if fmt != "float32" else 1e-5)
                print("ok", fmt)
            from test_compact import test_int8_state_decaying_to_subnormal_stays_finite
            test_int8_state_decaying_to_subnormal_stays_finite(dict(fused=True))  # the Triton int8 encoder
            print("ok", "subnormal")
    """
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", "float32", "ok", "bfloat16", "ok", "int8", "ok", "subnormal"], out.stdout


def follow_layout_changes(state_dtype: str, dtype: torch.dtype, atol: float) -> None:
    """A fused optimizer and a foreach twin, stepped through every way of moving memory
    under the optimizer; they must agree to ``atol``, and to two units in the last place of
    a low-precision parameter, after each step."""
    kw = dict(lr=1e-2, weight_decay=0.1, state_dtype=state_dtype)
    gen = torch.Generator().manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(64, 128, generator=gen).to(dtype)) for _ in range(2)]
    twins = [torch.nn.Parameter(w.detach().clone()) for w in ws]
    fused, foreach = Adan(ws, fused=True, **kw), Adan(twins, foreach=True, **kw)
    rtol = 0.0 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps  # (bfloat16 near 2: 1.5 ulps is 0.023)
    fused._generator(torch.device("cpu")).manual_seed(3)
    foreach._generator(torch.device("cpu")).manual_seed(3)

    def both(change=lambda opt, params: None) -> None:
        grads = [torch.randn(w.shape, generator=gen).to(dtype) for w in ws]
        for opt, params in ((fused, ws), (foreach, twins)):
            change(opt, params)
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        for w, t in zip(ws, twins):  # the paths agree to rounding; stochastic rounding's draws are shared
            torch.testing.assert_close(w, t, atol=atol, rtol=rtol)

    def swap_state(opt, params):  # the same state tensor, moved to new memory (p.data style)
        for key, t in opt.state[params[0]].items():
            if torch.is_tensor(t) and t.dim():
                t.data = t.data.clone()

    def move_param(opt, params):
        params[1].data = params[1].data.clone()

    def reload(opt, params):
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    def replace_state(opt, params):
        opt.state[params[1]]["exp_avg_sq"] = opt.state[params[1]]["exp_avg_sq"].clone()

    for change in (None, None, swap_state, None, move_param, reload, replace_state, None):
        both(change or (lambda opt, params: None))
    fused.restart_opt()
    foreach.restart_opt()
    both()
    both()
    extra = torch.nn.Parameter(torch.randn(64, 128, dtype=dtype))
    fused.add_param_group({"params": [extra]})
    foreach.add_param_group({"params": [torch.nn.Parameter(extra.detach().clone())]})
    extra.grad = torch.randn_like(extra)
    foreach.param_groups[1]["params"][0].grad = extra.grad.clone()
    both()


def test_layout_cache_reuses_only_an_identical_layout():
    from adan._checks import LayoutCache

    cache, builds = LayoutCache(capacity=2), []

    def get(pointers, shapes):
        return cache.get(pointers, shapes, lambda: builds.append(1) or len(builds))

    assert get([8, 16], [(2, 3)]) == 1
    assert get([8, 16], [(2, 3)]) == 1  # reused
    assert get([8, 24], [(2, 3)]) == 2  # a pointer moved
    assert get([8, 24], [(3, 2)]) == 3  # same memory, another shape
    assert get([40, 48], [(2, 3)]) == 4  # a second bucket
    assert get([8, 24], [(3, 2)]) == 3
    assert get([72, 80], [(2, 3)]) == 5  # a third: the least recently used ([40, 48]) goes
    assert get([40, 48], [(2, 3)]) == 6
    with pytest.raises(ValueError):  # a failed check keeps nothing
        cache.get([8, 24], [(1, 1)], lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert get([8, 24], [(3, 2)]) == 7


@pytest.mark.parametrize("path", ALL_PATHS)
def test_kahan_with_float32_parameters_in_the_group(path):
    """param_update='kahan' applies to bfloat16/float16 parameters; float32 ones beside them
    (norms kept in float32, say) take the plain update (this used to raise KeyError)."""
    w16 = torch.nn.Parameter(torch.randn(64, 64).bfloat16())
    w32 = torch.nn.Parameter(torch.randn(64))
    opt = Adan([w16, w32], lr=1e-2, param_update="kahan", **PATHS[path])
    ref = Adan([torch.nn.Parameter(w32.detach().clone())], lr=1e-2, **PATHS[path])
    for _ in range(2):
        w16.grad, w32.grad = torch.randn(64, 64).bfloat16(), torch.randn(64)
        ref.param_groups[0]["params"][0].grad = w32.grad.clone()
        opt.step()
        ref.step()
    assert "param_comp" in opt.state[w16] and "param_comp" not in opt.state[w32]
    assert torch.equal(w32, ref.param_groups[0]["params"][0])


def _bucket() -> dict:
    """One bucket as the CPU launchers hand it to the host helper: parameters of 2, 1 and 0
    dims (block layouts 3 x 300, 1 x 5, 1 x 1), their gradients, four buffer lists, three
    int8 scale lists and the step counts."""
    params = [torch.randn(3, 300), torch.randn(5), torch.randn(())]
    return {
        "params": params,
        "grads": [torch.randn_like(p) for p in params],
        "buffers": tuple([torch.zeros_like(p) for p in params] for _ in range(4)),
        "scales": tuple([torch.zeros(_compact.scale_shape(p.shape)) for p in params] for _ in range(3)),
        "steps": [torch.zeros(()) for _ in params],
    }


class _Sub(torch.Tensor):
    pass


UNFIT = {  # each breaks one thing the kernels rely on
    "a strided parameter": lambda b: b["params"].__setitem__(0, torch.randn(300, 3).t()),
    "parameters of two dtypes": lambda b: b["params"].__setitem__(1, b["params"][1].double()),
    "a gradient of another dtype": lambda b: b["grads"].__setitem__(0, b["grads"][0].double()),
    "a gradient of fewer elements": lambda b: b["grads"].__setitem__(1, torch.randn(4)),
    "a strided gradient": lambda b: b["grads"].__setitem__(0, torch.randn(300, 3).t()),
    "a sparse gradient": lambda b: b["grads"].__setitem__(1, b["grads"][1].to_sparse()),
    "a gradient with the negation bit": lambda b: b["grads"].__setitem__(0, torch._neg_view(b["grads"][0])),
    "no gradient": lambda b: b["grads"].__setitem__(2, None),
    "a buffer of the same size in another shape": lambda b: b["buffers"][2].__setitem__(0, torch.zeros(300, 3)),
    "a buffer list of two dtypes": lambda b: b["buffers"][0].__setitem__(1, torch.zeros(5, dtype=torch.float64)),
    "a buffer on the meta device": lambda b: b["buffers"][3].__setitem__(0, torch.empty(3, 300, device="meta")),
    "a scale of another shape": lambda b: b["scales"][1].__setitem__(0, torch.zeros(3, 3)),
    "a step count of two elements": lambda b: b["steps"].__setitem__(2, torch.zeros(2)),
    "a tensor subclass": lambda b: b["params"].__setitem__(0, b["params"][0].as_subclass(_Sub)),
    "a step list too short": lambda b: b["steps"].pop(),
}


@pytest.mark.skipif(not HOST_BUILDABLE, reason="no C++ compiler or Python headers: the host helper is not built")
@pytest.mark.parametrize("fault", [None, *UNFIT])
def test_host_helper_checks_every_tensor(fault):
    """The C++ host helper is all that stands between a fused CPU step and the kernel's raw
    reads, at every step: it must fill the table exactly for a fit bucket, and refuse a
    bucket with any one unfit tensor (the launcher then takes the Python path, which raises
    or converts)."""
    from array import array

    from adan.kernels import cpu

    host = cpu.host_helper()
    assert host is not None, cpu._host_error
    b = _bucket()
    if fault is not None:
        UNFIT[fault](b)
    n = len(b["params"])
    memory = array("q", [0]) * (13 * n)
    ok = host.pack(b["params"], b["grads"], b["buffers"], b["scales"], b["steps"], _compact.BLOCK, memory.buffer_info()[0])
    if fault is not None:
        assert ok is False
        return
    assert ok is True
    runs = [memory[i * n : (i + 1) * n].tolist() for i in range(13)]
    tensor_lists = [b["params"], b["grads"], *b["buffers"], *b["scales"], b["steps"]]
    assert runs[:10] == [[t.data_ptr() for t in lst] for lst in tensor_lists]
    assert runs[10] == [p.numel() for p in b["params"]]
    assert list(zip(runs[11], runs[12])) == [_compact.block_layout(p.shape) for p in b["params"]]


@pytest.mark.skipif(not CPU_FUSED or not HOST_BUILDABLE, reason="no C or C++ compiler, or no Python headers")
@pytest.mark.parametrize(
    "dtype, state_dtype, param_update",
    [
        (torch.float32, "float32", "nearest"),
        (torch.bfloat16, "float32", "nearest"),
        (torch.float32, "bfloat16", "nearest"),
        (torch.float32, "int8", "nearest"),
        (torch.bfloat16, "int8", "kahan"),
        (torch.bfloat16, "bfloat16", "stochastic"),
        (torch.float16, "bfloat16", "kahan"),
    ],
)
def test_host_helper_and_the_python_path_step_alike(monkeypatch, dtype, state_dtype, param_update):
    """Both ways of building a bucket's table (the host helper's, the Python path's) put
    every list in the run the kernel reads it from: the same steps give the same bits, and
    each step took the way it was meant to."""
    from adan._checks import LayoutCache
    from adan.kernels import cpu

    opts, params = [], []
    for _ in range(2):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(shape).to(dtype)) for shape in [(40, 300), (7,), (), (3, 5, 2)]]
        opts.append(Adan(ps, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, state_dtype=state_dtype, param_update=param_update, fused=True))
        params.append(ps)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen).to(dtype) for p in params[0]]
        for way, (opt, ps) in zip(["helper", "python"], zip(opts, params)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            tables = [LayoutCache(), LayoutCache()]
            with monkeypatch.context() as m:
                m.setattr(cpu, "_FULL_TABLES", tables[0])
                m.setattr(cpu, "_COMPACT_TABLES", tables[1])
                if way == "python":
                    m.setattr(cpu, "host_helper", lambda: None)
                opt.step()
            assert any(t.entries for t in tables) == (way == "python")
    for a, b in zip(*params):
        assert torch.equal(a, b)
    for a, b in zip(*params):
        sa, sb = opts[0].state[a], opts[1].state[b]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.skipif(not CPU_FUSED, reason="no C compiler")
def test_without_a_cxx_compiler_the_launchers_check_in_python(monkeypatch, tmp_path):
    """The host helper is optional: where it cannot be built, or is switched off, the reason
    is kept and the fused CPU steps take the Python path, with the same results."""
    from adan.kernels import cpu

    monkeypatch.setenv("ADAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(cpu, "_host", None)
    monkeypatch.setattr(cpu, "_host_error", None)
    monkeypatch.setattr(_native, "_loaded", {})
    assert cpu.host_helper() is None
    assert "no C++ compiler found" in cpu._host_error
    monkeypatch.setattr(cpu, "_host_error", None)
    monkeypatch.setenv("ADAN_HOST_HELPER", "0")  # switched off: not even tried
    assert cpu.host_helper() is None and cpu._host_error == "switched off (ADAN_HOST_HELPER=0)"
    models = [_model(), _model()]
    opts = [Adan(models[0].parameters(), lr=1e-2, fused=True), Adan(models[1].parameters(), lr=1e-2, foreach=False)]
    for opt, model in zip(opts, models):
        _train(opt, model, 3)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
