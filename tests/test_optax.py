"""adan.optax: the JAX transformations against the golden trajectories and the torch optimizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from adan import Adan  # noqa: E402
from adan import optax as adan_optax  # noqa: E402
from conftest import assert_rel_close, golden_cases  # noqa: E402

SINGLE_GROUP = [c for c in golden_cases() if len(c["groups"]) == 1]


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _golden_run(case, make_tx):
    """Run a golden case through a transformation under jit; return the worst relative error."""
    hp = case["groups"][0]["hparams"]
    params = [jnp.asarray(np.array(p), jnp.float64) for p in case["initial_params"][0]]
    tx = make_tx(hp, case["max_grad_norm"])
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    worst = 0.0
    for t, grads in enumerate(case["grads"]):
        if case["restart_before_step"] == t:
            state = tx.init(params)  # restart_opt(): moments and count reset
        params, state = step(params, state, [jnp.asarray(np.array(g), jnp.float64) for g in grads[0]])
        for k, p in enumerate(params):
            expected = np.array(case["params_after_step"][t][0][k])
            if expected.size:
                worst = max(worst, float(np.max(np.abs(np.asarray(p) - expected)) / np.max(np.abs(expected))))
    return worst, params


def _ours(hp, max_grad_norm):
    b1, b2, b3 = hp["betas"]
    return adan_optax.adan(hp["lr"], b1, b2, b3, hp["eps"], hp["weight_decay"], hp["no_prox"],
                           max_grad_norm=max_grad_norm or None)  # fmt: skip


@pytest.mark.parametrize("case", SINGLE_GROUP, ids=[c["name"] for c in SINGLE_GROUP])
def test_golden_trajectories_in_float64_under_jit(case, x64):
    worst, params = _golden_run(case, _ours)
    assert all(p.dtype == jnp.float64 for p in params)
    assert worst <= 1e-12, worst


def test_the_one_minus_b2_variant_fails_the_golden_check(x64):
    """optax's own scale_by_adan weights the difference by 1 - b2: the same check catches it."""
    case = next(c for c in SINGLE_GROUP if c["name"] == "defaults")

    def optax_variant(hp, max_grad_norm):
        b1, b2, b3 = hp["betas"]
        return optax.chain(optax.scale_by_adan(b1, b2, b3, hp["eps"], eps_root=0.0), optax.scale_by_learning_rate(hp["lr"]))

    worst, _ = _golden_run(case, optax_variant)
    assert worst > 1e-6


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtypes_and_state_shapes_are_stable(dtype):
    params = {"w": jnp.ones((3, 4), dtype), "b": jnp.zeros((4,), dtype)}
    tx = adan_optax.adan(1e-2, weight_decay=0.02, max_grad_norm=1.0)
    state = tx.init(params)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes


def test_inject_hyperparams_and_multisteps():
    params = {"w": jnp.ones((5,))}
    grads = {"w": jnp.arange(5.0)}
    tx = optax.inject_hyperparams(adan_optax.adan, static_args=("no_prox", "max_grad_norm"))(learning_rate=1e-2, weight_decay=0.02)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    plain = adan_optax.adan(1e-2, weight_decay=0.02)
    expected, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
    state.hyperparams["learning_rate"] = jnp.asarray(5e-3)
    updates, state = tx.update(grads, state, params)
    assert np.all(np.isfinite(updates["w"]))

    multi = optax.MultiSteps(adan_optax.adan(1e-2), every_k_schedule=2)
    mstate = multi.init(params)
    u1, mstate = multi.update(grads, mstate, params)
    assert np.all(np.asarray(u1["w"]) == 0)  # accumulating
    u2, mstate = multi.update(grads, mstate, params)
    assert np.any(np.asarray(u2["w"]) != 0)


def test_schedule_and_mask():
    params = {"w": jnp.ones((3,)), "b": jnp.ones((3,))}
    grads = {"w": jnp.zeros((3,)), "b": jnp.zeros((3,))}
    schedule = optax.linear_schedule(1e-1, 0.0, 10)
    tx = adan_optax.adan(schedule, weight_decay=0.5, mask={"w": True, "b": False})
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1 / (1 + 0.1 * 0.5), rtol=1e-6)  # proximal decay, lr at step 0
    np.testing.assert_allclose(new["b"], 1.0)  # masked out


@pytest.mark.parametrize("no_prox", [False, True])
def test_parity_with_the_torch_optimizer(x64, no_prox):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((4, 3)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(p.shape) for p in init] for _ in range(10)]
    kwargs = dict(lr=1e-2, weight_decay=0.05, max_grad_norm=1.0, no_prox=no_prox)
    tparams = [torch.tensor(p, requires_grad=True) for p in init]
    topt = Adan(tparams, **kwargs)
    tx = adan_optax.adan(1e-2, weight_decay=0.05, no_prox=no_prox, max_grad_norm=1.0)
    jparams = [jnp.asarray(p) for p in init]
    state = tx.init(jparams)
    for gs in grads:
        for p, g in zip(tparams, gs):
            p.grad = torch.tensor(g)
        topt.step()
        updates, state = tx.update([jnp.asarray(g) for g in gs], state, jparams)
        jparams = optax.apply_updates(jparams, updates)
    for a, b in zip(tparams, jparams):
        assert_rel_close(a, np.asarray(b), 1e-12)


def test_core_package_does_not_import_jax():
    import subprocess
    import sys

    code = "import sys, adan; import adan.optimizer; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
