"""Run specs to results on disk: resumable, optionally in parallel, with progress bars.

Layout of ``--out``::

    <out>/runs/<run_id>.json      one finished run (schema adan-experiments/2)
    <out>/report.md, <out>/*.png  written by ``adan-experiments report``
    <out>/runs.csv, curves.csv    every run's final numbers and curves

A run id is a hash of everything that defines the run (:data:`ID_FIELDS`: the workload
and its size, optimizer and hyper-parameters, seed, budget, batch size, evaluation
schedule, data source, device and :data:`HARNESS_VERSION`), so a changed input never
reuses a stale result. A run's file is written atomically when it finishes: an
interrupted command loses only the runs in flight, and re-running it resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

import adan

SCHEMA = "adan-experiments/2"
# Bump when the training code changes what a run computes: every run id changes with it.
HARNESS_VERSION = "2.0"
ID_FIELDS = ("workload", "size", "optimizer", "trial", "seed", "steps", "batch_size", "evals", "data", "device", "harness")


def data_source(kind: str, data_dir: str | None) -> str:
    """An identity of the data a run reads: the shipped file, or a directory's listing
    (names, sizes, modification times)."""
    if kind == "rl":
        return "gymnasium"
    if data_dir is None:
        from importlib import resources

        name = "fashion_mnist.npz" if kind == "vision" else "shakespeare.txt.gz"
        size = resources.files("adan.experiments").joinpath("data", name).stat().st_size if hasattr(
            resources.files("adan.experiments").joinpath("data", name), "stat"
        ) else 0
        return f"shipped:{name}:{size}"
    root = Path(data_dir).resolve()
    entries = [root] if root.is_file() else sorted(q for q in root.rglob("*") if q.is_file())
    listing = [(str(q.relative_to(root.parent)), q.stat().st_size, int(q.stat().st_mtime)) for q in entries]
    return f"dir:{root}:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def run_id(spec: dict[str, Any]) -> str:
    fields = {k: spec.get(k) for k in ID_FIELDS}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{spec['workload']}-{spec['optimizer']}-s{spec['seed']}-{digest}"


def run_path(out: Path, spec: dict[str, Any]) -> Path:
    return Path(out) / "runs" / f"{run_id(spec)}.json"


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__, "adan": adan.__version__}
    for module in ("pytorch_optimizer", "stable_baselines3", "gymnasium", "mujoco"):
        mod = sys.modules.get(module)
        if mod is not None:
            found[module] = getattr(mod, "__version__", "?")
    found["machine"] = f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"
    return found


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def read_json(path: Path, what: str = "file") -> Any:
    """A JSON file's contents; ``ExperimentError`` naming the file if it is unreadable."""
    from adan.experiments.optim import ExperimentError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExperimentError(f"{what} {path} is unreadable ({exc}); delete it to rebuild it") from None


def read_run(path: Path) -> dict[str, Any] | None:
    """A finished run's record, or ``None`` (with a warning naming the file) when the file is
    truncated, empty or not a run of this harness: such a run counts as unfinished."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"ignoring unreadable run file {path} ({exc}); it will be run again", RuntimeWarning, stacklevel=2)
        return None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or record.get("status") != "done":
        warnings.warn(f"ignoring {path}: not a finished {SCHEMA} run; it will be run again", RuntimeWarning, stacklevel=2)
        return None
    return record


def load_runs(out: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(Path(out).glob("runs/*.json")):
        record = read_run(path)
        if record is not None:
            runs.append(record)
    return runs


def _die_with_parent() -> None:
    """Worker initializer: on Linux, get SIGKILL when the parent dies (even by SIGKILL), so
    that killing a ``--jobs N`` command never leaves its workers training forever."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def _worker(spec: dict[str, Any], out: str) -> tuple[str, str | None]:
    """Train and store one run (in a worker process or inline); returns (run_id, error)."""
    from adan.experiments.workloads import train

    try:
        result = train(spec)
    except Exception:  # keep the other runs going; the error is reported at the end
        return run_id(spec), traceback.format_exc()
    record = {"schema": SCHEMA, "status": "done", "run_id": run_id(spec), "spec": spec, "versions": versions(), **result}
    write_json(run_path(Path(out), spec), record)
    return run_id(spec), None


def execute(specs: Iterable[dict[str, Any]], out: Path, jobs: int = 1, desc: str = "runs") -> None:
    """Run every spec whose result is not on disk yet; raise if any failed."""
    from tqdm.auto import tqdm

    todo, seen = [], set()
    for spec in specs:
        rid = run_id(spec)
        if rid in seen or read_run(run_path(out, spec)) is not None:
            continue
        seen.add(rid)
        todo.append(spec)
    if not todo:
        return
    errors = []
    with tqdm(total=len(todo), desc=desc, unit="run", dynamic_ncols=True) as bar:
        if jobs <= 1:
            for spec in todo:
                bar.set_postfix_str(f"{spec['workload']}/{spec['optimizer']}/seed {spec['seed']}")
                rid, err = _worker(spec, str(out))
                if err:
                    errors.append((rid, err))
                bar.update()
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_die_with_parent) as pool:
                futures = [pool.submit(_worker, spec, str(out)) for spec in todo]
                for fut in as_completed(futures):
                    rid, err = fut.result()
                    if err:
                        errors.append((rid, err))
                    bar.update()
    if errors:
        detail = "\n".join(f"--- {rid}\n{err}" for rid, err in errors)
        raise RuntimeError(f"{len(errors)} of {len(todo)} runs failed:\n{detail}")
