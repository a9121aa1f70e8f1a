"""The golden trajectories of the reference implementation, on every implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adan import Adan
from adan.reference import ReferenceAdan
from conftest import assert_rel_close, golden_cases
from optim_info import PATHS

CASES = golden_cases()
REL = 1e-12


def _hparams(group: dict) -> dict:
    h = dict(group["hparams"])
    h["betas"] = tuple(h["betas"])
    return h


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_reproduces_golden(case):
    groups = [dict(params=[np.array(p) for p in ps], **_hparams(g)) for g, ps in zip(case["groups"], case["initial_params"])]
    opt = ReferenceAdan(groups, max_grad_norm=case["max_grad_norm"])
    for t, grads in enumerate(case["grads"]):
        if case["restart_before_step"] == t:
            opt.restart()
        out = opt.step([[np.array(g) for g in gs] for gs in grads])
        for j, group in enumerate(out):
            for k, p in enumerate(group):
                assert_rel_close(p, case["params_after_step"][t][j][k], REL, f"step {t} group {j} param {k}")
    for j, group in enumerate(opt.groups):
        for k, st in enumerate(group.states):
            expected = case["final_state"][j][k]
            for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"):
                assert_rel_close(getattr(st, key), expected[key], REL, f"final {key} group {j} param {k}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_torch_reproduces_golden(case, path):
    params = [[torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in ps] for ps in case["initial_params"]]
    groups = [dict(params=ps, **_hparams(g)) for ps, g in zip(params, case["groups"])]
    opt = Adan(groups, max_grad_norm=case["max_grad_norm"], **PATHS[path])
    for t, grads in enumerate(case["grads"]):
        if case["restart_before_step"] == t:
            opt.restart_opt()
        for ps, gs in zip(params, grads):
            for p, g in zip(ps, gs):
                p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        for j, ps in enumerate(params):
            for k, p in enumerate(ps):
                assert_rel_close(p, case["params_after_step"][t][j][k], REL, f"step {t} group {j} param {k}")
    n_steps = len(case["grads"]) - (case["restart_before_step"] or 0)
    for j, ps in enumerate(params):
        for k, p in enumerate(ps):
            state, expected = opt.state[p], case["final_state"][j][k]
            for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
                assert_rel_close(state[key], expected[key], REL, f"final {key} group {j} param {k}")
            assert_rel_close(-state["neg_pre_grad"], expected["previous_grad"], REL, "final previous_grad")
            assert state["step"].item() == n_steps


def _checkpoint_to_torch(ckpt: dict) -> dict:
    """The JSON checkpoint as torch.save would have stored it (int keys, tensors)."""
    state = {
        int(pid): {k: torch.tensor(v, dtype=torch.float64) for k, v in s.items()} for pid, s in ckpt["state"].items()
    }
    groups = [dict(g, betas=tuple(g["betas"])) for g in ckpt["param_groups"]]
    return {"state": state, "param_groups": groups}


@pytest.mark.parametrize("path", PATHS)
def test_reference_checkpoint_continues_identically(reference_checkpoint, path, tmp_path):
    ck = reference_checkpoint
    group = ck["checkpoint"]["param_groups"][0]
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in ck["params_at_checkpoint"]]
    # Constructed with default settings: the checkpoint brings lr, wd, clipping, betas.
    opt = Adan(params, **PATHS[path])
    sd = _checkpoint_to_torch(ck["checkpoint"])
    torch.save(sd, tmp_path / "ref.pt")
    opt.load_state_dict(torch.load(tmp_path / "ref.pt", weights_only=True))
    assert opt.param_groups[0]["lr"] == group["lr"] and opt.param_groups[0]["max_grad_norm"] == group["max_grad_norm"]
    for key, value in PATHS[path].items():  # the reference's own path flags are dropped
        assert opt.param_groups[0][key] == value
    for p in params:
        assert opt.state[p]["step"].item() == group["step"]
    for t, grads in enumerate(ck["grads_after"]):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        for k, p in enumerate(params):
            assert_rel_close(p, ck["params_after_step"][t][k], REL, f"step {t} after loading, param {k}")
