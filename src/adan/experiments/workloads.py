"""The workloads of the study, in one registry, and the one training loop each kind runs.

A :class:`Workload` fixes everything but the optimizer: model, data, batch size, step
budget, evaluation schedule, validation metric and its direction, and the validation
target (set once from tuned AdamW, see ``targets.json`` and :mod:`adan.experiments.cli`).
A run is a workload, an optimizer, a hyper-parameter trial and a seed; it returns its
validation curve (at least 20 evaluations, in steps and in training seconds, evaluation
time excluded), its best validation value and its final test metric.

Sized for 2 CPU cores (one thread per run, two runs at a time): about a minute a run.
``--large`` multiplies the budgets (and restores full-resolution images) for a GPU.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.nn import functional as F

from adan.experiments import data as datasets
from adan.experiments.models import CharBERT, CharGPT, ResNet, ViT, mask_tokens
from adan.experiments.optim import ExperimentError, make_optimizer, warmup_cosine
from adan.experiments.protocol import hparams_of

__all__ = ["Workload", "WORKLOADS", "get", "train", "targets"]


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # vision | lm | mlm | rl
    description: str
    model: dict[str, Any]
    steps: int  # optimizer steps (rl: environment steps)
    batch_size: int
    metric: str  # the validation metric the target is set on
    higher_is_better: bool
    test_metric: str
    optimizers: tuple[str, ...]
    seeds: int = 5  # reported seeds
    evals: int = 24
    eval_size: int = 2000  # validation images / sequences (x context) evaluated for the curve
    quick: dict[str, Any] = field(default_factory=dict)
    large: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> Optional[float]:
        entry = targets().get(self.name)
        return None if entry is None else float(entry["value"])

    def sized(self, mode: str = "full") -> "Workload":
        """This workload with the ``quick``, ``tiny`` (the test suite's: the quick models, a few
        dozen steps) or ``large`` overrides applied."""
        over = {"full": {}, "quick": self.quick, "tiny": self.quick, "large": self.large}[mode]
        model = {**self.model, **over.get("model", {})}
        sized = replace(self, model=model, **{k: v for k, v in over.items() if k != "model"})
        if mode == "tiny":
            rl = self.kind == "rl"
            sized = replace(sized, steps=2048 if rl else 24, evals=2 if rl else 4, eval_size=min(sized.eval_size, 128))
        return sized


_VISION_OPTS = ("adan", "adamw", "adam")
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "resnet", "vision", "ResNet-20 (width 16) on Fashion-MNIST at 14x14 (2x2 average-pooled), all 20k training images",
            dict(arch="resnet", depth=20, width=16, pool=2), steps=1200, batch_size=128,
            metric="val_acc", higher_is_better=True, test_metric="test_acc", optimizers=(*_VISION_OPTS, "sgd"),
            quick=dict(steps=150, evals=10, eval_size=1000, model=dict(depth=8)), large=dict(steps=6000, model=dict(pool=1)),
        ),
        Workload(
            "vit", "vision", "ViT (patch 7, dim 64, depth 4, 4 heads) on Fashion-MNIST 28x28, all 20k training images",
            dict(arch="vit", patch=7, dim=64, depth=4), steps=1600, batch_size=128,
            metric="val_acc", higher_is_better=True, test_metric="test_acc", optimizers=_VISION_OPTS,
            quick=dict(steps=150, evals=10, eval_size=1000, model=dict(dim=32, depth=2)), large=dict(steps=8000),
        ),
        Workload(
            "gpt", "lm", "character GPT (dim 64, depth 2, context 64) on Shakespeare; validation loss in nats/char",
            dict(dim=64, depth=2, context=64), steps=3000, batch_size=32,
            metric="val_loss", higher_is_better=False, test_metric="test_loss", optimizers=_VISION_OPTS,
            eval_size=256, quick=dict(steps=150, evals=10, eval_size=64), large=dict(steps=20000, model=dict(dim=128, depth=4)),
        ),
        Workload(
            "mlm", "mlm", "BERT-style character encoder (dim 64, depth 2, context 64), masked-token pre-training on Shakespeare; masked-token loss",
            dict(dim=64, depth=2, context=64), steps=2500, batch_size=32,
            metric="val_loss", higher_is_better=False, test_metric="test_loss", optimizers=_VISION_OPTS,
            eval_size=256, quick=dict(steps=150, evals=10, eval_size=64), large=dict(steps=20000, model=dict(dim=128, depth=4)),
        ),
        Workload(
            "hopper", "rl", "PPO (stable-baselines3 MlpPolicy) on MuJoCo Hopper-v5; deterministic evaluation, 5 episodes on a held-out env seed",
            dict(env="Hopper-v5", n_steps=2048, episodes=5), steps=100_000, batch_size=64,
            metric="val_return", higher_is_better=True, test_metric="test_return", optimizers=_VISION_OPTS, seeds=10, evals=20,
            quick=dict(steps=4096, evals=2, model=dict(n_steps=1024, episodes=1)), large=dict(steps=1_000_000),
        ),
        Workload(
            "halfcheetah", "rl", "PPO (stable-baselines3 MlpPolicy) on MuJoCo HalfCheetah-v5; deterministic evaluation, 5 episodes on a held-out env seed",
            dict(env="HalfCheetah-v5", n_steps=2048, episodes=5), steps=100_000, batch_size=64,
            metric="val_return", higher_is_better=True, test_metric="test_return", optimizers=_VISION_OPTS, seeds=10, evals=20,
            quick=dict(steps=4096, evals=2, model=dict(n_steps=1024, episodes=1)), large=dict(steps=1_000_000),
        ),
        Workload(
            "batch", "vision", "ResNet-8 (width 16) on Fashion-MNIST at 14x14 for the batch-size sweep; budget 11 epochs at every batch size",
            dict(arch="resnet", depth=8, width=16, pool=2, epochs=11), steps=0, batch_size=128,
            metric="val_acc", higher_is_better=True, test_metric="test_acc", optimizers=("adan", "adamw", "lamb"), seeds=3,
            quick=dict(evals=4, eval_size=500, model=dict(epochs=1)), large=dict(model=dict(epochs=40, pool=1)),
        ),
    )
}  # fmt: skip
# Five sizes over 32x, as the protocol asks; 512 is left out to fit the study into this
# machine's budget (each size costs 27 runs, about 25 minutes on 2 cores). Add it with
# --batch-sizes 32,64,128,256,512,1024: the finished sizes are reused.
BATCH_SIZES = (32, 64, 128, 256, 1024)


def get(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ExperimentError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}") from None


@functools.lru_cache(maxsize=None)
def targets() -> dict[str, dict[str, Any]]:
    """The validation targets, set once from tuned AdamW (``targets.json``, with how)."""
    text = resources.files("adan.experiments").joinpath("targets.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def check_data(w: Workload, data_dir: Optional[str]) -> None:
    """Load ``data_dir`` once up front, so that bad input fails with a clear error before
    any run starts (not as a traceback from a worker)."""
    if data_dir is None or w.kind == "rl":
        return
    if w.kind == "vision":
        _images(data_dir, w.model.get("pool", 1))
    else:
        _text(data_dir)


# ---------------------------------------------------------------- the loop
@dataclass
class Curve:
    step: list = field(default_factory=list)
    seconds: list = field(default_factory=list)  # training time only (evaluations excluded)
    val: list = field(default_factory=list)
    train: list = field(default_factory=list)  # mean training loss since the last evaluation (rl: mean training-episode return)


def _eval_points(total: int, evals: int) -> set[int]:
    return {max(1, round(total * (i + 1) / evals)) for i in range(evals)}


def _loop(total: int, evals: int, step_fn: Callable[[int], float], evaluate: Callable[[], float]) -> tuple[Curve, bool]:
    """Run ``step_fn`` ``total`` times, evaluating at ``evals`` evenly spaced steps."""
    curve, points = Curve(), _eval_points(total, evals)
    train_time, running, count, diverged = 0.0, 0.0, 0, False
    for step in range(1, total + 1):
        start = time.perf_counter()
        loss = step_fn(step)
        train_time += time.perf_counter() - start
        running, count = running + loss, count + 1
        if not math.isfinite(loss):
            diverged = True
        if step in points or diverged:
            curve.step.append(step)
            curve.seconds.append(train_time)
            curve.val.append(evaluate() if not diverged else float("nan"))
            curve.train.append(running / count)
            running, count = 0.0, 0
        if diverged:
            break  # keep the record, stop spending time
    return curve, diverged


def _optimizer(spec: dict[str, Any], params) -> tuple[torch.optim.Optimizer, float]:
    hp = hparams_of(spec["optimizer"], spec["trial"])
    return make_optimizer(spec["optimizer"], params, hp), spec["trial"]["warmup"]


@functools.lru_cache(maxsize=4)
def _images(data_dir: Optional[str], pool: int) -> datasets.ImageData:
    d = datasets.load_images(data_dir)
    if pool > 1:
        d.x = {k: F.avg_pool2d(v, pool) for k, v in d.x.items()}
    return d


@functools.lru_cache(maxsize=2)
def _text(data_dir: Optional[str]) -> datasets.TextData:
    return datasets.load_text(data_dir)


@torch.no_grad()
def _accuracy(model, x, y, batch: int = 1000) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch])
        loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i : i + batch]).sum().item()
    model.train()
    return correct / len(x), loss / len(x)


def train_vision(w: Workload, spec: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(spec.get("device", "cpu"))
    d = _images(spec.get("data_dir"), w.model.get("pool", 1))
    x, y = d.x["train"].to(device), d.y["train"].to(device)
    xv, yv = d.x["val"][: w.eval_size].to(device), d.y["val"][: w.eval_size].to(device)
    torch.manual_seed(spec["seed"])
    c, h, _ = d.shape
    if w.model["arch"] == "resnet":
        model = ResNet(c, d.classes, depth=w.model["depth"], width=w.model["width"])
    else:
        model = ViT(c, d.classes, h, patch=w.model["patch"], dim=w.model["dim"], depth=w.model["depth"])
    model.to(device)
    batch = spec["batch_size"]
    total = spec["steps"]
    opt, warmup = _optimizer(spec, model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, warmup))
    order = torch.Generator().manual_seed(spec["seed"])
    per_epoch = len(x) // batch
    perm = None

    def step_fn(step: int) -> float:
        nonlocal perm
        i = (step - 1) % per_epoch
        if i == 0:
            perm = torch.randperm(len(x), generator=order).to(device)
        idx = perm[i * batch : (i + 1) * batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    curve, diverged = _loop(total, spec["evals"], step_fn, lambda: _accuracy(model, xv, yv)[0])
    test_acc, test_loss = _accuracy(model, d.x["test"].to(device), d.y["test"].to(device))
    return {"curve": curve.__dict__, "diverged": diverged, "test": {"test_acc": test_acc, "test_loss": test_loss}, "dataset": d.name}


def _lm_batch(ids: torch.Tensor, batch: int, context: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(ids) - context - 1, (batch,), generator=gen)
    return ids[starts[:, None] + torch.arange(context + 1)]


def _eval_windows(ids: torch.Tensor, context: int, n: int) -> torch.Tensor:
    """``n`` fixed, evenly spread windows of ``context + 1`` characters (the same for every run)."""
    starts = torch.linspace(0, len(ids) - context - 2, n).long()
    return ids[starts[:, None] + torch.arange(context + 1)]


def train_text(w: Workload, spec: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(spec.get("device", "cpu"))
    text = _text(spec.get("data_dir"))
    vocab, ctx = len(text.vocab), w.model["context"]
    torch.manual_seed(spec["seed"])
    masked = w.kind == "mlm"
    cls = CharBERT if masked else CharGPT
    model = cls(vocab, context=ctx, dim=w.model["dim"], depth=w.model["depth"]).to(device)
    total, batch = spec["steps"], spec["batch_size"]
    opt, warmup = _optimizer(spec, model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, warmup))
    gen = torch.Generator().manual_seed(spec["seed"])

    def split(windows: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if masked:
            inputs, targets = mask_tokens(windows[:, :-1], vocab, g)
            return inputs, targets
        return windows[:, :-1], windows[:, 1:]

    def loss_of(inputs, targets) -> torch.Tensor:
        out = model(inputs.to(device))
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.to(device).reshape(-1), ignore_index=-100)

    def step_fn(step: int) -> float:
        loss = loss_of(*split(_lm_batch(text.splits["train"], batch, ctx, gen), gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the same clipping for every optimizer
        opt.step()
        sched.step()
        return loss.item()

    fixed = torch.Generator().manual_seed(12345)  # the same masks for every run
    val_set = split(_eval_windows(text.splits["val"], ctx, w.eval_size), fixed)
    test_set = split(_eval_windows(text.splits["test"], ctx, 4 * w.eval_size), fixed)

    @torch.no_grad()
    def evaluate(inputs, targets) -> tuple[float, float]:
        model.eval()
        out = model(inputs.to(device))
        t = targets.to(device).reshape(-1)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), t, ignore_index=-100).item()
        keep = t != -100
        acc = (out.reshape(-1, out.shape[-1]).argmax(1)[keep] == t[keep]).float().mean().item()
        model.train()
        return loss, acc

    curve, diverged = _loop(total, spec["evals"], step_fn, lambda: evaluate(*val_set)[0])
    test_loss, test_acc = evaluate(*test_set)
    return {"curve": curve.__dict__, "diverged": diverged, "test": {"test_loss": test_loss, "test_acc": test_acc},
            "dataset": "shakespeare" if not spec.get("data_dir") else spec["data_dir"]}  # fmt: skip


def evaluate_policy_on(model, env_id: str, episodes: int, seed: int) -> float:
    """Mean return of the *deterministic* policy over ``episodes`` on its own env, seeded
    with ``seed`` (held out from training)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_vec_env(env_id, n_envs=1, seed=seed)
    try:
        mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    finally:
        env.close()
    return float(mean)


EVAL_SEED_OFFSET = 1_000_003  # evaluation envs: seed + this (validation) and + 2x this (test)


def train_rl(w: Workload, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        import gymnasium as gym
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as exc:
        raise ExperimentError("the rl workloads need gymnasium[mujoco] and stable-baselines3: pip install 'adan[experiments]'") from exc
    from adan.experiments.optim import optimizer_class

    name, trial, seed = spec["optimizer"], spec["trial"], spec["seed"]
    hp = hparams_of(name, trial, {"eps": 1e-5})  # stable-baselines3's Adam eps, for every optimizer
    base_lr = hp.pop("lr")
    total, env_id, episodes = spec["steps"], w.model["env"], w.model["episodes"]
    schedule = warmup_cosine(total, trial["warmup"])
    curve = Curve()
    points = sorted(_eval_points(total, spec["evals"]))
    clock = {"train": 0.0, "since": time.perf_counter(), "next": 0}

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            if clock["next"] < len(points) and self.num_timesteps >= points[clock["next"]]:
                clock["train"] += time.perf_counter() - clock["since"]
                curve.step.append(self.num_timesteps)
                curve.seconds.append(clock["train"])
                curve.val.append(evaluate_policy_on(self.model, env_id, episodes, seed + EVAL_SEED_OFFSET))
                infos = self.model.ep_info_buffer
                curve.train.append(float(np.mean([e["r"] for e in infos])) if infos else float("nan"))
                clock["next"] += 1
                clock["since"] = time.perf_counter()
            return True

    env = gym.make(env_id)
    model = PPO(
        "MlpPolicy", env, learning_rate=lambda remaining: base_lr * schedule(int((1 - remaining) * total)),
        seed=seed, device="cpu", verbose=0, n_steps=w.model["n_steps"], batch_size=spec["batch_size"],
        policy_kwargs=dict(optimizer_class=optimizer_class(name), optimizer_kwargs=hp),
    )  # fmt: skip
    model.learn(total_timesteps=total, callback=Evaluate())
    env.close()
    test_return = evaluate_policy_on(model, env_id, 2 * episodes, seed + 2 * EVAL_SEED_OFFSET)
    return {"curve": curve.__dict__, "diverged": False, "test": {"test_return": test_return}, "dataset": env_id}


TRAINERS = {"vision": train_vision, "lm": train_text, "mlm": train_text, "rl": train_rl}


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one spec (see :func:`adan.experiments.runner.make_spec`) and return its record."""
    w = get(spec["workload"]).sized(spec.get("size", "full"))
    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    result = TRAINERS[w.kind](w, spec)
    curve = result["curve"]
    finite = [v for v in curve["val"] if v == v]
    best = (max if w.higher_is_better else min)(finite) if finite else float("nan")
    result["final"] = {"best_val": best, "last_val": curve["val"][-1] if curve["val"] else float("nan"), **result.pop("test")}
    result["wall_time_s"] = time.perf_counter() - start
    return result
