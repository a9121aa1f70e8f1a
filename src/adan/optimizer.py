r"""Adan for PyTorch: one optimizer class, one functional entry point, several paths.

The layout follows ``torch/optim/adamw.py``: :class:`Adan` gathers tensors and state,
:func:`adan` dispatches to ``_single_tensor_adan`` (a per-tensor loop of in-place ops),
``_multi_tensor_adan`` (``torch._foreach_*`` over device/dtype buckets) or
``_fused_adan`` (one kernel pass, :mod:`adan._fused`). All take the same arguments and
implement the same update (code convention, see :mod:`adan.reference` for the paper's)::

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
bias corrections are computed from it in float64 (tensor arithmetic, or inside the
kernel), and the global clipping factor stays a tensor. bfloat16/float16 parameters
keep float32 moments and are updated with float32 maths on every path.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _get_foreach_kernels_supported_devices

from adan import _checkpoint, _compact, _fused
from adan._checks import StateShapeError, check_foreign_options, check_no_duplicates, check_state_shapes
from adan._compact import COMP_KEY, LOW_PRECISION, SCALE_KEYS
from adan._fused import _fused_adan

__all__ = ["Adan", "adan", "global_clip_coefficient"]

Betas = tuple[float, float, float]
LR = Union[float, Tensor]

_MOMENTS = ("exp_avg", "exp_avg_diff", "exp_avg_sq")


def _check_hparams(lr: Any, betas: Any, eps: Any, weight_decay: Any, max_grad_norm: Any) -> None:
    """Raise ``ValueError`` naming the first invalid hyper-parameter and its value."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid lr: Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
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
        foreach: use the ``torch._foreach`` path.
        fused: use the fused kernel (C/OpenMP on the CPU, Triton on CUDA); ``True``
            raises if it cannot run. With ``foreach=None, fused=None`` (default) the
            fused kernel is chosen wherever it is available, then foreach, then the
            single-tensor loop. ``fused=True`` also lets ``torch.amp.GradScaler`` hand
            its scale and inf flag to the kernel (the step is skipped on inf).
        maximize: maximise the objective instead of minimising it.
        capturable: keep the step count on the parameters' device (for CUDA graphs).
        state_dtype: how the four buffers are stored: ``"float32"`` (default; float64
            for float64 parameters), ``"bfloat16"`` (stochastically rounded, 8 bytes per
            parameter) or ``"int8"`` (block-wise 8-bit m, v, n and a bfloat16 previous
            gradient, about 5 bytes per parameter; tensors under 4096 elements stay
            float32). The maths is float32 in every format; see :mod:`adan._compact`. It
            takes effect when a parameter's state is created or loaded (a checkpoint in
            another format is converted by ``load_state_dict``).
        param_update: how bfloat16/float16 parameters take their float32 update:
            ``"nearest"`` (default), ``"stochastic"`` rounding (bfloat16 parameters) or
            ``"kahan"`` (a compensation buffer ``param_comp`` keeps what rounding lost).
            Ignored for float32/float64 parameters.
        grad_norm_group: a process group over which the gradients this optimizer sees
            are *partitions* of the model's, as under
            ``torch.distributed.optim.ZeroRedundancyOptimizer``: the partial squared norms
            are all-reduced over it before clipping. Not needed under DDP (every rank
            sees the full, averaged gradient) nor for DTensor parameters (FSDP2), whose
            shards are reduced over their device mesh automatically.

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
        grad_norm_group: Optional[Any] = None,
        state_dtype: str = "float32",
        param_update: str = "nearest",
    ):
        _check_hparams(lr, betas, eps, weight_decay, max_grad_norm)
        _compact.check_options(state_dtype, param_update)
        # Not a hyper-parameter: a process group is neither saved nor compared.
        self.grad_norm_group = grad_norm_group
        if fused and foreach:
            raise ValueError("Invalid options: foreach=True and fused=True cannot both be set")
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
            state_dtype=state_dtype,
            param_update=param_update,
        )
        # Stochastic rounding draws from generators of the optimizer's own (one per device),
        # seeded without consuming torch's: the user's dropout masks and shuffles do not
        # depend on state_dtype. Saved in state_dict() under "adan_rng".
        self._rng_seed = torch.initial_seed()
        self._generators: dict[torch.device, torch.Generator] = {}
        super().__init__(params, defaults)
        if fused:
            self._step_supports_amp_scaling = True  # GradScaler passes grad_scale/found_inf
            for group in self.param_groups:
                for p in group["params"]:  # (meta parameters are checked at step(), after to_empty)
                    if p.device.type != "meta" and not _fused.fused_available(p.device):
                        raise RuntimeError(f"fused=True: {_fused.unavailable_reason(p.device)}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        if not isinstance(params, (Tensor, set)):  # a generator would be used up by the checks
            param_group = {**param_group, "params": list(params)}
        merged = {**self.defaults, **param_group}
        where = f"parameter group {len(self.param_groups)}"
        check_foreign_options(param_group, where)
        tensors = [x[1] if isinstance(x, tuple) else x for x in ([params] if isinstance(params, Tensor) else param_group["params"])]
        check_no_duplicates([t for t in tensors if torch.is_tensor(t)], where)
        _check_hparams(merged["lr"], merged["betas"], merged["eps"], merged["weight_decay"], merged["max_grad_norm"])
        _compact.check_options(merged["state_dtype"], merged["param_update"])
        if merged["param_update"] == "stochastic" and any(torch.is_tensor(t) and t.dtype == torch.float16 for t in tensors):
            raise ValueError(
                "Invalid param_update='stochastic' for float16 parameters: stochastic rounding is implemented for "
                "bfloat16 parameters; use param_update='kahan' for float16"
            )
        if not self.param_groups and self.defaults["max_grad_norm"] == 0.0:
            # the first group may set it when the constructor did not (torch's generic tests pass
            # every option in every group); the others must then agree
            self.defaults["max_grad_norm"] = merged["max_grad_norm"]
        elif merged["max_grad_norm"] != self.defaults["max_grad_norm"]:
            raise ValueError(
                f"Invalid max_grad_norm={merged['max_grad_norm']!r} in a parameter group: clipping is global over "
                f"all groups, so max_grad_norm is set once on the optimizer (here {self.defaults['max_grad_norm']!r})"
            )
        if "betas" in param_group:
            param_group = {**param_group, "betas": tuple(param_group["betas"])}
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "adan_rng": self._rng_state()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        rng = state.pop("adan_rng", None)
        super().__setstate__(state)
        self.__dict__.setdefault("grad_norm_group", None)  # a process group is not pickled
        self.__dict__.setdefault("_rng_seed", torch.initial_seed())
        self.__dict__.setdefault("_generators", {})
        if rng is not None:
            self._load_rng_state(rng)
        if any(g.get("fused") for g in self.param_groups):
            self._step_supports_amp_scaling = True
        for group in self.param_groups:
            for key in ("foreach", "fused"):
                group.setdefault(key, None)
            for key in ("no_prox", "maximize", "capturable"):
                group.setdefault(key, False)
            group.setdefault("state_dtype", "float32")
            group.setdefault("param_update", "nearest")
            group.setdefault("max_grad_norm", self.defaults.get("max_grad_norm", 0.0))
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    device = p.device if group["capturable"] else None
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ state
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
            gen.manual_seed(self._rng_seed)
        return gen

    def _rng_state(self) -> dict[str, Any]:
        return {"seed": self._rng_seed, "states": {str(d): g.get_state() for d, g in self._generators.items()}}

    def _load_rng_state(self, rng: dict[str, Any]) -> None:
        self._rng_seed = int(rng["seed"])
        self._generators = {}
        for name, gen_state in rng["states"].items():
            self._generator(torch.device(name)).set_state(gen_state)

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = {"step": torch.zeros((), dtype=_step_dtype(group), device=_step_device(p, group))}
        state.update(_compact.new_buffers(p, _compact.format_for(p, group["state_dtype"])))
        if _needs_comp(p, group):
            state[COMP_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _gather_group(self, group: dict[str, Any]) -> dict[str, list]:
        """Gather the tensors of the parameters that have a gradient (complex as real views).

        Written as list comprehensions: with thousands of small tensors this loop is a
        visible part of a fused step.
        """
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("Adan does not support sparse gradients; use a dense gradient or torch.optim.SparseAdam")
        all_state = self.state
        states = [all_state[p] for p in params]
        negs = [s.get("neg_pre_grad") for s in states]
        fresh = []  # indices whose previous gradient starts as the current one
        if any(n is None for n in negs):  # new parameters, or the first step after a restart
            if group["fused"]:  # before any state is made: it would stay on the meta device
                _check_fused_params(params)
            for i, (p, state) in enumerate(zip(params, states)):
                if negs[i] is None:
                    if "exp_avg" not in state:
                        state.update(self._new_state(p, group))
                    negs[i] = state["neg_pre_grad"] = _zeros_state(p, _compact.state_format(state["exp_avg"]))
                    fresh.append(i)
        lists = {
            "params": params,
            "grads": grads,
            "exp_avgs": [s["exp_avg"] for s in states],
            "exp_avg_sqs": [s["exp_avg_sq"] for s in states],
            "exp_avg_diffs": [s["exp_avg_diff"] for s in states],
            "neg_pre_grads": negs,
            "state_steps": [s["step"] for s in states],
        }
        if group["state_dtype"] == "int8":
            lists["state_scales"] = [tuple(s[SCALE_KEYS[k]] for k in _MOMENTS) if SCALE_KEYS["exp_avg"] in s else None for s in states]
        if group["param_update"] == "kahan":  # a state made under another param_update gets its buffer now
            lists["param_comps"] = [
                s.get(COMP_KEY) if COMP_KEY in s or p.dtype not in LOW_PRECISION
                else s.setdefault(COMP_KEY, torch.zeros_like(p, memory_format=torch.preserve_format))
                for p, s in zip(params, states)
            ]  # fmt: skip
        # DTensor parameters (FSDP2): the update is elementwise, so it runs on the local
        # shards; only the clipping norm needs the other ranks (see _norm_groups).
        norm_groups = [None] * len(params)
        if _DTensor is not None and any(isinstance(p, _DTensor) for p in params):
            norm_groups = [_shard_group(g) for g in grads]
            for key, values in lists.items():
                if key == "state_scales":
                    lists[key] = [None if t is None else tuple(x.to_local() for x in t) for t in values]
                elif key != "state_steps":
                    lists[key] = [t.to_local() if isinstance(t, _DTensor) else t for t in values]
        if any(p.is_complex() for p in lists["params"]):
            if group["state_dtype"] != "float32" or group["param_update"] != "nearest":
                raise ValueError("Adan: compact state and param_update apply to real parameters; complex ones need the defaults")
            for key, values in lists.items():
                if key != "state_steps":
                    lists[key] = [torch.view_as_real(t) if t.is_complex() else t for t in values]
        lists["fresh"] = fresh
        lists["norm_groups"] = norm_groups
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
                for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff", *SCALE_KEYS.values()):
                    if key in state:
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

        # Set by torch.amp.GradScaler when fused=True (see _step_supports_amp_scaling).
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)

        clip_coef = None
        max_grad_norm = self.param_groups[0]["max_grad_norm"]  # one value for all groups
        norm_groups = [ng for lists in gathered for ng in lists.pop("norm_groups")]
        if max_grad_norm > 0:
            grads = [g for lists in gathered for g in lists["grads"]]
            if grads:
                clip_coef = global_clip_coefficient(
                    grads, max_grad_norm, self.param_groups[-1]["eps"], grad_scale=grad_scale,
                    shard_groups=norm_groups, partition_group=self.grad_norm_group,
                )  # fmt: skip

        for gi, (group, lists) in enumerate(zip(self.param_groups, gathered)):
            fresh = lists.pop("fresh")
            if not lists["params"]:
                continue
            foreach, fused = _resolve_path(lists["params"], group["foreach"], group["fused"])
            if fresh:  # g' = g where there is no previous gradient (new state, restart, or a checkpoint without one)
                mult = (
                    _fused.grad_multiplier(clip_coef, group["maximize"], grad_scale, lists["params"][0].device)
                    if fused else _grad_scale(clip_coef, group["maximize"])
                )  # fmt: skip
                _seed_previous_gradients([lists["grads"][i] for i in fresh], [lists["neg_pre_grads"][i] for i in fresh], mult)
            rounding = group["state_dtype"] != "float32" or group["param_update"] == "stochastic"
            beta1, beta2, beta3 = group["betas"]
            try:
                adan(
                    **lists,
                    foreach=foreach,
                    fused=fused,
                    grad_scale=grad_scale,
                    found_inf=found_inf,
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
                    param_update=group["param_update"],
                    generator=self._generator(lists["params"][0].device) if rounding else None,
                )
            except StateShapeError as exc:
                p = lists["params"][exc.index]
                index = next((i for i, q in enumerate(group["params"]) if q is p), exc.index)
                raise StateShapeError(
                    exc.index, exc.name, exc.param_shape, exc.shape, f"parameter {index} of parameter group {gi}"
                ) from None
        return loss

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        # ZeroRedundancyOptimizer copies its constructor's keywords, grad_norm_group among
        # them, into every group; a process group cannot be saved, and is not state.
        sd["param_groups"] = [{k: v for k, v in g.items() if k != "grad_norm_group"} for g in sd["param_groups"]]
        sd["adan_rng"] = self._rng_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this class, by the reference implementation or by timm.

        Everything is validated first (structure, hyper-parameters, state keys, dtypes
        and shapes): a malformed state dict, or another optimizer's, raises ``ValueError``
        and leaves the optimizer as it was. The state is converted to this optimizer's
        ``state_dtype`` (and ``param_update``); those, and the code path (``foreach``,
        ``fused``, ``capturable``), stay as the optimizer was built. Reference checkpoints
        keep one ``step`` per group; it becomes each parameter's ``step`` tensor. A state
        without ``neg_pre_grad`` continues as the reference does: its next gradient is
        also taken as the previous one.
        """
        state_dict = _checkpoint.from_reference_format(state_dict, self.param_groups)
        _checkpoint.validate(state_dict, self.param_groups, _check_hparams)
        rng = state_dict.get("adan_rng")
        if rng is not None and not (isinstance(rng, dict) and {"seed", "states"} <= rng.keys()):
            raise ValueError("loaded state dict: 'adan_rng' is not a generator record; nothing was loaded")
        before = (self.state, self.param_groups, dict(self.defaults), self._rng_seed, self._generators)
        try:
            self._load_validated(state_dict)
            if rng is not None:
                self._load_rng_state(rng)
        except Exception:
            self.state, self.param_groups, defaults, self._rng_seed, self._generators = before
            self.defaults.clear()
            self.defaults.update(defaults)
            raise

    def _load_validated(self, state_dict: dict[str, Any]) -> None:
        saved_state = state_dict["state"]
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        own = [{k: g[k] for k in _checkpoint.PATH_OPTIONS} for g in self.param_groups]
        # An option the checkpoint does not name (an older or a reference checkpoint) keeps
        # the optimizer's value, rather than torch's default.
        groups = [{**{k: v for k, v in g.items() if k != "params"}, **saved} for g, saved in zip(self.param_groups, state_dict["param_groups"])]
        super().load_state_dict({"state": saved_state, "param_groups": groups})
        for group, keep in zip(self.param_groups, own):
            group.update(keep)
        self.defaults["max_grad_norm"] = self.param_groups[0]["max_grad_norm"]
        # torch casts every state tensor to its parameter's dtype; moments of low-precision
        # parameters are float32 here, so restore them from the saved (uncast) values.
        # Then every state tensor is made what the paths (the fused kernel in particular,
        # which checks nothing per tensor) rely on: laid out like its parameter, of the
        # policy dtype, with a float32 step counter where _new_state would put it.
        flat = [(p, g) for g in self.param_groups for p in g["params"]]
        for pid, (p, group) in zip(saved_ids, flat):
            state = self.state.get(p)
            if not state:
                continue
            saved = saved_state.get(pid, {})
            if torch.is_tensor(saved.get("exp_avg")):
                for key in [k for k in state if k != "step"]:
                    del state[key]
                fmt = _compact.format_for(p, group["state_dtype"])
                state.update(_compact.conform_state(p, saved, fmt, _needs_comp(p, group)))
            if "step" in state:
                # a copy: torch hands over the checkpoint's own step tensor, which step() would then advance
                state["step"] = torch.as_tensor(state["step"]).reshape(()).to(
                    device=_step_device(p, group), dtype=_step_dtype(group), copy=True
                )


# --------------------------------------------------------------------- maths
def _squared_norm(grads: list[Tensor], acc_dtype: torch.dtype, device: torch.device) -> Tensor:
    buckets = Optimizer._group_tensors_by_device_and_dtype([grads])
    norms = []
    for (bucket,), _ in buckets.values():  # keys are (None, None) under torch.compile
        if _has_foreach_kernels(bucket[0].device):
            bucket_norms = torch._foreach_norm(bucket, 2.0, dtype=acc_dtype)
        else:
            bucket_norms = [torch.linalg.vector_norm(g, dtype=acc_dtype) for g in bucket]
        norms.extend(n.to(device) for n in bucket_norms)
    return torch.linalg.vector_norm(torch.stack(norms)).square()


def global_clip_coefficient(
    grads: list[Tensor],
    max_norm: float,
    eps: float,
    *,
    grad_scale: Optional[Tensor] = None,
    shard_groups: Optional[list[Any]] = None,
    partition_group: Optional[Any] = None,
) -> Tensor:
    """``min(1, max_norm / (||grads||_2 + eps))`` as a 0-d tensor, without a host sync.

    The norm is accumulated in float32, or float64 when any gradient is float64. With
    ``grad_scale`` (gradients still multiplied by a loss scale) the norm is divided by it.

    Distributed: ``shard_groups[i]`` is the process group over which ``grads[i]`` is one
    shard of a DTensor gradient (``None`` for a whole tensor); ``partition_group`` is a
    group over which every rank holds a different partition of the gradients (ZeRO).
    Squared norms of shards are summed with one ``all_reduce`` per group; whole tensors
    are counted once, except under ``partition_group``, which reduces everything.
    """
    acc_dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    shard_groups = shard_groups or [None] * len(grads)
    by_group: dict[Any, list[Tensor]] = {}
    for g, group in zip(grads, shard_groups):
        by_group.setdefault(group, []).append(g)
    total_sq = torch.zeros((), dtype=acc_dtype, device=device)
    for group, members in by_group.items():
        sq = _squared_norm(members, acc_dtype, device)
        if group is not None and partition_group is None:
            torch.distributed.all_reduce(sq, group=group)
        total_sq = total_sq + sq
    if partition_group is not None:
        torch.distributed.all_reduce(total_sq, group=partition_group)
    total = total_sq.sqrt()
    if grad_scale is not None:
        total = total / grad_scale.to(device=device, dtype=total.dtype)
    return (max_norm / (total + eps)).clamp(max=1.0)


def _grad_scale(clip_coef: Optional[Tensor], maximize: bool) -> Union[Tensor, float, None]:
    """The factor the gradient is multiplied by: clipping and the sign of ``maximize``."""
    if clip_coef is None:
        return -1.0 if maximize else None
    return -clip_coef if maximize else clip_coef


try:
    from torch.distributed.tensor import DTensor as _DTensor
    from torch.distributed.tensor.placement_types import Shard as _Shard
except ImportError:  # a torch built without distributed support
    _DTensor = _Shard = None


def _shard_group(grad: Tensor) -> Any:
    """The process group over which a DTensor gradient is sharded (1-D mesh, Shard placement)."""
    if not isinstance(grad, _DTensor):
        return None
    mesh, placements = grad.device_mesh, grad.placements
    if mesh.ndim != 1 or not all(isinstance(pl, _Shard) for pl in placements):
        raise NotImplementedError(
            f"Adan's clipping handles DTensor gradients sharded on a 1-D mesh (FSDP2); got {placements} on a {mesh.ndim}-D mesh"
        )
    return mesh.get_group()


def _seed_previous_gradients(grads: list[Tensor], negs: list[Tensor], mult: Union[Tensor, float, None]) -> None:
    """``neg_pre_grad = -g`` with ``g`` exactly as the path computes it (in the compute
    dtype, times the path's gradient multiplier), so that ``d = g - g'`` is exactly 0 on
    the first step of a parameter on every path, as in the reference implementation."""
    for g, neg in zip(grads, negs):
        work = torch.float64 if neg.dtype == torch.float64 else torch.float32
        value = g.to(work)
        if mult is not None:
            value = value * (mult.to(device=g.device, dtype=work) if torch.is_tensor(mult) else mult)
        neg.copy_(value)
        neg.neg_()


def _step_dtype(group: dict[str, Any]) -> torch.dtype:
    """float32, as torch's fused optimizers keep it (the kernels read float32 counts); on the
    foreach and single-tensor paths float64 under a float64 default dtype, as torch.optim."""
    if group["fused"] is not False and not group["foreach"]:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


_FUSED_DEVICES = ("cpu", "cuda")


def _check_fused_params(params: list[Tensor]) -> None:
    """torch.optim's check (and wording) for ``fused=True``, run before any state is made."""
    for p in params:
        if p.device.type not in _FUSED_DEVICES or not (p.is_floating_point() or p.is_complex()):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of supported devices: "
                f"{list(_FUSED_DEVICES)} (got {p.dtype} on {p.device})"
            )


def _step_device(p: Tensor, group: dict[str, Any]) -> torch.device:
    """The fused CUDA kernel and capturable mode read the step count on the device."""
    on_device = group["capturable"] or (group["fused"] is not False and p.device.type == "cuda")
    return p.device if on_device else torch.device("cpu")


def _zeros_state(p: Tensor, fmt: str = "float32") -> Tensor:
    """A zero previous-gradient buffer (or full-precision moment) for ``p`` in format ``fmt``."""
    return torch.zeros_like(p, dtype=_compact.neg_dtype(p, fmt), memory_format=torch.preserve_format)


def _needs_comp(p: Tensor, group: dict[str, Any]) -> bool:
    return group["param_update"] == "kahan" and p.dtype in LOW_PRECISION


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


# CPU tensors above this many elements are updated in slices of it, so that the dozen
# passes of the non-fused update run on data that stays in the L2 cache.
_CHUNK = 1 << 16


def _adan_lists(
    p: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    v: list[Tensor],
    n: list[Tensor],
    neg: list[Tensor],
    coefs: tuple[Tensor, Tensor, Tensor],
    *,
    scale: Union[Tensor, float, None],
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    lr: LR,
    weight_decay: float,
    no_prox: bool,
) -> None:
    """The non-fused update on lists of tensors of one device and dtype, in place.

    ``coefs`` = (``lr / (1 - b1^t)``, ``lr b2 / (1 - b2^t)``, ``1 / sqrt(1 - b3^t)``),
    1-D float64 tensors with one value per tensor. The ``neg_pre_grad`` buffers carry
    ``d``, then ``(g + b2 d) / b2``, then the denominator, and finally ``-g``: apart
    from a scaled or upcast gradient, nothing is allocated.

    On the CPU every ``_foreach`` op is a loop over per-tensor ops, and a Python scalar
    costs a wrapped-tensor allocation per tensor there; 0-d tensors (``_c``) and the
    per-tensor-value overloads (``addcmul``/``addcdiv`` with a 1-D tensor) avoid it.
    """
    device = p[0].device
    cpu = device.type == "cpu" and not torch.compiler.is_compiling()
    _c = (lambda x: torch.tensor(x, dtype=torch.float64)) if cpu else (lambda x: x)
    step_size, step_size_diff, inv_bc3_sqrt = coefs
    work = p
    if p[0].dtype != m[0].dtype:  # low-precision parameters: float32 maths and state
        g = [x.to(m[0].dtype) for x in g]
        work = [x.to(m[0].dtype) for x in p]
    if scale is not None:  # after the upcast: the clip factor multiplies in float32, as in the kernels
        g = _scale_grads(g, scale, device)
    if torch.is_tensor(lr):  # weight decay's 1 +- lr wd in float64, whatever the lr tensor's dtype
        lr = lr.to(dtype=torch.float64)
    torch._foreach_add_(neg, g)  # d = g - g'
    torch._foreach_lerp_(m, g, 1 - beta1)
    torch._foreach_lerp_(v, neg, 1 - beta2)
    torch._foreach_mul_(n, _c(beta3))
    if beta2 >= 0.01:  # n += (1 - b3) (g + b2 d)^2, as (1 - b3) b2^2 (d + g / b2)^2: one pass fewer
        torch._foreach_add_(neg, g, alpha=1 / beta2)
        torch._foreach_addcmul_(n, neg, neg, value=(1 - beta3) * beta2 * beta2)
    else:  # tiny b2: 1 / b2 would overflow
        torch._foreach_mul_(neg, _c(beta2))
        torch._foreach_add_(neg, g)
        torch._foreach_addcmul_(n, neg, neg, value=1 - beta3)
    torch._foreach_copy_(neg, n)
    torch._foreach_sqrt_(neg)
    if cpu:  # neg * c3 as neg + (c3 - 1) * neg * 1, with per-tensor values
        torch._foreach_addcmul_(neg, neg, [_ONE] * len(neg), inv_bc3_sqrt - 1)
    else:
        torch._foreach_mul_(neg, inv_bc3_sqrt.to(device).unbind())
    torch._foreach_add_(neg, _c(eps))  # denom = sqrt(n) / sqrt(1 - b3^t) + eps
    if weight_decay != 0 and no_prox:
        torch._foreach_mul_(work, _c(1 - lr * weight_decay) if not torch.is_tensor(lr) else 1 - lr * weight_decay)
    if cpu and step_size.device.type == "cpu":
        # One value per tensor, read by the kernel from CPU memory: no temporaries.
        torch._foreach_addcdiv_(work, m, neg, -step_size)
        torch._foreach_addcdiv_(work, v, neg, -step_size_diff)
    else:  # step counts on the device (capturable) or traced: 0-d tensor scalars
        update = torch._foreach_mul(v, step_size_diff.to(device).unbind())
        torch._foreach_add_(update, torch._foreach_mul(m, step_size.to(device).unbind()))
        torch._foreach_div_(update, neg)
        torch._foreach_sub_(work, update)
    if weight_decay != 0 and not no_prox:
        torch._foreach_div_(work, _c(1 + lr * weight_decay) if not torch.is_tensor(lr) else 1 + lr * weight_decay)
    if work is not p:
        torch._foreach_copy_(p, work)
    torch._foreach_copy_(neg, g)
    torch._foreach_neg_(neg)


_ONE = torch.ones(())


def _increment(steps: list[Tensor]) -> None:
    """``steps += 1``; on the CPU with a 0-d tensor (a Python 1 costs an allocation per tensor)."""
    if steps[0].device.type == "cpu" and not torch.compiler.is_compiling():
        torch._foreach_add_(steps, [_ONE] * len(steps))
    else:
        torch._foreach_add_(steps, 1)


def _chunks(tensors: tuple[Tensor, ...]):
    """Equal slices of at most _CHUNK elements of same-shaped tensors (whole if strided)."""
    numel = tensors[0].numel()
    if numel <= _CHUNK or not all(t.is_contiguous() for t in tensors) or torch.compiler.is_compiling():
        yield tensors
        return
    flat = [t.view(-1) for t in tensors]
    for start in range(0, numel, _CHUNK):
        yield tuple(f[start : start + _CHUNK] for f in flat)


def _check_shapes(params, grads, exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads, state_scales, param_comps) -> None:
    named = (("grad", grads), ("exp_avg", exp_avgs), ("exp_avg_diff", exp_avg_diffs), ("exp_avg_sq", exp_avg_sqs),
             ("neg_pre_grad", neg_pre_grads), ("param_comp", param_comps))  # fmt: skip
    check_state_shapes(params, named, state_scales, _compact.scale_shape)


def _per_tensor(lists, coefs: tuple[Tensor, ...], indices, kwargs) -> None:
    """Update the tensors at ``indices`` one at a time (slice by slice on the CPU)."""
    for i in indices:
        tensor_coefs = tuple(c[i : i + 1] for c in coefs)
        for p, g, m, v, n, neg in _chunks(tuple(lst[i] for lst in lists)):
            _adan_lists([p], [g], [m], [v], [n], [neg], tensor_coefs, **kwargs)


def _row_chunks(t: Tensor):
    """Slices ``(rows, cols)`` of about _CHUNK elements that never split a block."""
    rows, cols = _compact.block_layout(t.shape)
    if rows * cols <= _CHUNK or not t.is_contiguous() or torch.compiler.is_compiling():
        yield None
        return
    if rows > 1:
        step = max(1, _CHUNK // cols)
        for r in range(0, rows, step):
            yield slice(r, r + step), slice(None)
    else:
        for c in range(0, cols, _CHUNK):  # _CHUNK is a multiple of BLOCK
            yield slice(None), slice(c, c + _CHUNK)


def _per_tensor_compact(lists, extras, coefs: tuple[Tensor, ...], kwargs) -> None:
    """The update for compact state or rounded parameters, tensor by tensor.

    Each slice is decoded to float32, updated by ``_adan_lists`` (the one place the maths
    lives) and encoded back; at a parameter's first step its previous gradient is the
    current one, exactly (the stored one may have been rounded).
    """
    state_scales, param_comps, state_steps, param_update, generator = extras
    kwargs = dict(kwargs)
    scale = kwargs.pop("scale")
    for i in range(len(lists[0])):
        p, g, m, v, n, neg = (lst[i] for lst in lists)
        scales = state_scales[i] if state_scales is not None else None
        comp = param_comps[i] if param_comps is not None else None
        first = state_steps[i].to(p.device) == 1
        tensor_coefs = tuple(c[i : i + 1] for c in coefs)
        for chunk in _row_chunks(p):
            if chunk is None:
                views = (p, g, m, v, n, neg, comp)
                scale_views = scales
            else:
                rows, cols = _compact.block_layout(p.shape)
                r, c = chunk
                # the state is laid out like p (contiguous here); a gradient may be strided
                views = tuple(None if t is None else t.view(rows, cols)[r, c] for t in (p, m, v, n, neg, comp))
                views = (views[0], g.reshape(rows, cols)[r, c], *views[1:])
                bc = c if c == slice(None) else slice(c.start // _compact.BLOCK, -(-c.stop // _compact.BLOCK))
                scale_views = None if scales is None else tuple(s[r, bc] for s in scales)
            _compact_slice(*views, scale_views, first, tensor_coefs, scale, param_update, generator, kwargs)


def _compact_slice(p, g, m, v, n, neg, comp, scales, first, coefs, scale, param_update, generator, kwargs) -> None:
    state = {"exp_avg": m, "exp_avg_diff": v, "exp_avg_sq": n, "neg_pre_grad": neg}
    if scales is not None:
        state.update(zip((SCALE_KEYS[k] for k in _MOMENTS), scales))
    g32 = g.float() if g.dtype != torch.float32 else g
    if scale is not None:
        g32 = g32 * (scale.to(g32.device) if torch.is_tensor(scale) else scale)
    m32, v32, n32 = (_compact.decode(state, k) for k in _MOMENTS)
    neg32 = torch.where(first, -g32, _compact.decode(state, "neg_pre_grad"))
    if p.dtype in LOW_PRECISION:
        p32 = p.float() if comp is None else p.float() + comp.float()
    else:
        p32 = p  # float32 parameters are updated in place
    _adan_lists([p32], [g32], [m32], [v32], [n32], [neg32], coefs, scale=None, **kwargs)
    if m.dtype == torch.int8:
        m32 = _compact.mark_nonfinite(m32, n32)
    for key, value in zip((*_MOMENTS, "neg_pre_grad"), (m32, v32, n32, neg32)):
        _compact.encode_into(state, key, value, generator=generator)
    if p32 is not p:
        _compact.write_param(p, p32, param_update, comp, generator)


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
    state_scales: Optional[list[Optional[tuple[Tensor, Tensor, Tensor]]]] = None,
    param_comps: Optional[list[Optional[Tensor]]] = None,
    param_update: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> None:
    if not params:
        return
    _check_shapes(params, grads, exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads, state_scales, param_comps)
    kwargs = dict(scale=_grad_scale(clip_coef, maximize), beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
                  lr=lr, weight_decay=weight_decay, no_prox=no_prox)  # fmt: skip
    lists = [params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps, state_scales, param_comps]
    for part, compact in zip(_fused.split_compact(lists, param_update), (True, False)):
        if not part[0]:
            continue
        steps = part[6]
        _increment(steps)
        coefs = _step_coefficients(torch.stack(steps), lr, beta1, beta2, beta3)
        if compact:
            _per_tensor_compact(part[:6], (part[7], part[8], steps, param_update, generator), coefs, kwargs)
        else:
            _per_tensor(part[:6], coefs, range(len(part[0])), kwargs)


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
    state_scales: Optional[list[Optional[tuple[Tensor, Tensor, Tensor]]]] = None,
    param_comps: Optional[list[Optional[Tensor]]] = None,
    param_update: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> None:
    if not params:
        return
    _check_shapes(params, grads, exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads, state_scales, param_comps)
    lists = [params, grads, exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads, state_steps, state_scales, param_comps]
    compact, lists = _fused.split_compact(lists, param_update)
    if compact[0]:  # compact formats are updated tensor by tensor; the rest below
        _single_tensor_adan(
            *compact[:7], clip_coef=clip_coef, beta1=beta1, beta2=beta2, beta3=beta3, lr=lr, weight_decay=weight_decay,
            eps=eps, no_prox=no_prox, maximize=maximize, capturable=capturable,
            state_scales=compact[7], param_comps=compact[8], param_update=param_update, generator=generator,
        )  # fmt: skip
    params, grads, exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads, state_steps = lists[:7]
    if not params:
        return
    buckets = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, neg_pre_grads, state_steps]
    )
    kwargs = dict(scale=_grad_scale(clip_coef, maximize), beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
                  lr=lr, weight_decay=weight_decay, no_prox=no_prox)  # fmt: skip
    for (*lists, steps), _ in buckets.values():
        _increment(steps)
        coefs = _step_coefficients(torch.stack(steps), lr, beta1, beta2, beta3)
        if lists[0][0].device.type != "cpu" or torch.compiler.is_compiling():
            _adan_lists(*lists, coefs, **kwargs)
            continue
        # On the CPU, work in cache-sized pieces: a large tensor slice by slice, small
        # ones in foreach batches of about _CHUNK elements.
        numels = [t.numel() for t in lists[0]]
        _per_tensor(lists, coefs, [i for i, k in enumerate(numels) if k > _CHUNK], kwargs)
        batch, size = [], 0
        for i, k in enumerate(numels + [_CHUNK + 1]):  # a sentinel flushes the last batch
            if batch and (size + k > _CHUNK or i == len(numels)):
                idx = torch.tensor(batch)
                _adan_lists(*([lst[j] for j in batch] for lst in lists), tuple(c[idx] for c in coefs), **kwargs)
                batch, size = [], 0
            if i < len(numels) and k <= _CHUNK:
                batch.append(i)
                size += k


def _has_foreach_kernels(device: torch.device) -> bool:
    return device.type == "cpu" or device.type in _get_foreach_kernels_supported_devices()


_PLAIN = (Tensor, torch.nn.Parameter)
_PLAIN_SET = set(_PLAIN)
_FUSED_DTYPES = {torch.float32, torch.float64, torch.bfloat16, torch.float16}


def _default_to_foreach(params: list[Tensor]) -> bool:
    return all(type(p) in _PLAIN and _has_foreach_kernels(p.device) for p in params)


def _fused_suits(params: list[Tensor]) -> bool:
    """Plain, contiguous tensors of a dtype and device the fused kernel handles."""
    # Set comprehensions over cheap attributes: this runs every step for fused=None.
    return (
        {type(p) for p in params} <= _PLAIN_SET
        and {p.dtype for p in params} <= _FUSED_DTYPES
        and ({p.is_cpu for p in params} == {True} or {p.is_cuda for p in params} == {True})
        and all([p.is_contiguous() for p in params])
    )


def _resolve_path(params: list[Tensor], foreach: Optional[bool], fused: Optional[bool]) -> tuple[bool, bool]:
    """(foreach, fused) for these tensors: fused wherever it is available, unless told."""
    if fused is None and not foreach:
        if foreach is None and _fused_suits(params):
            devices = {p.device for p in params}
            if all(_fused.fused_available(d) for d in devices):
                return False, True
            _fused.warn_fallback(next(iter(devices)))
        fused = False
    if foreach is None:
        foreach = not fused and _default_to_foreach(params)
    return bool(foreach), bool(fused)


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
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
    state_scales: Optional[list[Optional[tuple[Tensor, Tensor, Tensor]]]] = None,
    param_comps: Optional[list[Optional[Tensor]]] = None,
    param_update: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> None:
    """Functional Adan: update ``params`` and the state lists in place.

    ``neg_pre_grads`` must already hold minus the previous gradient (minus the current,
    scaled gradient at a parameter's first step; the fused kernel instead ignores it at
    ``t = 1``). ``clip_coef`` multiplies every gradient (see
    :func:`global_clip_coefficient`). ``grad_scale``/``found_inf`` (fused only) unscale
    the gradients and skip the step on inf. ``generator`` supplies the stochastic-rounding
    bits of compact state (torch's default generator when ``None``). Every gradient and
    state tensor must have its parameter's shape (``ValueError`` otherwise). See
    :class:`Adan` for the rest.
    """
    if not params:
        return
    if torch.is_tensor(lr) and lr.dim() != 0:  # any one-element lr, as torch.optim takes it
        lr = lr.reshape(())
    foreach, fused = _resolve_path(params, foreach, fused)
    if fused:
        func = _fused_adan
    else:
        if grad_scale is not None or found_inf is not None:
            raise RuntimeError("grad_scale and found_inf are supported by the fused path only")
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
        state_scales=state_scales,
        param_comps=param_comps,
        param_update=param_update,
        generator=generator,
        **({"grad_scale": grad_scale, "found_inf": found_inf} if fused else {}),
    )
