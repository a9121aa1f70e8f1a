"""``report``: tables, plots and CSVs from everything under ``--out``.

Per workload: the target and how it was set; per optimizer the chosen trial (flagged when
it sits at an edge of its search space), steps and training seconds to the target, the
best validation value and the final test metric over the reported seeds; then Adan
against each other optimizer, paired by seed: differences with 95% confidence intervals
(Student's t) and the verdict they support, and the ratio of steps to target with a
bootstrap interval. Verdict words are printed only next to their interval.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from adan.experiments import stats
from adan.experiments.runner import load_runs, read_json, run_id
from adan.experiments.study import reach

__all__ = ["write_report", "quick_table"]


def _fmt(x: Optional[float], digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _ms(values: list[float], digits: int = 4) -> str:
    mean, sd = stats.summary(values)
    return "–" if mean != mean else f"{mean:.{digits}g} ± {sd:.2g}"


def _ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    return "–" if mean != mean else f"{mean:+.{digits}g} [{lo:+.{digits}g}, {hi:+.{digits}g}]"


def _ratio(r: tuple[float, float, float]) -> str:
    mean, lo, hi = r
    if mean != mean:
        return "–"
    return f"{mean:.3g} [{lo:.3g}, {hi:.3g}]" if lo == lo else f"{mean:.3g} (under {stats.MIN_RATIO_PAIRS} seed pairs: no interval)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band_plot(path: Path, title: str, groups: dict[str, list[dict]], x_key: str, ylabel: str, target: Optional[float]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in groups.items():
        curves = [(np.asarray(r["curve"][x_key], float), np.asarray(r["curve"]["val"], float)) for r in records if r["curve"]["val"]]
        if not curves:
            continue
        lo = max(c[0][0] for c in curves)
        hi = min(c[0][-1] for c in curves)
        grid = np.linspace(lo, hi, 60) if hi > lo else curves[0][0]
        ys = np.stack([np.interp(grid, x, y) for x, y in curves])
        mean = np.nanmean(ys, 0)
        sd = np.nanstd(ys, 0, ddof=1) if len(ys) > 1 else np.zeros_like(mean)
        ax.plot(grid, mean, label=f"{label} (n={len(curves)})")
        ax.fill_between(grid, mean - sd, mean + sd, alpha=0.2)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
    ax.set_title(title)
    ax.set_xlabel({"step": "steps", "seconds": "training seconds (evaluation excluded)"}[x_key])
    ax.set_ylabel(ylabel + " (mean ± sample std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lr_plot(path: Path, title: str, trials: dict[str, list[dict]], ylabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for o, records in trials.items():
        pts = sorted((r["spec"]["trial"]["lr"], r["final"]["best_val"]) for r in records)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=o, alpha=0.8)
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel("learning rate (peak)")
    ax.set_ylabel(f"best validation {ylabel}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(path: Path, title: str, rows: list[tuple[str, float, float, float]], ylabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r[0] for r in rows]
    means = np.array([r[1] for r in rows], float)
    err = np.array([[r[1] - r[2], r[3] - r[1]] for r in rows], float).T
    ax.bar(names, means, yerr=np.nan_to_num(err), capsize=4, color="tab:blue", alpha=0.7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_id(out: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in load_runs(out)}


def _pick(runs: dict[str, dict], specs: list[dict]) -> list[dict]:
    return [runs[run_id(s)] for s in specs if run_id(s) in runs]


def _workload_section(out: Path, d: dict[str, Any], runs: dict[str, dict], lines: list[str], claims: dict) -> None:
    key, higher, metric = d["key"], d["higher_is_better"], d["metric"]
    target = d["target"]["value"]
    by_opt = {o: _pick(runs, [s for s in d["reported"] if s["optimizer"] == o]) for o in d["optimizers"]}
    if not any(by_opt.values()):
        return
    test_key = {"val_acc": "test_acc", "val_loss": "test_loss", "val_return": "test_return"}[metric]
    lines += [f"## {key}", "", f"Target: validation {metric} {'>=' if higher else '<='} {target:.4g} ({d['target']['how']}).", ""]
    lines += ["| optimizer | chosen trial | reached | steps to target | seconds to target | best val | final test |",
              "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    reaches = {}
    for o, records in by_opt.items():
        hits = [reach(r, target, higher) for r in records]
        reaches[o] = hits
        got = [h for h in hits if h.reached]
        ch = d["chosen"][o]
        trial = ", ".join(f"{k}={v:.3g}" for k, v in ch["trial"].items())
        edge = f" **edge: {', '.join(ch['edges'])}**" if ch["edges"] else ""
        lines.append(
            f"| {o} | {trial}{edge} | {len(got)}/{len(hits)} | {_ms([h.steps for h in got], 4) if got else 'not reached'} | "
            f"{_ms([h.seconds for h in got], 3) if got else '–'} | {_ms([r['final']['best_val'] for r in records])} | "
            f"{_ms([r['final'][test_key] for r in records])} |"
        )
    lines.append("")
    if "adan" in by_opt and len(by_opt) > 1:
        lines += ["Adan minus each other optimizer, paired by seed (mean [95% CI]); steps ratio = mean steps to target, "
                  "Adan / other, over seeds where both reached it (bootstrap 95% CI):", "",
                  "| vs | best val diff | verdict | final test diff | verdict | steps-to-target ratio |", "|---|---:|---|---:|---|---:|"]  # fmt: skip
        test_higher = test_key != "test_loss"
        a = {r["spec"]["seed"]: r for r in by_opt["adan"]}
        bars = []
        for o, records in by_opt.items():
            if o == "adan":
                continue
            b = {r["spec"]["seed"]: r for r in records}
            seeds = sorted(a.keys() & b.keys())
            vd = stats.paired_ci([a[s]["final"]["best_val"] for s in seeds], [b[s]["final"]["best_val"] for s in seeds])
            td = stats.paired_ci([a[s]["final"][test_key] for s in seeds], [b[s]["final"][test_key] for s in seeds])
            ha = {r["spec"]["seed"]: h.steps for r, h in zip(by_opt["adan"], reaches["adan"])}
            hb = {r["spec"]["seed"]: h.steps for r, h in zip(records, reaches[o])}
            ratio = stats.ratio_ci([ha.get(s) for s in seeds], [hb.get(s) for s in seeds])
            vv, tv = stats.verdict(vd[1], vd[2], higher), stats.verdict(td[1], td[2], test_higher)
            lines.append(f"| {o} | {_ci(*vd)} | {vv} | {_ci(*td)} | {tv} | {_ratio(ratio)} |")
            claims.setdefault("quality", []).append((key, o, td, tv))
            if o == "adamw":
                claims.setdefault("budget", []).append((key, ratio, sum(h.reached for h in reaches["adan"]), sum(h.reached for h in reaches[o]), len(seeds)))
            bars.append((f"{o}", *ratio))
        lines.append("")
        if bars:
            _bars(out / f"{key}-ratio.png", f"{key}: steps to target, Adan / other", bars, "ratio (95% CI)")
            lines += [f"![{key} ratios]({key}-ratio.png)", ""]
    if "adamw" in by_opt and by_opt["adamw"]:
        vals = np.array([r["curve"]["val"] for r in by_opt["adamw"] if len(r["curve"]["val"]) >= 4], float)
        if len(vals):
            q = max(1, vals.shape[1] // 4)
            late = np.nanmean(vals[:, -1]) - np.nanmean(vals[:, -1 - q])
            lines += [f"Plateau check: AdamW's mean validation {metric} changed by {late:+.3g} over the last quarter of the budget "
                      f"(from {np.nanmean(vals[:, -1 - q]):.4g} to {np.nanmean(vals[:, -1]):.4g}).", ""]  # fmt: skip
    for x_key in ("step", "seconds"):
        png = f"{key}-{x_key}.png"
        _band_plot(out / png, f"{key}: validation {metric}", by_opt, x_key, metric, target)
        lines += [f"![{key} {x_key}]({png})", ""]
    trials = {o: _pick(runs, specs) for o, specs in d["trials"].items()}
    _lr_plot(out / f"{key}-lr.png", f"{key}: every trial", trials, metric)
    lines += [f"![{key} lr sensitivity]({key}-lr.png)", ""]


def _batch_section(out: Path, runs: dict[str, dict], lines: list[str], claims: dict) -> None:
    for meta_path in sorted((out / "study").glob("batch-*.json")):
        if meta_path.stem.count("-") != 1:
            continue  # the per-batch-size decision files
        meta = read_json(meta_path, "study file")
        decisions = [read_json(out / "study" / f"{k}.json", "study file") for k in meta["keys"] if (out / "study" / f"{k}.json").exists()]
        if not decisions:
            continue
        target = decisions[0]["target"]["value"]
        optimizers = decisions[0]["optimizers"]
        table: dict[str, dict[int, list]] = {o: {} for o in optimizers}
        records_at: dict[tuple[int, str], list[dict]] = {}
        for d in decisions:
            for o in optimizers:
                records = _pick(runs, [s for s in d["reported"] if s["optimizer"] == o])
                records_at[d["batch_size"], o] = records
                table[o][d["batch_size"]] = [reach(r, target, True).steps for r in records]
        sizes = sorted({d["batch_size"] for d in decisions})
        lines += [f"## Batch-size sweep ({meta_path.stem})", "",
                  f"Steps to validation accuracy >= {target:.4g} (median over seeds, reached/seeds), each optimizer tuned at each batch size:", "",
                  "| optimizer | " + " | ".join(str(b) for b in sizes) + " |", "|---|" + "---:|" * len(sizes)]  # fmt: skip
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 4))
        for o in optimizers:
            cells, xs, ys = [], [], []
            for b in sizes:
                hits = [h for h in table[o].get(b, []) if h is not None]
                n = len(table[o].get(b, []))
                cells.append(f"{int(np.median(hits))} ({len(hits)}/{n})" if hits else f"– (0/{n})")
                if hits:
                    xs.append(b)
                    ys.append(float(np.median(hits)))
            lines.append(f"| {o} | " + " | ".join(cells) + " |")
            ax.plot(xs, ys, "o-", label=o)
            claims.setdefault("batch", []).append((o, dict(zip(xs, ys))))
        if sizes:
            anchor = min(sizes)
            ref = [ys for o, ys in claims.get("batch", []) if ys.get(anchor)]
            if ref:
                base = np.median([r[anchor] for r in ref])
                ax.plot(sizes, [base * anchor / b for b in sizes], "k--", lw=0.8, label="perfect scaling")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("steps to target (median over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{meta_path.stem}-curve.png", dpi=110)
        plt.close(fig)
        lines += ["", f"![batch-size curve]({meta_path.stem}-curve.png)", "",
                  "Perfect scaling (the dashed line) halves the steps each time the batch doubles.", ""]  # fmt: skip
        _batch_tuning(decisions, sizes, optimizers, lines)
        _batch_pairs(records_at, sizes, optimizers, target, lines, claims)


def _batch_tuning(decisions: list[dict], sizes: list[int], optimizers: list[str], lines: list[str]) -> None:
    """The learning rate each optimizer's tuning chose at each batch size (edges flagged)."""
    by_size = {d["batch_size"]: d for d in decisions}
    lines += ["Learning rate chosen by each optimizer's 8 trials at each batch size (**edge**: in the outer 10% of a "
              "dimension of its search space):", "",
              "| optimizer | " + " | ".join(str(b) for b in sizes) + " |", "|---|" + "---:|" * len(sizes)]  # fmt: skip
    for o in optimizers:
        cells = []
        for b in sizes:
            ch = by_size[b]["chosen"].get(o) if b in by_size else None
            if not ch:
                cells.append("–")
                continue
            edges = f" **edge: {', '.join(ch['edges'])}**" if ch["edges"] else ""
            cells.append(f"{ch['trial']['lr']:.2g}{edges}")
        lines.append(f"| {o} | " + " | ".join(cells) + " |")
    lines.append("")


def _batch_pairs(records_at: dict, sizes: list[int], optimizers: list[str], target: float, lines: list[str], claims: dict) -> None:
    """Adan against each other optimizer at each batch size, paired by seed: the steps-to-
    target ratio (bootstrap CI) and the best-validation difference (t CI, verdict)."""
    if "adan" not in optimizers:
        return
    lines += ["Adan against each other optimizer at each batch size, paired by seed: steps to the target, Adan / other "
              "(bootstrap 95% CI over the seeds where both reached it), and best validation accuracy, Adan minus other "
              "(Student-t 95% CI):", "",
              "| batch | vs | steps-to-target ratio | best val diff | verdict |", "|---:|---|---:|---:|---|"]  # fmt: skip
    for b in sizes:
        a = {r["spec"]["seed"]: r for r in records_at.get((b, "adan"), [])}
        for o in optimizers:
            if o == "adan" or not a:
                continue
            other = {r["spec"]["seed"]: r for r in records_at.get((b, o), [])}
            seeds = sorted(a.keys() & other.keys())
            if not seeds:
                continue
            steps = [[reach(rs[s], target, True).steps for s in seeds] for rs in (a, other)]
            ratio = stats.ratio_ci(*steps)
            vd = stats.paired_ci([a[s]["final"]["best_val"] for s in seeds], [other[s]["final"]["best_val"] for s in seeds])
            v = stats.verdict(vd[1], vd[2], True)
            lines.append(f"| {b} | {o} | {_ratio(ratio)} | {_ci(*vd)} | {v} |")
            claims.setdefault("batch_pairs", []).append((b, o, ratio, vd, v))
    lines.append("")


def _claims(lines: list[str], claims: dict) -> None:
    lines += ["## The paper's claims, answered by the numbers above", ""]
    if claims.get("quality"):
        lines += ["**1. Better final quality than the other optimizers** (final test metric, Adan minus other, 95% CI):", ""]
        for key, o, ci, v in claims["quality"]:
            lines.append(f"- {key} vs {o}: {_ci(*ci)}: {v}")
        lines.append("")
    if claims.get("budget"):
        lines += ["**2. AdamW's result with about half the budget** (steps to the AdamW-set target, Adan / AdamW; "
                  "the claim is a ratio near 0.5):", ""]  # fmt: skip
        for key, (r, lo, hi), na, nb, n in claims["budget"]:
            if r != r:
                lines.append(f"- {key}: Adan reached the target in {na}/{n} seeds, AdamW in {nb}/{n}: no ratio")
                continue
            if lo != lo:  # no interval: no verdict
                lines.append(f"- {key}: ratio {r:.3g} over fewer than {stats.MIN_RATIO_PAIRS} seed pairs (Adan reached the "
                             f"target in {na}/{n} seeds, AdamW in {nb}/{n}): no interval, no verdict")  # fmt: skip
                continue
            word = ("consistent with half" if lo <= 0.5 <= hi else "faster than AdamW, but not by half" if hi < 1 and lo > 0.5
                    else "at most half" if hi < 0.5 else "no detectable speed-up" if lo <= 1 <= hi else "slower than AdamW")  # fmt: skip
            lines.append(f"- {key}: ratio {r:.3g} [{lo:.3g}, {hi:.3g}] ({na}/{n} and {nb}/{n} seeds reached it): {word}")
        lines.append("")
    if claims.get("batch"):
        lines += ["**3. Tolerance to the batch size** (steps to the target and best validation accuracy at each batch size, "
                  "each optimizer tuned there; Adan / other and Adan minus other, 95% CI):", ""]  # fmt: skip
        for b, o, ratio, vd, v in claims.get("batch_pairs", []):
            lines.append(f"- batch {b} vs {o}: steps ratio {_ratio(ratio)}; best val {_ci(*vd)}: {v}")
        lines.append("")


def _csvs(out: Path, runs: dict[str, dict]) -> None:
    rows = []
    with open(out / "curves.csv", "w", newline="") as f:
        cw = csv.writer(f)
        cw.writerow(["run_id", "step", "seconds", "val", "train"])
        for rid, r in sorted(runs.items()):
            c = r["curve"]
            for row in zip(c["step"], c["seconds"], c["val"], c["train"]):
                cw.writerow([rid, *row])
            s = r["spec"]
            rows.append({"run_id": rid, "workload": s["workload"], "size": s["size"], "role": s.get("role"), "optimizer": s["optimizer"],
                         "seed": s["seed"], "batch_size": s["batch_size"], "steps": s["steps"],
                         **{f"hp_{k}": v for k, v in s["trial"].items()}, **r["final"], "wall_time_s": r["wall_time_s"]})  # fmt: skip
    keys = sorted({k for row in rows for k in row}, key=lambda k: (not k.startswith(("run_id", "workload")), k))
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_report(out: Path) -> Path:
    """``<out>/report.md`` (+ PNGs and CSVs) from every study under ``out``."""
    out = Path(out)
    runs = _by_id(out)
    lines = ["# Adan study report", "", "Generated by `adan-experiments report`; see `adan-experiments --help` for the protocol.", ""]
    claims: dict = {}
    for path in sorted((out / "study").glob("*.json")):
        d = read_json(path, "study file")
        if "reported" in d and not d["key"].startswith("batch-"):
            _workload_section(out, d, runs, lines, claims)
    _batch_section(out, runs, lines, claims)
    _claims(lines, claims)
    if runs:
        _csvs(out, runs)
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def quick_table(records: list[dict[str, Any]], metric: str, test_key: str) -> str:
    """The smoke test's numbers: mean ± std per workload and optimizer, and no verdict."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["spec"]["workload"], r["spec"]["optimizer"]), []).append(r)
    lines = ["smoke test: 2 seeds, untuned: no verdict", "",
             f"{'workload':<10} {'optimizer':<9} {'best val':>18} {'final test':>18} {'seconds':>8}"]  # fmt: skip
    for (w, o), rs in sorted(groups.items()):
        lines.append(f"{w:<10} {o:<9} {_ms([r['final']['best_val'] for r in rs]):>18} "
                     f"{_ms([r['final'][test_key] for r in rs]):>18} {np.mean([r['wall_time_s'] for r in rs]):>8.1f}")  # fmt: skip
    return "\n".join(lines)
