"""The torch optimizer against the float64 reference and across its own paths."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adan import Adan
from adan.reference import ReferenceAdan
from conftest import assert_rel_close
from optim_info import ERROR_INPUTS, OPTIMIZER_INPUTS, PATHS, OptimizerInput

# A zero-size tensor, a scalar and a parameter (index 1) that loses its gradient mid-run.
SHAPES = [(5, 4), (7,), (), (0, 3), (3, 2, 2)]
DROPPED = {1: range(4, 7)}  # param index -> steps without a gradient
STEPS = 12


def make_problem(shapes=SHAPES, steps=STEPS, seed=0, grad_scale=1.0, dropped=DROPPED):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in shapes]
    grads = [
        [None if t in dropped.get(i, ()) else grad_scale * rng.standard_normal(s) for i, s in enumerate(shapes)]
        for t in range(steps)
    ]
    return init, grads


def run_torch(kwargs, init, grads, *, dtypes=torch.float64, path="single"):
    if not isinstance(dtypes, (list, tuple)):
        dtypes = [dtypes] * len(init)
    params = [torch.tensor(x, dtype=dt, requires_grad=True) for x, dt in zip(init, dtypes)]
    opt = Adan(params, **kwargs, **PATHS[path])
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else torch.tensor(g, dtype=p.dtype)
        opt.step()
        history.append([p.detach().clone() for p in params])
    return params, opt, history


def run_reference(kwargs, init, grads):
    kwargs = dict(kwargs)
    sign = -1.0 if kwargs.pop("maximize", False) else 1.0
    kwargs.pop("capturable", None)
    max_grad_norm = kwargs.pop("max_grad_norm", 0.0)
    if torch.is_tensor(kwargs.get("lr")):
        kwargs["lr"] = kwargs["lr"].item()
    opt = ReferenceAdan([dict(params=init, **kwargs)], max_grad_norm=max_grad_norm)
    history = []
    for step_grads in grads:
        [params] = opt.step([[None if g is None else sign * g for g in step_grads]])
        history.append(params)
    return history


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", OPTIMIZER_INPUTS, ids=str)
def test_matches_reference_float64(config: OptimizerInput, path):
    init, grads = make_problem(seed=1)
    _, _, history = run_torch(config.kwargs, init, grads, path=path)
    expected = run_reference(config.kwargs, init, grads)
    for t, (got, want) in enumerate(zip(history, expected)):
        for k, (a, b) in enumerate(zip(got, want)):
            assert_rel_close(a, b, 1e-12, f"{config} step {t} param {k}")


@pytest.mark.parametrize("path", [p for p in PATHS if p != "single"])
@pytest.mark.parametrize("config", OPTIMIZER_INPUTS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_single_tensor_equals_other_paths(config: OptimizerInput, dtype, path):
    init, grads = make_problem(seed=2)
    rel = 2e-6 if dtype == torch.float32 else 1e-13
    p_single, o_single, _ = run_torch(config.kwargs, init, grads, dtypes=dtype, path="single")
    p_each, o_each, _ = run_torch(config.kwargs, init, grads, dtypes=dtype, path=path)
    for k, (a, b) in enumerate(zip(p_single, p_each)):
        assert a.dtype == dtype
        assert_rel_close(a, b, rel, f"param {k}")
        for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad", "step"):
            assert_rel_close(o_single.state[a][key], o_each.state[b][key], rel, f"param {k} {key}")


@pytest.mark.parametrize("path", [p for p in PATHS if p != "single"])
@pytest.mark.parametrize("config", OPTIMIZER_INPUTS[:6], ids=str)
def test_mixed_dtypes_single_equals_other_paths(config: OptimizerInput, path):
    init, grads = make_problem(seed=3)
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float64, torch.float32]
    p_single, _, _ = run_torch(config.kwargs, init, grads, dtypes=dtypes, path="single")
    p_each, _, _ = run_torch(config.kwargs, init, grads, dtypes=dtypes, path=path)
    for a, b, dt in zip(p_single, p_each, dtypes):
        assert a.dtype == b.dtype == dt
        assert_rel_close(a, b, {torch.float32: 2e-6, torch.float64: 1e-13, torch.bfloat16: 1e-2}[dt])


@pytest.mark.parametrize("path", PATHS)
def test_param_without_grad_keeps_its_state(path):
    init, grads = make_problem(seed=4)
    params = [torch.tensor(x, requires_grad=True) for x in init]
    opt = Adan(params, lr=1e-2, weight_decay=0.1, **PATHS[path])
    frozen = None
    for t, step_grads in enumerate(grads):
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else torch.tensor(g, dtype=p.dtype)
        if t == 4:
            frozen = ({k: v.clone() for k, v in opt.state[params[1]].items()}, params[1].detach().clone())
        opt.step()
        if t in DROPPED[1]:
            state, value = frozen
            assert torch.equal(params[1], value)
            for key, v in state.items():
                assert torch.equal(opt.state[params[1]][key], v), key
    assert opt.state[params[1]]["step"].item() == STEPS - len(DROPPED[1])
    assert opt.state[params[0]]["step"].item() == STEPS


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4),
    lr=st.floats(1e-4, 1e-1),
    betas=st.tuples(st.floats(0.0, 0.999), st.floats(0.0, 0.999), st.floats(0.0, 0.9999)),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
    weight_decay=st.floats(0.0, 0.2),
    no_prox=st.booleans(),
    max_grad_norm=st.sampled_from([0.0, 0.1, 10.0]),
    log_grad_scale=st.floats(-6, 3),
    path=st.sampled_from(sorted(PATHS)),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_matches_reference(shapes, lr, betas, eps, weight_decay, no_prox, max_grad_norm, log_grad_scale, path, seed):
    kwargs = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, no_prox=no_prox, max_grad_norm=max_grad_norm)
    init, grads = make_problem(shapes, steps=6, seed=seed, grad_scale=10.0**log_grad_scale, dropped={})
    _, _, history = run_torch(kwargs, init, grads, path=path)
    expected = run_reference(kwargs, init, grads)
    for got, want in zip(history[-1], expected[-1]):
        assert_rel_close(got, want, 1e-11)


# ----------------------------------------------------------------- behaviour
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", OPTIMIZER_INPUTS, ids=str)
def test_grad_is_not_modified(config, path):
    init, grads = make_problem(seed=5, grad_scale=10.0)
    params = [torch.tensor(x, requires_grad=True) for x in init]
    opt = Adan(params, **config.kwargs, **PATHS[path])
    for step_grads in grads[:3]:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        before = [p.grad.clone() for p in params]
        opt.step()
        for p, b in zip(params, before):
            assert torch.equal(p.grad, b)


@pytest.mark.parametrize("path", PATHS)
def test_maximize_equals_minimizing_the_negated_gradient(path):
    init, grads = make_problem(seed=6)
    neg = [[None if g is None else -g for g in gs] for gs in grads]
    kwargs = dict(lr=1e-2, weight_decay=0.05, max_grad_norm=1.0)
    p_max, _, _ = run_torch({**kwargs, "maximize": True}, init, grads, path=path)
    p_min, _, _ = run_torch(kwargs, init, neg, path=path)
    for a, b in zip(p_max, p_min):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("no_prox", [False, True])
def test_tensor_lr_equals_float_lr(path, dtype, no_prox):
    init, grads = make_problem(seed=7)
    kwargs = dict(weight_decay=0.05, no_prox=no_prox, max_grad_norm=2.0)
    p_float, _, _ = run_torch({**kwargs, "lr": 3e-3}, init, grads, dtypes=dtype, path=path)
    p_tensor, _, _ = run_torch({**kwargs, "lr": torch.tensor(3e-3, dtype=torch.float64)}, init, grads, dtypes=dtype, path=path)
    for a, b in zip(p_float, p_tensor):
        assert_rel_close(a, b, 1e-6 if dtype == torch.float32 else 1e-15)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0])
def test_complex_equals_real_view(path, max_grad_norm):
    rng = np.random.default_rng(8)
    init = rng.standard_normal((4, 3, 2))
    grads = [rng.standard_normal((4, 3, 2)) for _ in range(8)]
    real = torch.tensor(init, requires_grad=True)
    cplx = torch.view_as_complex(torch.tensor(init)).requires_grad_()
    kwargs = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=max_grad_norm, **PATHS[path])
    o_real, o_cplx = Adan([real], **kwargs), Adan([cplx], **kwargs)
    for g in grads:
        real.grad = torch.tensor(g)
        cplx.grad = torch.view_as_complex(torch.tensor(g))
        o_real.step()
        o_cplx.step()
    assert_rel_close(torch.view_as_real(cplx.detach()), real, 1e-15)
    assert torch.is_complex(o_cplx.state[cplx]["exp_avg"])


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)


def _batch(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g, dtype=dtype)
    return x, x.sum(dim=1, keepdim=True).sin()


@pytest.mark.parametrize("path", PATHS)
def test_closure(path):
    x, y = _batch()
    model_a, model_b = _mlp(), _mlp()
    opt_a = Adan(model_a.parameters(), lr=1e-2, max_grad_norm=1.0, **PATHS[path])
    opt_b = Adan(model_b.parameters(), lr=1e-2, max_grad_norm=1.0, **PATHS[path])

    def closure():
        opt_a.zero_grad()
        loss = torch.nn.functional.mse_loss(model_a(x), y)
        loss.backward()
        return loss

    for _ in range(5):
        loss_a = opt_a.step(closure)
        opt_b.zero_grad()
        loss_b = torch.nn.functional.mse_loss(model_b(x), y)
        loss_b.backward()
        opt_b.step()
        assert torch.equal(loss_a, loss_b)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_lr_scheduler(path, tensor_lr):
    x, y = _batch()
    lr = torch.tensor(0.05) if tensor_lr else 0.05
    model_a, model_b = _mlp(), _mlp()
    opt_a = Adan(model_a.parameters(), lr=lr, weight_decay=0.02, **PATHS[path])
    opt_b = Adan(model_b.parameters(), lr=0.05, weight_decay=0.02, **PATHS[path])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=6)
    expected_lrs = []
    for _ in range(6):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
        lr_now = float(opt_a.param_groups[0]["lr"])
        expected_lrs.append(lr_now)
        opt_b.param_groups[0]["lr"] = lr_now
        opt_a.step()
        opt_b.step()
        sched.step()
    assert expected_lrs[0] == pytest.approx(0.05) and expected_lrs[-1] < 0.01
    assert torch.is_tensor(opt_a.param_groups[0]["lr"]) == tensor_lr
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert_rel_close(a, b, 1e-6)


def _train(opt, model, steps, seed=0):
    for s in range(steps):
        x, y = _batch(seed + s)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("path", PATHS)
def test_state_dict_round_trip_continues_in_lockstep(path):
    kwargs = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=1.0, **PATHS[path])
    model = _mlp()
    opt = Adan(model.parameters(), **kwargs)
    _train(opt, model, 4)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    clone = _mlp(seed=123)
    clone.load_state_dict(saved["model"])
    opt_clone = Adan(clone.parameters(), lr=0.5, **PATHS[path])  # hyper-parameters come from the checkpoint
    opt_clone.load_state_dict(saved["opt"])
    assert opt_clone.param_groups[0]["lr"] == 1e-2 and opt_clone.param_groups[0]["max_grad_norm"] == 1.0
    sd_a, sd_b = opt.state_dict(), opt_clone.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]
    for pid, s in sd_a["state"].items():
        for key, value in s.items():
            assert torch.equal(value, sd_b["state"][pid][key]), key

    _train(opt, model, 5, seed=10)
    _train(opt_clone, clone, 5, seed=10)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_deepcopy_continues_in_lockstep():
    model = _mlp()
    opt = Adan(model.parameters(), lr=1e-2, max_grad_norm=0.5)
    _train(opt, model, 3)
    model_copy, opt_copy = copy.deepcopy((model, opt))
    _train(opt, model, 4, seed=5)
    _train(opt_copy, model_copy, 4, seed=5)
    for a, b in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(a, b)


def test_restart_opt_resets_moments_and_step():
    model = _mlp()
    opt = Adan(model.parameters(), lr=1e-2)
    _train(opt, model, 3)
    fresh_model = copy.deepcopy(model)
    fresh_opt = Adan(fresh_model.parameters(), lr=1e-2)
    opt.restart_opt()
    for p in model.parameters():
        assert opt.state[p]["step"].item() == 0 and not opt.state[p]["exp_avg"].any()
    _train(opt, model, 3, seed=7)
    _train(fresh_opt, fresh_model, 3, seed=7)
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize("error_input", ERROR_INPUTS, ids=str)
def test_invalid_hyperparameters(error_input):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(error_input.error, match=error_input.match):
        Adan([p], **error_input.kwargs)


@pytest.mark.parametrize("error_input", [e for e in ERROR_INPUTS if e.error is ValueError and "fused" not in e.kwargs], ids=str)
def test_invalid_hyperparameters_in_a_group(error_input):
    opt = Adan([torch.zeros(3, requires_grad=True)])
    with pytest.raises(error_input.error, match=error_input.match):
        opt.add_param_group(dict(params=[torch.zeros(2, requires_grad=True)], **error_input.kwargs))
    assert len(opt.param_groups) == 1


def test_max_grad_norm_is_global():
    with pytest.raises(ValueError, match="clipping is global"):
        Adan([{"params": [torch.zeros(2, requires_grad=True)], "max_grad_norm": 1.0}], max_grad_norm=2.0)


@pytest.mark.parametrize("path", PATHS)
def test_sparse_gradient_is_rejected_and_nothing_changes(path):
    dense = torch.ones(3, requires_grad=True)
    sparse = torch.ones(4, requires_grad=True)
    opt = Adan([{"params": [dense]}, {"params": [sparse]}], lr=0.1, **PATHS[path])
    dense.grad = torch.ones(3)
    sparse.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(dense, torch.ones(3)) and torch.equal(sparse, torch.ones(4))
    assert all("step" not in s or s["step"].item() == 0 for s in opt.state.values())


def test_mismatched_state_dict_is_rejected_and_nothing_is_lost():
    model = _mlp()
    opt = Adan(model.parameters(), lr=1e-2)
    _train(opt, model, 2)
    before = copy.deepcopy(opt.state_dict())

    other = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    other_opt = Adan(other.parameters(), lr=1e-2)
    other(_batch()[0]).sum().backward()
    other_opt.step()
    sd = other_opt.state_dict()
    with pytest.raises(ValueError, match=r"group 0, parameter 2, state 'exp_avg' has shape \(2, 16\)"):
        opt.load_state_dict(sd)
    with pytest.raises(ValueError, match="1 parameter groups, the optimizer has 2"):
        Adan([{"params": [model[0].weight]}, {"params": [model[0].bias]}]).load_state_dict(opt.state_dict())
    sd_short = copy.deepcopy(opt.state_dict())
    sd_short["param_groups"][0]["params"] = sd_short["param_groups"][0]["params"][:2]
    with pytest.raises(ValueError, match="has 2 parameters, the optimizer's has 4"):
        opt.load_state_dict(sd_short)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for pid, s in before["state"].items():
        for key, value in s.items():
            assert torch.equal(after["state"][pid][key], value)


# ------------------------------------------------------------------ compile
@pytest.mark.parametrize("path", PATHS)
def test_torch_compile_matches_eager_without_recompiling(path):
    torch._dynamo.reset()
    kwargs = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=0.5, **PATHS[path])
    model_e, model_c = _mlp(), _mlp()
    opt_e, opt_c = Adan(model_e.parameters(), **kwargs), Adan(model_c.parameters(), **kwargs)

    def train_step(model, opt, x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(train_step)
    for s in range(8):
        x, y = _batch(s)
        loss_e = train_step(model_e, opt_e, x, y)
        if s < 2:  # the first two steps create state and are allowed to compile
            loss_c = compiled(model_c, opt_c, x, y)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                loss_c = compiled(model_c, opt_c, x, y)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(model_e.parameters(), model_c.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_step_has_no_host_sync_so_it_compiles_as_one_graph(path):
    """A .item(), .tolist() or data-dependent branch inside step() would break fullgraph=True."""
    torch._dynamo.reset()
    model = _mlp()
    opt = Adan(model.parameters(), lr=1e-2, weight_decay=0.02, max_grad_norm=0.1, maximize=True, **PATHS[path])
    _train(opt, model, 1)  # state creation, eagerly
    step = torch.compile(opt.step, fullgraph=True)
    for s in range(3):
        x, y = _batch(s)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        step()
    assert all(s["step"].item() == 4 for s in opt.state.values())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("max_grad_norm", [0.0, 0.5])
def test_functional_adan_handles_the_first_step_itself(path, state_dtype, max_grad_norm):
    """Called like torch.optim.adam(): zero state, step counts at 0. Every path must take the
    previous gradient to be the current one at the first step (no difference term), as the
    class does: both runs end bit for bit alike."""
    import adan as adan_pkg
    from adan import _formats

    torch.manual_seed(0)
    shapes = [(64, 128), (33,), ()]
    kw = dict(lr=1e-2, betas=(0.9, 0.8, 0.99), eps=1e-8, weight_decay=0.02, max_grad_norm=max_grad_norm)
    p_cls = [torch.randn(s, requires_grad=True) for s in shapes]
    p_fun = [p.detach().clone() for p in p_cls]
    opt = Adan(p_cls, **kw, state_dtype=state_dtype, **PATHS[path])
    opt._generators[torch.device("cpu")] = torch.Generator().manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    fmts = [_formats.format_for(p, state_dtype) for p in p_fun]
    state = [{"step": torch.zeros(()), **f.new_buffers(p), "neg_pre_grad": f.new_neg(p)} for f, p in zip(fmts, p_fun)]
    scales = [f.scales(s) for f, s in zip(fmts, state)]
    g_rng = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(s, generator=g_rng) for s in shapes]
        for p, g in zip(p_cls, grads):
            p.grad = g.clone()
        opt.step()
        clip = adan_pkg.global_clip_coefficient(grads, max_grad_norm, kw["eps"]) if max_grad_norm else None
        adan_pkg.adan(
            p_fun, grads, *([s[k] for s in state] for k in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad", "step")),
            clip_coef=clip, beta1=0.9, beta2=0.8, beta3=0.99, lr=kw["lr"], weight_decay=kw["weight_decay"], eps=kw["eps"],
            no_prox=False, state_scales=scales if state_dtype == "int8" else None, generator=gen, **PATHS[path],
        )  # fmt: skip
    for a, b in zip(p_cls, p_fun):
        assert torch.equal(a.detach(), b), (path, state_dtype)
    for p, s in zip(p_cls, state):
        for key, value in s.items():
            assert torch.equal(opt.state[p][key], value), key
