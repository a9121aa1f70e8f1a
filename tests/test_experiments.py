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
from adan.experiments import protocol  # noqa: E402
from adan.experiments.cli import main  # noqa: E402
from adan.experiments.optim import ExperimentError, parse_optimizers  # noqa: E402
from adan.experiments.runner import SCHEMA, load_runs, run_id  # noqa: E402
from adan.experiments.study import make_spec  # noqa: E402
from adan.experiments.workloads import WORKLOADS, get  # noqa: E402

SMALL = ["--size", "tiny", "--trials", "2", "--seeds", "2", "--jobs", "1"]


def test_quick_smoke_test_prints_numbers_and_no_verdict(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["quick", "--out", str(out), "--jobs", "1", "--size", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "smoke test: 2 seeds, untuned: no verdict" in printed
    for word in ("better", "worse", "no detectable"):
        assert word not in printed
    runs = load_runs(out)
    assert len(runs) == 2 * 2 * 2  # workloads x (adan, adamw) x seeds
    record = runs[0]
    assert record["schema"] == SCHEMA and record["status"] == "done"
    assert len(record["curve"]["val"]) == 4 and record["curve"]["seconds"] == sorted(record["curve"]["seconds"])


@pytest.mark.parametrize("name", [n for n in WORKLOADS if get(n).kind in ("lm", "mlm", "vision") and n != "batch"])
def test_every_supervised_workload_runs_a_tiny_study_end_to_end(tmp_path, name):
    out = tmp_path / "res"
    assert main(["study", name, *SMALL, "--out", str(out), "--optimizers", "adan,adamw"]) == 0
    decisions = json.loads((out / "study" / f"{name}-tiny.json").read_text())
    assert decisions["target"]["how"].startswith("the lowest over seeds [100, 101, 102]")
    bests = decisions["target"]["bests"]
    assert decisions["target"]["value"] == (min(bests) if get(name).higher_is_better else max(bests))  # reached by all
    assert set(decisions["chosen"]) == {"adan", "adamw"}
    roles = {r["spec"]["role"] for r in load_runs(out)}
    assert roles == {"trial", "target", "report"}
    seeds = {role: {r["spec"]["seed"] for r in load_runs(out) if r["spec"]["role"] == role} for role in roles}
    assert seeds["report"] == {0, 1} and not (seeds["trial"] & seeds["report"]) and not (seeds["target"] & seeds["report"])
    report = (out / "report.md").read_text()
    assert f"## {name}-tiny" in report and "| adamw |" in report and "paired by seed" in report
    assert (out / f"{name}-tiny-step.png").stat().st_size > 1000 and (out / f"{name}-tiny-lr.png").exists()
    assert (out / "runs.csv").read_text().count("\n") == len(load_runs(out)) + 1


def test_batch_sweep_quick_end_to_end(tmp_path):
    out = tmp_path / "res"
    assert main(["batch-sweep", "--size", "tiny", "--trials", "2", "--seeds", "1", "--jobs", "1", "--batch-sizes", "128,256",
                 "--out", str(out), "--optimizers", "adan,adamw"]) == 0  # fmt: skip
    report = (out / "report.md").read_text()
    assert "## Batch-size sweep" in report and "| adan |" in report and (out / "batch-tiny-curve.png").exists()
    assert "Learning rate chosen by each optimizer" in report and "| 256 | adamw |" in report  # per-size tuning, pairs
    assert "- batch 128 vs adamw: steps ratio" in report  # claim 3 answered per batch size
    assert {r["spec"]["batch_size"] for r in load_runs(out)} == {128, 256}
    assert main(["batch-sweep", "--size", "tiny", "--batch-sizes", "64,256", "--out", str(out)]) == 2


def test_rl_workload_evaluates_deterministically_on_a_separate_env(tmp_path, monkeypatch):
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("mujoco")
    import stable_baselines3.common.evaluation as evaluation

    calls = []
    real = evaluation.evaluate_policy

    def spy(model, env, **kw):
        calls.append((env, kw, model.get_env()))
        return real(model, env, **kw)

    monkeypatch.setattr(evaluation, "evaluate_policy", spy)
    from adan.experiments.workloads import train

    w = get("hopper").sized("tiny")
    spec = make_spec(w, "tiny", "adan", protocol.DEFAULTS["adan"], 3, "report", {"threads": 1})
    result = train(spec)
    assert len(result["curve"]["val"]) == w.evals and len(calls) == w.evals + 1  # + the final test evaluation
    for env, kw, train_env in calls:
        assert kw["deterministic"] is True and env is not train_env
    assert result["curve"]["step"] == sorted(result["curve"]["step"]) and "test_return" in result["final"]


def test_run_id_changes_with_everything_that_defines_a_run(tmp_path):
    w = get("resnet")
    base = make_spec(w, "full", "adan", protocol.DEFAULTS["adan"], 0, "report", {})
    rid = run_id(base)
    assert run_id(dict(base)) == rid and run_id({**base, "role": "trial", "threads": 4}) == rid  # not defining
    for change in ({"seed": 1}, {"steps": 7}, {"batch_size": 64}, {"evals": 5}, {"size": "quick"}, {"device": "cuda"},
                   {"trial": {**base["trial"], "lr": 1e-2}}, {"harness": "0"}):  # fmt: skip
        assert run_id({**base, **change}) != rid, change
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("a" * 2000)
    a = make_spec(get("gpt"), "full", "adan", protocol.DEFAULTS["adan"], 0, "report", {"data_dir": str(data)})
    (data / "train.txt").write_text("b" * 3000)
    b = make_spec(get("gpt"), "full", "adan", protocol.DEFAULTS["adan"], 0, "report", {"data_dir": str(data)})
    assert run_id(a) != run_id(b) != run_id(make_spec(get("gpt"), "full", "adan", protocol.DEFAULTS["adan"], 0, "report", {}))


def test_resume_skips_finished_runs_and_reruns_missing_ones(tmp_path):
    out = tmp_path / "res"
    args = ["quick", "--out", str(out), "--jobs", "1", "--size", "tiny"]
    assert main(args) == 0
    files = sorted((out / "runs").glob("*.json"))
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    files[0].unlink()  # as if the command had been interrupted before this run finished
    (out / "runs" / "partial.json.tmp").write_text("{")  # a write cut short
    assert main(args) == 0
    after = {f.name: f.stat().st_mtime_ns for f in (out / "runs").glob("*.json")}
    assert set(after) == set(stamps)
    assert [n for n in after if after[n] != stamps[n]] == [files[0].name]


def test_clear_errors(tmp_path, capsys):
    assert main(["study", "gpt", *SMALL, "--out", str(tmp_path), "--optimizers", "adan,rmsprop"]) == 2
    assert "unknown optimizer(s) rmsprop" in capsys.readouterr().err
    assert main(["study", "resnet", *SMALL, "--out", str(tmp_path), "--data-dir", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["study", "resnet", *SMALL, "--out", str(tmp_path), "--data-dir", str(tmp_path / "empty")]) == 2
    assert "found neither IDX files" in capsys.readouterr().err
    assert main(["study", "imagenet", "--out", str(tmp_path)]) == 2
    assert "unknown workload 'imagenet'" in capsys.readouterr().err
    assert main(["study", "batch", "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["vision"])
    with pytest.raises(ExperimentError):
        parse_optimizers("")


def test_help_describes_the_protocol(capsys):
    for argv in (["--help"], ["study", "--help"], ["batch-sweep", "--help"], ["quick", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "target" in text and "Sobol" in text and "seed" in text, argv


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
    assert main(["quick", "--out", str(out), "--jobs", "1", "--size", "tiny"]) == 0
    victim = sorted((out / "runs").glob("*.json"))[0]
    victim.write_text(content)
    with pytest.warns(RuntimeWarning, match=str(victim.name)):
        assert main(["report", "--out", str(out)]) == 0
    with pytest.warns(RuntimeWarning, match=str(victim.name)):
        assert main(["quick", "--out", str(out), "--jobs", "1", "--size", "tiny"]) == 0
    assert json.loads(victim.read_text())["status"] == "done"  # run again


def test_damaged_study_file_names_the_file(tmp_path, capsys):
    out = tmp_path / "res"
    args = ["study", "gpt", *SMALL, "--seeds", "1", "--out", str(out), "--optimizers", "adamw"]
    assert main(args) == 0
    (out / "study" / "gpt-tiny.json").write_text("{")
    assert main(args) == 2
    assert "gpt-tiny.json is unreadable" in capsys.readouterr().err


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
