"""Adan in Hugging Face ``Trainer``: train, checkpoint, resume, and check the resume is exact.

    pip install "adan[integrations]"      # transformers, accelerate
    python examples/hf_trainer.py

Two ways to hand Adan to ``Trainer`` (``TrainingArguments(optim="adan")`` is not one:
``optim`` only takes names from transformers' own list):

* ``optimizer_cls_and_kwargs=(Adan, {...})``: Trainer builds Adan itself, with its usual
  split of the parameters into a weight-decay group and a no-decay group (biases and
  LayerNorm weights), and its own scheduler from ``TrainingArguments``;
* ``optimizers=(Adan(...), scheduler)``: you build both.

Checkpoints written by ``Trainer`` include the optimizer's ``state_dict()``, and
``trainer.train(resume_from_checkpoint=...)`` continues the same trajectory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from adan import Adan


class RandomTokens(torch.utils.data.Dataset):
    """A tiny, fixed classification task: the label is the parity of the first token."""

    def __init__(self, n: int = 64, length: int = 16, vocab: int = 50):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i, 0] % 2}


def tiny_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(config)


class StopAt(TrainerCallback):
    """Interrupt the run after ``step`` (as a crash would, but after the checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def train(out: Path, max_steps: int = 8, stop: int = 0, resume: bool = False, own_optimizer: bool = False):
    model = tiny_model()
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=5e-3, weight_decay=0.02,
        warmup_steps=2, lr_scheduler_type="cosine", save_steps=4, save_strategy="steps", logging_steps=100,
        report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
    )  # fmt: skip
    if own_optimizer:
        opt = Adan(model.parameters(), lr=5e-3, weight_decay=0.02, max_grad_norm=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 2))
        trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), optimizers=(opt, sched))
    else:  # Trainer builds it, with its decay / no-decay parameter groups
        trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(),
                          optimizer_cls_and_kwargs=(Adan, {"betas": (0.98, 0.92, 0.99), "max_grad_norm": 1.0}))  # fmt: skip
    if stop:
        trainer.add_callback(StopAt(stop))
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-4") if resume else None)
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer, Adan)
    return model


def main() -> None:
    for own in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            straight = train(Path(tmp) / "a", own_optimizer=own)
            train(Path(tmp) / "b", stop=4, own_optimizer=own)  # interrupted after writing checkpoint-4 ...
            resumed = train(Path(tmp) / "b", resume=True, own_optimizer=own)  # ... and resumed from it
            diff = max((a - b).abs().max().item() for a, b in zip(straight.parameters(), resumed.parameters()))
            print(f"{'optimizers=(Adan(...), sched)' if own else 'optimizer_cls_and_kwargs=(Adan, ...)'}: "
                  f"resumed run differs from the uninterrupted one by {diff:.1e}")  # fmt: skip
            assert diff == 0.0, diff


if __name__ == "__main__":
    main()
