"""``adan-experiments``: does Adan optimize deep models *faster*? A time-to-result study.

The protocol is that of MLCommons AlgoPerf (Dahl et al. 2023) and, for the batch size,
of Shallue et al. 2018, scaled to a 2-core CPU:

  workloads    each fixes a model, data, batch size, step budget, >= 20 evaluations, a
               validation metric and a validation target (adan-experiments workloads)
  target       set once per workload from tuned AdamW: the lowest over 3 target-setting
               seeds of the best validation value of AdamW's best trial (a level each of
               those runs reached)
  tuning       every optimizer gets the same number of quasi-random trials (scrambled
               Sobol, default 8) from its own declared search space, the same on every
               workload: log-uniform lr over 1.5-2 decades, weight decay, warmup fraction
               up to 30% (linear warmup, cosine decay), and Adan's beta3; a trial's score
               is its number of steps to the target (ties: best validation value); a
               choice at an edge of its space is flagged
  seeds        tuning, target-setting and reported seeds are disjoint; every optimizer
               shares each seed's initialisation and data order
  reporting    steps and training seconds to the target, best validation value and final
               test metric over >= 5 reported seeds (10 for RL); Adan against each other
               optimizer paired by seed, with 95% confidence intervals and a three-way
               verdict (better / no detectable difference / worse); the steps-to-target
               ratio Adan / AdamW with its interval ("half the budget" is a ratio of 0.5)

Commands (each resumable: re-running one skips the runs already on disk):

  quick        the smoke test: two small vision workloads, Adan and AdamW at their
               recommended settings, 2 seeds, no tuning and so no verdict (~1 minute)
  study W...   tune, set the target and run the reported seeds for workloads W
  batch-sweep  the study at batch sizes 32-1024, tuned at every size
  report       report.md, plots and runs.csv/curves.csv from everything in --out
  workloads    the registry: every workload's definition
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from adan.experiments.optim import ExperimentError, parse_optimizers

HELP = {
    "quick": "smoke test: 2 small vision workloads, Adan vs AdamW untuned, 2 seeds, no verdict",
    "study": "target, tuning and reported seeds for the named workloads (default: all but batch)",
    "batch-sweep": "steps to target against batch size (32-1024), every optimizer tuned at every size",
    "report": "report.md, plots and CSVs from the results in --out",
    "workloads": "list the workload registry",
}


def _opts(args) -> dict:
    opts = {"device": args.device, "threads": args.threads}
    if args.data_dir:
        opts["data_dir"] = str(Path(args.data_dir).resolve())
    return opts


def cmd_quick(args) -> None:
    from adan.experiments import protocol
    from adan.experiments.report import quick_table
    from adan.experiments.runner import execute, read_run, run_path
    from adan.experiments.study import make_spec
    from adan.experiments.workloads import check_data, get

    opts = _opts(args)
    specs = []
    for name in ("resnet", "vit"):
        w = get(name).sized(args.size)
        check_data(w, opts.get("data_dir"))
        specs += [make_spec(w, args.size, o, protocol.DEFAULTS[o], s, "quick", opts) for o in ("adan", "adamw") for s in range(2)]
    execute(specs, Path(args.out), args.jobs, desc="quick: smoke test")
    records = [read_run(run_path(Path(args.out), s)) for s in specs]
    print(quick_table(records, "val_acc", "test_acc"))


def cmd_study(args) -> None:
    from adan.experiments.study import run_study
    from adan.experiments.workloads import WORKLOADS

    names = args.workloads or [n for n in WORKLOADS if n != "batch"]
    for name in names:
        if name == "batch":
            raise ExperimentError("the batch workload is studied by 'adan-experiments batch-sweep'")
        start = time.time()
        run_study(name, Path(args.out), _opts(args), trials=args.trials, seeds=args.seeds, jobs=args.jobs,
                  optimizers=parse_optimizers(args.optimizers) if args.optimizers else None, size=args.size)  # fmt: skip
        print(f"{name}: done in {time.time() - start:.0f} s")


def cmd_batch_sweep(args) -> None:
    from adan.experiments.study import run_batch_sweep
    from adan.experiments.workloads import BATCH_SIZES

    sizes = tuple(args.batch_sizes or BATCH_SIZES)
    if 128 not in sizes:
        raise ExperimentError("the batch sweep sets its target at batch 128: include 128 in --batch-sizes")
    start = time.time()
    run_batch_sweep(Path(args.out), _opts(args), trials=args.trials, seeds=args.seeds, jobs=args.jobs, size=args.size,
                    optimizers=parse_optimizers(args.optimizers) if args.optimizers else None, batch_sizes=sizes)  # fmt: skip
    print(f"batch-sweep: done in {time.time() - start:.0f} s")


def cmd_report(args) -> None:
    from adan.experiments.report import write_report

    print(f"wrote {write_report(Path(args.out))}")


def cmd_workloads(args) -> None:
    from adan.experiments.workloads import WORKLOADS

    for w in WORKLOADS.values():
        budget = f"{w.steps} steps" if w.steps else f"{w.model['epochs']} epochs"
        target = "target " + (f"{w.target:.4g}" if w.target is not None else "not set yet")
        print(f"{w.name:<12} {w.description}\n{'':<12} batch {w.batch_size}, {budget}, {w.evals} evaluations, "
              f"{w.metric} ({'higher' if w.higher_is_better else 'lower'} is better), {target}, "
              f"optimizers {', '.join(w.optimizers)}, {w.seeds} reported seeds")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adan-experiments", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in HELP.items():
        p = sub.add_parser(name, help=help_text, description=f"{help_text}. {__doc__.split('Commands')[0].strip()}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.add_argument("--out", default="results", help="results directory (default: results)")
        if name in ("report", "workloads"):
            continue
        p.add_argument("--jobs", type=int, default=2, help="runs in parallel processes (default 2: one per core)")
        p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1; keep threads x jobs <= cores)")
        p.add_argument("--device", default="cpu", help="cpu or cuda (the supervised workloads)")
        p.add_argument("--data-dir", help="MNIST/Fashion-MNIST IDX files or CIFAR-10 python batches (vision), a UTF-8 text file (lm, mlm)")
        if name == "quick":
            p.add_argument("--size", choices=("quick", "tiny"), default="quick", help=argparse.SUPPRESS)  # tiny: the tests'
            continue
        p.add_argument("--trials", type=int, default=8, help="quasi-random trials per optimizer (default 8)")
        p.add_argument("--seeds", type=int, help="reported seeds (default: the workload's, 5; 10 for RL; 3 for the batch sweep)")
        p.add_argument("--optimizers", help="comma-separated subset of the workload's optimizers")
        p.add_argument("--size", choices=("full", "quick", "tiny", "large"), default="full",
                       help="full (the study, sized for 2 CPU cores), quick (small models and budgets), tiny (a few dozen "
                            "steps: the test suite's) or large (longer budgets, full-size images: for a GPU)")  # fmt: skip
        if name == "study":
            p.add_argument("workloads", nargs="*", help="workloads to study (default: every one but batch)")
        if name == "batch-sweep":
            p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated (default 32,64,128,256,1024; must include 128, where the target is set)")
    return parser


COMMANDS = {"quick": cmd_quick, "study": cmd_study, "batch-sweep": cmd_batch_sweep, "report": cmd_report, "workloads": cmd_workloads}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
        if args.command in ("study", "batch-sweep"):
            from adan.experiments.report import write_report

            print(f"wrote {write_report(Path(args.out))}")
    except ExperimentError as exc:
        print(f"adan-experiments: error: {exc}", file=sys.stderr)
        return 2
    return 0
