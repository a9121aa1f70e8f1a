r"""The :class:`Adan` optimizer: parameter groups, state, ``step()`` and checkpoints.

One ``step()``: :meth:`Adan._gather_group` collects each group's parameters that have a
gradient and their state (making it at a parameter's first step), the global clip
coefficient is computed as a tensor (:mod:`adan._clip`, no host sync), and
:func:`adan._functional.adan` runs the update on the path it picks (fused, foreach or
single-tensor). The maths is documented there and in :mod:`adan.reference`.
"""

from __future__ import annotations

import math
from itertools import repeat
from operator import attrgetter, is_, itemgetter, methodcaller
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from adan import _backends, _checkpoint, _formats, _fused
from adan._checks import StateShapeError, check_foreign_options, check_no_duplicates
from adan._clip import DTensor, global_clip_coefficient, shard_group
from adan._compact import COMP_KEY, LOW_PRECISION
from adan._functional import LR, _grad_scale, _Options, _resolve_path, adan, prepare_update
from adan._lists import TensorLists
from adan._maths import HParams

__all__ = ["Adan", "adan", "global_clip_coefficient"]

Betas = tuple[float, float, float]


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
        _formats.check_options(state_dtype, param_update)
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
        self._fused_paths: dict[int, tuple] = {}  # see _path
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
        _formats.check_options(merged["state_dtype"], merged["param_update"])
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
        self.__dict__.setdefault("_fused_paths", {})
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
        fmt = _formats.format_for(p, group["state_dtype"])
        state.update(fmt.new_buffers(p))
        state["neg_pre_grad"] = fmt.new_neg(p)  # read at step 1 by no path: g' = g there
        if _needs_comp(p, group):
            state[COMP_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _gather_group(self, group: dict[str, Any]) -> dict[str, list]:
        """Gather the tensors of the parameters that have a gradient (complex as real views).

        Written with ``map`` over C-level getters (``attrgetter``, ``itemgetter``, ``is_``):
        with a thousand small tensors this runs in about 0.4 ms, a visible part of a fused
        step.
        """
        params = group["params"]
        grads = list(map(attrgetter("grad"), params))  # (getters made here: dynamo traces those, not module-level ones)
        if any(map(is_, grads, repeat(None))):
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        else:
            params = list(params)
        if any(map(attrgetter("is_sparse"), grads)):
            raise RuntimeError("Adan does not support sparse gradients; use a dense gradient or torch.optim.SparseAdam")
        all_state = self.state
        states = list(map(all_state.get, params))
        negs = [None] * len(params) if None in states else list(map(methodcaller("get", "neg_pre_grad"), states))
        fresh = []  # states without a previous gradient (restarted, or loaded without one): g' = g
        pending = []  # (parameter, its new state entries): stored by the step's first launch, after every check
        if any(map(is_, negs, repeat(None))):  # new parameters, or such states
            if group["fused"]:  # before any state is made: it would stay on the meta device
                _check_fused_params(params)
            for i, (p, state) in enumerate(zip(params, states)):
                if negs[i] is None:
                    if state is not None and "exp_avg" in state:
                        new = {"neg_pre_grad": _formats.format_of(state["exp_avg"]).new_neg(p)}
                        fresh.append(i)
                    else:  # the paths handle a first step themselves
                        new = self._new_state(p, group)
                    states[i] = {**(state or {}), **new}
                    pending.append((p, new))
                    negs[i] = new["neg_pre_grad"]
        exp_avgs, exp_avg_sqs, exp_avg_diffs, steps = (
            list(map(itemgetter(key), states)) for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "step")
        )
        lists = {
            "params": params,
            "grads": grads,
            "exp_avgs": exp_avgs,
            "exp_avg_sqs": exp_avg_sqs,
            "exp_avg_diffs": exp_avg_diffs,
            "neg_pre_grads": negs,
            "state_steps": steps,
        }
        fmt = _formats.get(group["state_dtype"])
        if fmt.scale_keys:  # None for a parameter that keeps float32 state (too small, say)
            lists["state_scales"] = [fmt.scales(s) for s in states]
        if group["param_update"] == "kahan":  # a state made under another param_update gets its buffer now
            lists["param_comps"] = [s.get(COMP_KEY) for s in states]
            for i, (p, s) in enumerate(zip(params, states)):
                if COMP_KEY not in s and p.dtype in LOW_PRECISION:
                    lists["param_comps"][i] = comp = torch.zeros_like(p, memory_format=torch.preserve_format)
                    pending.append((p, {COMP_KEY: comp}))
        # DTensor parameters (FSDP2): the update is elementwise, so it runs on the local
        # shards; only the clipping norm needs the other ranks (see _norm_groups).
        norm_groups = [None] * len(params)
        if DTensor is not None and any(issubclass(t, DTensor) for t in set(map(type, params))):
            norm_groups = [shard_group(g) for g in grads]
            for key, values in lists.items():
                if key == "state_scales":
                    lists[key] = [None if t is None else tuple(x.to_local() for x in t) for t in values]
                elif key != "state_steps":
                    lists[key] = [t.to_local() if isinstance(t, DTensor) else t for t in values]
        if any(map(Tensor.is_complex, lists["params"])):
            if group["state_dtype"] != "float32" or group["param_update"] != "nearest":
                raise ValueError("Adan: compact state and param_update apply to real parameters; complex ones need the defaults")
            for key, values in lists.items():
                if key != "state_steps":
                    lists[key] = [torch.view_as_real(t) if t.is_complex() else t for t in values]
        lists["fresh"] = fresh
        lists["pending"] = pending
        lists["norm_groups"] = norm_groups
        return lists

    def _store(self, pending: list[tuple[Tensor, dict[str, Tensor]]]) -> None:
        """Put the state entries a step made (new parameters' state, previous-gradient and
        Kahan buffers) into ``self.state``: the step's first write, after every check."""
        for p, entries in pending:
            self.state[p].update(entries)

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
                for key in _formats.format_of(state["exp_avg"]).expected(p):
                    state[key].zero_()
                state.pop("neg_pre_grad", None)  # made again (g' = g) at the next step

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
        if max_grad_norm > 0:
            grads = [g for lists in gathered for g in lists["grads"]]
            if grads:
                clip_coef = global_clip_coefficient(
                    grads, max_grad_norm, self.param_groups[-1]["eps"], grad_scale=grad_scale,
                    shard_groups=[ng for lists in gathered for ng in lists["norm_groups"]],
                    partition_group=self.grad_norm_group,
                )  # fmt: skip

        # Then check and prepare every group's update, and only then write: a bad group
        # raises with every parameter and state tensor as it was. A group that took the fused
        # path by default (fused=None) keeps it while its parameters are the same objects; if
        # the kernels then refuse them (made non-contiguous, say), the choice is made again.
        remembered = not torch.compiler.is_compiling()
        try:
            launches = self._prepare(gathered, clip_coef, grad_scale, found_inf, remembered)
        except Exception:
            if not (remembered and self._fused_paths):
                raise
            self._fused_paths.clear()
            launches = self._prepare(gathered, clip_coef, grad_scale, found_inf, remembered)
        for launch in launches:
            launch()
        return loss

    def _prepare(
        self, gathered: list[dict[str, Any]], clip_coef: Optional[Tensor], grad_scale: Optional[Tensor],
        found_inf: Optional[Tensor], remembered: bool,
    ) -> list[Callable[[], None]]:  # fmt: skip
        """Every group's checked update as launches, writing nothing (the first launch stores
        the state the gather made). ``remembered``: use and keep ``self._fused_paths``."""
        pending = [entry for lists in gathered for entry in lists["pending"]]
        launches = [lambda: self._store(pending)] if pending else []
        for gi, (group, lists) in enumerate(zip(self.param_groups, gathered)):
            fresh = lists["fresh"]
            if not lists["params"]:
                continue
            foreach, fused = self._path(gi, group, lists["params"], remembered)
            if fresh:  # g' = g where a state has no previous gradient (a checkpoint's step count need not be 0)
                mult = (
                    _fused.grad_multiplier(clip_coef, group["maximize"], grad_scale, lists["params"][0].device)
                    if fused else _grad_scale(clip_coef, group["maximize"])
                )  # fmt: skip
                seed = ([lists["grads"][i] for i in fresh], [lists["neg_pre_grads"][i] for i in fresh], mult)
                launches.append(lambda seed=seed: _seed_previous_gradients(*seed))
            rounding = group["state_dtype"] != "float32" or group["param_update"] == "stochastic"
            update = TensorLists(
                lists["params"], lists["grads"], lists["exp_avgs"], lists["exp_avg_diffs"], lists["exp_avg_sqs"],
                lists["neg_pre_grads"], lists["state_steps"], lists.get("state_scales"), lists.get("param_comps"),
            )  # fmt: skip
            generator = self._generator(lists["params"][0].device) if rounding else None
            opts = _Options(group["lr"], clip_coef, group["maximize"], group["param_update"], generator, grad_scale, found_inf)
            beta1, beta2, beta3 = group["betas"]
            hp = HParams(beta1, beta2, beta3, group["eps"], group["weight_decay"], group["no_prox"])
            try:
                launches.append(prepare_update(update, hp, opts, foreach, fused))
            except StateShapeError as exc:
                p = lists["params"][exc.index]
                index = next((i for i, q in enumerate(group["params"]) if q is p), exc.index)
                raise StateShapeError(
                    exc.index, exc.name, exc.param_shape, exc.shape, f"parameter {index} of parameter group {gi}"
                ) from None
        return launches

    def _path(self, gi: int, group: dict[str, Any], params: list[Tensor], remembered: bool) -> tuple[bool, bool]:
        """Group ``gi``'s path, as :func:`adan._functional._resolve_path` chooses it. Choosing
        reads every parameter's type, dtype, device and layout (0.15-0.2 ms of a 3.5 ms step
        for a thousand small tensors, ``benchmarks/small_step.py --default``); a default
        (``fused=None``) group that got the fused path keeps it while it updates the same
        parameter objects: what could change the choice (a dtype, device or layout) the
        fused launchers check every step, and ``step()`` chooses again where they refuse."""
        options = (group["foreach"], group["fused"])
        if remembered and gi in self._fused_paths:
            kept_group, kept_options, kept_params, path = self._fused_paths[gi]
            if kept_group is group and kept_options == options and _same_objects(kept_params, params):
                return path
        path = _resolve_path(params, *options)
        if remembered and path[1] and group["fused"] is None:
            self._fused_paths[gi] = (group, options, list(params), path)
        return path

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
                fmt = _formats.format_for(p, group["state_dtype"])
                state.update(_formats.conform_state(p, saved, fmt, _needs_comp(p, group)))
            if "step" in state:
                # a copy: torch hands over the checkpoint's own step tensor, which step() would then advance
                state["step"] = torch.as_tensor(state["step"]).reshape(()).to(
                    device=_step_device(p, group), dtype=_step_dtype(group), copy=True
                )


# --------------------------------------------------------------------- maths
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


def _check_fused_params(params: list[Tensor]) -> None:
    """torch.optim's check (and wording) for ``fused=True``, run before any state is made."""
    for p in params:
        if p.device.type not in _backends.BACKENDS or not (p.is_floating_point() or p.is_complex()):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of supported devices: "
                f"{list(_backends.BACKENDS)} (got {p.dtype} on {p.device})"
            )


def _step_device(p: Tensor, group: dict[str, Any]) -> torch.device:
    """Capturable mode, and a fused backend that reads its step counts on the device, keep
    them there; the rest on the CPU, as torch.optim."""
    backend = _backends.get(p.device) if group["fused"] is not False else None
    on_device = group["capturable"] or (backend is not None and backend.steps_on_device)
    return p.device if on_device else torch.device("cpu")


def _same_objects(a: list, b: list) -> bool:
    """The same objects in the same order (``==`` would compare tensors by value)."""
    return len(a) == len(b) and all(map(is_, a, b))


def _needs_comp(p: Tensor, group: dict[str, Any]) -> bool:
    return group["param_update"] == "kahan" and p.dtype in LOW_PRECISION


