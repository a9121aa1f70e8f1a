"""report.md and plots from the runs in ``--out``: mean ± std over seeds, and plain verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adan.experiments.runner import load_runs, run_id

PRIMARY = {"vision": ("test_acc", "test accuracy", True), "lm": ("test_loss", "test loss (nats/char)", False),
           "rl": ("episode_return", "episodic return (last 3 rollouts)", True)}  # fmt: skip


def _meta(out: Path, section: str) -> dict[str, Any] | None:
    path = out / section / "meta.json"
    from adan.experiments.runner import read_json

    return read_json(path, "meta file") if path.exists() else None


def _ms(values: list[float], digits: int = 4) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return "–"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


def _records(runs: dict[str, dict], specs: list[dict]) -> list[dict]:
    return [runs[run_id(s)] for s in specs if run_id(s) in runs]


def _group(records: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r["spec"].get(k) for k in keys), []).append(r)
    return groups


def _curve_plot(path: Path, title: str, groups: dict[str, list[dict]], x_key: str, y_key: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in groups.items():
        curves = [(np.asarray(r["curves"][x_key], float), np.asarray(r["curves"][y_key], float)) for r in records if r["curves"][x_key]]
        if not curves:
            continue
        grid = curves[0][0] if len({len(c[0]) for c in curves}) == 1 else np.linspace(max(c[0][0] for c in curves), min(c[0][-1] for c in curves), 50)
        ys = np.stack([np.interp(grid, x, y) for x, y in curves])
        mean, std = ys.mean(0), ys.std(0)
        ax.plot(grid, mean, label=f"{label} (n={len(curves)})")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _verdict(means: dict[str, list[float]], higher: bool) -> str:
    """Whether Adan's mean is best, and by how much relative to the seed spread."""
    if "adan" not in means or len(means) < 2:
        return ""
    avg = {k: float(np.mean(v)) for k, v in means.items()}
    others = {k: v for k, v in avg.items() if k != "adan"}
    best_other = max(others, key=others.get) if higher else min(others, key=others.get)
    diff = avg["adan"] - others[best_other]
    if not higher:
        diff = -diff
    spread = max(float(np.std(means["adan"], ddof=1)) if len(means["adan"]) > 1 else 0.0,
                 float(np.std(means[best_other], ddof=1)) if len(means[best_other]) > 1 else 0.0)  # fmt: skip
    if diff > spread:
        word = "better than"
    elif diff >= -spread:
        word = "within one seed std of"
    else:
        word = "worse than"
    return f"Adan is **{word}** the best other optimizer ({best_other}): difference {diff:+.4f} (larger std {spread:.4f})."


def _supervised(out: Path, runs: dict, section: str, lines: list[str]) -> None:
    meta = _meta(out, section)
    if not meta:
        return
    task = meta["kind"]
    key, label, higher = PRIMARY[task]
    records = _records(runs, meta["specs"])
    lines += [f"## {section}", ""]
    base = meta.get("base", {})
    budget = ", ".join(f"{k} {base[k]}" for k in ("epochs", "steps", "timesteps", "batch_size", "max_train", "size") if k in base)
    lines += [f"Budget: {budget}; seeds {meta['seeds']}. Primary metric: {label}.", ""]
    for model in meta["models"]:
        by_opt = {o: [r for r in records if r["spec"]["model"] == model and r["spec"]["optimizer"] == o] for o in meta["optimizers"]}
        if task == "vision":
            cols = ["test_acc", "val_acc", "train_loss"]
        elif task == "lm":
            cols = ["test_loss", "test_ppl", "val_loss"]
        else:
            cols = ["episode_return"]
        lines += [f"### {model}", "", "| optimizer | lr | " + " | ".join(cols) + " | wall s/run |", "|---|---:|" + "---:|" * (len(cols) + 1)]
        for o, rs in by_opt.items():
            if not rs:
                continue
            lr = rs[0]["hparams"]["lr"]
            cells = [_ms([r["final"][c] for r in rs], 2 if c in ("episode_return", "test_ppl") else 4) for c in cols]
            lines.append(f"| {o} | {lr:.3g} | " + " | ".join(cells) + f" | {np.mean([r['wall_time_s'] for r in rs]):.0f} |")
        verdict = _verdict({o: [r["final"][key] for r in rs] for o, rs in by_opt.items() if rs}, higher)
        lines += ["", verdict, ""] if verdict else [""]
        x_key, y_key, ylabel = {"vision": ("epoch", "val_acc", "validation accuracy"), "lm": ("step", "val_loss", "validation loss"),
                                "rl": ("timesteps", "episode_return", "episodic return")}[task]  # fmt: skip
        png = f"{section}-{model}.png"
        _curve_plot(out / png, f"{section}: {model}", {o: rs for o, rs in by_opt.items() if rs}, x_key, y_key, ylabel)
        lines += [f"![{section} {model}]({png})", ""]
    selection = out / task / "selection.json"
    if selection.exists() and task != "rl":
        lines += ["Learning-rate multipliers tried on validation data (seed 0):", "", "```", selection.read_text().strip(), "```", ""]


def _batch_sweep(out: Path, runs: dict, lines: list[str]) -> None:
    meta = _meta(out, "batch-sweep")
    if not meta:
        return
    records = _records(runs, meta["specs"])
    lines += ["## batch-sweep", "", f"ResNet, {meta['rule']}; seeds {meta['seeds']}. Test accuracy:", ""]
    lines += ["| batch | " + " | ".join(meta["optimizers"]) + " |", "|---:|" + "---:|" * len(meta["optimizers"])]
    series: dict[str, list[tuple[int, float, float]]] = {o: [] for o in meta["optimizers"]}
    for b in meta["batches"]:
        cells = []
        for o in meta["optimizers"]:
            vals = [r["final"]["test_acc"] for r in records if r["spec"]["batch_size"] == b and r["spec"]["optimizer"] == o]
            cells.append(_ms(vals))
            if vals:
                series[o].append((b, float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0))
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    drops = {o: s[0][1] - s[-1][1] for o, s in series.items() if len(s) > 1}
    if drops:
        lines += ["", "Accuracy lost from the smallest to the largest batch: " + ", ".join(f"{o} {d:+.4f}" for o, d in drops.items()), ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for o, s in series.items():
        if s:
            b, m, e = zip(*s)
            ax.errorbar(b, m, yerr=e, marker="o", capsize=3, label=o)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against batch size (ResNet)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "batch-sweep.png", dpi=110)
    plt.close(fig)
    lines += ["![batch sweep](batch-sweep.png)", ""]


def _budget(out: Path, runs: dict, lines: list[str]) -> None:
    meta = _meta(out, "budget")
    if not meta:
        return
    records = _records(runs, meta["specs"])
    lines += ["## budget", "", "Adan at 50% of the epochs (vision) or steps (lm) against AdamW at 100%.", ""]
    lines += ["| task | model | metric | AdamW 100% | Adan 50% | verdict |", "|---|---|---|---:|---:|---|"]
    for (task, model), rs in _group(records, "task", "model").items():
        key, label, higher = PRIMARY[task]
        full = [r["final"][key] for r in rs if r["spec"]["optimizer"] == "adamw"]
        half = [r["final"][key] for r in rs if r["spec"]["optimizer"] == "adan"]
        if not full or not half:
            continue
        d = np.mean(half) - np.mean(full)
        ok = d >= 0 if higher else d <= 0
        lines.append(f"| {task} | {model} | {label} | {_ms(full)} | {_ms(half)} | {'holds' if ok else 'does not hold'} ({d:+.4f}) |")
    lines.append("")


def _compact(out: Path, runs: dict, lines: list[str]) -> None:
    """Compact state formats against float32 Adan: the difference against its seed spread."""
    meta = _meta(out, "compact")
    if not meta:
        return
    records = _records(runs, meta["specs"])
    lines += ["## compact", "", "Adan with compact optimizer state, every format at float32 Adan's tuned learning rate; "
              f"seeds {meta['seeds']}. *Within spread*: the mean is within one seed standard deviation of float32 "
              "Adan's (or better). Bytes: optimizer state per parameter, step counters included.", ""]  # fmt: skip
    for (task, model), group in _group(records, "task", "model").items():
        key, label, higher = PRIMARY[task]
        by_opt = {o: [r for r in group if r["spec"]["optimizer"] == o] for o in meta["optimizers"]}
        ref = [r["final"][key] for r in by_opt.get("adan", [])]
        ref_mean, ref_std = (float(np.mean(ref)), float(np.std(ref, ddof=1)) if len(ref) > 1 else 0.0) if ref else (None, 0.0)
        lines += [f"### {task}: {model} ({label})", "", "| state | bytes/param | " + key + " | vs float32 | verdict |", "|---|---:|---:|---:|---|"]
        for o, rs in by_opt.items():
            if not rs:
                continue
            vals = [r["final"][key] for r in rs]
            nbytes = [r["final"].get("state_bytes_per_param") for r in rs]
            nbytes_cell = f"{np.mean(nbytes):.2f}" if all(b is not None for b in nbytes) else "–"
            if o == "adan" or ref_mean is None:
                diff_cell, verdict = "", "reference" if o == "adan" else ""
            else:
                diff = float(np.mean(vals)) - ref_mean
                gain = diff if higher else -diff
                diff_cell = f"{diff:+.4f}"
                verdict = "better" if gain > ref_std else ("within spread" if gain >= -ref_std else f"**outside spread** (std {ref_std:.4f})")
            name = {"adan": "float32"}.get(o, o.replace("adan-", ""))
            lines.append(f"| {name} | {nbytes_cell} | {_ms(vals)} | {diff_cell} | {verdict} |")
        lines.append("")


def write_report(out: Path) -> Path:
    out = Path(out)
    runs = {r["run_id"]: r for r in load_runs(out)}
    lines = ["# adan-experiments report", "", f"{len(runs)} finished runs in `{out}`.", ""]
    if runs:
        v = next(iter(runs.values()))["versions"]
        lines += ["Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), ""]
    for section in ("vision", "lm", "rl"):
        _supervised(out, runs, section, lines)
    _batch_sweep(out, runs, lines)
    _budget(out, runs, lines)
    _compact(out, runs, lines)
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def print_summary(out: Path, command: str) -> None:
    """The report's tables for this command, printed to the terminal."""
    section = {"batch-sweep": "## batch-sweep", "budget": "## budget"}.get(command, f"## {command}")
    text = (Path(out) / "report.md").read_text()
    start = text.find(section)
    if start < 0:
        return
    end = text.find("\n## ", start + 3)
    body = text[start : end if end > 0 else None].split("Learning-rate multipliers tried")[0]
    print("\n".join(line for line in body.splitlines() if not line.startswith("![")).rstrip())
    print(f"\nFull report: {Path(out) / 'report.md'}")
