"""The NumPy reference: the paper's Algorithm 1 variant and its documented differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adan.reference as ref
from adan.reference import ReferenceAdan, adan_update, ParamState


def test_docstring_states_both_variants_and_the_beta_convention():
    doc = ref.__doc__
    assert '"official"' in doc and '"paper"' in doc
    assert "beta_code = 1 - beta_paper" in doc


def _first_updates(variant, g0, g1, lr=0.1, eps=1e-8):
    p0 = np.zeros_like(g0)
    state = ParamState.zeros_like(p0)
    kw = dict(lr=lr, betas=(0.98, 0.92, 0.99), eps=eps, weight_decay=0.0, no_prox=False, variant=variant)
    p1 = adan_update(p0, g0, state, **kw)
    p2 = adan_update(p1, g1, state, **kw)
    return p1, p2, state


def test_paper_first_update_puts_eps_inside_the_root():
    g0, g1 = np.array([3e-4, -2.0, 0.5]), np.array([1.0, 1.0, -1.0])
    off1, _, _ = _first_updates("official", g0, g1, eps=1e-6)
    pap1, _, _ = _first_updates("paper", g0, g1, eps=1e-6)
    # official: -lr g / (|g| + eps); paper: -lr g / sqrt(g^2 + eps)
    np.testing.assert_allclose(off1, -0.1 * g0 / (np.abs(g0) + 1e-6), rtol=1e-14)
    np.testing.assert_allclose(pap1, -0.1 * g0 / np.sqrt(g0**2 + 1e-6), rtol=1e-14)
    assert not np.allclose(off1, pap1, rtol=1e-3)


def test_paper_second_step_has_no_bias_correction_and_raw_difference():
    g0, g1 = np.array([1.0, -2.0, 0.5]), np.array([0.5, 1.0, -1.0])
    _, p2, state = _first_updates("paper", g0, g1)
    d = g1 - g0
    np.testing.assert_allclose(state.exp_avg, 0.98 * g0 + 0.02 * g1, rtol=1e-14)
    np.testing.assert_allclose(state.exp_avg_diff, d, rtol=1e-14)  # v_1 = g_1 - g_0
    np.testing.assert_allclose(state.exp_avg_sq, 0.99 * g0**2 + 0.01 * (g1 + 0.92 * d) ** 2, rtol=1e-14)
    _, p2_off, _ = _first_updates("official", g0, g1)
    assert np.max(np.abs(p2 - p2_off)) > 1e-2


def test_paper_rejects_decoupled_weight_decay_and_unknown_variants():
    with pytest.raises(ValueError, match="proximation only"):
        ReferenceAdan([{"params": [np.zeros(2)], "no_prox": True}], variant="paper")
    with pytest.raises(ValueError, match="unknown variant"):
        ReferenceAdan([{"params": [np.zeros(2)]}], variant="adam")


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_noisy_quadratic_loss_decreases(variant):
    rng = np.random.default_rng(0)
    h = np.linspace(0.1, 10.0, 20)  # diagonal Hessian, condition number 100
    x0 = rng.standard_normal(20) * 3
    opt = ReferenceAdan([{"params": [x0], "lr": 0.05, "weight_decay": 0.0}], variant=variant)
    loss = lambda x: 0.5 * np.sum(h * x**2)
    start = loss(x0)
    x = x0
    for _ in range(400):
        g = h * x + 0.1 * rng.standard_normal(20)
        [[x]] = opt.step([[g]])
    assert loss(x) < 0.01 * start


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_small_mlp_loss_decreases(variant):
    torch.manual_seed(0)
    x = torch.randn(128, 4, dtype=torch.float64)
    y = torch.sin(x @ torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=torch.float64)).unsqueeze(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
    params = list(model.parameters())
    opt = ReferenceAdan([{"params": [p.detach().numpy() for p in params], "lr": 1e-2, "weight_decay": 0.02}], variant=variant)

    def loss_and_grads():
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss.item(), [p.grad.numpy().copy() for p in params]

    start, _ = loss_and_grads()
    for _ in range(300):
        _, grads = loss_and_grads()
        [new] = opt.step([grads])
        with torch.no_grad():
            for p, value in zip(params, new):
                p.copy_(torch.from_numpy(value))
    end, _ = loss_and_grads()
    assert end < 0.2 * start
