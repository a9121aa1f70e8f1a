"""Every path x every configuration x every storage axis (state format, param_update,
parameter dtype), from the tables of ``optim_info.py``: a new format, param_update or
backend is checked here without a test of its own."""

from __future__ import annotations

import pytest
import torch
from optim_info import OPTIMIZER_INPUTS, PATHS, storage_axes

from adan import Adan, _formats

SHAPES = [(64, 130), (300,), (5, 3), ()]  # int8-eligible, too narrow/small for int8, a scalar
CONFIGS = [c for c in OPTIMIZER_INPUTS if c.desc in ("default", "decoupled_weight_decay", "clipping", "maximize", "tensor_lr")]


def _run(path, config, fmt, update, dtype, steps=4):
    torch.manual_seed(0)
    params = [torch.randn(s).to(dtype).requires_grad_() for s in SHAPES]
    opt = Adan(params, **config.kwargs, state_dtype=fmt, param_update=update, **PATHS[path])
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * 0.1).to(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("fmt, update, dtype", list(storage_axes()))
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_path_agrees_with_the_single_tensor_path(fmt, update, dtype, config):
    """Same start, same gradients: the paths differ only by rounding (and, for stochastic
    rounding, by which random bits each draws)."""
    runs = {path: _run(path, config, fmt, update, dtype) for path in PATHS}
    ref_params, ref_opt = runs["single"]
    tol = 1e-5 if dtype in (torch.float32, torch.float64) and fmt == "float32" else 3e-2
    for path, (params, opt) in runs.items():
        for p, q in zip(params, ref_params):
            assert torch.isfinite(p).all(), path
            err = (p.double() - q.double()).norm() / q.double().norm().clamp_min(1e-12)
            assert err <= tol, (path, float(err))
            assert torch.equal(opt.state[p]["step"].cpu(), ref_opt.state[q]["step"].cpu())


@pytest.mark.parametrize("fmt, update, dtype", list(storage_axes()))
def test_state_is_what_its_format_declares(fmt, update, dtype):
    """Each parameter's state holds its format's buffers, of the declared dtypes and shapes,
    plus the previous gradient, the step and (Kahan, low precision) the compensation."""
    params, opt = _run("single", CONFIGS[0], fmt, update, dtype, steps=2)
    for p in params:
        state = opt.state[p]
        own = _formats.format_for(p, fmt)
        assert _formats.format_of(state["exp_avg"]) is own
        for key, (want_dtype, shape) in own.expected(p).items():
            assert state[key].dtype == want_dtype and tuple(state[key].shape) == shape, key
        assert state["neg_pre_grad"].dtype == own.neg_dtype(p)
        assert ("param_comp" in state) == (update == "kahan" and dtype in (torch.bfloat16, torch.float16))
        extra = set(state) - set(own.expected(p)) - {"step", "neg_pre_grad", "param_comp"}
        assert not extra, extra


@pytest.mark.parametrize("name", list(_formats.FORMATS))
def test_bytes_per_param_matches_the_state_made(name):
    fmt = _formats.FORMATS[name]
    p = torch.zeros(1024, 4096)
    buffers = {**fmt.new_buffers(p), "neg_pre_grad": fmt.new_neg(p)}
    made = sum(b.numel() * b.element_size() for b in buffers.values()) / p.numel()
    assert fmt.bytes_per_param(torch.float32) == pytest.approx(made)
    assert {"float32": 16.0, "bfloat16": 8.0, "int8": 5.047}.get(name, made) == pytest.approx(made, abs=1e-3)


def test_a_new_format_registers_and_names_must_be_unique():
    with pytest.raises(ValueError, match="already registered"):
        _formats.register(_formats.FORMATS["int8"])
