"""The package's shape: no import cycles (deferred imports count) and no core module over
600 lines (docs/architecture.md describes the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import adan

ROOT = Path(adan.__file__).parent
CORE_LIMIT = 600


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(("adan", *parts)).removesuffix(".__init__")] = f
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The adan modules ``path`` imports, anywhere in it (functions included)."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adan"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                deps.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith("adan")}
    return deps


def _find_cycle(graph: dict[str, set[str]]):
    """One import cycle of ``graph`` as a list of modules, or ``None``."""
    done: set[str] = set()

    def visit(m: str, path: list[str]):
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        for d in sorted(graph.get(m, ())):
            cycle = visit(d, path + [m])
            if cycle:
                return cycle
        done.add(m)
        return None

    for m in sorted(graph):
        cycle = visit(m, [])
        if cycle:
            return cycle
    return None


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {d for d in _imports(f, modules) if d in modules and d not in ("adan", m)} for m, f in modules.items()}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_can_fail(tmp_path):
    """The checker itself: a cycle through a deferred (function-level) import is found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from adan import b\n")
    b.write_text("def f():\n    from adan import a\n")
    modules = {"adan.a": a, "adan.b": b}
    graph = {m: _imports(f, modules) for m, f in modules.items()}
    assert _find_cycle(graph) == ["adan.a", "adan.b", "adan.a"]
    assert _find_cycle({"adan.a": {"adan.b"}, "adan.b": set()}) is None


def test_core_modules_stay_small():
    core = [f for f in ROOT.glob("*.py")] + list((ROOT / "kernels").glob("*.py"))
    sizes = {f.name: len(f.read_text().splitlines()) for f in core}
    assert max(sizes.values()) <= CORE_LIMIT, {k: v for k, v in sizes.items() if v > CORE_LIMIT}


def test_a_backend_is_one_registration():
    """A device type with a fused kernel is one ``Backend`` entry: the dispatcher, the
    availability checks and the step-count placement all follow the registry."""
    import torch

    from adan import Adan, _backends, _fused

    meta = torch.device("meta")
    assert not _fused.fused_available(meta)
    assert "no fused Adan kernel for device type 'meta'" in _fused.unavailable_reason(meta)
    calls, launched = [], []

    def prepare_full(lists, scalars, hp):  # checks and returns the launch, which writes
        calls.append((lists, scalars, hp))
        return lambda: launched.append(lists)

    backend = _backends.Backend("meta", lambda: True, lambda: "", prepare_full, None, steps_on_device=True)
    _backends.register(backend)
    try:
        assert _fused.fused_available(meta)
        p = torch.zeros(3, 4, device="meta", requires_grad=True)
        p.grad = torch.zeros(3, 4, device="meta")
        opt = Adan([p], lr=0.1, betas=(0.9, 0.8, 0.7), fused=True)
        opt.step()
        [(lists, scalars, hp)] = calls
        assert launched == [lists]
        assert lists.params == [p] and lists.grads[0] is p.grad and scalars.device == meta
        assert (hp.beta1, hp.beta2, hp.beta3) == (0.9, 0.8, 0.7)
        assert opt.state[p]["step"].device == meta  # steps_on_device
        assert _backends.device_type_of([p]) == "meta" and _backends.device_type_of([p, torch.zeros(1)]) is None
    finally:
        del _backends.BACKENDS["meta"]
