r"""Adan for JAX as optax gradient transformations, with the reference implementation's maths.

``optax.adan`` weights the gradient difference by ``1 - b2`` instead of ``b2`` (0.08 for
0.92 by default), offers only decoupled weight decay and puts ``eps_root=1e-8`` in its
alias; the transformations here reproduce the reference implementation (and
:class:`adan.Adan`) instead. JAX is optional: ``pip install 'adan[jax]'``; the core
package never imports this module.

Per leaf, at step ``t`` (code convention: ``b = 1 -`` the paper's beta)::

    d = g - g_prev                      (0 at the first step)
    m = b1 m + (1 - b1) g
    v = b2 v + (1 - b2) d
    n = b3 n + (1 - b3) (g + b2 d)^2
    u = (m / (1 - b1^t) + b2 v / (1 - b2^t)) / (sqrt(n / (1 - b3^t) + eps_root) + eps)

and :func:`adan` turns ``u`` into the parameter update

    proximal (default):  p <- (p - lr u) / (1 + lr wd)
    decoupled:           p <- p (1 - lr wd) - lr u          (no_prox=True)

after optional global-norm clipping ``g <- g min(1, max_grad_norm / (||g|| + eps))``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

__all__ = ["ScaleByAdanState", "scale_by_adan", "clip_by_global_norm", "scale_by_proximal_decay", "adan"]

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


class ScaleByAdanState(NamedTuple):
    count: jax.Array  # int32 number of updates so far
    m: optax.Updates  # exp_avg
    v: optax.Updates  # exp_avg_diff
    n: optax.Updates  # exp_avg_sq
    prev_grad: optax.Updates  # the previous (clipped) gradient


def _high_precision() -> jnp.dtype:
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _bias_correction(decay: Any, count: jax.Array) -> jax.Array:
    """``1 - decay^count`` in float64 (with x64) or float32, whatever the moments' dtype."""
    dt = _high_precision()
    return 1 - jnp.asarray(decay, dt) ** count.astype(dt)


def scale_by_adan(
    b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformation:
    """Adan's direction ``u`` (see the module docstring); the moments keep the gradients' dtype."""

    def init_fn(params: optax.Params) -> ScaleByAdanState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return ScaleByAdanState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros(), zeros())

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_int32_increment(state.count)
        first = state.count == 0

        def leaf(g, m, v, n, g_prev):
            dt = g.dtype
            hp = _high_precision()
            d = jnp.where(first, jnp.zeros_like(g), g - g_prev)
            m = (b1 * m + (1 - b1) * g).astype(dt)
            v = (b2 * v + (1 - b2) * d).astype(dt)
            nme = g + b2 * d
            n = (b3 * n + (1 - b3) * nme * nme).astype(dt)
            m_hat = m.astype(hp) / _bias_correction(b1, count)
            v_hat = v.astype(hp) / _bias_correction(b2, count)
            n_hat = n.astype(hp) / _bias_correction(b3, count)
            u = (m_hat + b2 * v_hat) / (jnp.sqrt(n_hat + eps_root) + eps)
            return u.astype(dt), m, v, n

        out = jax.tree.map(leaf, updates, state.m, state.v, state.n, state.prev_grad)
        treedef = jax.tree.structure(updates)
        u, m, v, n = (jax.tree.unflatten(treedef, parts) for parts in zip(*treedef.flatten_up_to(out)))
        return u, ScaleByAdanState(count, m, v, n, updates)

    return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(max_norm: float, eps: float = 1e-8) -> optax.GradientTransformation:
    """``g * min(1, max_norm / (||g||_2 + eps))`` over all leaves, as the reference clips.

    (``optax.clip_by_global_norm`` uses ``max_norm / max(||g||, max_norm)``, which differs by eps.)
    """

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates) if hasattr(optax, "tree") and hasattr(optax.tree, "norm") else optax.global_norm(updates)
        factor = jnp.minimum(1.0, max_norm / (norm.astype(_high_precision()) + eps))
        return jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class ProximalDecayState(NamedTuple):
    count: jax.Array


def scale_by_proximal_decay(
    learning_rate: ScalarOrSchedule, weight_decay: float, mask: Optional[Any] = None
) -> optax.GradientTransformation:
    """Divide the (already ``-lr``-scaled, decay-added) update by ``1 + lr wd``.

    After ``add_decayed_weights(wd)`` and ``scale_by_learning_rate(lr)`` the update is
    ``-lr (u + wd p)``; divided by ``1 + lr wd`` it gives ``p + update = (p - lr u) / (1 + lr wd)``,
    the proximal step of the paper. Leaves that ``mask`` excludes are left alone.
    """

    def init_fn(params):
        return ProximalDecayState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        factor = 1 / (1 + jnp.asarray(lr, _high_precision()) * weight_decay)
        scaled = jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates)
        if mask is not None:
            keep = mask(params if params is not None else updates) if callable(mask) else mask
            scaled = jax.tree.map(lambda s, u, k: s if k else u, scaled, updates, keep)
        return scaled, ProximalDecayState(optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def adan(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    no_prox: bool = False,
    max_grad_norm: Optional[float] = None,
    mask: Optional[Any] = None,
) -> optax.GradientTransformation:
    """The Adan optimizer of the paper's reference implementation, as an optax chain.

    ``learning_rate`` may be a schedule. Weight decay is proximal by default
    (``no_prox=False``) or decoupled; ``mask`` selects the leaves it applies to.
    ``max_grad_norm`` turns on global-norm clipping. With
    ``optax.inject_hyperparams`` pass ``static_args=("no_prox", "max_grad_norm")``.
    """
    parts = []
    if max_grad_norm is not None:
        parts.append(clip_by_global_norm(max_grad_norm, eps))
    parts += [
        scale_by_adan(b1, b2, b3, eps),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    ]
    if not no_prox:
        parts.append(scale_by_proximal_decay(learning_rate, weight_decay, mask))
    return optax.chain(*parts)
