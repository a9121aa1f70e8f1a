"""PyTorch's generic optimizer contract, applied to Adan.

Modelled on ``TestOptimRenewed`` in PyTorch's ``test/test_optim.py``: an ``OptimizerInfo``
for Adan (built like AdamW's in ``torch.testing._internal.common_optimizers``, which ships
with the wheel) supplies the inputs, and each test below checks what torch checks of
every optimizer. torch's own generic error inputs are used as they are.
"""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch

pytest.importorskip("expecttest")  # common_optimizers imports it
from torch.testing._internal.common_optimizers import (  # noqa: E402
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    get_error_inputs_for_all_optims,
)

from adan import Adan  # noqa: E402
from adan._fused import fused_available  # noqa: E402


def adan_inputs(device, dtype=None):
    inputs = [
        OptimizerInput(params=None, kwargs={}, desc="default"),
        OptimizerInput(params=None, kwargs={"lr": 0.01}, desc="non-default lr"),
        OptimizerInput(params=None, kwargs={"weight_decay": 0.1}, desc="nonzero weight_decay"),
        OptimizerInput(params=None, kwargs={"weight_decay": 0.1, "maximize": True}, desc="maximize"),
        OptimizerInput(params=None, kwargs={"weight_decay": 0.1, "no_prox": True}, desc="no_prox"),
        OptimizerInput(params=None, kwargs={"betas": (0.9, 0.9, 0.999)}, desc="custom betas"),
        OptimizerInput(params=None, kwargs={"weight_decay": 0.1, "max_grad_norm": 1.0}, desc="max_grad_norm"),
        OptimizerInput(params=None, kwargs={"lr": torch.tensor(0.01), "weight_decay": 0.1}, desc="Tensor lr"),
    ]
    if dtype == torch.float16:
        for inp in inputs:
            inp.kwargs["eps"] = 0.1
    return inputs


def adan_error_inputs(device, dtype):
    return get_error_inputs_for_all_optims(device, dtype) + [
        ErrorOptimizerInput(
            OptimizerInput(params=None, kwargs=dict(lr=1e-2, betas=(1.0, 0.92, 0.99)), desc="beta1 in [0, 1)"),
            error_type=ValueError, error_regex="Invalid beta1",
        ),  # fmt: skip
        ErrorOptimizerInput(
            OptimizerInput(params=None, kwargs=dict(lr=1e-2, weight_decay=-1), desc="weight_decay >= 0"),
            error_type=ValueError, error_regex="Invalid weight_decay",
        ),  # fmt: skip
    ]


ADAN_INFO = OptimizerInfo(
    Adan,
    optim_inputs_func=adan_inputs,
    optim_error_inputs_func=adan_error_inputs,
    supported_impls=("foreach", "fused"),
    supports_fused_on=("cpu", "cuda"),
    has_capturable_arg=True,
)
DEVICE = "cpu"
FUSED = fused_available(DEVICE)
INPUTS = adan_inputs(DEVICE)


def _ids(inputs):
    return [i.desc for i in inputs]


def _model(dtype):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid())
    return model.to(dtype=dtype, device=DEVICE)


def _run(kwargs, dtype, steps=4):
    """torch's _test_derived_optimizers set-up: a small model plus a 0-d parameter."""
    model = _model(dtype)
    empty = torch.tensor(0.3, device=DEVICE, dtype=dtype, requires_grad=True)
    params = [*model.parameters(), empty]
    opt = Adan(params, **kwargs)
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype, device=DEVICE).reshape(3, 2)
    history = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        model(x).sum().backward()
        empty.grad = torch.full_like(empty, 0.5)
        opt.step()
        history.append(([p.detach().clone() for p in params], deepcopy(opt.state_dict()["state"])))
    return history


def _assert_same_history(a, b, **tol):
    for (pa, sa), (pb, sb) in zip(a, b):
        for x, y in zip(pa, pb):
            torch.testing.assert_close(x, y, **tol)
        for pid in sa:
            for key in sa[pid]:
                torch.testing.assert_close(sa[pid][key].to(sb[pid][key].dtype), sb[pid][key], **tol)


@pytest.mark.parametrize("error_input", ADAN_INFO.optim_error_inputs_func(DEVICE, torch.float32), ids=lambda e: e.optimizer_error_input.desc)
def test_errors(error_input):
    inp = error_input.optimizer_error_input
    params, kwargs = inp.params, deepcopy(inp.kwargs)
    if inp.desc == "a param group cannot have duplicate parameters":  # torch warns; Adan refuses (threads would race)
        error_input = ErrorOptimizerInput(inp, error_type=ValueError, error_regex="lists the same parameter twice")
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            Adan(params if params is not None else [torch.zeros(2, requires_grad=True)], **kwargs)
    else:
        opt = Adan(params, **kwargs)
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            opt.step()


@pytest.mark.parametrize("flag", ["foreach", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("inp", INPUTS, ids=_ids(INPUTS))
def test_derived_paths_match_forloop(inp, dtype, flag):
    """test_foreach_matches_forloop / test_fused_matches_forloop, at torch's default tolerances."""
    if flag == "fused" and not FUSED:
        pytest.skip("no fused CPU kernel")
    if flag == "foreach" and dtype != torch.float64:
        pytest.skip("torch checks foreach in float64")
    kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in inp.kwargs.items()}
    forloop = _run({**kwargs, flag: False, **({"foreach": False} if flag == "fused" else {})}, dtype)
    derived = _run({**kwargs, flag: True}, dtype)
    _assert_same_history(derived, forloop)


@pytest.mark.parametrize("num_dim", [0, 1, 2])
@pytest.mark.parametrize("impl", ["forloop", "foreach", "fused"])
def test_tensor_lr(num_dim, impl):
    """test_tensor_lr_num_dim_N: any one-element lr tensor behaves as the float lr."""
    if impl == "fused" and not FUSED:
        pytest.skip("no fused CPU kernel")
    path = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    for inp in INPUTS:
        kwargs = {k: v for k, v in inp.kwargs.items() if k != "lr"}
        lr = float(inp.kwargs.get("lr", 1e-3))
        expected = _run({**kwargs, "lr": lr, **path}, torch.float32)
        got = _run({**kwargs, "lr": torch.tensor(lr).reshape((1,) * num_dim), **path}, torch.float32)
        _assert_same_history(got, expected)


@pytest.mark.skipif(not FUSED, reason="no fused CPU kernel")
def test_fused_error_on_params_on_meta():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
    opt = Adan(model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.to_empty(device=DEVICE)
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    opt.step()  # (to_empty made new parameters: this optimizer's are still the meta ones, without grads)
    assert not any(opt.state.values()), "no state may have been made on the meta device"


@pytest.mark.parametrize("option", ["weight_decay", "lr"])
@pytest.mark.parametrize("inp", INPUTS, ids=_ids(INPUTS))
def test_param_groups_take_every_option(inp, option):
    """test_param_groups_weight_decay / _lr: every option given in every group."""
    torch.manual_seed(0)
    w1, w2 = torch.nn.Parameter(torch.randn(10, 5)), torch.nn.Parameter(torch.randn(10, 5))
    x = torch.randn(5)
    kw2 = deepcopy(inp.kwargs)
    kw2[option] = 0.0 if option == "weight_decay" else 0.01
    opt = Adan([dict(params=[w1], **deepcopy(inp.kwargs)), dict(params=[w2], **kw2)])
    first = (w1.mv(x) + w2.mv(x)).pow(2).sum().item()
    for _ in range(20):
        opt.zero_grad()
        loss = (w1.mv(x) + w2.mv(x)).pow(2).sum()
        loss.backward()
        opt.step()
    if inp.kwargs.get("maximize"):
        assert loss.item() > first
    else:
        assert loss.item() < first


def test_max_grad_norm_must_agree_across_groups():
    a, b = torch.nn.Parameter(torch.randn(2)), torch.nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError, match="clipping is global"):
        Adan([dict(params=[a], max_grad_norm=1.0), dict(params=[b], max_grad_norm=2.0)])


@pytest.mark.parametrize("impl", ["forloop", "foreach", "fused"])
def test_step_dtype_follows_torch(impl):
    """torch keeps ``step`` in float64 under a float64 default dtype, except fused (float32)."""
    if impl == "fused" and not FUSED:
        pytest.skip("no fused CPU kernel")
    path = {"forloop": {"foreach": False, "fused": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        history = _run(dict(path), torch.float64, steps=2)
    finally:
        torch.set_default_dtype(old)
    want = torch.float32 if impl == "fused" else torch.float64
    assert {s["step"].dtype for s in history[-1][1].values()} == {want}
