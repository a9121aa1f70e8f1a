"""Checkpoints: read the reference/timm format, and validate a state dict before loading it.

:func:`validate` looks at everything :meth:`Adan.load_state_dict` will use and raises
``ValueError`` naming the first problem, so that a malformed checkpoint (another
optimizer's, a truncated one, one with bad hyper-parameters) is refused before anything
changes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from adan import _compact, _formats
from adan._checks import check_foreign_options

__all__ = ["from_reference_format", "to_reference_format", "validate", "PATH_OPTIONS"]

MOMENTS = _formats.MOMENTS
STATE_KEYS = {"step", *MOMENTS, "neg_pre_grad", _compact.COMP_KEY, *_formats.SCALE_KEYS}
# Which code path runs is the optimizer's own choice, never the checkpoint's (a fused=True
# optimizer must stay fused for GradScaler); so are the storage choices.
PATH_OPTIONS = ("foreach", "fused", "capturable", "state_dtype", "param_update")
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def from_reference_format(state_dict: dict[str, Any], current_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Convert a reference/timm checkpoint (group-level ``step``) to per-parameter steps.

    Returns a new dict (the input is not modified); anything else is returned as it is.
    """
    groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
    if not isinstance(groups, list) or not any(isinstance(g, dict) and "step" in g for g in groups):
        return state_dict
    if len(groups) != len(current_groups) or not isinstance(state_dict.get("state"), dict):
        return state_dict  # validate() names the problem
    state = {k: dict(v) if isinstance(v, dict) else v for k, v in state_dict["state"].items()}
    new_groups = []
    for g in groups:
        g = dict(g)
        step = g.pop("step", None)
        if step is not None:
            for pid in g.get("params", []):
                if isinstance(state.get(pid), dict) and state[pid]:
                    state[pid]["step"] = torch.tensor(float(step), dtype=torch.float32)
        new_groups.append(g)
    return {**state_dict, "state": state, "param_groups": new_groups}


def _fail(message: str) -> None:
    raise ValueError(f"loaded state dict: {message}; nothing was loaded")


def validate(state_dict: Any, groups: list[dict[str, Any]], check_hparams: Callable[..., None]) -> None:
    """Raise ``ValueError`` unless ``state_dict`` is an Adan state dict that fits ``groups``."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict) or not isinstance(
        state_dict.get("param_groups"), list
    ):
        _fail("expected a dict with 'state' (a dict) and 'param_groups' (a list)")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(groups):
        _fail(f"it has {len(saved_groups)} parameter groups, the optimizer has {len(groups)}")
    clip_norms = set()
    for gi, (saved, group) in enumerate(zip(saved_groups, groups)):
        where = f"parameter group {gi}"
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            _fail(f"{where} is not a dict with a 'params' list")
        if len(saved["params"]) != len(group["params"]):
            _fail(f"{where} has {len(saved['params'])} parameters, the optimizer's has {len(group['params'])}")
        betas = saved.get("betas")
        if not isinstance(betas, (tuple, list)) or len(betas) != 3:
            _fail(
                f"{where} has betas={betas!r}; Adan has three (beta1, beta2, beta3): "
                "is this another optimizer's state dict (Adam/AdamW have two)?"
            )
        missing = [k for k in ("lr", "eps", "weight_decay") if k not in saved]
        if missing:
            _fail(f"{where} lacks {missing}")
        try:
            check_hparams(saved["lr"], betas, saved["eps"], saved["weight_decay"], saved.get("max_grad_norm", 0.0))
            check_foreign_options(saved, where)
        except ValueError as exc:
            _fail(f"{where}: {exc}")
        clip_norms.add(saved.get("max_grad_norm", 0.0))
        for pi, (pid, p) in enumerate(zip(saved["params"], group["params"])):
            p_state = state_dict["state"].get(pid)
            if p_state is not None:
                _validate_param_state(p_state, p, f"{where}, parameter {pi}")
    if len(clip_norms) > 1:
        _fail(f"it has different max_grad_norm values per group {sorted(clip_norms)}; clipping is global")


def _validate_param_state(p_state: Any, p: torch.Tensor, where: str) -> None:
    if not isinstance(p_state, dict):
        _fail(f"{where}: the state is a {type(p_state).__name__}, not a dict")
    if not p_state:
        return
    unknown = sorted(set(p_state) - STATE_KEYS)
    if unknown:
        _fail(f"{where}: unknown state {unknown} (an Adan state has {sorted(STATE_KEYS)}); another optimizer's?")
    missing = [k for k in ("step", *MOMENTS) if k not in p_state]
    if missing:
        _fail(f"{where}: the state lacks {missing}")
    step = p_state["step"]
    if torch.is_tensor(step):
        if step.numel() != 1 or step.is_complex() or step.dtype == torch.bool:
            _fail(f"{where}: 'step' must be one real number, got a tensor of shape {tuple(step.shape)} and dtype {step.dtype}")
        step = float(step.detach().cpu().reshape(()))  # loading, not step(): reading it is fine
    if not isinstance(step, (int, float)) or not (0 <= step < math.inf) or step != int(step):
        _fail(f"{where}: 'step' must be a whole number >= 0, got {p_state['step']!r}")
    for key in (*MOMENTS, "neg_pre_grad", _compact.COMP_KEY, *_formats.SCALE_KEYS):
        if key in p_state and not torch.is_tensor(p_state[key]):
            _fail(f"{where}: {key!r} is a {type(p_state[key]).__name__}, not a tensor")
    codes = {k: p_state[k].dtype for k in MOMENTS}
    # A format with scales stores codes: its dtypes are exact. Floating-point moments of any
    # width are converted on load.
    coded = [f for f in _formats.FORMATS.values() if f.scale_keys and set(codes.values()) & set(f.moment_dtypes(p).values())]
    if coded:
        fmt = coded[0]
        want = fmt.moment_dtypes(p)
        if codes != want:
            _fail(f"{where}: {fmt.name} state must have moments of dtypes {want}, got {codes}")
        missing = [k for k in fmt.scale_keys.values() if k not in p_state]
        if missing:
            _fail(f"{where}: {fmt.name} state without {missing}")
    else:
        bad = {k: str(d) for k, d in codes.items() if d not in _FLOATS}
        if bad:
            _fail(f"{where}: moments must be floating point (or a compact format's codes), got {bad}")
    for key in ("neg_pre_grad", _compact.COMP_KEY, *_formats.SCALE_KEYS):
        if key in p_state and p_state[key].dtype not in _FLOATS:
            _fail(f"{where}: {key!r} must be floating point, got {p_state[key].dtype}")
    expected = {key: tuple(p.shape) for key in (*MOMENTS, "neg_pre_grad", _compact.COMP_KEY)}
    for fmt in _formats.FORMATS.values():  # the scales' shapes
        expected.update({key: shape for key, (_, shape) in fmt.expected(p).items() if key not in MOMENTS})
    for key, shape in expected.items():
        value = p_state.get(key)
        if torch.is_tensor(value) and tuple(value.shape) != tuple(shape):
            _fail(
                f"{where}, state {key!r} has shape {tuple(value.shape)} but {tuple(shape)} was expected "
                f"for a parameter of shape {tuple(p.shape)}"
            )



# The group options the reference implementation and timm read (timm's ``caution`` off).
_REFERENCE_GROUP = ("lr", "betas", "eps", "weight_decay", "max_grad_norm", "no_prox")


def to_reference_format(state_dict: dict[str, Any]) -> dict[str, Any]:
    """An :class:`adan.Adan` state dict in the format of the reference implementation and of
    timm's ``Adan``, which load it and continue the same trajectory.

    They count steps per parameter group, so each group's ``step`` becomes one integer
    (``ValueError`` if its parameters' counts differ: a parameter that missed gradients
    cannot be expressed there). Their state has float ``exp_avg``, ``exp_avg_sq``,
    ``exp_avg_diff`` and ``neg_pre_grad`` only: ``bfloat16`` state is widened to float32
    (exactly), while ``int8`` state, a Kahan ``param_comp`` and ``maximize=True`` raise
    ``ValueError``. Without a group-level ``step``, timm would restart its bias
    corrections at 1 and re-seed the previous gradient (the run drifts); with it, the run
    continues exactly.

    >>> torch.save(adan.to_reference_format(opt.state_dict()), "for_timm.pt")  # doctest: +SKIP
    """
    validate_shape = isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict)
    if not validate_shape or not isinstance(state_dict.get("param_groups"), list):
        raise ValueError("to_reference_format: expected an Adan state dict with 'state' and 'param_groups'")
    saved = state_dict["state"]
    state, groups = {}, []
    for gi, g in enumerate(state_dict["param_groups"]):
        if g.get("maximize"):
            raise ValueError(f"to_reference_format: group {gi} has maximize=True, which the reference implementation lacks")
        steps = set()
        for pid in g["params"]:
            s = saved.get(pid)
            if not s:
                continue
            if "param_comp" in s:
                raise ValueError(f"to_reference_format: parameter {pid} keeps a Kahan param_comp, which the reference format cannot hold")
            fmt = _formats.format_of(s["exp_avg"])
            if fmt.scale_keys:
                raise ValueError(
                    f"to_reference_format: parameter {pid} has {fmt.name} state, which the reference format cannot express; "
                    "load the checkpoint into Adan(state_dtype='float32') first, and export that"
                )
            step = s["step"]
            steps.add(float(step.detach().cpu().reshape(())) if torch.is_tensor(step) else float(step))
            state[pid] = {
                k: (s[k].float() if s[k].dtype == torch.bfloat16 else s[k]).detach().clone()
                for k in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad") if k in s
            }  # fmt: skip
        if len(steps) > 1:
            raise ValueError(
                f"to_reference_format: the parameters of group {gi} have different step counts {sorted(steps)}; the reference "
                "counts steps per group, so this state cannot be expressed there"
            )
        lr = g["lr"]
        group = {k: g[k] for k in _REFERENCE_GROUP if k in g}
        group["lr"] = float(lr.detach().cpu().reshape(())) if torch.is_tensor(lr) else lr
        group.update(foreach=bool(g.get("foreach")), fused=False, caution=False, params=list(g["params"]))
        if steps:
            group["step"] = int(steps.pop())
        groups.append(group)
    return {"state": state, "param_groups": groups}
