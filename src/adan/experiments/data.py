"""Datasets: the shipped Fashion-MNIST and Shakespeare, and loaders for standard formats.

* Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT) ships as ``data/fashion_mnist.npz``:
  uint8 images with a fixed 20k/5k/5k train/validation/test split (see
  ``scripts/make_datasets.py`` for its provenance).
* ``--data-dir`` takes the standard IDX files of MNIST / Fashion-MNIST
  (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``;
  validation = the last 5000 training images) or CIFAR-10's python batches
  (``data_batch_1`` ... ``data_batch_5``, ``test_batch``; validation = the last 5000
  of ``data_batch_5``).
* Shakespeare's 37 plays (CC-BY 2.5, the Open Knowledge Foundation's ``shakespeare``
  package) ship as ``data/shakespeare.txt.gz``, split 80/10/10 by position into
  train/validation/test characters.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from adan.experiments.optim import ExperimentError


@dataclass
class ImageData:
    name: str
    x: dict[str, torch.Tensor]  # split -> float images (N, C, H, W), normalised
    y: dict[str, torch.Tensor]  # split -> int64 labels
    classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x["train"].shape[1:])


def _packaged(name: str):
    return resources.files("adan.experiments").joinpath("data", name)


def _normalise(split_images: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """uint8 (N, C, H, W) -> float32 standardised with the training mean and std per channel."""
    train = split_images["train"].astype(np.float32) / 255.0
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return {k: torch.from_numpy(((v.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)) for k, v in split_images.items()}


def load_images(data_dir: str | Path | None = None) -> ImageData:
    """The shipped Fashion-MNIST, or IDX / CIFAR-10 files found in ``data_dir``."""
    if data_dir is None:
        with _packaged("fashion_mnist.npz").open("rb") as f:
            arrays = dict(np.load(f))
        images = {s: arrays[f"x_{s}"][:, None] for s in ("train", "val", "test")}
        labels = {s: arrays[f"y_{s}"] for s in ("train", "val", "test")}
        name = "fashion-mnist (shipped 20k/5k/5k split)"
    else:
        root = Path(data_dir)
        if not root.is_dir():
            raise ExperimentError(f"--data-dir {root}: not a directory")
        if _find(root, "train-images-idx3-ubyte"):
            images, labels = _load_idx(root)
            name = f"IDX files in {root}"
        elif (root / "data_batch_1").exists() or (root / "cifar-10-batches-py" / "data_batch_1").exists():
            images, labels = _load_cifar10(root if (root / "data_batch_1").exists() else root / "cifar-10-batches-py")
            name = f"CIFAR-10 in {root}"
        else:
            raise ExperimentError(
                f"--data-dir {root}: found neither IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) nor CIFAR-10 python batches "
                "(data_batch_1..5, test_batch)"
            )
    y = {k: torch.from_numpy(v.astype(np.int64)) for k, v in labels.items()}
    return ImageData(name=name, x=_normalise(images), y=y, classes=int(max(v.max() for v in y.values())) + 1)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ExperimentError(f"{path}: cannot be read ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ExperimentError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ExperimentError(f"{path}: the IDX header is cut short ({len(data)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ExperimentError(f"{path}: header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


def _load_idx(root: Path, val: int = 5000) -> tuple[dict, dict]:
    files = {}
    for key, stem in (("xtr", "train-images-idx3-ubyte"), ("ytr", "train-labels-idx1-ubyte"),
                      ("xte", "t10k-images-idx3-ubyte"), ("yte", "t10k-labels-idx1-ubyte")):  # fmt: skip
        path = _find(root, stem)
        if path is None:
            raise ExperimentError(f"--data-dir {root}: missing {stem}[.gz]")
        files[key] = _read_idx(path)
    for key in ("xtr", "xte"):
        if files[key].ndim != 3:
            raise ExperimentError(f"--data-dir {root}: images must be an (N, H, W) IDX array, got shape {files[key].shape}")
    for key in ("ytr", "yte"):
        if files[key].ndim != 1:
            raise ExperimentError(f"--data-dir {root}: labels must be a 1-D IDX array, got shape {files[key].shape}")
    if files["xtr"].shape[1:] != files["xte"].shape[1:]:
        raise ExperimentError(
            f"--data-dir {root}: training images are {files['xtr'].shape[1:]} but test images {files['xte'].shape[1:]}"
        )
    xtr, ytr = files["xtr"][:, None], files["ytr"]
    if len(xtr) != len(ytr) or len(files["xte"]) != len(files["yte"]):
        raise ExperimentError(f"--data-dir {root}: image and label counts differ")
    _check_split(root, len(xtr), val)
    images = {"train": xtr[:-val], "val": xtr[-val:], "test": files["xte"][:, None]}
    labels = {"train": ytr[:-val], "val": ytr[-val:], "test": files["yte"]}
    return images, labels


def _load_cifar10(root: Path, val: int = 5000) -> tuple[dict, dict]:
    def batch(name: str):
        path = root / name
        if not path.exists():
            raise ExperimentError(f"--data-dir {root}: missing CIFAR-10 batch {name}")
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            x, y = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(d[b"labels"])
        except Exception as exc:  # unpickling a foreign file can raise almost anything
            raise ExperimentError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
        if y.ndim != 1 or len(y) != len(x):
            raise ExperimentError(f"{path}: {len(x)} images but labels of shape {y.shape}")
        return x, y

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    _check_split(root, len(x), val)
    xte, yte = batch("test_batch")
    return {"train": x[:-val], "val": x[-val:], "test": xte}, {"train": y[:-val], "val": y[-val:], "test": yte}


def _check_split(root: Path, n_train: int, val: int) -> None:
    if n_train <= val:
        raise ExperimentError(
            f"--data-dir {root}: {n_train} training images; more than {val} are needed (the last {val} are the validation split)"
        )


@dataclass
class TextData:
    vocab: list[str]
    splits: dict[str, torch.Tensor]  # split -> int64 character ids


def load_text(path: str | Path | None = None) -> TextData:
    """Shakespeare's plays (or a UTF-8 text file), as character ids split 80/10/10."""
    if path is None:
        with _packaged("shakespeare.txt.gz").open("rb") as f:
            text = gzip.decompress(f.read()).decode("utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise ExperimentError(f"--data-dir {p}: expected a UTF-8 text file for the lm task")
        text = p.read_text(encoding="utf-8")
    if len(text) < 1000:
        raise ExperimentError("the text is too short for a language model (under 1000 characters)")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    a, b = int(0.8 * len(ids)), int(0.9 * len(ids))
    return TextData(vocab=vocab, splits={"train": ids[:a], "val": ids[a:b], "test": ids[b:]})
