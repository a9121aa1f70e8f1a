"""Compact optimizer state (state_dtype) and low-precision parameter updates (param_update)."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adan import Adan
from adan import _compact as C
from adan import _formats as F
from adan._fused import fused_available

PATHS = {"single": dict(foreach=False, fused=False), "foreach": dict(foreach=True)}
if fused_available("cpu"):
    PATHS["fused"] = dict(fused=True)
FORMATS = ("float32", "bfloat16", "int8")


# ------------------------------------------------------------ code maps
def _wide(shape, seed=0):
    """Values spanning many orders of magnitude, with exact zeros, in float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 4)
    x[torch.rand(shape, generator=g) < 0.05] = 0.0
    return x


@pytest.mark.parametrize("shape", [(4096,), (300, 40), (3, 1000), (64, 8, 3, 3), (5, 256), (2, 257)])
def test_signed_codes_error_bound_and_layout(shape):
    x = _wide(shape)
    codes, scale = C.quantize_signed(x)
    assert codes.dtype == torch.int8 and codes.shape == x.shape
    assert scale.shape == C.scale_shape(x.shape) and scale.dtype == torch.float32
    assert codes.abs().max() <= 127
    y = C.dequantize_signed(codes, scale)
    s = C._unblock(C._blocks(x).abs().amax(-1, keepdim=True).expand(*scale.shape, C.BLOCK), x.shape)
    bound = s * (2 * (x.abs() / s.clamp_min(1e-38)).sqrt() / 254 + 1 / 254**2) * (1 + 1e-5)
    assert ((y - x).abs() <= bound).all()
    # the block's largest magnitude is exact, signs are kept, zero stays zero
    torch.testing.assert_close(C._blocks(y).abs().amax(-1), scale, rtol=1e-6, atol=0)
    assert ((y == 0) | (torch.sign(y) == torch.sign(x))).all()
    assert (y[x == 0] == 0).all()


@pytest.mark.parametrize("shape", [(4096,), (300, 40), (64, 8, 3, 3), (2, 257)])
def test_unsigned_codes_error_bound_and_positive_never_zero(shape):
    x = _wide(shape).square()
    codes, scale = C.quantize_unsigned(x)
    assert codes.dtype == torch.uint8
    y = C.dequantize_unsigned(codes, scale)
    s = C._unblock(C._blocks(x).amax(-1, keepdim=True).expand(*scale.shape, C.BLOCK), x.shape)
    r = (x / s.clamp_min(1e-38)).pow(0.25)
    bound = s * 4 * (r + 1 / 510) ** 3 / 510 * (1 + 1e-4)
    rounded_up = (codes == 1) & (y > x)  # tiny values are kept at the smallest positive code
    assert ((y - x).abs() <= bound)[~rounded_up].all()
    assert ((y > 0) == (x > 0)).all(), "a positive n must never decode to 0 (the step would be lr*m/eps)"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=600))
def test_signed_roundtrip_relative_to_block_max(values):
    x = torch.tensor(values, dtype=torch.float32)
    y = C.dequantize_signed(*C.quantize_signed(x))
    amax = x.abs().max()
    assert ((y - x).abs() <= amax * (2 / 254 + 1 / 254**2) * 1.0001 + 1e-30).all()


def _decode(state: dict, key: str) -> torch.Tensor:
    """A state buffer as full precision, whatever its format."""
    return F.format_of(state["exp_avg"]).decode(state, key)


def test_zero_blocks_and_empty_tensors():
    for x in (torch.zeros(3, 300), torch.zeros(0, 5), torch.zeros(0)):
        codes, scale = C.quantize_signed(x)
        assert torch.equal(C.dequantize_signed(codes, scale), x)
        codes, scale = C.quantize_unsigned(x)
        assert torch.equal(C.dequantize_unsigned(codes, scale), x)


def test_stochastic_rounding_to_bf16_is_unbiased_and_picks_a_neighbour():
    torch.manual_seed(0)
    x = torch.full((200_000,), 1.0 + 2**-9)  # a quarter of the way from 1 to the next bfloat16
    r = C.round_to_bf16(x).float()
    assert set(r.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(r.mean().item() - x[0].item()) < 2e-5
    assert C.round_to_bf16(x, stochastic=False).float().unique().tolist() == [1.0]  # nearest loses it
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    out = C.round_to_bf16(special).float()
    assert out[0].isnan() and out[1] == math.inf and out[2] == -math.inf and out[3] == 0 and out[4] == 0


def test_in_place_rounding_of_a_stacked_scratch_matches_round_to_bf16():
    """The torch-ops update rounds its [[m, n], [v, g']] scratch in place with the halves of
    one draw broadcast over pairs; every value, NaN payloads whose bits would carry into the
    sign under the added noise included, must come out as ``round_to_bf16`` rounds it."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 4096, generator=g) * torch.logspace(-40, 38, 4096)
    edge = torch.tensor([0x7FFFFFFF, 0xFFFFFFFF - 2**32, 0x7F800001, 0xFF800001 - 2**32, 0x7F800000, 0x00000001, 0x807FFFFF - 2**32],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)  # fmt: skip
    x[..., : len(edge)] = edge
    x[1, 1, 7] = -0.0
    noise = torch.randint(0, 1 << 16, (2, 1, 4096), dtype=torch.int32, generator=g)
    noise[..., :8] = 0xFFFF  # the largest carry
    expected = torch.stack([torch.stack([C.round_to_bf16(x[i, j], noise=noise[i, 0]) for j in range(2)]) for i in range(2)])
    got = C.round_to_bf16_(x.clone(), noise).to(torch.bfloat16)
    assert torch.equal(got.isnan(), expected.isnan()) and got.isnan()[..., :4].all()
    finite = ~expected.isnan()
    assert torch.equal(got.view(torch.int16)[finite], expected.view(torch.int16)[finite])


# ------------------------------------------------------------ the optimizer
def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.Tanh(), torch.nn.Linear(256, 8)).to(dtype)


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 32, generator=g)
    w = torch.randn(32, 8, generator=g)
    return x, torch.tanh(x @ w) + 0.05 * torch.randn(256, 8, generator=g)


def _train(opt, model, steps, data=None, dtype=torch.float32):
    x, y = data or _data()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_state_layout_bytes_and_small_tensor_fallback():
    big = torch.nn.Linear(1024, 1024)  # 1M weights and a 1024-element bias
    for fmt, limit in (("float32", 16.0), ("bfloat16", 8.0), ("int8", 6.0)):
        opt = Adan(big.parameters(), state_dtype=fmt)
        big(torch.randn(2, 1024)).sum().backward()
        opt.step()
        w, b = opt.state[big.weight], opt.state[big.bias]
        per_param = sum(C.state_bytes(s) for s in opt.state.values()) / sum(p.numel() for p in big.parameters())
        assert per_param <= limit + 0.01, (fmt, per_param)
        if fmt == "int8":
            assert w["exp_avg"].dtype == torch.int8 and w["exp_avg_diff"].dtype == torch.int8
            assert w["exp_avg_sq"].dtype == torch.uint8 and w["neg_pre_grad"].dtype == torch.bfloat16
            assert w["exp_avg_scale"].shape == (1024, 4)
            assert b["exp_avg"].dtype == torch.float32 and "exp_avg_scale" not in b  # under 4096 elements
            assert per_param < 5.1
        elif fmt == "bfloat16":
            assert all(w[k].dtype == torch.bfloat16 for k in ("exp_avg", "exp_avg_diff", "exp_avg_sq", "neg_pre_grad"))
            assert b["exp_avg"].dtype == torch.bfloat16
        big.zero_grad()
    column = torch.zeros(4096, 1, requires_grad=True)  # rows of one element: a scale each would cost more
    opt = Adan([column], state_dtype="int8")
    column.grad = torch.ones_like(column)
    opt.step()
    assert opt.state[column]["exp_avg"].dtype == torch.float32
    p64 = torch.zeros(5000, dtype=torch.float64, requires_grad=True)
    opt = Adan([p64], state_dtype="int8")
    p64.grad = torch.ones_like(p64)
    opt.step()
    assert opt.state[p64]["exp_avg"].dtype == torch.float64  # float64 parameters keep float64 state


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("fmt", ["bfloat16", "int8"])
def test_compact_state_converges_like_float32(path, fmt):
    ref_model = _model()
    ref = _train(Adan(ref_model.parameters(), lr=3e-3, weight_decay=0.02), ref_model, 150)
    model = _model()
    losses = _train(Adan(model.parameters(), lr=3e-3, weight_decay=0.02, state_dtype=fmt, **PATHS[path]), model, 150)
    assert losses[-1] < 0.25 * losses[0]
    assert abs(losses[-1] - ref[-1]) <= 0.1 * ref[-1], (losses[-1], ref[-1])
    # and the parameters stay close to float32's trajectory
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert (p - q).norm() <= 0.05 * q.norm()


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "int8"])
def test_fused_matches_single_tensor(fmt):
    """The fused kernel is as close to the single-tensor path as another random draw of it.

    Stochastic rounding draws other bits on each path (and each seed), so trajectories are
    compared as wholes: fused vs single must not be farther apart than single vs single
    with another seed (float32 state has no randomness: there they agree to rounding).
    """
    if "fused" not in PATHS:
        pytest.skip("no C compiler")
    runs = {}
    for name, path, seed in (("single", "single", 0), ("single'", "single", 1), ("fused", "fused", 0)):
        model = _model()
        torch.manual_seed(100 + seed)
        opt = Adan(model.parameters(), lr=3e-3, weight_decay=0.02, max_grad_norm=1.0, state_dtype=fmt, **PATHS[path])
        _train(opt, model, 20)
        runs[name] = (torch.cat([p.detach().flatten() for p in model.parameters()]), opt, list(model.parameters()))
    ref, other, fused = runs["single"][0], runs["single'"][0], runs["fused"][0]
    spread = (other - ref).norm() if fmt != "float32" else 1e-6 * ref.norm()
    assert (fused - ref).norm() <= 2 * spread, ((fused - ref).norm(), spread)
    (_, o1, ps1), (_, o2, ps2) = runs["single"], runs["fused"]
    for p, q in zip(ps1, ps2):
        s1, s2 = o1.state[p], o2.state[q]
        assert s1.keys() == s2.keys() and all(s1[k].dtype == s2[k].dtype for k in s1)
        assert torch.equal(s1["step"], s2["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = _decode(s1, key), _decode(s2, key)
            assert (a - b).norm() <= 0.03 * a.norm(), key


@pytest.mark.parametrize("path", list(PATHS))
def test_low_precision_params_kahan_and_stochastic_keep_small_updates(path):
    """With updates far below bfloat16's resolution, rounding to nearest loses them all."""
    final = {}
    for mode in ("nearest", "stochastic", "kahan"):
        torch.manual_seed(0)
        p = torch.ones(5000, dtype=torch.bfloat16, requires_grad=True)
        opt = Adan([p], lr=1e-4, param_update=mode, **PATHS[path])
        for _ in range(200):
            p.grad = torch.ones_like(p)  # constant gradient: each step moves p by about -lr
            opt.step()
        value = p.float() + (opt.state[p]["param_comp"].float() if mode == "kahan" else 0)
        final[mode] = value.mean().item()
        if mode == "kahan":
            assert opt.state[p]["param_comp"].dtype == torch.bfloat16
    expected = 1 - 200 * 1e-4
    assert final["nearest"] == 1.0  # every update was rounded away
    # The compensation is itself bfloat16: about 16 significant bits in all, against 8.
    assert abs(final["kahan"] - expected) < 3e-4
    assert abs(final["stochastic"] - expected) < 5e-4


def test_float16_params_kahan():
    p = torch.ones(5000, dtype=torch.float16, requires_grad=True)
    opt = Adan([p], lr=1e-5, param_update="kahan")
    for _ in range(100):
        p.grad = torch.ones_like(p)
        opt.step()
    assert abs((p.float() + opt.state[p]["param_comp"].float()).mean().item() - (1 - 100 * 1e-5)) < 2e-5


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("fmt", ["bfloat16", "int8"])
def test_checkpoint_round_trip_continues_identically(path, fmt):
    model = _model(torch.bfloat16)
    kw = dict(lr=3e-3, weight_decay=0.02, state_dtype=fmt, param_update="kahan", **PATHS[path])
    opt = Adan(model.parameters(), **kw)
    _train(opt, model, 5, dtype=torch.bfloat16)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _model(torch.bfloat16, seed=3)
    model2.load_state_dict(ckpt["model"])
    opt2 = Adan(model2.parameters(), **kw)
    opt2.load_state_dict(ckpt["opt"])
    for p, q in zip(model.parameters(), model2.parameters()):
        s1, s2 = opt.state[p], opt2.state[q]
        assert s1.keys() == s2.keys()
        for k in s1:
            assert s1[k].dtype == s2[k].dtype and torch.equal(s1[k], s2[k]), k
    torch.manual_seed(7)
    _train(opt, model, 5, dtype=torch.bfloat16)
    torch.manual_seed(7)
    _train(opt2, model2, 5, dtype=torch.bfloat16)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("src,dst", [("float32", "int8"), ("int8", "float32"), ("bfloat16", "int8"), ("int8", "bfloat16")])
def test_checkpoint_loads_into_another_state_dtype(src, dst):
    model = _model()
    opt = Adan(model.parameters(), lr=3e-3, state_dtype=src)
    _train(opt, model, 10)
    opt2 = Adan(model.parameters(), lr=3e-3, state_dtype=dst)
    opt2.load_state_dict(opt.state_dict())
    w = model[0].weight
    assert F.format_of(opt2.state[w]["exp_avg"]).name == dst
    for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq"):
        a, b = _decode(opt.state[w], key), _decode(opt2.state[w], key)
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.02 * a.abs().max().item())
    _train(opt2, model, 3)  # and it steps


def test_mismatched_scales_raise_and_leave_the_optimizer_as_it_was():
    model = _model()
    opt = Adan(model.parameters(), state_dtype="int8")
    _train(opt, model, 2)
    sd = opt.state_dict()
    before = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    bad = {**sd, "state": {**sd["state"], 0: {**sd["state"][0], "exp_avg_scale": torch.ones(3, 3)}}}
    with pytest.raises(ValueError, match="exp_avg_scale"):
        opt.load_state_dict(bad)
    missing = {**sd, "state": {**sd["state"], 0: {k: v for k, v in sd["state"][0].items() if k != "exp_avg_sq_scale"}}}
    with pytest.raises(ValueError, match="exp_avg_sq_scale"):
        opt.load_state_dict(missing)
    for k, v in opt.state[model[0].weight].items():
        assert torch.equal(v, before[k])


def test_restart_and_invalid_options():
    model = _model()
    opt = Adan(model.parameters(), state_dtype="int8")
    _train(opt, model, 3)
    opt.restart_opt()
    w = opt.state[model[0].weight]
    assert w["step"] == 0 and not w["exp_avg"].any() and not w["exp_avg_scale"].any() and "neg_pre_grad" not in w
    _train(opt, model, 2)
    assert w["step"] == 2
    with pytest.raises(ValueError, match="state_dtype"):
        Adan(model.parameters(), state_dtype="int4")
    with pytest.raises(ValueError, match="param_update"):
        Adan(model.parameters(), param_update="round")
    with pytest.raises(ValueError, match="float16"):
        Adan(_model(torch.float16).parameters(), param_update="stochastic")


def test_per_group_state_dtype():
    model = _model()
    opt = Adan([{"params": model[0].parameters(), "state_dtype": "int8"}, {"params": model[2].parameters()}])
    _train(opt, model, 2)
    assert opt.state[model[0].weight]["exp_avg"].dtype == torch.int8
    assert opt.state[model[2].weight]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("path", ["default", "single"])
@pytest.mark.parametrize("fmt", ["bfloat16", "int8"])
def test_compact_step_compiles_as_one_graph(fmt, path):
    """No host sync in the compact update: torch.compile(fullgraph=True) takes the step whole,
    the torch-ops update (fused=False) included."""
    torch._dynamo.reset()
    model = _model()
    kw = PATHS["single"] if path == "single" else {}
    opt = Adan(model.parameters(), lr=3e-3, weight_decay=0.02, max_grad_norm=1.0, state_dtype=fmt, param_update="stochastic", **kw)
    _train(opt, model, 1)  # state creation, eagerly
    step = torch.compile(opt.step, fullgraph=True)
    x, y = _data()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        step()
    w = opt.state[model[0].weight]
    assert w["step"] == 4 and F.format_of(w["exp_avg"]).name == fmt
    assert torch.isfinite(model[0].weight).all()


@pytest.mark.parametrize(
    "fmt, dtype, pu", [("bfloat16", torch.float32, "nearest"), ("int8", torch.float32, "nearest"), ("bfloat16", torch.bfloat16, "kahan")]
)
def test_compiled_compact_step_runs_the_compact_kernel(fmt, dtype, pu):
    """Under torch.compile the compact kernel runs as one custom op per bucket (not the traced
    torch-ops fallback, 20-30x slower): with the same seeds, the compiled step gives the
    eager fused step's numbers bit for bit (the fallback draws other rounding bits).

    A traced step cannot take the optimizer's own generator, so its kernel seed comes from
    torch's default one; the eager run here is made to do the same."""
    if "fused" not in PATHS:
        pytest.skip("no C compiler")
    torch._dynamo.reset()
    runs = []
    for compiled in (False, True):
        model = _model(dtype)
        opt = Adan(model.parameters(), lr=3e-3, weight_decay=0.02, max_grad_norm=1.0, state_dtype=fmt, param_update=pu, fused=True)
        opt._generator = lambda device: None  # the seed from torch's default generator, as when traced
        step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
        x, y = _data()
        for k in range(3):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y).backward()
            torch.manual_seed(50 + k)
            step()
        runs.append((list(model.parameters()), opt))
    (ps1, o1), (ps2, o2) = runs
    for p, q in zip(ps1, ps2):
        assert torch.equal(p, q)
        s1, s2 = o1.state[p], o2.state[q]
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert F.format_of(o2.state[ps2[0]]["exp_avg"]).name == fmt


def test_grad_scaler_inf_skips_the_compact_fused_step():
    if "fused" not in PATHS:
        pytest.skip("no C compiler")
    model = _model()
    opt = Adan(model.parameters(), lr=3e-3, state_dtype="int8", fused=True)
    _train(opt, model, 2)
    before = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    weight = model[0].weight.detach().clone()
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(1.0)
    opt.step()
    assert torch.equal(model[0].weight, weight)
    assert all(torch.equal(v, before[k]) for k, v in opt.state[model[0].weight].items())


def test_compact_state_example_runs():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "compact_state.py"
    out = subprocess.run([sys.executable, str(script), "--steps", "10"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "int8 state" in out.stdout and "exp_avg is torch.int8" in out.stdout


@pytest.mark.parametrize("path", list(PATHS))
def test_strided_gradients_with_compact_state(path):
    """A gradient laid out differently from its (contiguous) parameter gives the same step."""
    results = []
    for strided in (False, True):
        torch.manual_seed(0)
        p = torch.randn(300, 400, requires_grad=True)  # 120k elements: sliced into several chunks
        opt = Adan([p], lr=1e-2, state_dtype="int8", **PATHS[path])
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            grad = torch.randn(400, 300, generator=g).t()
            p.grad = grad if strided else grad.contiguous()
            torch.manual_seed(5)  # the same stochastic-rounding bits for both layouts
            opt.step()
        results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("path", list(PATHS))
def test_switching_param_update_to_kahan_mid_training(path):
    """A state made under "nearest" gets its compensation buffer when the group turns to Kahan."""
    model = _model(torch.bfloat16)
    opt = Adan(model.parameters(), lr=3e-3, **PATHS[path])
    _train(opt, model, 2, dtype=torch.bfloat16)
    assert "param_comp" not in opt.state[model[0].weight]
    opt.param_groups[0]["param_update"] = "kahan"
    _train(opt, model, 2, dtype=torch.bfloat16)
    assert opt.state[model[0].weight]["param_comp"].dtype == torch.bfloat16
    assert all(torch.isfinite(p).all() for p in model.parameters())


_C1, _C2 = 1 + 2**-10, 1 + 2**-10 + 3 * 2**-12  # neither is a bfloat16 value


def bf16_rounding_states(path_kwargs: dict, shape: tuple) -> list[dict]:
    """The bfloat16 state after each of two steps whose gradients fill ``shape`` with _C1, then
    _C2 (lr 1e-30: the parameters stay put), with a seeded rounding generator."""
    p = torch.zeros(shape, requires_grad=True)
    opt = Adan([p], lr=1e-30, betas=(0.5, 0.5, 0.75), state_dtype="bfloat16", **path_kwargs)
    opt._generators[torch.device("cpu")] = torch.Generator().manual_seed(3)
    states = []
    for c in (_C1, _C2):
        p.grad = torch.full_like(p, c)
        opt.step()
        states.append({k: v.clone() for k, v in opt.state[p].items()})
    return states


def assert_rounding_unbiased(states: list[dict]) -> None:
    """Each stored buffer holds both bfloat16 neighbours of its exact value, with a mean
    within 6 standard errors of it (rounding to nearest misses by hundreds)."""
    f = torch.tensor
    g1, g2 = f(_C1), f(_C2)
    expected = [  # step 1: d = 0; step 2: d = g2 - g1, m and n from their stored (rounded) values
        {"exp_avg": 0.5 * g1, "exp_avg_sq": 0.25 * (g1 * g1), "neg_pre_grad": -g1},
        {"exp_avg_diff": 0.5 * (g2 - g1), "neg_pre_grad": -g2},
    ]
    for state, want in zip(states, expected):
        for key, value in want.items():
            stored = state[key].float()
            lo, hi = stored.min(), stored.max()
            assert lo < value < hi and len(stored.unique()) == 2, (key, lo, hi, value)  # the two neighbours
            se = (hi - lo) / 2 / math.sqrt(stored.numel())
            assert abs(stored.mean(dtype=torch.float64) - value) < 6 * se, (key, float(stored.mean(dtype=torch.float64) - value), float(se))


@pytest.mark.parametrize("path", list(PATHS))
def test_bfloat16_state_rounding_is_unbiased_and_thread_independent(path):
    """Stochastic rounding of every bfloat16 buffer (m, v, n and the previous gradient, which
    share rounding bits per element: m and n the low 16 of a 32-bit draw, v and the previous
    gradient the high 16), on every path, is unbiased: over 2^20 elements holding
    the same value between two bfloat16 neighbours, the mean of the stored values is the
    float32 value within 6 standard errors (rounding to nearest would miss by up to half a
    spacing, 3e2 standard errors), and both neighbours occur. The bits do not depend on the
    thread count."""
    runs = {}
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            runs[threads] = bf16_rounding_states(PATHS[path], (1024, 1024))
        finally:
            torch.set_num_threads(previous)
    for a, b in zip(*runs.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert_rounding_unbiased(runs[1])


@pytest.mark.parametrize("path", list(PATHS))
def test_bfloat16_state_rounding_is_fresh_for_every_element_at_every_step(path):
    """The test above averages over elements within one step; what training needs is that
    each element's rounding is unbiased over steps, i.e. that its draws change with the
    step's seed. Over 64 seeds, each of 4096 elements rounds m, n and the previous gradient
    up at its own rate: the spread of the per-element rates across elements must be the
    binomial one (rate (1 - rate) / 64), and their mean the exact rate. Draws that ignore
    the seed (an element rounding the same way at every step) give 64 times that spread."""
    T, N = 64, 4096
    g1 = torch.tensor(_C1)
    exact = {"exp_avg": 0.5 * g1, "exp_avg_sq": 0.25 * (g1 * g1), "neg_pre_grad": -g1}
    draws: dict = {k: [] for k in exact}
    for seed in range(T):
        p = torch.zeros(N, requires_grad=True)
        opt = Adan([p], lr=1e-30, betas=(0.5, 0.5, 0.75), state_dtype="bfloat16", **PATHS[path])
        opt._generators[torch.device("cpu")] = torch.Generator().manual_seed(seed)
        p.grad = torch.full_like(p, _C1)
        opt.step()
        for k in draws:
            draws[k].append(opt.state[p][k].double())
    for k, value in exact.items():
        x = torch.stack(draws[k])  # seeds x elements
        lo, hi = x.min(), x.max()
        assert len(x.unique()) == 2 and lo < value < hi, (k, lo, hi)
        rate = float((value.double() - lo) / (hi - lo))
        per_element = (x == hi).double().mean(0)
        spread = float(per_element.var()) / (rate * (1 - rate) / T)
        assert 0.9 < spread < 1.1, (k, rate, spread)  # measured 0.96-1.02 on every path; 0.83 with a one-multiply hash
        assert abs(float(per_element.mean()) - rate) < 6 * math.sqrt(rate * (1 - rate) / (T * N)), (k, rate)


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton"], capture_output=True).returncode != 0,
    reason="Triton is not installed (pip install triton) for its CPU interpreter",
)
def test_triton_bfloat16_state_rounding_is_unbiased():
    """The same statistics for the Triton compact kernel (Philox bits, ``to_bf16_sr``), run by
    Triton's interpreter as the CPU's backend, over 2^18 elements."""
    code = f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from unittest import mock
        from adan import _backends
        from adan.kernels import adan_triton, adan_triton_compact
        from test_compact import assert_rounding_unbiased, bf16_rounding_states
        triton_on_cpu = _backends.Backend("cpu", lambda: True, lambda: "", adan_triton.prepare_full,
                                          adan_triton_compact.prepare_compact, steps_on_device=False)
        with mock.patch.dict(_backends.BACKENDS, {{"cpu": triton_on_cpu}}):
            assert_rounding_unbiased(bf16_rounding_states(dict(fused=True), (512, 512)))
        print("ok")
    """
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok"], out.stdout


def test_a_block_whose_maximum_is_subnormal_keeps_finite_codes():
    """1 / a subnormal maximum overflows to inf: without a floor on the scale every code of
    such a block became the non-finite mark (NaN once decoded). Found by hypothesis."""
    x = torch.tensor([7.5e-41, -3e-41, 0.0, 1e-45] + [0.0] * 300)
    y = C.dequantize_signed(*C.quantize_signed(x))
    assert torch.isfinite(y).all() and (y - x).abs().max() <= C.FLT_MIN * 2 / 254
    n = C.dequantize_unsigned(*C.quantize_unsigned(x.abs()))
    assert torch.isfinite(n).all() and (n - x.abs()).abs().max() <= C.FLT_MIN


@pytest.mark.parametrize("path", [dict(foreach=False), dict(foreach=True), dict(fused=True)], ids=["single", "foreach", "fused"])
def test_int8_state_decaying_to_subnormal_stays_finite(path):
    """An unused embedding row: its m and v decay geometrically until a whole block of them
    is subnormal. Such gradients (about 1e-40 here, at once) must leave every path finite,
    and the paths agree."""
    if path.get("fused") and not fused_available("cpu"):
        pytest.skip("no C compiler")
    p = torch.nn.Parameter(torch.ones(16, 300))
    opt = Adan([p], lr=1e-2, state_dtype="int8", **path)
    for step in range(4):
        p.grad = torch.full_like(p, 1e-40 * (step + 1))
        opt.step()
    state = opt.state[p]
    assert state["exp_avg"].dtype == torch.int8
    for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq"):
        assert torch.isfinite(_decode(state, key)).all(), key
        scale = state[f"{key}_scale"]
        assert ((scale == 0) | (scale == C.FLT_MIN)).all(), (key, scale.unique())  # the floor, on every path
    assert torch.isfinite(p).all()
    ref = torch.nn.Parameter(torch.ones(16, 300))
    ref_opt = Adan([ref], lr=1e-2, state_dtype="int8", foreach=False)
    for step in range(4):
        ref.grad = torch.full_like(ref, 1e-40 * (step + 1))
        ref_opt.step()
    torch.testing.assert_close(p, ref, atol=1e-6, rtol=0)


def test_the_torch_paths_update_large_tensors_slice_by_slice_on_the_cpu_only():
    """Slices keep the dozens of passes of the torch-ops update in the CPU's L2 cache; on a
    GPU (CUDA without Triton takes these paths) every slice would cost a kernel launch per
    op. The meta device stands in for the GPU: it has no generator, so the compact path's
    slicing is checked on its helper."""
    from unittest import mock

    from adan import _functional

    sizes = {}
    chunk = _functional._chunk()  # elements per slice: 2^16 per thread
    for device in ("cpu", "meta"):
        p = torch.nn.Parameter(torch.zeros(4, chunk, device=device))
        p.grad = torch.zeros_like(p)
        opt = Adan([p], foreach=False, fused=False)
        calls = []
        real = _functional._adan_lists
        with mock.patch.object(_functional, "_adan_lists", side_effect=lambda *a, **k: (calls.append(a[0][0].numel()), real(*a, **k))):
            opt.step()
        sizes[device] = calls
        assert _functional._sliced(p.detach()) == (device == "cpu")
    assert sizes["cpu"] == [chunk] * 4
    assert sizes["meta"] == [4 * chunk]
