"""The study, step by step (each step resumable, all results under ``--out``):

1. **Trials.** Every optimizer of the workload runs the same number of quasi-random
   trials from its own search space (:mod:`adan.experiments.protocol`), with the tuning
   seed.
2. **Target.** Unless the workload's definition already has one (``targets.json``),
   AdamW's best trial (by best validation value) is run on the target-setting seeds and
   the target is the *lowest* of their best validation values: a level every
   target-setting run of tuned AdamW reached. (AlgoPerf takes the median over 20 seeds;
   over 3 seeds and a 2000-image validation set, whose accuracy alone has a standard error
   of 0.7 points, the median was out of reach of AdamW's own reported seeds on the first
   workload studied: 0/5 reached it, which leaves no time to compare.) It is written to
   ``<out>/study/<workload>.json`` with how it was set.
3. **Selection.** Each optimizer keeps the trial that reaches the target in the fewest
   steps (ties, and trials that never reach it, ordered by best validation value); a
   choice at an edge of the search space is flagged.
4. **Reported runs.** The chosen trial of every optimizer on fresh seeds ``0..N-1``.

The batch-size sweep does the same at every batch size (tuned per batch size, target set
at batch 128), on a budget of a fixed number of epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from adan.experiments import protocol, stats
from adan.experiments.optim import ExperimentError
from adan.experiments.runner import HARNESS_VERSION, data_source, execute, read_json, read_run, run_path, write_json
from adan.experiments.workloads import BATCH_SIZES, Workload, check_data, get

__all__ = ["make_spec", "select", "run_study", "run_batch_sweep", "decisions_path"]


def make_spec(
    w: Workload, size: str, optimizer: str, trial: dict[str, float], seed: int, role: str, opts: dict[str, Any],
    batch_size: Optional[int] = None,
) -> dict[str, Any]:  # fmt: skip
    batch = batch_size or w.batch_size
    steps = w.steps if w.steps else max(1, w.model["epochs"] * 20000 // batch)  # "batch": a budget in epochs
    return {
        "workload": w.name, "size": size, "optimizer": optimizer, "trial": {k: float(v) for k, v in trial.items()},
        "seed": seed, "steps": steps, "batch_size": batch, "evals": w.evals, "role": role,
        "data": data_source(w.kind, opts.get("data_dir")), "data_dir": opts.get("data_dir"),
        "device": opts.get("device", "cpu"), "threads": opts.get("threads"),
        "harness": HARNESS_VERSION,
    }  # fmt: skip


def _records(out: Path, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records = [read_run(run_path(out, s)) for s in specs]
    missing = [s for s, r in zip(specs, records) if r is None]
    if missing:
        raise ExperimentError(f"{len(missing)} runs have no result under {out}; run the command again to finish them")
    return records


def reach(record: dict[str, Any], target: float, higher_is_better: bool) -> stats.Reach:
    c = record["curve"]
    return stats.time_to_target(c["step"], c["val"], target, higher_is_better, c["seconds"])


def select(records: list[dict[str, Any]], target: Optional[float], higher_is_better: bool) -> int:
    """The index of the best trial: fewest steps to ``target``, then best validation value
    (trials that never reach it come after those that do). Without a target: best value."""

    def key(r: dict[str, Any]):
        best = r["final"]["best_val"]
        goodness = (best if higher_is_better else -best) if best == best else float("-inf")
        if target is None:
            return (0, 0, -goodness)
        hit = reach(r, target, higher_is_better)
        return (0 if hit.reached else 1, hit.steps or 0, -goodness)

    return min(range(len(records)), key=lambda i: key(records[i]))


def decisions_path(out: Path, name: str) -> Path:
    return Path(out) / "study" / f"{name}.json"


def _decisions(out: Path, name: str) -> dict[str, Any]:
    path = decisions_path(out, name)
    return read_json(path, "study file") if path.exists() else {}


def _target(out: Path, w: Workload, size: str, opts: dict, trial_specs: dict, jobs: int, key: str) -> tuple[float, dict]:
    """The workload's target: from its definition, from this study, or set now."""
    decisions = _decisions(out, key)
    if size == "full" and w.target is not None:
        return w.target, {"value": w.target, "how": "from the workload's definition (targets.json)"}
    if "target" in decisions:
        return decisions["target"]["value"], decisions["target"]
    if "adamw" not in trial_specs:
        raise ExperimentError(f"{w.name}: setting the target needs AdamW's trials (include adamw)")
    records = _records(out, trial_specs["adamw"])
    chosen = trial_specs["adamw"][select(records, None, w.higher_is_better)]
    specs = [{**chosen, "seed": s, "role": "target"} for s in protocol.TARGET_SEEDS]
    execute(specs, out, jobs, desc=f"{key}: target runs (AdamW)")
    bests = [r["final"]["best_val"] for r in _records(out, specs)]
    value = min(bests) if w.higher_is_better else max(bests)  # the level every target run reached
    how = {"value": value, "how": f"the lowest over seeds {list(protocol.TARGET_SEEDS)} of the best validation {w.metric} of "
           f"AdamW's trial with the best validation value among its {len(records)} trials, i.e. a level each of those "
           "runs reached", "adamw_trial": chosen["trial"], "bests": bests}  # fmt: skip
    return value, how


def run_study(name: str, out: Path, opts: dict[str, Any], *, trials: int = 8, seeds: Optional[int] = None,
              optimizers: Optional[list[str]] = None, jobs: int = 1, size: str = "full",
              batch_size: Optional[int] = None, key: Optional[str] = None,
              fixed_target: Optional[tuple[float, dict]] = None) -> dict[str, Any]:  # fmt: skip
    """Steps 1-4 for one workload; returns (and writes) its decisions."""
    w = get(name).sized(size)
    check_data(w, opts.get("data_dir"))
    key = key or (name if size == "full" else f"{name}-{size}")
    optimizers = optimizers or list(w.optimizers)
    unknown = [o for o in optimizers if o not in protocol.SEARCH_SPACES]
    if unknown:
        raise ExperimentError(f"no search space for {unknown}; known: {', '.join(protocol.SEARCH_SPACES)}")
    trial_specs = {
        o: [make_spec(w, size, o, t, protocol.TUNING_SEED, "trial", opts, batch_size) for t in protocol.trials(o, trials)]
        for o in optimizers
    }
    execute([s for specs in trial_specs.values() for s in specs], out, jobs, desc=f"{key}: {trials} trials x {len(optimizers)}")
    target, how = fixed_target or _target(out, w, size, opts, trial_specs, jobs, key)
    chosen = {}
    for o, specs in trial_specs.items():
        records = _records(out, specs)
        i = select(records, target, w.higher_is_better)
        hits = [reach(r, target, w.higher_is_better).steps for r in records]
        chosen[o] = {"trial": specs[i]["trial"], "index": i, "edges": protocol.at_edge(o, specs[i]["trial"]),
                     "trial_steps_to_target": hits, "trial_best_val": [r["final"]["best_val"] for r in records]}  # fmt: skip
    n_seeds = seeds if seeds is not None else w.seeds
    report = [make_spec(w, size, o, chosen[o]["trial"], s, "report", opts, batch_size) for o in optimizers for s in range(n_seeds)]
    decisions = {"workload": name, "key": key, "size": size, "batch_size": batch_size or w.batch_size, "target": how,
                 "metric": w.metric, "higher_is_better": w.higher_is_better, "optimizers": optimizers, "chosen": chosen,
                 "trials": {o: specs for o, specs in trial_specs.items()}, "reported": report, "seeds": list(range(n_seeds))}  # fmt: skip
    write_json(decisions_path(out, key), decisions)
    execute(report, out, jobs, desc=f"{key}: {n_seeds} seeds x {len(optimizers)}")
    return decisions


def run_batch_sweep(out: Path, opts: dict[str, Any], *, trials: int = 8, seeds: Optional[int] = None,
                    optimizers: Optional[list[str]] = None, jobs: int = 1, size: str = "full",
                    batch_sizes: tuple[int, ...] = BATCH_SIZES) -> list[dict[str, Any]]:  # fmt: skip
    """The study at every batch size; the target is set once, at batch 128."""
    w = get("batch").sized(size)
    optimizers = optimizers or list(w.optimizers)
    anchor = run_study("batch", out, opts, trials=trials, seeds=seeds, optimizers=optimizers, jobs=jobs, size=size,
                       batch_size=128, key=f"batch-{size}-128")  # fmt: skip
    fixed = (anchor["target"]["value"], anchor["target"])
    done = [anchor]
    for b in batch_sizes:
        if b != 128:
            done.append(run_study("batch", out, opts, trials=trials, seeds=seeds, optimizers=optimizers, jobs=jobs, size=size,
                                  batch_size=b, key=f"batch-{size}-{b}", fixed_target=fixed))  # fmt: skip
    write_json(Path(out) / "study" / f"batch-{size}.json", {"batch_sizes": list(batch_sizes), "keys": [d["key"] for d in done]})
    return done
