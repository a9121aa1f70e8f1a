"""One training run per task family; each returns curves and final metrics.

Every run is fully described by its spec (a dict), seeds everything from it, and never
looks at test data except to report it at the end: learning rates are chosen on the
validation split by the caller.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

from adan._compact import state_bytes_per_param
from adan.experiments import data as datasets
from adan.experiments.models import CharGPT, vision_model
from adan.experiments.optim import make_optimizer, settings, warmup_cosine

Progress = Callable[[int, int, str], None]  # (done, total, text)


def _no_progress(done: int, total: int, text: str) -> None:
    pass


def _hparams(spec: dict[str, Any], config: dict[str, Any], family: str) -> dict[str, Any]:
    hp = settings(config, spec["optimizer"], family)
    hp["lr"] = hp["lr"] * (spec.get("lr_mult") or 1.0) * (spec.get("lr_scale") or 1.0)
    return hp


@torch.no_grad()
def _evaluate(model, x, y, batch: int = 1000) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch])
        loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i : i + batch]).sum().item()
    model.train()
    return loss / len(x), correct / len(x)


def train_vision(spec: dict[str, Any], config: dict[str, Any], progress: Progress = _no_progress) -> dict[str, Any]:
    torch.manual_seed(spec["seed"])
    device = torch.device(spec.get("device", "cpu"))
    d = datasets.load_images(spec.get("data_dir"))
    n_train = min(spec.get("max_train") or len(d.x["train"]), len(d.x["train"]))
    n_eval = spec.get("max_eval") or len(d.x["val"])  # validation subset, evaluated every epoch
    x, y = d.x["train"][:n_train].to(device), d.y["train"][:n_train].to(device)
    xv, yv = d.x["val"][:n_eval].to(device), d.y["val"][:n_eval].to(device)
    n_test = spec.get("max_test") or len(d.x["test"])
    xt, yt = d.x["test"][:n_test].to(device), d.y["test"][:n_test].to(device)

    model = vision_model(spec["model"], d.shape, d.classes, spec.get("size", "full")).to(device)
    hp = _hparams(spec, config, "vision")
    opt = make_optimizer(spec["optimizer"], model.parameters(), hp)
    batch = spec["batch_size"]
    steps_per_epoch = max(1, n_train // batch)
    epochs = spec["epochs"]
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, config["warmup_fraction"]))
    order = torch.Generator().manual_seed(spec["seed"])
    curves: dict[str, list] = {"epoch": [], "train_loss": [], "val_loss": [], "val_acc": []}
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(n_train, generator=order).to(device)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            step += 1
            progress(step, total, f"loss {loss.item():.3f}")
        val_loss, val_acc = _evaluate(model, xv, yv)
        curves["epoch"].append(epoch + 1)
        curves["train_loss"].append(running / steps_per_epoch)
        curves["val_loss"].append(val_loss)
        curves["val_acc"].append(val_acc)
        if not math.isfinite(running):
            break  # diverged: keep the record, stop spending time
    test_loss, test_acc = _evaluate(model, xt, yt)
    final = {"val_acc": curves["val_acc"][-1], "val_loss": curves["val_loss"][-1], "test_acc": test_acc,
             "test_loss": test_loss, "train_loss": curves["train_loss"][-1], "steps": step,
             "state_bytes_per_param": state_bytes_per_param(opt)}  # fmt: skip
    return {"curves": curves, "final": final, "hparams": hp, "dataset": d.name, "n_train": n_train}


def _lm_batch(ids: torch.Tensor, batch: int, context: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(ids) - context - 1, (batch,), generator=gen)
    offsets = torch.arange(context + 1)
    chunk = ids[starts[:, None] + offsets]
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def _lm_loss(model, ids: torch.Tensor, context: int, max_tokens: int) -> float:
    model.eval()
    n = min(len(ids) - 1, max_tokens) // context * context
    x = ids[:n].view(-1, context)
    y = ids[1 : n + 1].view(-1, context)
    total = 0.0
    for i in range(0, len(x), 64):
        out = model(x[i : i + 64])
        total += F.cross_entropy(out.reshape(-1, out.shape[-1]), y[i : i + 64].reshape(-1), reduction="sum").item()
    model.train()
    return total / y.numel()


def train_lm(spec: dict[str, Any], config: dict[str, Any], progress: Progress = _no_progress) -> dict[str, Any]:
    torch.manual_seed(spec["seed"])
    text = datasets.load_text(spec.get("data_dir"))
    size = spec.get("size", "full")
    context = 64 if size == "full" else 32
    model = CharGPT(len(text.vocab), context=context, dim=96 if size == "full" else 32, depth=3 if size == "full" else 1)
    hp = _hparams(spec, config, "lm")
    opt = make_optimizer(spec["optimizer"], model.parameters(), hp)
    steps, batch = spec["steps"], spec["batch_size"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, config["warmup_fraction"]))
    gen = torch.Generator().manual_seed(spec["seed"])
    eval_every = max(1, steps // 10)
    eval_tokens = spec.get("eval_tokens", 64 * 1024)
    curves: dict[str, list] = {"step": [], "train_loss": [], "val_loss": []}
    running, count = 0.0, 0
    for step in range(1, steps + 1):
        x, y = _lm_batch(text.splits["train"], batch, context, gen)
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the same clipping for every optimizer
        opt.step()
        sched.step()
        running, count = running + loss.item(), count + 1
        progress(step, steps, f"loss {loss.item():.3f}")
        if step % eval_every == 0 or step == steps:
            curves["step"].append(step)
            curves["train_loss"].append(running / count)
            curves["val_loss"].append(_lm_loss(model, text.splits["val"], context, eval_tokens))
            running, count = 0.0, 0
    test_loss = _lm_loss(model, text.splits["test"], context, eval_tokens)
    val_loss = curves["val_loss"][-1]
    final = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)), "test_loss": test_loss,
             "test_ppl": math.exp(min(test_loss, 50)), "steps": steps,
             "state_bytes_per_param": state_bytes_per_param(opt)}  # fmt: skip
    return {"curves": curves, "final": final, "hparams": hp, "dataset": "shakespeare" if not spec.get("data_dir") else spec["data_dir"]}


def train_rl(spec: dict[str, Any], config: dict[str, Any], progress: Progress = _no_progress) -> dict[str, Any]:
    try:
        import gymnasium as gym
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as exc:
        from adan.experiments.optim import ExperimentError

        raise ExperimentError("the rl task needs gymnasium[mujoco] and stable-baselines3: pip install 'adan[experiments]'") from exc
    import adan

    hp = _hparams(spec, config, "rl")
    name = spec["optimizer"]
    if name == "adan":
        opt_class, opt_kwargs = adan.Adan, {k: tuple(v) if k == "betas" else v for k, v in hp.items() if k != "lr"}
    elif name == "adam":
        opt_class, opt_kwargs = torch.optim.Adam, {k: tuple(v) if k == "betas" else v for k, v in hp.items() if k != "lr"}
    else:
        from adan.experiments.optim import ExperimentError

        raise ExperimentError(f"the rl task compares adam and adan, not {name!r}")
    curves: dict[str, list] = {"timesteps": [], "episode_return": []}
    total = spec["timesteps"]

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            progress(self.num_timesteps, total, "")
            return True

        def _on_rollout_end(self) -> None:
            infos = self.model.ep_info_buffer
            if infos:
                curves["timesteps"].append(self.num_timesteps)
                curves["episode_return"].append(float(np.mean([e["r"] for e in infos])))

    env = gym.make(spec["model"])
    n_steps = spec.get("n_steps", 2048)
    model = PPO(
        "MlpPolicy", env, learning_rate=hp["lr"], seed=spec["seed"], device="cpu", verbose=0,
        n_steps=n_steps, batch_size=min(64, n_steps),
        policy_kwargs=dict(optimizer_class=opt_class, optimizer_kwargs=opt_kwargs),
    )  # fmt: skip
    model.learn(total_timesteps=total, callback=Record())
    env.close()
    last = curves["episode_return"][-3:] or [float("nan")]
    final = {"episode_return": float(np.mean(last)), "timesteps": total}
    return {"curves": curves, "final": final, "hparams": hp, "dataset": spec["model"]}


TRAINERS = {"vision": train_vision, "lm": train_lm, "rl": train_rl}


def run_spec(spec: dict[str, Any], config: dict[str, Any], progress: Progress = _no_progress) -> dict[str, Any]:
    """Train one run and return its full record (without writing it)."""
    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    result = TRAINERS[spec["task"]](spec, config, progress)
    result["wall_time_s"] = time.perf_counter() - start
    return result
