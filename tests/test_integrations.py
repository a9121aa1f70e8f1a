"""Framework recipes (examples/) and checkpoints in the reference/timm format."""

from __future__ import annotations

import copy
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import adan
from adan import Adan, to_reference_format
from adan.reference import ParamState, ReferenceAdan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # noqa: BLE001 - timm raises ModuleNotFoundError for torchvision, others ImportError
        return False
    return True


# ---------------------------------------------------------------- recipes
@pytest.mark.skipif(not _importable("transformers") or not _importable("accelerate"), reason="needs transformers, accelerate")
def test_hf_trainer_recipe_resumes_exactly(capsys):
    _example("hf_trainer").main()
    assert capsys.readouterr().out.count("differs from the uninterrupted one by 0.0e+00") == 2


@pytest.mark.skipif(not _importable("lightning"), reason="needs lightning")
def test_lightning_recipe_resumes_exactly(capsys):
    _example("lightning_train").main()
    assert "differs from the uninterrupted one by 0.0e+00" in capsys.readouterr().out


@pytest.mark.skipif(not _importable("lightning"), reason="needs lightning")
def test_lightning_cli_takes_adan_by_its_import_path(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    module = _example("lightning_train")

    class Model(module.Regression):
        def configure_optimizers(self):  # LightningCLI injects the optimizer given on the command line
            return super(module.Regression, self).configure_optimizers()

        def train_dataloader(self):
            return module.data()

    args = ["fit", "--optimizer", "adan.Adan", "--optimizer.lr", "0.005", "--optimizer.max_grad_norm", "1.0",
            "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    cli = LightningCLI(Model, args=args, save_config_kwargs={"overwrite": True})
    opt = cli.trainer.optimizers[0]
    assert isinstance(opt, Adan) and opt.defaults["max_grad_norm"] == 1.0 and opt.param_groups[0]["lr"] == 0.005


@pytest.mark.skipif(not _importable("stable_baselines3"), reason="needs stable-baselines3")
def test_sb3_recipe_continues_exactly(capsys):
    _example("sb3_ppo").main()
    assert "differs by 0.0e+00" in capsys.readouterr().out


TIMM = _importable("timm.optim")
TIMM_SKIP = "timm does not import here (it needs a torchvision that matches this torch)"


@pytest.mark.skipif(not TIMM, reason=TIMM_SKIP)
def test_timm_factory_builds_this_adan_once_registered(capsys):
    from timm.optim import create_optimizer_v2

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    assert not isinstance(create_optimizer_v2(model, "adan"), Adan)  # timm's own
    _example("timm_train").main()
    opt = create_optimizer_v2(model, adan.integrations.timm.DEFAULT_NAME, lr=1e-3, weight_decay=0.02, max_grad_norm=2.0)
    assert isinstance(opt, Adan) and opt.defaults["max_grad_norm"] == 2.0
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.02]  # timm's decay / no-decay split


def test_timm_register_refuses_names_timm_would_split():
    import adan.integrations.timm as at

    with pytest.raises(ValueError, match="cannot contain '_'"):
        at.register("adan_fast")
    if not TIMM:
        with pytest.raises(ImportError):
            at.register()


# ------------------------------------------------ checkpoints both ways
def _trained(steps: int = 4, **kw):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)), torch.nn.Parameter(torch.randn(5, dtype=torch.float64))]
    opt = Adan(params, lr=1e-2, weight_decay=0.02, max_grad_norm=1.5, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * 3
        opt.step()
    return params, opt


def test_export_has_the_reference_format():
    params, opt = _trained()
    ref = to_reference_format(copy.deepcopy(opt.state_dict()))
    group = ref["param_groups"][0]
    assert group["step"] == 4 and isinstance(group["step"], int)
    assert {"lr", "betas", "eps", "weight_decay", "max_grad_norm", "no_prox", "foreach", "fused", "params"} <= set(group)
    assert group["fused"] is False and group["caution"] is False  # the reference's fused kernel is CUDA-only; timm's option
    for s in ref["state"].values():
        assert set(s) == {"exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"}
    buf = io.BytesIO()
    torch.save(ref, buf)  # plain tensors and numbers: loads with weights_only=True
    buf.seek(0)
    torch.load(buf, weights_only=True)


def test_reference_semantics_continue_the_export_to_1e12():
    """The reference semantics (adan.reference, which reproduces the reference
    implementation's golden trajectories), started from the exported state, continue
    exactly as this optimizer does, with clipping and weight decay."""
    params, opt = _trained()
    ref = to_reference_format(copy.deepcopy(opt.state_dict()))
    group = ref["param_groups"][0]
    ra = ReferenceAdan([{"params": [p.detach().numpy().copy() for p in params], "lr": group["lr"], "betas": group["betas"],
                         "eps": group["eps"], "weight_decay": group["weight_decay"], "no_prox": group["no_prox"]}],
                       max_grad_norm=group["max_grad_norm"])  # fmt: skip
    for k, pid in enumerate(group["params"]):
        s = ref["state"][pid]
        ra.groups[0].states[k] = ParamState(s["exp_avg"].numpy().copy(), s["exp_avg_diff"].numpy().copy(),
                                            s["exp_avg_sq"].numpy().copy(), -s["neg_pre_grad"].numpy(), step=group["step"])  # fmt: skip
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) * 3 for p in params]
        for p, grad in zip(params, grads):
            p.grad = grad
        opt.step()
        [new] = ra.step([[grad.numpy() for grad in grads]])
        for p, q in zip(params, new):
            np.testing.assert_allclose(p.detach().numpy(), q, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not TIMM, reason=TIMM_SKIP)
def test_timm_adan_continues_the_export_to_1e12():
    from timm.optim import Adan as TimmAdan

    params, opt = _trained()
    ref = to_reference_format(copy.deepcopy(opt.state_dict()))
    clones = [torch.nn.Parameter(p.detach().clone()) for p in params]
    timm_opt = TimmAdan(clones, lr=1.0)
    timm_opt.load_state_dict(ref)
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) * 3 for p in params]
        clip = float(torch.clamp(1.5 / (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads])) + 1e-8), max=1.0))
        for p, c, grad in zip(params, clones, grads):
            p.grad, c.grad = grad, grad * clip  # timm's Adan does not clip: hand it clipped gradients
        opt.step()
        timm_opt.step()
        for p, c in zip(params, clones):
            torch.testing.assert_close(p, c, rtol=1e-12, atol=1e-12)


def test_export_refuses_what_the_reference_cannot_hold():
    params, opt = _trained()
    sd = opt.state_dict()
    sd["state"][0]["step"] = torch.tensor(3.0)
    with pytest.raises(ValueError, match="different step counts"):
        to_reference_format(sd)
    w = torch.nn.Parameter(torch.randn(64, 128))
    o8 = Adan([w], state_dtype="int8")
    w.grad = torch.randn_like(w)
    o8.step()
    with pytest.raises(ValueError, match="int8 state"):
        to_reference_format(o8.state_dict())
    _, om = _trained(maximize=True)
    with pytest.raises(ValueError, match="maximize"):
        to_reference_format(om.state_dict())


def test_export_round_trips_through_our_loader():
    params, opt = _trained()
    ref = to_reference_format(copy.deepcopy(opt.state_dict()))
    clones = [torch.nn.Parameter(p.detach().clone()) for p in params]
    again = Adan(clones)
    again.load_state_dict(ref)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        for p, c, grad in zip(params, clones, grads):
            p.grad, c.grad = grad, grad.clone()
        opt.step()
        again.step()
    for p, c in zip(params, clones):
        torch.testing.assert_close(p, c, rtol=0, atol=0)
