"""``adan-experiments``: test the paper's claims at laptop scale.

Subcommands (each writes into ``--out`` and can be re-run to resume):

  vision       ResNet-20 and a small ViT on Fashion-MNIST (or --data-dir IDX / CIFAR-10)
  lm           a character-level GPT on Shakespeare: validation/test loss and perplexity
  rl           PPO (stable-baselines3) on MuJoCo HalfCheetah-v5 and Hopper-v5, Adam vs Adan
  batch-sweep  the ResNet at batch sizes 128..4096, lr scaled by sqrt(batch / 128)
  budget       Adan at 50% of the epochs/steps against AdamW at 100%
  report       report.md (mean ± std over seeds) and PNG plots from everything in --out

Learning rates: each optimizer's base rate (``optimizers.json``) is multiplied by every
value of the same small grid, trained with seed 0, and the multiplier with the best
*validation* result is kept for all seeds; test data is only ever reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from adan.experiments.optim import COMPACT, OPTIMIZERS, ExperimentError, load_config, parse_optimizers

# Sized for a 2-core laptop: the full run of every command takes about an hour with --jobs 2.
SIZES = {  # full run / --quick
    "vision": {"full": dict(epochs=4, max_train=8000, batch_size=128, size="full", max_eval=2000),
               "quick": dict(epochs=3, max_train=3000, batch_size=128, size="small", max_eval=1000, max_test=2000)},
    "lm": {"full": dict(steps=600, batch_size=32, size="full", eval_tokens=32768),
           "quick": dict(steps=200, batch_size=16, size="small", eval_tokens=16384)},
    "rl": {"full": dict(timesteps=50_000, n_steps=2048), "quick": dict(timesteps=4096, n_steps=1024)},
    # ResNet-8 on 8000 images for 6 epochs: batch 4096 still gets 12 steps.
    "batch-sweep": {"full": dict(epochs=6, max_train=8000, batch_size=128, size="small", max_eval=2000),
                    "quick": dict(epochs=2, max_train=2000, batch_size=64, size="small", max_eval=1000)},
}  # fmt: skip
DEFAULT_OPTIMIZERS = {"vision": "adan,adamw,adam,sgd,lamb", "lm": "adan,adamw,adam", "rl": "adan,adam",
                      "batch-sweep": "adan,adamw,lamb", "budget": "adan,adamw",
                      "compact": "adan,adan-bf16,adan-int8"}  # fmt: skip
QUICK_OPTIMIZERS = "adan,adamw"
VISION_MODELS = ("resnet", "vit")
RL_ENVS = ("HalfCheetah-v5", "Hopper-v5")
BATCHES = {"full": (128, 512, 2048, 4096), "quick": (64, 256)}
METRIC = {"vision": ("val_acc", max), "lm": ("val_loss", min)}


def _base(args, task: str, sizes_key: str | None = None) -> dict[str, Any]:
    sizes = dict(SIZES[sizes_key or task]["quick" if args.quick else "full"])
    for key in ("epochs", "steps", "timesteps", "max_train", "batch_size"):
        value = getattr(args, key, None)
        if value is not None and key in sizes:
            sizes[key] = value
    if getattr(args, "max_eval", None) and task == "vision":
        sizes["max_eval"] = sizes["max_test"] = args.max_eval
    base = {"task": task, "device": args.device, "threads": args.threads, **sizes}
    if args.data_dir and task != "rl":
        from adan.experiments import data

        base["data_dir"] = str(Path(args.data_dir).resolve())
        (data.load_images if task == "vision" else data.load_text)(base["data_dir"])  # bad input fails here, clearly
    return base


def _seeds(args) -> list[int]:
    return list(range(args.seeds if args.seeds is not None else (2 if args.quick else 3)))


def _optimizers(args, section: str, allowed=None) -> list[str]:
    default = QUICK_OPTIMIZERS if args.quick and section in ("vision", "lm") else DEFAULT_OPTIMIZERS[section]
    names = parse_optimizers(args.optimizers or default)
    if allowed is not None:
        bad = [n for n in names if n not in allowed]
        if bad:
            raise ExperimentError(f"{section} compares {', '.join(allowed)}; not {', '.join(bad)}")
    return names


def _tuned(args, config, out: Path, base: dict, models, optimizers) -> dict[str, dict[str, float]]:
    """Choose each optimizer's lr multiplier on validation data (seed 0); cached in selection.json."""
    from adan.experiments.runner import execute, load_runs, read_json, run_id, write_json

    task = base["task"]
    key = lambda m: m if base.get("size", "full") == "full" else f"{m}-{base['size']}"  # noqa: E731
    grid = [1.0] if args.quick else config["lr_grid"]
    specs = [{**base, "model": m, "optimizer": o, "lr_mult": g, "seed": 0} for m in models for o in optimizers for g in grid]
    execute(specs, config, out, args.jobs, desc=f"{task}: lr grid")
    done = {r["run_id"]: r for r in load_runs(out, task)}
    metric, better = METRIC[task]
    path = out / task / "selection.json"
    selection = read_json(path, "selection file") if path.exists() else {}
    for m in models:
        for o in optimizers:
            scores = {g: done[run_id({**base, "model": m, "optimizer": o, "lr_mult": g, "seed": 0})]["final"][metric] for g in grid}
            scores = {g: s for g, s in scores.items() if s == s}  # drop NaN (diverged)
            best = better(scores, key=scores.get) if scores else grid[len(grid) // 2]
            selection.setdefault(key(m), {})[o] = {"lr_mult": best, "metric": metric, "grid": {str(g): s for g, s in scores.items()}}
    write_json(path, selection)
    return {m: {o: selection[key(m)][o]["lr_mult"] for o in optimizers} for m in models}


def _finals(args, config, out, base, models, optimizers, chosen, desc) -> list[dict]:
    from adan.experiments.runner import execute

    specs = [{**base, "model": m, "optimizer": o, "lr_mult": chosen[m][o], "seed": s}
             for m in models for o in optimizers for s in _seeds(args)]  # fmt: skip
    execute(specs, config, out, args.jobs, desc=desc)
    return specs


def _meta(out: Path, section: str, **fields) -> None:
    from adan.experiments.runner import write_json

    write_json(out / section / "meta.json", fields)


def cmd_supervised(args, task: str) -> None:
    config, out = load_config(args.config), Path(args.out)
    base = _base(args, task)
    models = list(VISION_MODELS) if task == "vision" else ["chargpt"]
    optimizers = _optimizers(args, task)
    chosen = _tuned(args, config, out, base, models, optimizers)
    specs = _finals(args, config, out, base, models, optimizers, chosen, f"{task}: seeds")
    _meta(out, task, kind=task, base=base, models=models, optimizers=optimizers, seeds=_seeds(args), chosen=chosen, specs=specs)


def cmd_rl(args) -> None:
    from adan.experiments.runner import execute

    config, out = load_config(args.config), Path(args.out)
    base = _base(args, "rl")
    optimizers = _optimizers(args, "rl", allowed=("adam", "adan"))
    specs = [{**base, "model": env, "optimizer": o, "lr_mult": 1.0, "seed": s, "threads": 1}
             for env in RL_ENVS for o in optimizers for s in _seeds(args)]  # fmt: skip
    execute(specs, config, out, args.jobs, desc="rl: PPO")
    chosen = {env: {o: 1.0 for o in optimizers} for env in RL_ENVS}
    _meta(out, "rl", kind="rl", base=base, models=list(RL_ENVS), optimizers=optimizers, seeds=_seeds(args), chosen=chosen, specs=specs)


def cmd_batch_sweep(args) -> None:
    config, out = load_config(args.config), Path(args.out)
    base = _base(args, "vision", "batch-sweep")
    optimizers = _optimizers(args, "batch-sweep")
    chosen = _tuned(args, config, out, base, ["resnet"], optimizers)["resnet"]
    batches = args.batch_sizes or BATCHES["quick" if args.quick else "full"]
    specs = []
    for b in batches:
        sweep = {**base, "batch_size": b, "lr_scale": (b / base["batch_size"]) ** 0.5 if b != base["batch_size"] else None}
        specs += [{**sweep, "model": "resnet", "optimizer": o, "lr_mult": chosen[o], "seed": s} for o in optimizers for s in _seeds(args)]
    from adan.experiments.runner import execute

    execute(specs, config, out, args.jobs, desc="batch sweep")
    _meta(out, "batch-sweep", kind="batch-sweep", base=base, optimizers=optimizers, batches=list(batches), seeds=_seeds(args),
          chosen=chosen, specs=specs,
          rule=f"lr = the lr tuned at batch {base['batch_size']} x sqrt(batch / {base['batch_size']}), 5% warmup, cosine")  # fmt: skip


def cmd_budget(args) -> None:
    config, out = load_config(args.config), Path(args.out)
    optimizers = _optimizers(args, "budget", allowed=("adan", "adamw"))
    specs = []
    for task, models in (("vision", list(VISION_MODELS)), ("lm", ["chargpt"])):
        base = _base(args, task)
        chosen = _tuned(args, config, out, base, models, optimizers)
        full = _finals(args, config, out, base, models, ["adamw"], chosen, f"budget: {task} AdamW 100%") if "adamw" in optimizers else []
        half = dict(base)
        for key in ("epochs", "steps"):
            if key in half:
                half[key] = max(1, half[key] // 2)
        halves = _finals(args, config, out, half, models, ["adan"], chosen, f"budget: {task} Adan 50%") if "adan" in optimizers else []
        specs += full + halves
    _meta(out, "budget", kind="budget", optimizers=optimizers, seeds=_seeds(args), specs=specs)


def cmd_compact(args) -> None:
    """Adan with compact state against float32 Adan, at float32 Adan's tuned learning rate."""
    config, out = load_config(args.config), Path(args.out)
    formats = _optimizers(args, "compact", allowed=("adan", *COMPACT))
    if "adan" not in formats:
        formats = ["adan", *formats]
    specs, chosen = [], {}
    for task, models in (("vision", list(VISION_MODELS)), ("lm", ["chargpt"])):
        base = _base(args, task)
        adan_mult = _tuned(args, config, out, base, models, ["adan"])
        picked = {m: {o: adan_mult[m]["adan"] for o in formats} for m in models}
        chosen.update(picked)
        specs += _finals(args, config, out, base, models, formats, picked, f"compact: {task}")
    _meta(out, "compact", kind="compact", optimizers=formats, seeds=_seeds(args), chosen=chosen, specs=specs)


def cmd_report(args) -> None:
    from adan.experiments.report import write_report

    path = write_report(Path(args.out))
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adan-experiments", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (("vision", "ResNet and ViT on Fashion-MNIST"), ("lm", "character-level GPT on Shakespeare"),
                            ("rl", "PPO on MuJoCo, Adam vs Adan"), ("batch-sweep", "accuracy against batch size"),
                            ("budget", "Adan at half the budget vs AdamW"),
                            ("compact", "Adan's compact state formats against float32 Adan"),
                            ("report", "render report.md and plots")):  # fmt: skip
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--out", default="results", help="results directory (default: results)")
        if name == "report":
            continue
        p.add_argument("--optimizers", help=f"comma-separated, from {','.join(OPTIMIZERS)} (default: {DEFAULT_OPTIMIZERS[name]})")
        p.add_argument("--seeds", type=int, help="seeds per configuration (default 3; 2 with --quick)")
        p.add_argument("--quick", action="store_true", help="small models and budgets: minutes, not hours")
        p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
        p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (use threads x jobs <= cores)")
        p.add_argument("--device", default="cpu", help="cpu or cuda (vision and lm)")
        p.add_argument("--config", help="an optimizers.json to use instead of the packaged one")
        p.add_argument("--data-dir", help="IDX or CIFAR-10 files (vision), a UTF-8 text file (lm)")
        p.add_argument("--epochs", type=int, help="override the epochs (vision)")
        p.add_argument("--steps", type=int, help="override the training steps (lm)")
        p.add_argument("--timesteps", type=int, help="override the environment steps (rl)")
        p.add_argument("--max-train", type=int, help="use at most this many training images (vision)")
        p.add_argument("--batch-size", type=int, help="override the batch size")
        p.add_argument("--max-eval", type=int, help="evaluate on at most this many validation and test images (vision)")
        if name == "batch-sweep":
            p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated batch sizes")
    return parser


COMMANDS = {"vision": lambda a: cmd_supervised(a, "vision"), "lm": lambda a: cmd_supervised(a, "lm"), "rl": cmd_rl,
            "batch-sweep": cmd_batch_sweep, "budget": cmd_budget, "compact": cmd_compact, "report": cmd_report}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
        if args.command != "report":
            from adan.experiments.report import print_summary, write_report

            write_report(Path(args.out))
            print_summary(Path(args.out), args.command)
    except ExperimentError as exc:
        print(f"adan-experiments: error: {exc}", file=sys.stderr)
        return 2
    return 0
