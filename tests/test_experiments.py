"""The experiments harness end to end on tiny budgets, its data loaders and its results."""

from __future__ import annotations

import gzip
import json
import pickle
import struct

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from adan.experiments import data as datasets  # noqa: E402
from adan.experiments.cli import main  # noqa: E402
from adan.experiments.optim import ExperimentError, load_config, parse_optimizers  # noqa: E402
from adan.experiments.runner import SCHEMA, load_runs  # noqa: E402

TINY = ["--epochs", "1", "--max-train", "256", "--max-eval", "256", "--seeds", "2", "--threads", "1"]


def _runs(out, task):
    return load_runs(out, task)


def test_vision_quick_end_to_end_writes_schema_report_and_plots(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["vision", "--quick", "--out", str(out), *TINY]) == 0
    runs = _runs(out, "vision")
    assert len(runs) == 2 * 2 * 2  # models x optimizers (adan, adamw) x seeds
    record = runs[0]
    assert record["schema"] == SCHEMA and record["status"] == "done"
    for key in ("spec", "config", "curves", "final", "hparams", "wall_time_s", "versions"):
        assert key in record
    assert set(record["final"]) >= {"val_acc", "test_acc", "val_loss", "test_loss"}
    assert len(record["curves"]["val_acc"]) == 1 and record["versions"]["torch"]
    selection = json.loads((out / "vision" / "selection.json").read_text())
    assert selection["resnet-small"]["adan"]["lr_mult"] == 1.0  # --quick: small models, no grid
    report = (out / "report.md").read_text()
    assert "### resnet" in report and "| adan |" in report and "| adamw |" in report
    assert (out / "vision-resnet.png").stat().st_size > 1000 and (out / "vision-vit.png").exists()
    printed = capsys.readouterr().out
    assert "| optimizer | lr |" in printed  # the summary table


def test_lr_grid_is_chosen_on_validation_and_recorded(tmp_path):
    out = tmp_path / "res"
    config = load_config()
    config["lr_grid"] = [0.1, 1.0]
    cfg = tmp_path / "opt.json"
    cfg.write_text(json.dumps(config))
    assert main(["lm", "--out", str(out), "--config", str(cfg), "--optimizers", "adan", "--steps", "4", "--seeds", "1",
                 "--threads", "1", "--quick"]) == 0  # fmt: skip
    # --quick skips the grid; without it the grid runs on seed 0 and the best validation loss wins.
    assert main(["lm", "--out", str(out / "full"), "--config", str(cfg), "--optimizers", "adan", "--steps", "4", "--seeds", "1",
                 "--threads", "1"]) == 0  # fmt: skip
    sel = json.loads((out / "full" / "lm" / "selection.json").read_text())["chargpt"]["adan"]
    grid = {float(k): v for k, v in sel["grid"].items()}
    assert set(grid) == {0.1, 1.0} and sel["lr_mult"] == min(grid, key=grid.get) and sel["metric"] == "val_loss"


def test_resume_skips_finished_runs_and_reruns_missing_ones(tmp_path):
    out = tmp_path / "res"
    args = ["vision", "--quick", "--out", str(out), "--optimizers", "adan", *TINY]
    assert main(args) == 0
    files = sorted((out / "vision" / "runs").glob("*.json"))
    assert len(files) == 4
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    files[0].unlink()  # as if the command had been interrupted before this run finished
    (out / "vision" / "runs" / "partial.json.tmp").write_text("{")  # a write cut short
    assert main(args) == 0
    after = {f.name: f.stat().st_mtime_ns for f in (out / "vision" / "runs").glob("*.json")}
    assert set(after) == set(stamps)
    assert [n for n in after if after[n] != stamps[n]] == [files[0].name]


def test_lm_budget_and_batch_sweep_quick(tmp_path):
    out = tmp_path / "res"
    assert main(["lm", "--quick", "--out", str(out), "--steps", "6", "--seeds", "2", "--threads", "1"]) == 0
    lm = _runs(out, "lm")
    assert {r["spec"]["optimizer"] for r in lm} == {"adan", "adamw"}
    assert all(r["final"]["test_ppl"] > 1 and len(r["curves"]["val_loss"]) >= 1 for r in lm)
    assert main(["budget", "--quick", "--out", str(out), *TINY, "--steps", "6"]) == 0
    report = (out / "report.md").read_text()
    assert "## budget" in report and "AdamW 100%" in report
    half = [r for r in _runs(out, "lm") if r["spec"]["optimizer"] == "adan" and r["spec"]["steps"] == 3]
    assert len(half) == 2
    assert main(["batch-sweep", "--quick", "--out", str(out), *TINY, "--batch-sizes", "64,128"]) == 0  # 64: the base size
    assert "## batch-sweep" in (out / "report.md").read_text() and (out / "batch-sweep.png").exists()


def test_compact_quick_compares_formats_at_float32_adans_lr(tmp_path):
    out = tmp_path / "res"
    assert main(["compact", "--quick", "--out", str(out), *TINY, "--steps", "4", "--seeds", "1"]) == 0
    runs = _runs(out, "vision") + _runs(out, "lm")
    assert {r["spec"]["optimizer"] for r in runs} == {"adan", "adan-bf16", "adan-int8"}
    for task in ("vision", "lm"):
        lrs = {r["spec"]["optimizer"]: r["hparams"]["lr"] for r in _runs(out, task) if r["spec"]["model"] in ("resnet", "chargpt")}
        assert len(set(lrs.values())) == 1  # every format at float32 Adan's learning rate
    by_opt = {r["spec"]["optimizer"]: r for r in _runs(out, "lm")}
    assert by_opt["adan"]["hparams"].get("state_dtype") is None and by_opt["adan-int8"]["hparams"]["state_dtype"] == "int8"
    assert by_opt["adan"]["final"]["state_bytes_per_param"] > by_opt["adan-bf16"]["final"]["state_bytes_per_param"]
    report = (out / "report.md").read_text()
    assert "## compact" in report and "| int8 |" in report and "| bf16 |" in report


def test_rl_quick_end_to_end(tmp_path):
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("mujoco")
    out = tmp_path / "res"
    assert main(["rl", "--quick", "--out", str(out), "--timesteps", "256", "--seeds", "1", "--threads", "1"]) == 0
    runs = _runs(out, "rl")
    assert {(r["spec"]["model"], r["spec"]["optimizer"]) for r in runs} == {
        (env, o) for env in ("HalfCheetah-v5", "Hopper-v5") for o in ("adam", "adan")
    }
    assert "## rl" in (out / "report.md").read_text()


def test_clear_errors(tmp_path, capsys):
    assert main(["vision", "--quick", "--out", str(tmp_path), "--optimizers", "adan,rmsprop"]) == 2
    assert "unknown optimizer(s) rmsprop" in capsys.readouterr().err
    assert main(["vision", "--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["vision", "--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "empty")]) == 2
    assert "found neither IDX files" in capsys.readouterr().err
    assert main(["rl", "--quick", "--out", str(tmp_path), "--optimizers", "sgd"]) == 2
    assert "rl compares adam, adan" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["imagenet"])
    with pytest.raises(ExperimentError):
        parse_optimizers("")


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_loader(tmp_path, gz):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (5100, 28, 28)), gz)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 5100), gz)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (50, 28, 28)), gz)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 50), gz)
    d = datasets.load_images(tmp_path)
    assert d.x["train"].shape == (100, 1, 28, 28) and d.x["val"].shape == (5000, 1, 28, 28) and d.x["test"].shape == (50, 1, 28, 28)
    assert d.classes == 10 and abs(float(d.x["train"].mean())) < 1e-4


def test_idx_loader_rejects_a_corrupt_file(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 10, 28, 28) + b"\x00" * 7)
    with pytest.raises(ExperimentError, match="header says"):
        datasets.load_images(tmp_path)


def test_cifar10_loader(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name, n in [*((f"data_batch_{i}", 1100) for i in range(1, 6)), ("test_batch", 40)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    d = datasets.load_images(tmp_path)
    assert d.x["train"].shape == (500, 3, 32, 32) and d.x["val"].shape[0] == 5000 and d.x["test"].shape[0] == 40
    (root / "data_batch_3").unlink()
    with pytest.raises(ExperimentError, match="missing CIFAR-10 batch data_batch_3"):
        datasets.load_images(tmp_path)


def test_shipped_data():
    d = datasets.load_images()
    assert {k: len(v) for k, v in d.y.items()} == {"train": 20000, "val": 5000, "test": 5000}
    assert d.shape == (1, 28, 28) and d.classes == 10
    text = datasets.load_text()
    assert len(text.vocab) < 100 and sum(len(v) for v in text.splits.values()) > 4_000_000


# ------------------------------------------------- bad inputs give clear errors
def _idx_set(root, n_train=5100, train_shape=(28, 28), test_shape=(28, 28), label_shape=None, gz=False):
    rng = np.random.default_rng(0)
    _write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, *train_shape)), gz)
    _write_idx(root / "train-labels-idx1-ubyte", rng.integers(0, 10, label_shape or n_train), gz)
    _write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (50, *test_shape)), gz)
    _write_idx(root / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 50), gz)


BAD_IDX = {
    "too_few_training_images": (dict(n_train=5000), "5000 training images; more than 5000 are needed"),
    "test_images_of_another_size": (dict(test_shape=(32, 32)), r"training images are \(28, 28\) but test images \(32, 32\)"),
    "two_dimensional_labels": (dict(label_shape=(5100, 2)), "labels must be a 1-D IDX array"),
}


@pytest.mark.parametrize("case", list(BAD_IDX))
def test_idx_loader_clear_errors(tmp_path, case):
    kwargs, match = BAD_IDX[case]
    _idx_set(tmp_path, **kwargs)
    with pytest.raises(ExperimentError, match=match):
        datasets.load_images(tmp_path)


def test_idx_header_only_and_non_gzip(tmp_path):
    _idx_set(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ExperimentError, match="IDX header is cut short"):
        datasets.load_images(tmp_path)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).unlink()
        (tmp_path / f"{name}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ExperimentError, match="cannot be read"):
        datasets.load_images(tmp_path)


def test_bad_cifar_pickle(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        (root / name).write_bytes(b"garbage, not a pickle")
    with pytest.raises(ExperimentError, match="not a CIFAR-10 python batch"):
        datasets.load_images(tmp_path)


@pytest.mark.parametrize("content", ["", '{"schema": "adan-experiments/1", "sta', '{"foreign": true}'])
def test_damaged_run_file_is_rerun_not_fatal(tmp_path, content):
    out = tmp_path / "res"
    assert main(["vision", "--quick", "--out", str(out), *TINY, "--seeds", "1", "--optimizers", "adan"]) == 0
    victim = sorted((out / "vision" / "runs").glob("*.json"))[0]
    victim.write_text(content)
    with pytest.warns(RuntimeWarning, match=str(victim.name)):
        assert main(["report", "--out", str(out)]) == 0
    with pytest.warns(RuntimeWarning, match=str(victim.name)):
        assert main(["vision", "--quick", "--out", str(out), *TINY, "--seeds", "1", "--optimizers", "adan"]) == 0
    assert json.loads(victim.read_text())["status"] == "done"  # run again


def test_damaged_selection_file_names_the_file(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["vision", "--quick", "--out", str(out), *TINY, "--seeds", "1", "--optimizers", "adan"]) == 0
    (out / "vision" / "selection.json").write_text("{")
    assert main(["vision", "--quick", "--out", str(out), *TINY, "--seeds", "1", "--optimizers", "adan"]) == 2
    assert "selection.json is unreadable" in capsys.readouterr().err


def test_workers_die_with_their_parent(tmp_path):
    """A --jobs N parent killed with SIGKILL takes its workers with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "import multiprocessing as mp\n"
        "from adan.experiments.runner import _die_with_parent\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(2, mp_context=mp.get_context('spawn'), initializer=_die_with_parent) as pool:\n"
        "        futs = [pool.submit(time.sleep, 600) for _ in range(2)]\n"
        "        time.sleep(1)\n"
        "        print(' '.join(str(p) for p in pool._processes), flush=True)\n"
        "        time.sleep(600)\n"
    )
    script = tmp_path / "parent.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
    assert not alive, f"workers {alive} outlived their parent"
