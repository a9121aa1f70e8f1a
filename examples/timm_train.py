"""This Adan through timm's optimizer factory: register it, build it, train, save, resume.

    pip install timm                       # with the torchvision that matches your torch
    python examples/timm_train.py

``timm.optim.create_optimizer_v2(model, "adan")`` builds timm's own Adan (no
``max_grad_norm``, no fused kernel). ``adan.integrations.timm.register()`` adds this one
under the name ``"adanx"`` (timm splits names on ``_``, so a name cannot contain one), and
the factory then builds it with timm's weight-decay / no-decay parameter groups.
Checkpoints of timm's Adan load into this one as they are; ``adan.to_reference_format``
converts the other way.
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2

import adan
import adan.integrations.timm


def main() -> None:
    name = adan.integrations.timm.register()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
    opt = create_optimizer_v2(model, name, lr=5e-3, weight_decay=0.02, max_grad_norm=1.0)
    assert isinstance(opt, adan.Adan)
    print(f"timm's factory built {type(opt).__module__}.{type(opt).__name__} with {len(opt.param_groups)} groups "
          f"(weight decay {[g['weight_decay'] for g in opt.param_groups]})")  # fmt: skip
    x = torch.randn(32, 8)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
        opt.step()
    state = opt.state_dict()
    again = create_optimizer_v2(model, name, lr=5e-3, weight_decay=0.02, max_grad_norm=1.0)
    again.load_state_dict(state)
    print("saved and loaded through timm's factory")


if __name__ == "__main__":
    main()
