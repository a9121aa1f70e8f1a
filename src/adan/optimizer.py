r"""Adan for PyTorch: one optimizer class, one functional entry point, several paths.

The layout follows ``torch/optim/adamw.py``: :class:`Adan` gathers tensors and state,
:func:`adan` dispatches to ``_single_tensor_adan`` (a per-tensor loop of in-place ops)
or ``_multi_tensor_adan`` (``torch._foreach_*`` over device/dtype buckets). Both take
the same arguments and implement the same update (code convention, see
:mod:`adan.reference` for the paper's)::

    g     = clip * grad                   (-clip * grad with maximize=True)
    d     = g - g'                        (g' = g at the first step)
    m     = b1 m + (1 - b1) g             exp_avg
    v     = b2 v + (1 - b2) d             exp_avg_diff
    n     = b3 n + (1 - b3) (g + b2 d)^2  exp_avg_sq
    denom = sqrt(n) / sqrt(1 - b3^t) + eps
    p     = p - lr (m / (1 - b1^t) + b2 v / (1 - b2^t)) / denom
    p     = p / (1 + lr wd)               (no_prox=True: p (1 - lr wd) before the update)
    g'    = g                             stored as ``neg_pre_grad = -g``

No path reads a tensor back to the host: the step count ``t`` lives in a tensor, the
bias corrections are computed from it in float64 tensor arithmetic, and the global
clipping factor stays a tensor.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _get_foreach_kernels_supported_devices

__all__ = ["Adan", "adan", "global_clip_coefficient"]

Betas = tuple[float, float, float]
LR = Union[float, Tensor]

_STATE_BUFFERS = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")


def _check_hparams(lr: Any, betas: Any, eps: Any, weight_decay: Any, max_grad_norm: Any) -> None:
    """Raise ``ValueError`` naming the first invalid hyper-parameter and its value."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid lr: a tensor lr must have one element, got shape {tuple(lr.shape)}")
        lr_value = float(lr.detach().cpu())  # construction time, not step(): no sync concern
    else:
        lr_value = lr
    if not isinstance(lr_value, (int, float)) or not 0.0 <= lr_value < math.inf:
        raise ValueError(f"Invalid lr: {lr!r} (must be a finite number >= 0)")
    if not isinstance(betas, (tuple, list)) or len(betas) != 3:
        raise ValueError(f"Invalid betas: {betas!r} (must be three numbers (beta1, beta2, beta3))")
    for i, beta in enumerate(betas):
        if not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta{i + 1}: betas[{i}]={beta!r} (must be in [0, 1))")
    for name, value in (("eps", eps), ("weight_decay", weight_decay), ("max_grad_norm", max_grad_norm)):
        if not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
            raise ValueError(f"Invalid {name}: {value!r} (must be a finite number >= 0)")


class Adan(Optimizer):
    r"""Adan: Adaptive Nesterov Momentum (Xie et al., 2022), as the reference implementation.

    A drop-in replacement for the reference implementation's ``Adan`` and for
    :class:`torch.optim.AdamW`; it reproduces the reference trajectories to float64
    rounding on every path.

    Args:
        params: parameters or parameter groups.
        lr: learning rate, a float or a one-element tensor (default ``1e-3``). Adan
            usually wants 5-10x the learning rate of Adam for vision models.
        betas: ``(beta1, beta2, beta3)`` in the code convention (``1 -`` the paper's):
            decay of the gradient average, of the gradient-difference average and of the
            squared Nesterov-gradient average (default ``(0.98, 0.92, 0.99)``).
        eps: added to the bias-corrected ``sqrt(n)`` (default ``1e-8``).
        weight_decay: weight decay ``wd`` (default ``0``).
        max_grad_norm: clip all gradients of all groups together to this global L2
            norm before the update; ``0`` turns clipping off (default). It is one
            setting for the whole optimizer. ``step()`` never modifies ``p.grad``.
        no_prox: ``False`` (default) applies weight decay by proximation,
            ``p / (1 + lr wd)`` after the update; ``True`` decays decoupled,
            ``p (1 - lr wd)`` before it.
        foreach: use the ``torch._foreach`` path; ``None`` picks it when every parameter
            is a plain tensor on a device with foreach kernels or on the CPU.
        fused: reserved for the fused kernels; ``None`` means the best available path.
        maximize: maximise the objective instead of minimising it.
        capturable: keep the step count on the parameters' device (for CUDA graphs).

    State per parameter (the reference implementation's names): ``exp_avg`` (m),
    ``exp_avg_diff`` (v), ``exp_avg_sq`` (n), ``neg_pre_grad`` (minus the previous,
    clipped gradient) and ``step``, a float32 tensor counting this parameter's updates
    as ``torch.optim`` keeps it.

    .. note:: The reference implementation counts steps per group, so a parameter that
       receives no gradient for some steps is bias-corrected with the group's count
       there; here, as in ``torch.optim``, with its own. The two agree whenever every
       parameter of a group has a gradient at every step.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: LR = 1e-3,
        betas: Betas = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        no_prox: bool = False,
        *,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
    ):
        _check_hparams(lr, betas, eps, weight_decay, max_grad_norm)
        if fused and foreach:
            raise ValueError("Invalid options: foreach=True and fused=True cannot both be set")
        if fused:
            raise RuntimeError("fused=True: the fused Adan kernels are not available in this build")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            no_prox=no_prox,
            foreach=foreach,
            fused=fused,
            maximize=maximize,
            capturable=capturable,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        _check_hparams(merged["lr"], merged["betas"], merged["eps"], merged["weight_decay"], merged["max_grad_norm"])
        if merged["max_grad_norm"] != self.defaults["max_grad_norm"]:
            raise ValueError(
                f"Invalid max_grad_norm={merged['max_grad_norm']!r} in a parameter group: clipping is global over "
                f"all groups, so max_grad_norm is set once on the optimizer (here {self.defaults['max_grad_norm']!r})"
            )
        if "betas" in param_group:
            param_group = {**param_group, "betas": tuple(param_group["betas"])}
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key in ("foreach", "fused"):
                group.setdefault(key, None)
            for key in ("no_prox", "maximize", "capturable"):
                group.setdefault(key, False)
            group.setdefault("max_grad_norm", self.defaults.get("max_grad_norm", 0.0))
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    device = p.device if group["capturable"] else None
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ state
    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        step_device = p.device if group["capturable"] else torch.device("cpu")
        return {
            "step": torch.zeros((), dtype=torch.float32, device=step_device),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_diff": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _gather_group(self, group: dict[str, Any]) -> dict[str, list]:
        """Gather the tensors of the parameters that have a gradient (complex as real views)."""
        lists: dict[str, list] = {k: [] for k in ("params", "grads", "exp_avgs", "exp_avg_sqs", "exp_avg_diffs", "neg_pre_grads", "state_steps")}
        fresh: list[int] = []  # indices whose previous gradient starts as the current one
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Adan does not support sparse gradients; use a dense gradient or torch.optim.SparseAdam")
            state = self.state[p]
            if len(state) == 0 or "exp_avg" not in state:
                state.update(self._new_state(p, group))
            if "neg_pre_grad" not in state:
                state["neg_pre_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                fresh.append(len(lists["params"]))
            real = torch.view_as_real if torch.is_complex(p) else (lambda t: t)
            lists["params"].append(real(p))
            lists["grads"].append(real(p.grad))
            lists["exp_avgs"].append(real(state["exp_avg"]))
            lists["exp_avg_sqs"].append(real(state["exp_avg_sq"]))
            lists["exp_avg_diffs"].append(real(state["exp_avg_diff"]))
            lists["neg_pre_grads"].append(real(state["neg_pre_grad"]))
            lists["state_steps"].append(state["step"])
        lists["fresh"] = fresh
        return lists

    @torch.no_grad()
    def restart_opt(self) -> None:
        """Reset the moments and step counts, as the reference ``restart_opt``.

        The next step treats the current gradient as the previous one (no difference
        term) and restarts the bias corrections at ``t = 1``.
        """
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state.update(self._new_state(p, group))
                    continue
                state["step"].zero_()
                for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
                    state[key].zero_()
                state.pop("neg_pre_grad", None)

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Perform one optimisation step; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Gather everything first: a bad gradient raises before any state changes.
        gathered = [self._gather_group(group) for group in self.param_groups]

        clip_coef = None
        max_grad_norm = self.param_groups[0]["max_grad_norm"]  # one value for all groups
        if max_grad_norm > 0:
            grads = [g for lists in gathered for g in lists["grads"]]
            if grads:
                clip_coef = global_clip_coefficient(grads, max_grad_norm, self.param_groups[-1]["eps"])

        for group, lists in zip(self.param_groups, gathered):
            fresh = lists.pop("fresh")
            if not lists["params"]:
                continue
            scale = _grad_scale(clip_coef, group["maximize"])
            for i in fresh:  # g' = g at the first step: the difference term is zero
                neg = lists["neg_pre_grads"][i]
                torch.mul(lists["grads"][i], -scale if scale is not None else -1.0, out=neg)
            beta1, beta2, beta3 = group["betas"]
            adan(
                **lists,
                foreach=group["foreach"],
                fused=group["fused"],
                clip_coef=clip_coef,
                beta1=beta1,
                beta2=beta2,
                beta3=beta3,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                no_prox=group["no_prox"],
                maximize=group["maximize"],
                capturable=group["capturable"],
            )
        return loss

    # ------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this class, by the reference implementation or by timm.

        Reference checkpoints keep one ``step`` per group; it becomes each parameter's
        ``step`` tensor. Shapes are checked before anything is loaded, so a mismatched
        state dict raises ``ValueError`` and leaves the optimizer as it was.
        """
        state_dict = _from_reference_format(state_dict, self.param_groups)
        self._check_state_shapes(state_dict)
        clip_norms = {g.get("max_grad_norm", 0.0) for g in state_dict["param_groups"]}
        if len(clip_norms) > 1:
            raise ValueError(f"loaded state dict has different max_grad_norm values per group {sorted(clip_norms)}; clipping is global")
        super().load_state_dict(state_dict)
        self.defaults["max_grad_norm"] = self.param_groups[0]["max_grad_norm"]

    def _check_state_shapes(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, the optimizer has {len(self.param_groups)}"
            )
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"loaded state dict's parameter group {gi} has {len(saved['params'])} parameters, "
                    f"the optimizer's has {len(group['params'])}"
                )
            for pi, (saved_id, p) in enumerate(zip(saved["params"], group["params"])):
                p_state = state_dict["state"].get(saved_id)
                if p_state is None:
                    continue
                for key in _STATE_BUFFERS:
                    value = p_state.get(key)
                    if torch.is_tensor(value) and value.shape != p.shape:
                        raise ValueError(
                            f"loaded state dict does not match the parameters: group {gi}, parameter {pi}, "
                            f"state {key!r} has shape {tuple(value.shape)} but the parameter has {tuple(p.shape)}"
                        )


def _from_reference_format(state_dict: dict[str, Any], current_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Convert a reference/timm checkpoint (group-level ``step``) to per-parameter steps.

    The reference's ``foreach``/``fused`` flags name its own code paths; the groups
    keep this optimizer's choice of path instead.
    """
    groups = state_dict.get("param_groups", [])
    if not any("step" in g for g in groups) or len(groups) != len(current_groups):
        return state_dict  # not a reference checkpoint, or one the shape check will reject
    state = {k: dict(v) for k, v in state_dict["state"].items()}
    new_groups = []
    for g, current in zip(groups, current_groups):
        g = dict(g)
        step = g.pop("step", None)
        for key in ("foreach", "fused", "maximize", "capturable"):
            g[key] = current[key]
        if step is not None:
            for pid in g["params"]:
                if pid in state:
                    state[pid]["step"] = torch.tensor(float(step), dtype=torch.float32)
        new_groups.append(g)
    return {"state": state, "param_groups": new_groups}


# --------------------------------------------------------------------- maths
def global_clip_coefficient(grads: list[Tensor], max_norm: float, eps: float) -> Tensor:
    """``min(1, max_norm / (||grads||_2 + eps))`` as a 0-d tensor, without a host sync.

    The norm is accumulated in float32, or float64 when any gradient is float64.
    """
    acc_dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    buckets = Optimizer._group_tensors_by_device_and_dtype([grads])
    norms = []
    for (bucket,), _ in buckets.values():  # keys are (None, None) under torch.compile
        if _has_foreach_kernels(bucket[0].device):
            bucket_norms = torch._foreach_norm(bucket, 2.0, dtype=acc_dtype)
        else:
            bucket_norms = [torch.linalg.vector_norm(g, dtype=acc_dtype) for g in bucket]
        norms.extend(n.to(device) for n in bucket_norms)
    total = torch.linalg.vector_norm(torch.stack(norms))
    return (max_norm / (total + eps)).clamp(max=1.0)


def _grad_scale(clip_coef: Optional[Tensor], maximize: bool) -> Union[Tensor, float, None]:
    """The factor the gradient is multiplied by: clipping and the sign of ``maximize``."""
    if clip_coef is None:
        return -1.0 if maximize else None
    return -clip_coef if maximize else clip_coef


def _scale_grads(grads: list[Tensor], scale: Union[Tensor, float], device: torch.device) -> list[Tensor]:
    """``scale * grad`` in each gradient's own dtype (a 0-d gradient would otherwise promote)."""
    if torch.is_tensor(scale):
        scale = scale.to(device)
    scaled = torch._foreach_mul(grads, scale)
    return [s if s.dtype == g.dtype else s.to(g.dtype) for s, g in zip(scaled, grads)]


def _step_coefficients(
    steps: Tensor, lr: LR, beta1: float, beta2: float, beta3: float
) -> tuple[Tensor, Tensor, Tensor]:
    """From (already incremented) step counts, in float64:
    ``lr / (1 - b1^t)``, ``lr b2 / (1 - b2^t)`` and ``1 / sqrt(1 - b3^t)``."""
    t = steps.to(torch.float64)
    if isinstance(lr, Tensor):
        lr = lr.to(device=t.device, dtype=torch.float64)
    step_size = lr / (1 - beta1**t)
    step_size_diff = lr * beta2 / (1 - beta2**t)
    inv_bc3_sqrt = (1 - beta3**t).rsqrt()
    return step_size, step_size_diff, inv_bc3_sqrt


def _single_tensor_adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    *,
    clip_coef: Optional[Tensor],
    beta1: float,
    beta2: float,
    beta3: float,
    lr: LR,
    weight_decay: float,
    eps: float,
    no_prox: bool,
    maximize: bool,
    capturable: bool,
) -> None:
    scale = _grad_scale(clip_coef, maximize)
    for i, param in enumerate(params):
        grad, neg = grads[i], neg_pre_grads[i]
        m, n, v, step_t = exp_avgs[i], exp_avg_sqs[i], exp_avg_diffs[i], state_steps[i]
        device = param.device

        step_t += 1
        step_size, step_size_diff, inv_bc3_sqrt = (c.to(device) for c in _step_coefficients(step_t, lr, beta1, beta2, beta3))

        g = grad if scale is None else _scale_grads([grad], scale, device)[0]
        d = neg.add_(g)  # neg_pre_grad now holds d = g - g'
        m.lerp_(g, 1 - beta1)
        v.lerp_(d, 1 - beta2)
        nme = torch.add(g, d, alpha=beta2, out=d)  # g + b2 d, in the same buffer
        n.mul_(beta3).addcmul_(nme, nme, value=1 - beta3)

        denom = n.sqrt().mul_(inv_bc3_sqrt).add_(eps)
        update = torch.mul(m, step_size).addcmul_(v, step_size_diff).div_(denom)
        if weight_decay != 0 and no_prox:
            param.mul_(1 - lr * weight_decay)
        param.sub_(update)
        if weight_decay != 0 and not no_prox:
            param.div_(1 + lr * weight_decay)
        torch.neg(g, out=neg)


def _multi_tensor_adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    *,
    clip_coef: Optional[Tensor],
    beta1: float,
    beta2: float,
    beta3: float,
    lr: LR,
    weight_decay: float,
    eps: float,
    no_prox: bool,
    maximize: bool,
    capturable: bool,
) -> None:
    if not params:
        return
    buckets = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads, state_steps]
    )
    scale = _grad_scale(clip_coef, maximize)
    for (p, g, m, n, v, neg, steps), _ in buckets.values():
        device = p[0].device  # bucket keys are (None, None) under torch.compile
        torch._foreach_add_(steps, 1)
        step_size, step_size_diff, inv_bc3_sqrt = _step_coefficients(torch.stack(steps), lr, beta1, beta2, beta3)

        if scale is not None:
            g = _scale_grads(g, scale, device)
        d = neg
        torch._foreach_add_(d, g)  # d = g - g'
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_lerp_(v, d, 1 - beta2)
        torch._foreach_mul_(d, beta2)
        torch._foreach_add_(d, g)  # g + b2 d
        torch._foreach_mul_(n, beta3)
        torch._foreach_addcmul_(n, d, d, value=1 - beta3)

        denom = torch._foreach_sqrt(n)
        torch._foreach_mul_(denom, inv_bc3_sqrt.to(device).unbind())
        torch._foreach_add_(denom, eps)
        if weight_decay != 0 and no_prox:
            torch._foreach_mul_(p, 1 - lr * weight_decay)
        if step_size.device.type == "cpu" and not torch.compiler.is_compiling():
            # One value per tensor, read by the kernel from CPU memory: no temporaries.
            torch._foreach_addcdiv_(p, m, denom, -step_size)
            torch._foreach_addcdiv_(p, v, denom, -step_size_diff)
        else:  # step counts on the device (capturable) or traced: 0-d tensor scalars
            update = torch._foreach_mul(v, step_size_diff.to(device).unbind())
            torch._foreach_add_(update, torch._foreach_mul(m, step_size.to(device).unbind()))
            torch._foreach_div_(update, denom)
            torch._foreach_sub_(p, update)
        if weight_decay != 0 and not no_prox:
            torch._foreach_div_(p, 1 + lr * weight_decay)
        torch._foreach_copy_(neg, g)
        torch._foreach_neg_(neg)


def _has_foreach_kernels(device: torch.device) -> bool:
    return device.type == "cpu" or device.type in _get_foreach_kernels_supported_devices()


def _default_to_foreach(params: list[Tensor]) -> bool:
    return all(type(p) in (Tensor, torch.nn.Parameter) and _has_foreach_kernels(p.device) for p in params)


def adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    neg_pre_grads: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: Optional[bool] = None,
    fused: Optional[bool] = None,
    clip_coef: Optional[Tensor] = None,
    beta1: float,
    beta2: float,
    beta3: float,
    lr: LR,
    weight_decay: float,
    eps: float,
    no_prox: bool,
    maximize: bool = False,
    capturable: bool = False,
) -> None:
    """Functional Adan: update ``params`` and the state lists in place.

    ``neg_pre_grads`` must already hold minus the previous gradient (minus the current,
    scaled gradient at a parameter's first step). ``clip_coef`` multiplies every
    gradient (see :func:`global_clip_coefficient`). See :class:`Adan` for the rest.
    """
    if fused:
        raise RuntimeError("fused=True: the fused Adan kernels are not available in this build")
    if foreach is None:
        foreach = _default_to_foreach(params)
    func = _multi_tensor_adan if foreach else _single_tensor_adan
    func(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        exp_avg_diffs,
        neg_pre_grads,
        state_steps,
        clip_coef=clip_coef,
        beta1=beta1,
        beta2=beta2,
        beta3=beta3,
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        no_prox=no_prox,
        maximize=maximize,
        capturable=capturable,
    )
