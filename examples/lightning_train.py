"""Adan in PyTorch Lightning: ``configure_optimizers``, a checkpoint, and an exact resume.

    pip install "adan[integrations]"      # lightning
    python examples/lightning_train.py

With ``LightningCLI`` no code is needed: ``--optimizer adan.Adan --optimizer.lr 5e-3
--optimizer.weight_decay 0.02`` (any of Adan's arguments works as ``--optimizer.NAME``).

Gradient clipping: Lightning refuses ``Trainer(gradient_clip_val=...)`` with an optimizer
that unscales gradients itself under mixed precision, which ``Adan(fused=True)`` does (as
torch's fused AdamW). Use ``fused=None`` (the default: the same kernel, and Lightning's
own unscale pass) or Adan's own global clipping, ``Adan(..., max_grad_norm=1.0)``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch

from adan import Adan


class Regression(L.LightningModule):
    def __init__(self, lr: float = 5e-3):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = Adan(self.parameters(), lr=self.hparams.lr, weight_decay=0.02, max_grad_norm=1.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=16)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit(root: Path, stop: int | None = None, ckpt: str | None = None) -> Regression:
    """16 steps, checkpointing every 8; ``stop`` interrupts the run there (as a crash would)."""
    model = Regression()
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=8, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(max_steps=16, default_root_dir=str(root), accelerator="cpu", logger=False, callbacks=[save],
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    if stop:
        trainer.callbacks.append(StopAt(stop))
    trainer.fit(model, data(), ckpt_path=ckpt)
    return model


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        straight = fit(Path(tmp) / "a")
        fit(Path(tmp) / "b", stop=8)
        resumed = fit(Path(tmp) / "b", ckpt=str(Path(tmp) / "b" / "step=8.ckpt"))
        diff = max((a - b).abs().max().item() for a, b in zip(straight.parameters(), resumed.parameters()))
        print(f"Lightning: resumed run differs from the uninterrupted one by {diff:.1e}")
        assert diff == 0.0, diff


if __name__ == "__main__":
    main()
