"""Every Triton kernel variant the launchers make compiles to machine code for a Hopper GPU
(sm_90), on a machine without one.

Triton's interpreter (the other Triton tests) runs the kernels' Python, so it accepts code
that the compiler rejects: the first run on a GPU found the compact kernel reading
module-level constants that were annotated, not wrapped, as ``tl.constexpr``. Here the
launchers run on CPU tensors with each kernel replaced by a recorder; every recorded call
(its argument types and compile-time constants) is then compiled by Triton's own compiler
and ``ptxas`` for ``GPUTarget("cuda", 90, 32)``.
"""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
import torch

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia", reason="Triton without its NVIDIA backend")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from adan import Adan, _backends  # noqa: E402
from adan.kernels import adan_triton, adan_triton_compact, triton_common  # noqa: E402

_KERNELS = {
    adan_triton: ("_adan_kernel", "_adan_table_kernel"),
    adan_triton_compact: ("_adan_compact_kernel", "_adan_compact_table_kernel"),
}
_LAUNCH_OPTIONS = ("num_warps", "num_stages")  # launch options, not kernel arguments
_TYPES = {
    torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16",
    torch.int8: "i8", torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64",
}  # fmt: skip


class _Recorder:
    """Stands for a ``@triton.jit`` function: ``kernel[grid](*args, **consts)`` records the
    call instead of launching it."""

    def __init__(self, fn, calls: list):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **consts: self.calls.append((self.fn, args, consts))


def _signature(fn, args, consts) -> tuple:
    names = fn.arg_names
    sig = {}
    for name, arg in zip(names, args):
        if torch.is_tensor(arg):
            sig[name] = "*" + _TYPES[arg.dtype]
        else:
            assert isinstance(arg, int), (name, arg)
            sig[name] = "i32" if -(2**31) <= arg < 2**31 else "i64"
    for name in consts:
        sig[name] = "constexpr"
    key = tuple(sorted((k, str(v)) for k, v in {**sig, **{k: repr(v) for k, v in consts.items()}}.items()))
    return key, {k: v for k, v in sig.items() if k in names}


def _record(configs) -> dict:
    """Run one step of each config through the Triton launchers on CPU tensors; return the
    distinct kernel calls, keyed by argument types and constants."""
    calls: list = []
    patches = [mock.patch.object(mod, name, _Recorder(getattr(mod, name), calls)) for mod, names in _KERNELS.items() for name in names]
    triton_backend = _backends.Backend("cpu", lambda: True, lambda: "", adan_triton.prepare_full, adan_triton_compact.prepare_compact, steps_on_device=False)
    with mock.patch.dict(_backends.BACKENDS, {"cpu": triton_backend}):
        for p in patches:
            p.start()
        try:
            for (dtype, kw), per_tensor in itertools.product(configs, (False, True)):
                g = torch.Generator().manual_seed(0)
                params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in ((300, 40), (5000,), (7,))]
                for p in params:
                    p.grad = torch.randn(p.shape, generator=g).to(dtype)
                opt = Adan(params, lr=1e-2, weight_decay=0.02, fused=True, **kw)
                with mock.patch.object(triton_common, "capturing", lambda device: per_tensor), \
                        mock.patch.object(adan_triton, "capturing", lambda device: per_tensor), \
                        mock.patch.object(adan_triton_compact, "capturing", lambda device: per_tensor):  # fmt: skip
                    opt.step()
        finally:
            for p in patches:
                p.stop()
    variants = {}
    for fn, args, consts in calls:
        options = {k: consts.pop(k) for k in _LAUNCH_OPTIONS if k in consts}
        key, sig = _signature(fn, args, {**consts, **options})
        variants.setdefault(key, (fn, sig, consts, options))
    return variants


CONFIGS = [
    (torch.float32, {}),
    (torch.float32, {"no_prox": True}),
    (torch.float64, {}),
    (torch.bfloat16, {}),
    (torch.float16, {}),
    (torch.float32, {"state_dtype": "bfloat16"}),
    (torch.float32, {"state_dtype": "int8"}),
    (torch.bfloat16, {"state_dtype": "bfloat16", "param_update": "stochastic"}),
    (torch.bfloat16, {"state_dtype": "int8", "param_update": "kahan"}),
    (torch.float16, {"state_dtype": "bfloat16", "param_update": "kahan"}),
]


def test_every_triton_kernel_variant_compiles_for_hopper():
    variants = _record(CONFIGS)
    kernels = {fn.__name__ for fn, *_ in variants.values()}
    assert kernels == {name for names in _KERNELS.values() for name in names}, kernels
    target = GPUTarget("cuda", 90, 32)
    failures = []
    for fn, sig, consts, options in variants.values():
        names = fn.arg_names
        src = ASTSource(fn, sig, {(names.index(k),): v for k, v in consts.items()})
        try:
            compiled = triton.compile(src, target=target, options=options)
        except Exception as exc:  # collect them all
            failures.append(f"{fn.__name__} {consts}: {type(exc).__name__}: {str(exc)[:800]}")
            continue
        assert compiled.asm.get("cubin"), fn.__name__
    assert not failures, "\n\n".join(failures)
    assert len(variants) >= len(CONFIGS)
