"""Adan in stable-baselines3: PPO with Adan, saved, loaded, and continued exactly.

    pip install "adan[experiments]"       # gymnasium, stable-baselines3
    python examples/sb3_ppo.py

The optimizer goes in ``policy_kwargs``; its learning rate comes from PPO's
``learning_rate`` (a float or a schedule), not from ``optimizer_kwargs``. stable-baselines3
saves the optimizer's ``state_dict()`` with the policy, so ``PPO.load`` restores Adan's state.
(The reference recipes use ``eps=1e-5`` with Adam in PPO; the same value suits Adan here.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from stable_baselines3 import PPO

from adan import Adan


def make(env: str = "CartPole-v1") -> PPO:
    return PPO(
        "MlpPolicy", env, learning_rate=1e-3, n_steps=256, batch_size=64, n_epochs=2, seed=0, device="cpu", verbose=0,
        policy_kwargs=dict(optimizer_class=Adan, optimizer_kwargs=dict(betas=(0.98, 0.92, 0.99), weight_decay=0.0, eps=1e-5)),
    )  # fmt: skip


def main() -> None:
    model = make()
    model.learn(total_timesteps=512)
    assert isinstance(model.policy.optimizer, Adan)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "ppo_adan")
        loaded = PPO.load(Path(tmp) / "ppo_adan", env=model.get_env(), device="cpu")
    assert isinstance(loaded.policy.optimizer, Adan)
    # the same next update from the same gradient: the optimizer state came back whole
    g = torch.Generator().manual_seed(1)
    for policy in (model.policy, loaded.policy):
        grads = [torch.randn(p.shape, generator=g) for p in policy.parameters()]
        g.manual_seed(1)
        for p, grad in zip(policy.parameters(), grads):
            p.grad = grad
        policy.optimizer.step()
    diff = max((a - b).abs().max().item() for a, b in zip(model.policy.parameters(), loaded.policy.parameters()))
    print(f"stable-baselines3: the loaded PPO's next Adan step differs by {diff:.1e}")
    assert diff == 0.0, diff
    loaded.learn(total_timesteps=256, reset_num_timesteps=False)  # and training goes on


if __name__ == "__main__":
    main()
