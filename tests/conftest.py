from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def golden() -> dict:
    with open(DATA / "adan_official_trajectories.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def reference_checkpoint() -> dict:
    with open(DATA / "adan_official_checkpoint.json") as f:
        return json.load(f)


def golden_cases() -> list[dict]:
    with open(DATA / "adan_official_trajectories.json") as f:
        return json.load(f)["cases"]


def assert_rel_close(actual, expected, rel: float, what: str = "") -> None:
    """max |actual - expected| <= rel * max |expected| (norm-wise relative error)."""
    a = np.asarray(actual.detach().cpu().double() if torch.is_tensor(actual) else actual, dtype=np.float64)
    e = np.asarray(expected.detach().cpu().double() if torch.is_tensor(expected) else expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    if e.size == 0:
        return
    err = np.max(np.abs(a - e))
    scale = max(np.max(np.abs(e)), np.finfo(np.float64).tiny)
    assert err <= rel * scale, f"{what}: relative error {err / scale:.3e} > {rel:.0e}"
